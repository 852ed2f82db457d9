"""Is restoring into freshly allocated device memory slower, and is that the memory's
first touch (which any loader pays) or the restore? Usage: python3 bench/first_touch_probe.py SNAPSHOT"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import thaw_vllm  # noqa: E402

snapshot = sys.argv[1]
header = thaw_vllm.info(snapshot)
torch.cuda.init()
start = time.perf_counter()
thaw_vllm.restore_into({"model.norm.weight": torch.empty(4096, dtype=torch.float16, device="cuda")}, snapshot, strict=False)
print(f"engine start + tiny restore: {time.perf_counter() - start:.3f} s", flush=True)


def fresh():
    torch.cuda.empty_cache()
    return {t["name"]: torch.empty(t["shape"], dtype=torch.float16, device="cuda") for t in header["tensors"]}


def clock(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


for run in range(3):
    state = fresh()
    restore = clock(lambda: thaw_vllm.restore_into(state, snapshot))
    again = clock(lambda: thaw_vllm.restore_into(state, snapshot))
    del state
    state = fresh()
    touch = clock(lambda: [t.zero_() for t in state.values()])
    after_touch = clock(lambda: thaw_vllm.restore_into(state, snapshot))
    del state
    print(f"run {run}: fresh memory {restore:.3f} s, same memory again {again:.3f} s; "
          f"zero_() of fresh memory {touch:.3f} s then restore {after_touch:.3f} s", flush=True)
