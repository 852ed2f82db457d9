"""Multicast restore over torch.distributed (gloo on the CPU): 2-4 real processes per test,
each a tests/python/multicast_worker.py; bit identity checked on every rank, including when
a rank is killed or stalls mid-transfer."""
import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import thaw_vllm
from thaw_vllm import manifest as manifests
from thaw_vllm import multicast
from thaw_vllm.errors import ThawChecksumError, ThawMismatchError

WORKER = Path(__file__).with_name("multicast_worker.py")
INTERNAL_TEXT = ("gloo", ".cc:", "pair", "unbound_buffer")


def random_tensor(dtype, shape, seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).view(dtype).reshape(shape).clone()


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """~1.1 MB in odd sizes (chunks end inside tensors), a tied alias, a scalar, an empty tensor."""
    embed = random_tensor(torch.float16, (256, 1024), 1)
    state = {"embed.weight": embed, "lm_head.weight": embed,
             "layers.0.w": random_tensor(torch.bfloat16, (300, 701), 2),
             "layers.0.b": random_tensor(torch.float32, (701,), 3),
             "scale": torch.tensor(0.5), "empty": torch.zeros(0), "ids": torch.arange(33)}
    path = tmp_path_factory.mktemp("multicast") / "model.thaw"
    thaw_vllm.freeze(state, path)
    expected = {n: hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest() for n, t in state.items()}
    return path, expected


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(tmp_path, snapshot_path, size, rounds, store="file", timeout=180):
    """Runs size workers through the rounds; returns each rank's list of round results
    (None for a rank that died before writing any). store: "file", "tcp" or a worker's spec."""
    if store == "tcp":
        store = {"kind": "tcp", "address": f"127.0.0.1:{free_port()}"}
    elif store == "file":
        store = {"kind": "file", "path": str(tmp_path / "store")}
    spec = {"size": size, "snapshot": str(snapshot_path), "rounds": rounds, "out": str(tmp_path), "store": store}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(spec_path), str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(size)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for r in range(size):
        out = tmp_path / f"rank{r}.json"
        results.append(json.loads(out.read_text()) if out.exists() else None)
    return results, [p.returncode for p in procs], logs


def assert_clean(message):
    assert message and not any(t in message for t in INTERNAL_TEXT), message


def assert_whole(results, expected, logs, members):
    """Every member named ended its first round without an error, holding the snapshot's bytes."""
    for member in members:
        result = results[member][0]
        assert "error" not in result and result["digests"] == expected, (member, result, logs[member])


def assert_fell_back(results, members):
    """Every member named restored its own file, after one message in our words."""
    for member in members:
        stats = results[member][0]["stats"]
        assert stats["path"] == "file", (member, stats)
        assert_clean(stats["group_error"])


def test_two_ranks_over_a_tcp_store_bit_identical_and_checked(tmp_path, snapshot):
    path, expected = snapshot
    results, codes, logs = run_group(tmp_path, path, 2, [{"verify": True}], store="tcp")
    assert codes == [0, 0], logs
    source, receiver = results[0][0], results[1][0]
    assert source["stats"]["path"] == "file" and receiver["stats"]["path"] == "multicast", logs
    assert receiver["stats"]["group_error"] is None and receiver["stats"]["bytes"] > 900_000
    assert source["digests"] == expected and receiver["digests"] == expected


def test_four_ranks_chain_tree_and_live_source_in_one_group(tmp_path, snapshot):
    path, expected = snapshot
    rounds = [{"topology": "chain", "verify": True},
              {"topology": "tree", "verify": True, "source": 2, "chunk_bytes": 16 << 10},
              {"topology": "chain", "verify": True, "live_source": True, "source": 3}]
    results, codes, logs = run_group(tmp_path, path, 4, rounds)
    assert codes == [0, 0, 0, 0], logs
    for number, (round_spec, source_path) in enumerate(zip(rounds, ["file", "file", "live"])):
        for rank in range(4):
            result = results[rank][number]
            assert "error" not in result, (number, rank, result, logs[rank])
            stats = result["stats"]
            assert stats["round"] == number + 1 and stats["topology"] == round_spec["topology"]
            want = source_path if rank == round_spec.get("source", 0) else "multicast"
            assert stats["path"] == want and stats["group_error"] is None, (number, rank, stats)
            assert result["digests"] == expected, (number, rank)


def test_a_rank_killed_mid_transfer_leaves_the_others_whole(tmp_path, snapshot):
    """Rank 1 dies after its first chunk; ranks 2 and 3, downstream of it, hear one message
    naming rank 1; rank 2 restores its own file, rank 3 (no fallback) raises it."""
    path, expected = snapshot
    rounds = [{"kill_after_bytes": {"1": 1}, "timeout_s": 3, "no_fallback": ["3"]}]
    results, codes, logs = run_group(tmp_path, path, 4, rounds)
    assert codes[1] == -9 and results[1] is None
    assert codes[0] == codes[2] == codes[3] == 0, logs
    source, rank2, rank3 = results[0][0], results[2][0], results[3][0]
    assert source["stats"]["path"] == "file" and source["digests"] == expected
    assert "rank 1" in source["stats"]["group_error"], source
    assert rank2["stats"]["path"] == "file" and rank2["digests"] == expected, logs[2]
    assert_clean(rank2["stats"]["group_error"])
    assert "upstream rank 1" in rank2["stats"]["group_error"]
    assert rank3["error"]["type"] == "MulticastError", rank3
    assert_clean(rank3["error"]["message"])
    assert "rank 1" in rank3["error"]["message"]


def test_a_stalled_rank_times_out_and_everyone_ends_whole(tmp_path, snapshot):
    """Rank 1 stops for longer than the chunk timeout; the ranks after it time out and
    restore their own files; whatever rank 1 does when it wakes, it ends bit-identical."""
    path, expected = snapshot
    rounds = [{"stall_after_bytes": {"1": 1}, "stall_s": 7, "timeout_s": 2}]
    results, codes, logs = run_group(tmp_path, path, 4, rounds)
    assert codes == [0, 0, 0, 0], logs
    assert_whole(results, expected, logs, range(4))
    assert_fell_back(results, (2, 3))
    assert "upstream rank 1 sent nothing for 2 s" in results[2][0]["stats"]["group_error"]
    assert "rank 1" in results[0][0]["stats"]["group_error"]
    assert results[1][0]["stats"]["path"] in ("multicast", "file")


def test_a_rank_with_other_tensors_stops_the_start_for_all(tmp_path, snapshot):
    path, expected = snapshot
    rounds = [{"reshape": {"2": "layers.0.b"}}]
    results, codes, logs = run_group(tmp_path, path, 3, rounds)
    assert codes == [0, 0, 0], logs
    assert results[2][0]["error"]["type"] == "ThawMismatchError"
    assert "layers.0.b" in results[2][0]["error"]["message"]
    receiver = results[1][0]
    assert receiver["stats"]["path"] == "file" and receiver["digests"] == expected
    message = receiver["stats"]["group_error"]
    assert "did not start" in message and "rank 2 refused" in message and "layers.0.b" in message, message
    assert "rank 2 refused" in results[0][0]["stats"]["group_error"]


# ---- in one process ---------------------------------------------------------------------

def test_links_reach_every_rank_once():
    for topology in ("chain", "tree"):
        for size in (1, 2, 3, 7, 16, 33):
            for source in {0, size // 2, size - 1}:
                parents = {}
                for rank in range(size):
                    parent, children = multicast.links(rank, size, source, topology, 3)
                    if topology == "chain":
                        assert len(children) <= 1
                    for child in children:
                        assert child not in parents
                        parents[child] = rank
                    assert (parent is None) == (rank == source)
                assert sorted(parents) == sorted(set(range(size)) - {source})
                for child, parent in parents.items():  # every child names the rank that feeds it
                    assert multicast.links(child, size, source, topology, 3)[0] == parent


def test_auto_topology_follows_the_model():
    big = multicast.MulticastGroup(None, 0, 8, chunk_bytes=32 << 20)
    assert multicast.choose_topology(big, 16 << 30) == "chain"  # the pipe fills in 6 of 512 chunks
    wide = multicast.MulticastGroup(None, 0, 512, chunk_bytes=32 << 20)
    assert multicast.choose_topology(wide, 64 << 20) == "tree"  # 2 chunks down 511 hops
    assert multicast.modelled_seconds("chain", 2, 10 << 20, 1 << 20) == 1.0
    assert multicast.modelled_seconds("tree", 3, 10 << 20, 1 << 20) == 2.0


def test_group_settings_are_bounded():
    with pytest.raises(ValueError, match="rank 4"):
        multicast.MulticastGroup(None, 4, 4)
    with pytest.raises(ValueError, match="chunk_bytes"):
        multicast.MulticastGroup(None, 0, 4, chunk_bytes=10)
    with pytest.raises(ValueError, match="timeout_s"):
        multicast.MulticastGroup(None, 0, 4, timeout_s=float("nan"))
    with pytest.raises(ValueError, match="topology"):
        multicast.MulticastGroup(None, 0, 4, topology="ring")


def test_checksums_are_the_snapshots_and_catch_a_changed_byte(snapshot):
    path, _ = snapshot
    state = thaw_vllm.load_state_dict(path)
    header = thaw_vllm.info(path)
    for t in header["tensors"]:
        assert manifests.tensor_crc32c(state[t["name"]]) == t["crc32c"], t["name"]
    manifest = manifests.of_snapshot(path, state, strict=True)
    targets, _ = manifests.check_against(manifest, state, True, "test")
    multicast._verify(manifest, targets, "test", 0)
    state["layers.0.w"].reshape(-1).view(torch.uint8)[12345] ^= 1
    with pytest.raises(ThawChecksumError, match="'layers.0.w' received from rank 0"):
        multicast._verify(manifest, targets, "test", 0)


def test_a_destination_of_another_shape_is_named(snapshot):
    path, _ = snapshot
    state = thaw_vllm.load_state_dict(path)
    manifest = manifests.of_snapshot(path, state, strict=True)
    state["layers.0.w"] = torch.zeros(701, 300, dtype=torch.bfloat16)
    with pytest.raises(ThawMismatchError, match=r"'layers.0.w' is BF16 \[300, 701\] at the source"):
        manifests.check_against(manifest, state, True, "test")
