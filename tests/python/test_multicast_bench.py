"""bench/multicast_bench.py runs where there is no GPU: --device cpu, gloo, a tiny snapshot, the
chain and gang rounds of the two-GPU measurement, every rank bit-identical to its own restore."""
import json
import subprocess
import sys
from pathlib import Path

from test_multicast import free_port

BENCH = Path(__file__).resolve().parents[2] / "bench" / "multicast_bench.py"


def test_the_bench_runs_chain_and_gang_rounds_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--layers", "2", "--ranks", "2", "--runs", "1",
                          "--mode", "both", "--chunk-mib", "1", "--port", str(free_port()),
                          "--workdir", str(tmp_path), "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((out / "multicast.json").read_text())
    assert summary["exit_codes"] == [0, 0] and summary["pinned_h2d_ceiling_gbps"] is None
    for rank in summary["per_rank"]:
        paths = {r["mode"]: r["path"] for r in rank["rounds"]}
        source = rank["rank"] == 0
        assert paths == {"live": "live" if source else "multicast", "file": "file" if source else "multicast",
                         "gang": "gang"}, rank
        assert all(r["identical"] and r["group_error"] is None for r in rank["rounds"]), rank
        gang_round = next(r for r in rank["rounds"] if r["mode"] == "gang")
        assert 0 < gang_round["share_bytes"] < rank["bytes"]
    assert "rank 1 gang:" in run.stdout
