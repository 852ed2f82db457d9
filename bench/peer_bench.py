"""A restore served from a live peer, side by side with the pool's host copy and the pinned ceiling, in
one run (docs/POOL.md, "Restoring from a live peer"):

  process A allocates the model on the GPU, restores it from the snapshot file and publishes it;
  process B restores the same snapshot through the pool on the same GPU: served device to device
  from A's memory (via "peer"), --runs times; then B checks every byte against the file;
  A exits, the pool loads its host copy and B restores from it (via "pool hit"), --runs times.

    python3 bench/peer_bench.py --out $OUT                        # the 16 GB generated model, CUDA
    python3 bench/peer_bench.py --device mock --gb 0.05 --out DIR # anywhere (tests/python/test_peer_bench.py)

A's and B's memory is one allocation each (tensors are views into it): one IPC handle to open.
Needs build/publish/{cli,pybridge} (scripts/build.sh).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE))
import thaw_vllm  # noqa: E402
from thaw_vllm import peer, pool, torch_io  # noqa: E402

THAW = Path(os.environ.get("THAW_CLI", HERE.parent / "build" / "publish" / "cli" / "thaw"))


def say(**answer):
    print(json.dumps(answer), flush=True)


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def model_shapes(gb):
    """Llama-3-8B-shaped (32 layers: 16.06 GB) when it fits the size asked, else equal fp16 slabs."""
    if gb >= 4:
        from gpu_bench import llama_tensors
        layers = max(1, round((gb * 1e9 - 2.1e9) / 0.436e9))
        return list(llama_tensors(layers))
    slab = max(4096, int(gb * 1e9 / 16) // 2048 * 1024)
    return [(f"w{i}", (slab,)) for i in range(16)] + [("norm", (4096,)), ("odd", (777,))]


def arena(header, device, work, name):
    """One allocation holding every tensor at its snapshot offset (mock: a shared file the pool can open)."""
    size = header["file_length"] - header["data_offset"]
    if device == "cuda":
        memory = torch.empty(size, dtype=torch.uint8, device="cuda")
    else:
        path = Path(work) / name
        path.write_bytes(b"")
        os.truncate(path, size)
        memory = torch.from_file(str(path), shared=True, size=size, dtype=torch.uint8)
    return {t["name"]: memory[t["offset"]:t["offset"] + t["length"]].view(torch_io.torch_dtype(t["dtype"])).reshape(t["shape"])
            for t in header["tensors"]}


def publisher(args):
    header = thaw_vllm.info(args.snapshot)
    tensors = arena(header, args.device, args.work, "publisher-memory")
    identity = peer.identity(args.snapshot)
    stats = thaw_vllm.restore_into(tensors, args.snapshot, io="buffered")
    publication = thaw_vllm.publish(tensors, args.snapshot, pool=args.socket, snapshot_identity=identity)
    say(generation=publication.generation, restore_gbps=stats["gbps"])
    for line in sys.stdin:
        if line.strip() == "exit":
            break
    publication.close()


def client(args):
    header = thaw_vllm.info(args.snapshot)
    tensors = arena(header, args.device, args.work, "client-memory")
    say(ready=True)
    for line in sys.stdin:
        command = line.strip()
        if command in ("peer", "pool"):
            runs = []
            for _ in range(args.runs):
                for t in tensors.values():
                    t.zero_()
                synchronize(args.device)
                started = time.perf_counter()
                stats = thaw_vllm.restore_into(tensors, args.snapshot, pool=args.socket)
                synchronize(args.device)
                runs.append({"seconds": time.perf_counter() - started, "via": stats.get("via", stats["source"]), "bytes": stats["bytes"]})
            say(runs=runs)
        elif command == "verify":
            reference = arena(header, args.device, args.work, "reference-memory")
            thaw_vllm.restore_into(reference, args.snapshot, io="buffered")
            different = [n for n in tensors if not torch.equal(tensors[n], reference[n])]
            say(identical=not different, different=different[:5])
            del reference
        elif command == "exit":
            break


class Role:
    """A child process (publisher or client), one JSON answer per command."""

    def __init__(self, role, args):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--role", role, "--device", args.device, "--snapshot", str(args.snapshot),
             "--socket", str(args.socket), "--work", str(args.work), "--runs", str(args.runs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.first = self.answer()

    def answer(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a child process ended (exit code {self.process.wait()})")
        return json.loads(line)

    def ask(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.answer()

    def end(self):
        if self.process.poll() is None:
            self.process.stdin.write("exit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=120)


def summary(name, runs, model_bytes, ceiling):
    seconds = statistics.median(r["seconds"] for r in runs)
    gbps = model_bytes / seconds / 1e9
    vias = sorted({r["via"] for r in runs})
    share = f"{gbps / ceiling:.1f}x" if ceiling else "n/a"
    each = ", ".join(f"{r['seconds'] * 1e3:.1f}" for r in runs)
    return f"| {name} | {', '.join(vias)} | {seconds * 1e3:.1f} | {gbps:.1f} | {share} | {each} |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=("cuda", "mock"), default="cuda")
    ap.add_argument("--gb", type=float, default=16)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default="/dev/shm/thaw-peer-bench")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--role", choices=("publisher", "client"))
    ap.add_argument("--snapshot")
    ap.add_argument("--socket")
    args = ap.parse_args()
    if args.role:
        return (publisher if args.role == "publisher" else client)(args)

    from pool_server import running_pool
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.work = work
    args.snapshot, args.socket = work / "model.thaw", work / "pool.sock"
    ceiling = None
    if args.device == "cuda":
        from gpu_bench import pinned_h2d_ceiling
        ceiling = pinned_h2d_ceiling()
    if not args.snapshot.exists() or abs(thaw_vllm.info(args.snapshot)["tensor_bytes"] / 1e9 - args.gb) > 0.05 * args.gb:
        started = time.perf_counter()
        g = torch.Generator(device=args.device if args.device == "cuda" else "cpu").manual_seed(0)
        state = {n: torch.randn(s, dtype=torch.float16, device=args.device if args.device == "cuda" else "cpu", generator=g)
                 for n, s in model_shapes(args.gb)}
        thaw_vllm.freeze(state, args.snapshot)
        del state
        if args.device == "cuda":
            torch.cuda.empty_cache()
        print(f"generated and froze {args.snapshot} in {time.perf_counter() - started:.1f} s", flush=True)
    header = thaw_vllm.info(args.snapshot)
    model_bytes = header["tensor_bytes"]
    budget_mib = int(header["file_length"] / (1 << 20)) + 1024
    lines = []
    with running_pool(THAW, args.socket, budget_mib, args.device, extra_args=("--shm-dir", str(work)) if args.device == "mock" else ()):
        a = Role("publisher", args)
        b = Role("client", args)
        try:
            print(f"A restored from the file at {a.first['restore_gbps']:.1f} GB/s and published generation {a.first['generation']}", flush=True)
            from_peer = b.ask("peer")["runs"]
            verified = b.ask("verify")
            host_copy_held = bool(pool.status(args.socket)["snapshots"])
            a.end()
            for _ in range(200):
                if not pool.status(args.socket)["publications"]:
                    break
                time.sleep(0.05)
            started = time.perf_counter()
            pool.load(args.snapshot, args.socket)
            load_seconds = time.perf_counter() - started
            from_pool = b.ask("pool")["runs"]
        finally:
            a.end()
            b.end()
    lines += [f"model: {model_bytes / 1e9:.2f} GB, {len(header['tensors'])} tensors; device {args.device}; "
              f"pinned H2D ceiling {f'{ceiling:.1f} GB/s' if ceiling else 'n/a (mock)'}",
              "",
              "| B restores | via | median ms | GB/s | vs pinned ceiling | runs (ms) |",
              "|---|---|---|---|---|---|",
              summary("from the live peer A (same device)", from_peer, model_bytes, ceiling),
              summary("from the pool's host copy (pinned)", from_pool, model_bytes, ceiling),
              "",
              f"bit-identical to the file after the peer restores: {verified['identical']}"
              f"{'' if verified['identical'] else ' ' + str(verified['different'])}; "
              f"pool held a host copy while the peer served: {host_copy_held}; pool load {load_seconds:.2f} s"]
    report = "\n".join(lines)
    print(report, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "peer_bench.md").write_text(report + "\n")
    if not verified["identical"] or any(r["via"] != "peer" for r in from_peer):
        sys.exit(1)


if __name__ == "__main__":
    main()
