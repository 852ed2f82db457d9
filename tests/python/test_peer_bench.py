"""bench/peer_bench.py in mock mode: the bench itself runs end to end (a publisher, a client served
from it, the check against the file, the pool's host copy after the publisher exits)."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_peer_bench_runs_on_the_mock_device(tmp_path):
    if not (REPO / "build" / "publish" / "cli" / "thaw").is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    run = subprocess.run([sys.executable, str(REPO / "bench" / "peer_bench.py"), "--device", "mock", "--gb", "0.05", "--runs", "2",
                          "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    report = (tmp_path / "out" / "peer_bench.md").read_text()
    assert "| from the live peer A (same device) | peer |" in report
    assert "| from the pool's host copy (pinned) | pool hit |" in report
    assert "bit-identical to the file after the peer restores: True" in report
    assert "pool held a host copy while the peer served: False" in report
