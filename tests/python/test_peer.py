"""Restores served from a live peer (docs/POOL.md, "Restoring from a live peer") against a real
`thaw pool serve --device mock`: process A (tests/python/peer_worker.py) restores a snapshot into
mock device memory (a shared file) and publishes it; this process, B, restores the same snapshot
through the pool into its own shared file and is served from A's memory, device to device."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import thaw_vllm
from thaw_vllm import peer, pool
from test_pool import server, shared_views  # noqa: F401  (server is a fixture)

HERE = Path(__file__).resolve().parent


class Publisher:
    """Process A, driven one command at a time."""

    def __init__(self, socket, snapshot, shm_dir, *allow):
        self.process = subprocess.Popen([sys.executable, str(HERE / "peer_worker.py"), str(socket), str(snapshot), str(shm_dir),
                                         *map(str, allow)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.first = self.answer()

    def answer(self):
        line = self.process.stdout.readline()
        assert line, f"the publisher ended (exit code {self.process.poll()})"
        return json.loads(line)

    def tell(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return None if command == "exit" else self.answer()

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def model(tmp_path):
    state = {"embed": torch.randn(257, 33), "layer.w": torch.randn(4096), "layer.b": torch.arange(777, dtype=torch.int64),
             "norm": torch.randn(129).to(torch.bfloat16)}
    snapshot = tmp_path / "model.thaw"
    thaw_vllm.freeze(state, snapshot)
    return state, snapshot


def restore(tmp_path, snapshot, socket):
    """B's restore, through the pool with its fallback to the file; the bytes and what served them."""
    target = shared_views(tmp_path, thaw_vllm.info(snapshot), name="client-memory")
    for t in target.values():
        t.fill_(7)  # so a restore that did not write is seen
    stats = thaw_vllm.restore_into(target, snapshot, pool=socket)
    return target, stats


def assert_exact(target, state):
    for name, tensor in state.items():
        assert torch.equal(target[name], tensor), name


def wait_for_publications(socket, count):
    import time
    for _ in range(400):
        if len(pool.status(socket)["publications"]) == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the pool still lists {pool.status(socket)['publications']}")


def test_a_new_process_is_served_from_a_live_peer_and_falls_back_when_it_exits(tmp_path, server, model):
    state, snapshot = model
    a = Publisher(server, snapshot, tmp_path)
    try:
        assert a.first == {"generation": 1}
        target, stats = restore(tmp_path, snapshot, server)
        assert (stats["source"], stats["via"]) == ("pool", "peer")
        assert_exact(target, state)
        status = pool.status(server)
        assert status["used_bytes"] == 0 and status["snapshots"] == [], "the pool held no host copy"
        [published] = status["publications"]
        assert (published["generation"], published["served"], published["tensors"]) == (1, 1, len(state))

        a.tell("exit")  # as if it crashed: only its connection closing tells the pool
        a.process.wait(timeout=30)
        wait_for_publications(server, 0)
        target, stats = restore(tmp_path, snapshot, server)
        assert stats["via"] == "pool fill", "no peer: the pool reads the file, filling its host copy"
        assert_exact(target, state)
        target, stats = restore(tmp_path, snapshot, server)
        assert stats["via"] == "pool hit"
        assert_exact(target, state)
    finally:
        a.close()


def test_a_withdrawn_peer_is_never_read_and_its_next_generation_serves_again(tmp_path, server, model):
    state, snapshot = model
    a = Publisher(server, snapshot, tmp_path)
    try:
        assert a.tell("withdraw-and-zero") == {"published": False}
        target, stats = restore(tmp_path, snapshot, server)
        assert stats["via"] == "pool fill", "A's zeros are never served"
        assert_exact(target, state)
        assert a.tell("restore-and-bump") == {"generation": 2}
        target, stats = restore(tmp_path, snapshot, server)
        assert stats["via"] == "peer" and pool.status(server)["publications"][0]["generation"] == 2
        assert_exact(target, state)
    finally:
        a.close()


def test_publish_refuses_what_it_cannot_offer(tmp_path, server, model):
    state, snapshot = model
    private = {n: t.clone() for n, t in state.items()}  # private memory: no handle the pool could open
    with pytest.raises(thaw_vllm.ThawPoolUnavailable, match="not in a shared file mapping"):
        thaw_vllm.publish(private, snapshot, pool=server)
    with pytest.raises(thaw_vllm.ThawPoolUnavailable, match="nothing to publish"):
        thaw_vllm.publish({"other": torch.zeros(3)}, snapshot, pool=server)
    with pytest.raises(thaw_vllm.ThawPoolUnavailable, match="no pool on"):
        thaw_vllm.publish(state, snapshot, pool=tmp_path / "absent.sock")
    views = shared_views(tmp_path, thaw_vllm.info(snapshot), name="stale-memory")
    stale = peer.identity(snapshot)
    thaw_vllm.freeze({n: t + 1 if t.is_floating_point() else t for n, t in state.items()}, snapshot)
    with pytest.raises(thaw_vllm.ThawMismatchError, match="not the one published"):
        thaw_vllm.publish(views, snapshot, pool=server, snapshot_identity=stale)
    with pytest.raises(ValueError, match="allow_uids"):
        thaw_vllm.publish(views, snapshot, pool=server, allow_uids=[-1])
    assert pool.status(server)["publications"] == []


def test_a_publication_ends_with_its_handle(tmp_path, server, model):
    state, snapshot = model
    views = shared_views(tmp_path, thaw_vllm.info(snapshot), name="own-memory")
    thaw_vllm.restore_into(views, snapshot)
    with thaw_vllm.publish(views, snapshot, pool=server) as published:
        assert pool.status(server)["publications"][0]["generation"] == published.generation == 1
        with published.changing():
            assert pool.status(server)["publications"] == []
        assert published.generation == 2 and len(pool.status(server)["publications"]) == 1
    wait_for_publications(server, 0)
    with pytest.raises(ValueError, match="closed"):
        published.bump()


def test_the_vllm_publication_is_withdrawn_for_sleep_and_published_again_after(tmp_path, server, model):
    from thaw_vllm import vllm_peer
    state, snapshot = model
    views = shared_views(tmp_path, thaw_vllm.info(snapshot), name="vllm-memory")
    identity = vllm_peer.identity_before_restore(snapshot)
    thaw_vllm.restore_into(views, snapshot)
    module = torch.nn.Module()  # the model's tensors by the snapshot's names, as vllm_capture.model_tensors finds them
    module.layer = torch.nn.Module()
    for name, view in views.items():
        owner, _, leaf = name.rpartition(".")
        (module.layer if owner else module).register_buffer(leaf, view)
    tensors = dict(views)
    vllm_peer.publish_model(module, tensors, snapshot, identity, server, "0")
    try:
        assert pool.status(server)["publications"][0]["generation"] == 1
        vllm_peer.withdraw_all()  # vllm_sleep.ThawSleepBackend.suspend, before the allocator sleeps
        assert pool.status(server)["publications"] == []
        target, stats = restore(tmp_path, snapshot, server)
        assert stats["via"] != "peer"
        vllm_peer.republish_all()  # ThawSleepBackend.resume, once the weights are back
        assert pool.status(server)["publications"][0]["generation"] == 2
        target, stats = restore(tmp_path, snapshot, server)
        assert stats["via"] == "peer"
        assert_exact(target, state)
    finally:
        for _, publication in vllm_peer._published:
            publication.close()
        vllm_peer._published.clear()


def test_an_in_place_restore_of_another_file_ends_the_old_publication(tmp_path, server, model):
    from thaw_vllm import vllm_peer
    state, snapshot = model
    other_state = {n: t + 1 if t.is_floating_point() else t * 2 for n, t in state.items()}
    other = tmp_path / "other.thaw"
    thaw_vllm.freeze(other_state, other)
    views = shared_views(tmp_path, thaw_vllm.info(snapshot), name="inplace-memory")
    module = torch.nn.Module()
    identity = vllm_peer.identity_before_restore(snapshot)
    thaw_vllm.restore_into(views, snapshot)
    vllm_peer.publish_model(module, views, snapshot, identity, server, "0")
    try:
        # What vllm_loader.restore_snapshot does around thaw_restore(other): withdraw, restore, publish again.
        identity = vllm_peer.identity_before_restore(other)
        vllm_peer.before_restore(module)
        assert pool.status(server)["publications"] == []
        thaw_vllm.restore_into(views, other)
        vllm_peer.after_restore(module, views, other, identity, server, "0", publish=False)
        [published] = pool.status(server)["publications"]
        assert published["snapshot"] == str(other)
        target, stats = restore(tmp_path, snapshot, server)
        assert stats["via"] != "peer", "the memory holds the other file now"
        assert_exact(target, state)
        target, stats = restore(tmp_path, other, server)
        assert stats["via"] == "peer"
        assert_exact(target, other_state)
    finally:
        for _, publication in vllm_peer._published:
            publication.close()
        vllm_peer._published.clear()
