"""bench/pool_server.py, the pool start/stop and breakdown line the pool benchmarks share, run
against a real `thaw pool serve --device mock`: it waits until the pool answers, passes its
environment on (THAWCORE_POOL_OPEN=serial shows in the answer), and stops it cleanly."""
import sys
from pathlib import Path

import pytest
import torch

import thaw_vllm
from thaw_vllm import pool
from test_pool import THAW, shared_views

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from pool_server import running_pool, timings_line  # noqa: E402


@pytest.mark.parametrize("opens", ["serial", "pipelined"])
def test_the_bench_pool_serves_and_reports_its_breakdown(tmp_path, opens):
    if not THAW.is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    state = {f"w{i}": torch.randn(1000 + i) for i in range(3)}
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(state, snapshot)
    env = {} if opens == "serial" else {"THAWCORE_POOL_OPEN": opens}  # serial is the default
    with running_pool(THAW, tmp_path / "pool.sock", 64, device="mock", env=env, extra_args=["--shm-dir", str(tmp_path)]) as socket_path:
        pool.load(snapshot, socket_path)
        target = shared_views(tmp_path, thaw_vllm.info(snapshot))
        stats = pool.restore_tensors(target, snapshot, socket_path, share=False)  # the pool's copies, whose order it sets
        line = timings_line(stats)
    assert not socket_path.exists(), "stopped, and its socket removed"
    assert all(torch.equal(target[n], t) for n, t in state.items())
    assert "resolve" in line and "open" in line and "close" in line
    assert stats["timings"]["pool_s"] > 0 and stats["opens"] == opens
