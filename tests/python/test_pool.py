"""The Python pool client against a real `thaw pool serve` on the mock device, whose IPC
handles are shared-memory files; and the fallback when no pool serves."""
import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

import thaw_vllm
from thaw_vllm import pool, torch_io

REPO = Path(__file__).resolve().parents[2]
THAW = REPO / "build" / "publish" / "cli" / "thaw"


@pytest.fixture
def server(tmp_path):
    if not THAW.is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    socket_path = tmp_path / "pool.sock"
    process = subprocess.Popen([str(THAW), "pool", "serve", "--socket", str(socket_path), "--device", "mock",
                                "--budget-mib", "64", "--shm-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(100):
        if socket_path.exists():
            break
        time.sleep(0.05)
    yield socket_path
    process.terminate()
    process.wait(timeout=10)
    assert process.returncode == 0 and not socket_path.exists(), "SIGTERM stops the pool cleanly"


def shared_views(tmp_path, header, name="device-memory"):
    """Mock device memory a pool can open: tensors laid out as the snapshot's data section in a
    file mapped MAP_SHARED (torch.from_file(shared=True)); the client finds the file by address."""
    shared = tmp_path / name
    size = header["file_length"] - header["data_offset"]
    shared.write_bytes(b"\0" * size)
    memory = torch.from_file(str(shared), shared=True, size=size, dtype=torch.uint8)
    return {t["name"]: memory[t["offset"]:t["offset"] + t["length"]].view(torch_io.torch_dtype(t["dtype"])).reshape(t["shape"])
            for t in header["tensors"]}


def test_restore_through_the_pool_into_shared_memory(tmp_path, server):
    state = {"a": torch.randn(300, 7), "b": torch.arange(1000, dtype=torch.int64)}
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(state, snapshot)
    assert pool.load(snapshot, server)["bytes"] > 0
    target = shared_views(tmp_path, thaw_vllm.info(snapshot))
    stats = pool.restore_tensors(target, snapshot, server)
    assert stats["bytes"] == sum(t.numel() * t.element_size() for t in state.values()) and stats["via"] == "pool hit"
    for name, tensor in state.items():
        assert torch.equal(target[name], tensor)
    entry = pool.status(server)["snapshots"][0]
    assert entry["hits"] == 1


def test_the_pool_client_checks_targets_against_the_snapshot_before_asking(tmp_path, server):
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze({"a": torch.randn(300, 7)}, snapshot)
    pool.load(snapshot, server)
    target = shared_views(tmp_path, thaw_vllm.info(snapshot))
    with pytest.raises(thaw_vllm.ThawMismatchError, match="shape"):
        pool.restore_tensors({"a": target["a"].reshape(7, 300)}, snapshot, server)
    assert pool.status(server)["snapshots"][0]["hits"] == 0


def test_memory_a_pool_cannot_open_falls_back_to_the_file(tmp_path, server, caplog):
    state = {"w": torch.randn(64)}
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(state, snapshot)
    pool.load(snapshot, server)
    target = {"w": torch.zeros(64)}  # private memory: no handle the pool could open
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        thaw_vllm.restore_into(target, snapshot, pool=server, pool_share=False)  # the pool's own copies only
    assert torch.equal(target["w"], state["w"])
    assert any("not in a shared file mapping" in r.message and "restoring from the file" in r.message for r in caplog.records)


def test_a_hit_is_copied_here_from_the_pools_shared_host_copy_into_any_memory(tmp_path, server, caplog):
    state = {"w": torch.randn(3000, 70), "b": torch.arange(5, dtype=torch.int64), "e": torch.zeros(0)}
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(state, snapshot)
    pool.load(snapshot, server)
    target = {n: torch.full_like(t, 7) for n, t in state.items()}  # private memory: the pool opens nothing
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        stats = thaw_vllm.restore_into(target, snapshot, pool=server)
    assert all(torch.equal(target[n], state[n]) for n in state)
    assert stats["source"] == "pool" and stats["via"] == "pool hit" and stats["shared"] and stats["opens"] == "shared"
    assert stats["allocations"] == 0 and not any("restoring from the file" in r.message for r in caplog.records)
    held = pool.status(server)["snapshots"][0]
    assert held["hits"] == 1 and held["bytes_served"] == sum(t.numel() * t.element_size() for t in state.values())
    # Off by the environment: the pool's copies, which cannot reach private memory.
    os.environ["THAW_POOL_SHARE"] = "off"
    try:
        with caplog.at_level(logging.INFO, logger="thaw_vllm"):
            thaw_vllm.restore_into({n: torch.zeros_like(t) for n, t in state.items()}, snapshot, pool=server)
    finally:
        del os.environ["THAW_POOL_SHARE"]
    assert any("not in a shared file mapping" in r.message for r in caplog.records)


def test_without_a_pool_the_restore_falls_back_to_the_file_and_says_so(tmp_path, caplog):
    state = {"w": torch.randn(64)}
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(state, snapshot)
    target = {"w": torch.zeros(64)}
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        thaw_vllm.restore_into(target, snapshot, pool=tmp_path / "absent.sock")
    assert torch.equal(target["w"], state["w"])
    assert any("restoring from the file" in r.message for r in caplog.records)


def test_a_pool_that_does_not_hold_the_snapshot_raises_unavailable(tmp_path, server):
    snapshot = tmp_path / "never-loaded.thaw"
    thaw_vllm.freeze({"a": torch.randn(10)}, snapshot)
    with pytest.raises(pool.PoolUnavailable, match="does not hold"):
        pool.restore_tensors(shared_views(tmp_path, thaw_vllm.info(snapshot)), snapshot, server, fill=False)
    assert pool.status(server)["snapshots"] == []


def test_a_restore_the_pool_misses_fills_it_and_the_next_one_is_a_hit(tmp_path, server):
    state = {"a": torch.randn(3000, 7), "b": torch.arange(5000, dtype=torch.int64)}
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(state, snapshot)
    target = shared_views(tmp_path, thaw_vllm.info(snapshot))
    assert thaw_vllm.restore_into(target, snapshot, pool=server)["via"] == "pool fill"
    assert all(torch.equal(target[n], t) for n, t in state.items())
    [filled] = pool.status(server)["snapshots"]
    assert (filled["fills"], filled["misses"], filled["hits"]) == (1, 1, 0) and filled["bytes_read"] > 0
    for t in target.values():
        t.zero_()
    assert thaw_vllm.restore_into(target, snapshot, pool=server)["via"] == "pool hit"
    assert all(torch.equal(target[n], t) for n, t in state.items())
    [held] = pool.status(server)["snapshots"]
    assert (held["fills"], held["hits"], held["bytes_read"]) == (1, 1, filled["bytes_read"]), "a hit reads nothing"


def test_pool_fill_false_restores_from_the_file_and_leaves_the_pool_empty(tmp_path, server, caplog):
    state = {"w": torch.randn(640)}
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(state, snapshot)
    target = shared_views(tmp_path, thaw_vllm.info(snapshot))
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        assert thaw_vllm.restore_into(target, snapshot, pool=server, pool_fill=False)["source"] == "file"
    assert torch.equal(target["w"], state["w"]) and pool.status(server)["snapshots"] == []
    assert any("does not hold" in r.message and "restoring from the file" in r.message for r in caplog.records)


def _rename_over(path, replacement):
    replacement.rename(path)


def _rewrite_in_place_with_mtime_set_back(path, replacement):
    before = path.stat()
    with open(path, "r+b") as f:
        f.write(replacement.read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_ino == before.st_ino


def _truncate_and_regrow(path, replacement):
    with open(path, "r+b") as f:
        f.truncate(4096)
    with open(path, "r+b") as f:
        f.write(replacement.read_bytes())


@pytest.mark.parametrize("change", [_rename_over, _rewrite_in_place_with_mtime_set_back, _truncate_and_regrow])
def test_a_snapshot_replaced_on_disk_while_held_is_never_served_stale(tmp_path, server, change):
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze({"w": torch.randn(4096)}, snapshot)
    target = shared_views(tmp_path, thaw_vllm.info(snapshot))
    assert thaw_vllm.restore_into(target, snapshot, pool=server)["via"] == "pool fill"
    newer = {"w": torch.randn(4096)}
    thaw_vllm.freeze(newer, tmp_path / "next.thaw")  # same size, other bytes
    assert (tmp_path / "next.thaw").stat().st_size == snapshot.stat().st_size
    change(snapshot, tmp_path / "next.thaw")
    assert thaw_vllm.restore_into(target, snapshot, pool=server)["via"] == "pool fill"
    assert torch.equal(target["w"], newer["w"])
    [held] = pool.status(server)["snapshots"]
    assert held["fills"] == 2 and pool.status(server)["used_bytes"] == held["bytes"], "the old copy is gone"


def test_a_fill_of_a_corrupt_snapshot_holds_nothing_and_the_fallback_names_the_tensor(tmp_path, server, caplog):
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze({"first": torch.randn(2048), "broken": torch.randn(2048)}, snapshot)
    info = thaw_vllm.info(snapshot)
    region = next(t for t in info["tensors"] if t["name"] == "broken")
    with open(snapshot, "r+b") as f:
        f.seek(info["data_offset"] + region["offset"] + 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    target = shared_views(tmp_path, info)
    with caplog.at_level(logging.INFO, logger="thaw_vllm"), pytest.raises(thaw_vllm.ThawChecksumError, match="broken"):
        thaw_vllm.restore_into(target, snapshot, pool=server)
    assert any("CRC32C" in r.message and "restoring from the file" in r.message for r in caplog.records)
    assert pool.status(server)["snapshots"] == [] and pool.status(server)["used_bytes"] == 0


def test_thaw_restore_through_the_pool_and_its_fallback(tmp_path, server):
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze({"a": torch.randn(5000), "b": torch.randn(77, 3)}, snapshot)
    subprocess.run([str(THAW), "pool", "load", str(snapshot), "--socket", str(server)], check=True, capture_output=True)
    through = subprocess.run([str(THAW), "restore", str(snapshot), "--device", "mock", "--pool", str(server), "--check"],
                             capture_output=True, text=True, check=True).stdout
    assert "through the pool" in through and "bit-identical" in through
    fallback = subprocess.run([str(THAW), "restore", str(snapshot), "--device", "mock", "--pool", str(tmp_path / "none.sock")],
                              capture_output=True, text=True, check=True)
    assert "no pool on" in fallback.stderr and "restore:" in fallback.stdout
    other = tmp_path / "other.thaw"
    thaw_vllm.freeze({"c": torch.randn(999)}, other)
    unfilled = subprocess.run([str(THAW), "restore", str(other), "--device", "mock", "--pool", str(server), "--no-pool-fill"],
                              capture_output=True, text=True, check=True)
    assert "does not hold" in unfilled.stderr and "restoring from the file" in unfilled.stderr
    filled = subprocess.run([str(THAW), "restore", str(other), "--device", "mock", "--pool", str(server), "--check"],
                            capture_output=True, text=True, check=True).stdout
    assert "(pool fill)" in filled and "bit-identical" in filled
    assert "(pool hit)" in subprocess.run([str(THAW), "restore", str(other), "--device", "mock", "--pool", str(server)],
                                          capture_output=True, text=True, check=True).stdout


def test_thaw_pool_status_json_for_scripts(tmp_path, server):
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze({"a": torch.randn(5000)}, snapshot)
    subprocess.run([str(THAW), "pool", "load", str(snapshot), "--socket", str(server)], check=True, capture_output=True)
    subprocess.run([str(THAW), "restore", str(snapshot), "--device", "mock", "--pool", str(server)], check=True, capture_output=True)
    status = json.loads(subprocess.run([str(THAW), "pool", "status", "--json", "--socket", str(server)],
                                       capture_output=True, text=True, check=True).stdout)
    assert status["socket"] == str(server) and status["budget_bytes"] == 64 << 20 and "ok" not in status
    [held] = status["snapshots"]
    assert held["snapshot"] == str(snapshot) and held["hits"] == 1 and held["bytes_served"] == 5000 * 4 <= held["bytes"]
    assert status["used_bytes"] >= held["bytes"]


def test_the_restore_says_where_its_time_went_and_which_device_served_it(tmp_path, server):
    state = {f"w{i}": torch.randn(2000 + 100 * i) for i in range(4)}
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(state, snapshot)
    pool.load(snapshot, server)
    target = shared_views(tmp_path, thaw_vllm.info(snapshot))
    stats = pool.restore_tensors(target, snapshot, server, share=False, mock_device=2)  # the pool's copies, by handle
    t = stats["timings"]
    assert set(t) == {"resolve_s", "request_s", "pool_s", "open_s", "wait_s", "copy_s", "close_s"}
    assert all(v >= 0 for v in t.values()) and t["resolve_s"] > 0 and t["pool_s"] > 0 and t["open_s"] > 0
    assert t["resolve_s"] + t["request_s"] + t["pool_s"] == pytest.approx(stats["seconds"], abs=1e-9)
    assert t["open_s"] + t["wait_s"] + t["copy_s"] + t["close_s"] <= t["pool_s"]
    assert stats["allocations"] == 1 and stats["opens"] == "serial", "every tensor lies in the one shared file"
    for name, tensor in state.items():
        assert torch.equal(target[name], tensor)
    devices = {d["device"]: d["restores"] for d in pool.status(server)["devices"]}
    assert devices == {"mock-0": 0, "mock-2": 1}, "served on the client's own device; the default one stays idle"
    listed = subprocess.run([str(THAW), "pool", "status", "--socket", str(server)], capture_output=True, text=True, check=True).stdout
    assert "device mock-2  1 restores" in listed and "device mock-0  0 restores" in listed
    with pytest.raises(ValueError, match="mock_device"):
        pool.restore_tensors(target, snapshot, server, mock_device=8)


def test_load_state_dict_is_served_by_the_pool_too(tmp_path, server):
    state = {"w": torch.randn(500, 33), "b": torch.arange(9, dtype=torch.int32)}
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(state, snapshot)
    pool.load(snapshot, server)
    loaded = thaw_vllm.load_state_dict(snapshot, pool=server)
    assert all(torch.equal(loaded[n], state[n]) for n in state)
    assert pool.status(server)["snapshots"][0]["hits"] == 1
    assert all(torch.equal(t, state[n]) for n, t in thaw_vllm.load_state_dict(snapshot).items())  # CPU: no pool unless asked
    assert pool.status(server)["snapshots"][0]["hits"] == 1
