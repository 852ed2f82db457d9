"""GPU memory after restores through the pool (issue 11 item 5), the pool's rate and a fresh
process's end-to-end restore on a pool hit, with the pinned H2D ceiling of the same run.

    python3 bench/pool_memory_bench.py --gb 16 --out $OUT
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE if (HERE / "python").is_dir() else HERE.parent
sys.path.insert(0, str(ROOT / "python"))
import torch  # noqa: E402

import thaw_vllm  # noqa: E402
from thaw_vllm import pool  # noqa: E402
from pool_server import running_pool, timings_line  # noqa: E402  (bench/ is the script's directory)

THAW = Path(os.environ.get("THAW_CLI", ROOT / "build" / "publish" / "cli" / "thaw"))
GiB = 1 << 30

# As gpu_bench.py's FRESH: torch imported and CUDA initialized before the clock starts.
FRESH = """
import sys, time, torch
torch.cuda.init(); torch.empty(1, device="cuda")
sys.path.insert(0, sys.argv[3])
start = time.perf_counter()
import thaw_vllm
header = thaw_vllm.info(sys.argv[1])
state = {t["name"]: torch.empty(t["shape"], dtype=torch.float16, device="cuda") for t in header["tensors"]}
stats = thaw_vllm.restore_into(state, sys.argv[1], pool=sys.argv[2])
torch.cuda.synchronize()
print(time.perf_counter() - start, stats["via"], stats["gbps"])
"""


def ceiling(repeats=5):
    host = torch.empty(GiB, dtype=torch.uint8).pin_memory()
    dev = torch.empty(GiB, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    del host, dev
    torch.cuda.empty_cache()
    return GiB / statistics.median(times) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=16)
    ap.add_argument("--work", default="/dev/shm/thaw-pool-memory")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = []

    def say(text):
        print(text, flush=True)
        lines.append(text)

    say(f"pinned H2D ceiling (1 GiB, median of 5): {ceiling():.1f} GB/s")
    tensor_bytes = 512 << 20
    count = max(1, int(args.gb * 1e9 // tensor_bytes))
    g = torch.Generator(device="cuda").manual_seed(0)
    reference = {f"w{i}": torch.randn(tensor_bytes // 2, dtype=torch.float16, device="cuda", generator=g) for i in range(count)}
    model_bytes = count * tensor_bytes
    snapshot = work / "m.thaw"
    thaw_vllm.freeze(reference, snapshot)
    with running_pool(THAW, work / "pool.sock", model_bytes / (1 << 20) + 1024) as socket_path:
        started = time.perf_counter()
        pool.load(snapshot, socket_path)
        say(f"model {model_bytes / 1e9:.2f} GB ({count} tensors of 512 MiB) in /dev/shm; pool load {time.perf_counter() - started:.2f} s")
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base_alloc, base_reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        say(f"before: allocated {base_alloc / GiB:.2f} GiB (the reference copy), reserved {base_reserved / GiB:.2f} GiB")
        say("| restore | GB/s | bit-identical | allocated after restore (GiB) | allocated after del + empty_cache (GiB) | reserved after (GiB) |")
        say("|---|---|---|---|---|---|")
        breakdown = []
        for i in range(5):
            target = {n: torch.empty_like(t) for n, t in reference.items()}
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            stats = pool.restore_tensors(target, snapshot, socket_path)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            same = all(torch.equal(target[n], reference[n]) for n in reference)
            during = torch.cuda.memory_allocated()
            del target
            torch.cuda.empty_cache()
            say(f"| {i + 1} ({stats['via']}) | {model_bytes / seconds / 1e9:.1f} | {same} | {during / GiB:.2f} | "
                f"{(torch.cuda.memory_allocated()) / GiB:.2f} | {torch.cuda.memory_reserved() / GiB:.2f} |")
            breakdown.append(f"restore {i + 1}: {timings_line(stats)}")
        for line in breakdown:
            say(line)
        del reference
        torch.cuda.empty_cache()
        fresh = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", FRESH, str(snapshot), str(socket_path), str(ROOT / "python")],
                                 capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                say(f"fresh process failed: {out.stderr[-2000:]}")
                break
            parts = out.stdout.strip().splitlines()[-1].split()
            fresh.append((wall, float(parts[0]), " ".join(parts[1:-1]), float(parts[-1])))
        for wall, inner, via, gbps in fresh:
            say(f"fresh process on a pool hit: {wall:.3f} s wall (interpreter start to exit), {inner:.3f} s from import thaw_vllm to restored (CUDA initialized first); "
                f"restore call {gbps:.1f} GB/s ({via})")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "pool_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
