"""The host-cache pool on the GPU machine, side by side in one run: a restore through
`thaw pool serve` (snapshot in the pool's pinned memory, copied into this process's GPU
memory by CUDA IPC), the direct warm restore from the file, and safetensors; bit identity.

    python3 bench/pool_bench.py --workdir /tmp/tb32 --layers 32 --out $OUT
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import THAW, generate_checkpoint, pinned_h2d_ceiling, timed, warm_up  # noqa: E402

import thaw_vllm  # noqa: E402  (gpu_bench put python/ on the path)
from thaw_vllm import pool  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/tb32")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    work = Path(args.workdir)
    checkpoint, snapshot, socket_path = work / "checkpoint", work / "model.thaw", work / "pool.sock"
    generate_checkpoint(checkpoint, args.layers)
    if not snapshot.exists():
        subprocess.run([str(THAW), "convert", str(checkpoint), str(snapshot), "--quiet"], check=True)
    header = thaw_vllm.info(snapshot)
    model_bytes = header["tensor_bytes"]
    ceiling = pinned_h2d_ceiling()
    socket_path.unlink(missing_ok=True)
    server = subprocess.Popen([str(THAW), "pool", "serve", "--socket", str(socket_path), "--device", "cuda",
                               "--budget-mib", str(40 << 10)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(200):
            try:
                pool.status(socket_path)
                break
            except pool.PoolUnavailable:
                time.sleep(0.05)
        started = time.perf_counter()
        pool.load(snapshot, socket_path)
        print(f"pool load (read + CRC check + pin, 16 lanes): {time.perf_counter() - started:.2f} s", flush=True)

        state = {t["name"]: torch.empty(t["shape"], dtype=torch.float16, device="cuda") for t in header["tensors"]}
        table = {}
        table["thaw through the pool (preallocated tensors)"] = [
            timed(lambda: thaw_vllm.restore_into(state, snapshot, pool=socket_path))[0] for _ in range(args.runs)]
        from safetensors.torch import load_file
        shards = sorted(checkpoint.glob("*.safetensors"))
        reference = {}
        for s in shards:
            reference.update(load_file(str(s), device="cuda"))
        mismatched = [k for k in reference if not torch.equal(reference[k], state[k])]
        identical = not mismatched and set(reference) == set(state)
        del reference
        torch.cuda.empty_cache()
        warm_up([snapshot])
        table["thaw direct from the file, warm (preallocated tensors)"] = [
            timed(lambda: thaw_vllm.restore_into(state, snapshot, io="buffered"))[0] for _ in range(args.runs)]
        warm_up(shards)

        def safetensors_load():
            out = {}
            for s in shards:
                out.update(load_file(str(s), device="cuda"))
            return out
        runs = []
        for _ in range(3):
            seconds, result = timed(safetensors_load)
            del result
            torch.cuda.empty_cache()
            runs.append(seconds)
        table["safetensors load_file(device=cuda)"] = runs
        cli = subprocess.run([str(THAW), "restore", str(snapshot), "--device", "cuda", "--pool", str(socket_path),
                              "--repeat", "5", "--check"], capture_output=True, text=True)
        print(cli.stdout + cli.stderr, flush=True)
        status = pool.status(socket_path)
    finally:
        server.terminate()
        server.wait(timeout=30)
    base = statistics.median(table["safetensors load_file(device=cuda)"])
    lines = [f"| loader | median s | GB/s | vs safetensors | of pinned H2D ceiling ({ceiling:.1f} GB/s) | runs (s) |",
             "|---|---|---|---|---|---|"]
    for name, times in table.items():
        med = statistics.median(times)
        lines.append(f"| {name} | {med:.3f} | {model_bytes / med / 1e9:.2f} | {base / med:.2f}x | "
                     f"{model_bytes / med / 1e9 / ceiling:.0%} | {', '.join(f'{t:.3f}' for t in times)} |")
    report = "\n".join(lines) + f"\n\nbit-identical through the pool: {identical}; pool status: {status['snapshots']}\n"
    print(report, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "pool_bench.md").write_text(report + "\n" + cli.stdout)


if __name__ == "__main__":
    main()
