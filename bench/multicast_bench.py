"""Multicast and gang restores over NCCL on the GPUs of one host (nvidia-h200-x2), one process a
GPU, in one run: each rank's own warm restore from the file (the baseline); with --mode chain
(or both) a multicast from a live source (the transfer alone) and one whose source restores
from the file first (what a new replica waits for); with --mode gang (or both) a gang restore,
each rank reading its share from the file and receiving the rest; bit identity of every rank
against its own restore; the pinned H2D ceiling of the same run.

    python3 bench/multicast_bench.py --workdir /tmp/tb32 --layers 32 --ranks 2 --mode both --out $OUT

Writes multicast.json to --out. NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends).
--device cpu runs the same rounds over gloo on a tiny generated snapshot (--layers 2 is
~1 MB), so that a test can run the bench where there is no GPU.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

for key, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ[key] = value  # before torch and NCCL read them

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import THAW, generate_checkpoint, pinned_h2d_ceiling, warm_up  # noqa: E402

import thaw_vllm  # noqa: E402  (gpu_bench put python/ on the path)
from gpu_bench import llama_tensors  # noqa: E402
from thaw_vllm import gang, multicast  # noqa: E402
from thaw_vllm.torch_io import torch_dtype  # noqa: E402

MODES = {"chain": ["live", "file"], "gang": ["gang"], "both": ["live", "file", "gang"]}


def empty_like_snapshot(header, device):
    return {t["name"]: torch.empty(t["shape"], dtype=torch_dtype(t["dtype"]), device=device) for t in header["tensors"]}


def same(a, b):
    return all(torch.equal(a[n].view(-1).view(torch.uint8), b[n].view(-1).view(torch.uint8)) for n in a)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def restore_round(kind, state, snapshot, store, rank, size, args):
    """One round: a multicast from a live source or from the file, or a gang restore."""
    settings = dict(name=f"bench-{kind}", chunk_bytes=args.chunk_mib << 20, timeout_s=60, join_timeout_s=600)
    if kind == "gang":
        return gang.gang_restore(state, snapshot, gang.GangGroup(store, rank, size, **settings))
    group = multicast.MulticastGroup(store, rank, size, **settings)
    return multicast.multicast_restore(state, None if (kind == "live" and rank == 0) else snapshot, group)


def rank_main(args):
    rank, size = args.rank, args.ranks
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    snapshot = Path(args.workdir) / "model.thaw"
    header = thaw_vllm.info(snapshot)
    nbytes = header["tensor_bytes"]
    store = multicast.tcp_store(f"127.0.0.1:{args.port}", rank == 0, 600)
    reference = empty_like_snapshot(header, device)
    own = []
    for _ in range(args.runs):
        sync(device)
        started = time.perf_counter()
        thaw_vllm.restore_into(reference, snapshot)
        sync(device)
        own.append(time.perf_counter() - started)
    result = {"rank": rank, "own_restore_s": own, "bytes": nbytes, "rounds": []}
    for kind in [k for k in MODES[args.mode] for _ in range(args.runs)]:
        state = reference if (kind == "live" and rank == 0) else empty_like_snapshot(header, device)
        store.set(f"go/{len(result['rounds'])}/{rank}", "1")  # start together
        store.wait([f"go/{len(result['rounds'])}/{r}" for r in range(size)])
        sync(device)
        started = time.perf_counter()
        stats = restore_round(kind, state, snapshot, store, rank, size, args)
        sync(device)
        seconds = time.perf_counter() - started
        result["rounds"].append({"mode": kind, "seconds": seconds, "path": stats["path"], "gbps": nbytes / seconds / 1e9,
                                 "share_bytes": stats.get("share_bytes"), "group_error": stats["group_error"],
                                 "identical": same(state, reference)})
        if state is not reference:
            del state
            if device.type == "cuda":
                torch.cuda.empty_cache()
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(result, indent=1))


def tiny_snapshot(snapshot, layers):
    """A Llama-shaped snapshot of random fp16 at 1/64 of the width (for --device cpu)."""
    g = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=g).to(torch.float16)
             for name, shape in llama_tensors(layers, hidden=64, intermediate=224, vocab=2004, heads=4, kv_heads=2)}
    thaw_vllm.freeze(state, snapshot)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/tb32")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunk-mib", type=int, default=32)
    ap.add_argument("--port", type=int, default=29577)
    ap.add_argument("--mode", choices=sorted(MODES), default="both", help="chain: multicast rounds; gang; both")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: gloo on a tiny snapshot")
    ap.add_argument("--out", default=".")
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank is not None:
        return rank_main(args)
    if args.device == "cuda" and torch.cuda.device_count() < args.ranks:
        sys.exit(f"multicast_bench: {args.ranks} ranks need {args.ranks} GPUs, this machine has {torch.cuda.device_count()}")
    work = Path(args.workdir)
    checkpoint, snapshot = work / "checkpoint", work / "model.thaw"
    work.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        if not snapshot.exists():
            tiny_snapshot(snapshot, args.layers)
    else:
        generate_checkpoint(checkpoint, args.layers)
        if not snapshot.exists():
            subprocess.run([str(THAW), "convert", str(checkpoint), str(snapshot), "--quiet"], check=True)
    warm_up([snapshot])
    ceiling = pinned_h2d_ceiling() if args.device == "cuda" else None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--rank", str(r)]) for r in range(args.ranks)]
    codes = [p.wait() for p in procs]
    ranks = [json.loads(Path(args.out, f"rank{r}.json").read_text()) for r in range(args.ranks) if codes[r] == 0]
    summary = {"command": " ".join(sys.argv), "ranks": args.ranks, "chunk_mib": args.chunk_mib, "mode": args.mode,
               "device": args.device, "exit_codes": codes,
               "pinned_h2d_ceiling_gbps": ceiling, "per_rank": ranks}
    Path(args.out, "multicast.json").write_text(json.dumps(summary, indent=1))
    for r in ranks:
        own = min(r["own_restore_s"])
        for mode in MODES[args.mode]:
            runs = [x for x in r["rounds"] if x["mode"] == mode]
            best = min(runs, key=lambda x: x["seconds"])
            print(f"rank {r['rank']} {mode:4s}: {best['seconds']:.3f} s ({best['gbps']:.2f} GB/s, via {best['path']}, "
                  f"{best['seconds'] / own:.2f}x its own restore {own:.3f} s), identical {all(x['identical'] for x in runs)}")
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
