"""Streaming a plain safetensors checkpoint (no snapshot, no conversion), warm, side by
side: thaw_vllm.iter_checkpoint (what load_format="thaw" hands to load_weights) against
safetensors load_file(device="cuda") shard by shard. Uses gpu_bench's generator.

    python3 bench/stream_bench.py --workdir /tmp/tb8 --layers 8 --out $OUT
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import generate_checkpoint, warm_up  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import thaw_vllm  # noqa: E402
from thaw_vllm.torch_io import checkpoint_shards  # noqa: E402


def consume(iterator):
    total = 0
    for _, tensor in iterator:
        total += tensor.numel() * tensor.element_size()
    torch.cuda.synchronize()
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/tb8")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    checkpoint = Path(args.workdir) / "checkpoint"
    generate_checkpoint(checkpoint, args.layers)
    shards = checkpoint_shards(checkpoint)
    warm_up(shards)
    from safetensors.torch import load_file

    def safetensors_stream():
        for shard in shards:
            yield from load_file(str(shard), device="cuda").items()

    results = {}
    for name, make in (("thaw iter_checkpoint", lambda: thaw_vllm.iter_checkpoint(checkpoint, "cuda")),
                       ("safetensors load_file per shard", safetensors_stream)):
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            total = consume(make())
            times.append(time.perf_counter() - start)
            torch.cuda.empty_cache()
        results[name] = (total, times)
    lines = ["| loader | median s | GB/s | runs (s) |", "|---|---|---|---|"]
    for name, (total, times) in results.items():
        med = statistics.median(times)
        lines.append(f"| {name} | {med:.3f} | {total / med / 1e9:.2f} | {', '.join(f'{t:.3f}' for t in times)} |")
    report = "\n".join(lines)
    print(report)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "stream_bench.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
