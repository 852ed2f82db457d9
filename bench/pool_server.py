"""A `thaw pool serve` for the benchmarks: started, waited for until it answers, stopped; and the
breakdown of a restore's time through it in one line. Shared by bench/pool_bench.py and
bench/pool_memory_bench.py (and tests/python/test_bench_pool_server.py on the mock device).
"""
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from thaw_vllm import pool


@contextmanager
def running_pool(thaw, socket_path, budget_mib, device="cuda", env=None, extra_args=(), timeout_s=30):
    """Serves a pool on socket_path until the block ends; env adds variables to the pool's own
    environment (THAWCORE_POOL_OPEN=serial, THAWCORE_COPY_PIECE_MIB=N). Yields the socket path."""
    socket_path = Path(socket_path)
    socket_path.unlink(missing_ok=True)
    server = subprocess.Popen([str(thaw), "pool", "serve", "--socket", str(socket_path), "--device", device,
                               "--budget-mib", str(int(budget_mib)), *extra_args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                pool.status(socket_path)
                break
            except pool.PoolUnavailable:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"thaw pool serve did not answer on {socket_path}: {server.stdout.read()[-2000:]}")
                time.sleep(0.05)
        yield socket_path
    finally:
        server.terminate()
        server.wait(timeout=60)


def timings_line(stats) -> str:
    """Where a pool restore's seconds went (docs/POOL.md, "Where a restore's time goes")."""
    t = stats["timings"]
    return (f"[{stats.get('allocations', '?')} allocations, {stats.get('opens', '?')} opens] resolve {t['resolve_s'] * 1e3:.1f} ms, request {t['request_s'] * 1e3:.1f} ms, pool {t['pool_s'] * 1e3:.1f} ms "
            f"(lanes: open {t['open_s'] * 1e3:.1f}, wait {t['wait_s'] * 1e3:.1f}, copy {t['copy_s'] * 1e3:.1f}, "
            f"close {t['close_s'] * 1e3:.1f} ms)")
