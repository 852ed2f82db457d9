"""Where the time of an in-process Python restore goes: wall time of restore_into
against the core's own pipeline time, across reader-thread counts, with the snapshot
in page cache. Usage: python3 bench/py_restore_probe.py SNAPSHOT"""
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import thaw_vllm  # noqa: E402

snapshot = sys.argv[1]
torch.cuda.init()
header = thaw_vllm.info(snapshot)
state = {t["name"]: torch.empty(t["shape"], dtype=torch.float16, device="cuda") for t in header["tensors"]}
for threads in (0, 16, 24, 32):
    for run in range(4):
        torch.cuda.synchronize()
        start = time.perf_counter()
        stats = thaw_vllm.restore_into(state, snapshot, threads=threads, io="buffered")
        wall = time.perf_counter() - start
        print(f"threads={threads or 'default'} run={run} wall={wall:.3f} s core={stats['seconds']:.3f} s "
              f"{stats['bytes'] / wall / 1e9:.2f} GB/s", flush=True)
