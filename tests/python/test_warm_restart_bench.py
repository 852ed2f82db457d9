"""bench/warm_restart_bench.py runs on the mock device with a tiny snapshot: every policy's cold and
warm fresh-process restore completes, says what served it, and the JSON holds what the lead reads."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
THAW = REPO / "build" / "publish" / "cli" / "thaw"


def test_warm_restart_bench_in_mock_mode(tmp_path):
    if not THAW.is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "warm_restart_bench.py"), "--device", "mock", "--gb", "0.02",
                          "--evict", "fadvise", "--workdir", str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "warm_restart.json").read_text())
    by_policy = {r["policy"]: r for r in report["policies"]}
    assert sorted(by_policy) == ["auto", "buffered", "direct", "pool", "pool-cached"]
    for r in by_policy.values():
        assert ("fadvise_dontneed" in r["eviction"]) == (r["policy"] != "pool-cached") and len(r["rounds"]) == 1 and len(r["cold"]["gbps_runs"]) == 1
        for phase in ("cold", "warm"):
            assert r[phase]["bytes"] > 0 and r[phase]["gbps"] > 0 and r[phase]["process_wall_s"] > r[phase]["restore_wall_s"] > 0
    for name in ("pool", "pool-cached"):
        assert (by_policy[name]["cold"]["via"], by_policy[name]["warm"]["via"]) == ("pool fill", "pool hit")
    assert by_policy["pool-cached"]["resident_after_eviction"] >= 0.9
    [held] = by_policy["pool"]["pool_status"]
    assert (held["fills"], held["hits"]) == (1, 1)
    assert by_policy["buffered"]["warm"]["via"] == "page cache" and by_policy["buffered"]["resident_after_cold"] >= 0.9
    assert report["pinned_ceiling_gbps"] is None  # no link to measure on the mock device
    assert "| pool |" in (out / "warm_restart.log").read_text()
