"""The host-cache pool on the GPU machine, side by side in one run: a restore through
`thaw pool serve` (snapshot in the pool's pinned memory, copied into this process's GPU
memory by CUDA IPC) with its handles opened in order first (the default) and opened on the
lanes, pipelined with the copies (THAWCORE_POOL_OPEN=pipelined, measured slower), each
run's breakdown (docs/POOL.md, "Where a restore's time goes"), the direct warm restore from the
file, and safetensors; bit identity; the pinned H2D ceiling of the same run.

    python3 bench/pool_bench.py --workdir /tmp/tb32 --layers 32 --out $OUT
    python3 bench/pool_bench.py --workdir /tmp/tb32 --layers 32 --clients 2 --out $OUT   # one client a GPU, at once

--clients N starts N client processes, client i on GPU i (modulo the GPUs present), restoring at
once through the one pool; the aggregate of each round is N x bytes over the span from the first
start to the last end (CLOCK_MONOTONIC, shared by the processes).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import REPO, THAW, generate_checkpoint, pinned_h2d_ceiling, timed, warm_up  # noqa: E402

import thaw_vllm  # noqa: E402  (gpu_bench put python/ on the path)
from thaw_vllm import pool  # noqa: E402
from pool_server import running_pool, timings_line  # noqa: E402

# One client of --clients: its tensors on its own GPU, restored `runs` times once the go file appears.
CLIENT = """
import json, sys, time, torch
from pathlib import Path
snapshot, socket_path, python, gpu, go, runs = sys.argv[1:7]
sys.path.insert(0, python)
import thaw_vllm
torch.cuda.set_device(int(gpu))
header = thaw_vllm.info(snapshot)
state = {t["name"]: torch.empty(t["shape"], dtype=torch.float16, device="cuda") for t in header["tensors"]}
torch.cuda.synchronize()
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.001)
out = []
for _ in range(int(runs)):
    start = time.perf_counter()
    stats = thaw_vllm.restore_into(state, snapshot, pool=socket_path)
    torch.cuda.synchronize()
    out.append({"start": start, "end": time.perf_counter(), "via": stats["via"], "timings": stats.get("timings")})
print(json.dumps(out), flush=True)
"""


def concurrent_clients(snapshot, socket_path, clients, runs, work):
    """Each round's aggregate GB/s of `clients` processes restoring at once, and their breakdowns."""
    gpus = max(1, torch.cuda.device_count())
    go = work / "clients.go"
    go.unlink(missing_ok=True)
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, str(snapshot), str(socket_path), str(REPO / "python"),
                               str(i % gpus), str(go), str(runs)], stdout=subprocess.PIPE, text=True) for i in range(clients)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", "a client did not start"
    go.touch()
    results = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    go.unlink(missing_ok=True)
    return [(min(r[k]["start"] for r in results), max(r[k]["end"] for r in results), [r[k] for r in results])
            for k in range(runs)], [i % gpus for i in range(clients)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/tb32")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=".")
    ap.add_argument("--clients", type=int, default=1, help="client processes restoring at once, one a GPU")
    ap.add_argument("--granters", default="1", help="grant threads of the shared copy to compare, e.g. 1,2,4 (THAWCORE_SHARE_GRANTERS)")
    ap.add_argument("--pipelined", action="store_true", help="also the pool's copies with pipelined opens (a pool of its own)")
    args = ap.parse_args()
    work = Path(args.workdir)
    checkpoint, snapshot, socket_path = work / "checkpoint", work / "model.thaw", work / "pool.sock"
    generate_checkpoint(checkpoint, args.layers)
    if not snapshot.exists():
        subprocess.run([str(THAW), "convert", str(checkpoint), str(snapshot), "--quiet"], check=True)
    header = thaw_vllm.info(snapshot)
    model_bytes = header["tensor_bytes"]
    ceiling = pinned_h2d_ceiling()
    gpus = torch.cuda.device_count()
    per_gpu = [ceiling]
    for g in range(1, min(gpus, args.clients)):
        with torch.cuda.device(g):
            per_gpu.append(pinned_h2d_ceiling())
    print(f"pinned H2D ceiling (1 GiB, median of 5): {', '.join(f'cuda:{g} {c:.1f}' for g, c in enumerate(per_gpu))} GB/s", flush=True)
    state = {t["name"]: torch.empty(t["shape"], dtype=torch.float16, device="cuda") for t in header["tensors"]}
    table, breakdowns, rounds = {}, [], []
    budget = (model_bytes >> 20) + 1024
    modes = [(m, env) for m, env in (("serial opens", {}), ("pipelined opens (THAWCORE_POOL_OPEN=pipelined)", {"THAWCORE_POOL_OPEN": "pipelined"}))
             if args.pipelined or not env]
    for mode, env in modes:
        with running_pool(THAW, socket_path, budget, env=env) as served:
            started = time.perf_counter()
            pool.load(snapshot, served)
            print(f"pool load (read + CRC check + pin, 16 lanes): {time.perf_counter() - started:.2f} s", flush=True)
            # Interleaved, run by run: this process copying from the pool's shared host copy (the
            # default), and the pool copying into this process's allocations by IPC handle.
            granters = [int(g) for g in args.granters.split(",")]
            ways = [(f"shared host copy, copied here{' (default)' if g == 1 else ''}, {g} grant thread{'s' if g > 1 else ''}", True, g)
                    for g in granters] + [(f"the pool's copies by IPC handle, {mode}", False, 1)] if not env \
                else [(f"the pool's copies by IPC handle, {mode}", False, 1)]
            for way, share, _ in ways:
                table[f"thaw through the pool, {way} (preallocated tensors)"] = []
            for i in range(args.runs):
                for way, share, g in ways:
                    os.environ["THAWCORE_SHARE_GRANTERS"] = str(g)  # read by the core at each restore
                    seconds, stats = timed(lambda: thaw_vllm.restore_into(state, snapshot, pool=served, pool_share=share))
                    assert stats.get("shared", False) == share, stats
                    table[f"thaw through the pool, {way} (preallocated tensors)"].append(seconds)
                    breakdowns.append(f"{way}, run {i + 1}: {seconds * 1e3:.1f} ms = {timings_line(stats)}")
            # load_state_dict: new tensors (one arena allocation) filled from the pool's shared host copy.
            loads = []
            for _ in range(args.runs):
                torch.cuda.synchronize()
                seconds, loaded = timed(lambda: thaw_vllm.load_state_dict(snapshot, device="cuda", pool=served))
                loads.append(seconds)
                del loaded
            table["thaw load_state_dict through the pool, shared host copy (allocates its tensors)"] = loads
            if args.clients > 1:
                span, on = concurrent_clients(snapshot, served, args.clients, args.runs, work)
                for k, (first, last, each) in enumerate(span):
                    rounds.append(f"{mode}, {args.clients} clients on cuda:{on}, round {k + 1}: "
                                  f"{args.clients * model_bytes / (last - first) / 1e9:.1f} GB/s aggregate "
                                  f"({last - first:.3f} s); " + "; ".join(timings_line(c) for c in each if c["timings"]))
            if not env:
                cli = subprocess.run([str(THAW), "restore", str(snapshot), "--device", "cuda", "--pool", str(served),
                                      "--repeat", "5", "--check"], capture_output=True, text=True)
                print(cli.stdout + cli.stderr, flush=True)
            status = pool.status(served)
    # What the pool wrote last, then the other loaders into the same tensors.
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
        timed(lambda: thaw_vllm.restore_into(state, snapshot, io="buffered", pool="off"))[0] for _ in range(args.runs)]
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
    base = statistics.median(table["safetensors load_file(device=cuda)"])
    lines = [f"| loader | median s | GB/s | vs safetensors | of pinned H2D ceiling ({ceiling:.1f} GB/s) | runs (s) |",
             "|---|---|---|---|---|---|"]
    for name, times in table.items():
        med = statistics.median(times)
        lines.append(f"| {name} | {med:.3f} | {model_bytes / med / 1e9:.2f} | {base / med:.2f}x | "
                     f"{model_bytes / med / 1e9 / ceiling:.0%} | {', '.join(f'{t:.3f}' for t in times)} |")
    report = ("\n".join(lines) + f"\n\npinned H2D ceiling per GPU: {', '.join(f'{c:.1f}' for c in per_gpu)} GB/s\n"
              + "\n".join(breakdowns + rounds)
              + f"\n\nbit-identical through the pool: {identical}; pool status: {status['snapshots']}; devices: {status['devices']}\n")
    print(report, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "pool_bench.md").write_text(report + "\n" + cli.stdout)


if __name__ == "__main__":
    main()
