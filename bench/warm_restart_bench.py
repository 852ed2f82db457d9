"""Cold then warm restarts under each I/O policy, side by side in one run (issue 22 item 3): for
io=direct, io=buffered, io=auto and the pool (filled by the cold restore, hit by the warm one),
the snapshot is evicted from the page cache, then one fresh Python process restores it into
preallocated tensors (cold) and a second fresh process does it again (warm). pool-cached is the
pool's fill from a warm page cache (a fresh pool, the file read beforehand): what a fill costs
against io=buffered's warm restore. Each records the
restore's GB/s, what served the bytes (`via`), its time from interpreter start to exit, and the
pinned host-to-device ceiling of the same run; JSON and a log go to --out.

    python3 bench/warm_restart_bench.py --gb 16 --repeat 3 --out $OUT       # the GPU machine (root)
    python3 bench/warm_restart_bench.py --device mock --gb 0.05 --evict fadvise --out /tmp/wr   # anywhere (tests/python/test_warm_restart_bench.py)

The page cache is emptied of the snapshot with os.sync() then posix_fadvise(DONTNEED) over the
file, and as root also /proc/sys/vm/drop_caches; the JSON says which worked and how much of the
file was still resident afterwards (mincore). THAWCORE_AUTO_IO=size|buffered switches the rule
io=auto follows (native/cuda/src/engine/io_policy.c) for a second run.
"""
import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE if (HERE / "python").is_dir() else HERE.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(HERE))
from pool_server import running_pool  # noqa: E402

THAW = Path(os.environ.get("THAW_CLI", ROOT / "build" / "publish" / "cli" / "thaw"))
PINNED_CEILING = Path(os.environ.get("THAW_PINNED_CEILING", ROOT / "build" / "native" / "bench" / "pinned_ceiling"))
POLICIES = ("direct", "buffered", "auto", "pool", "pool-cached", "default")
# "default": restore_into with nothing said, in a fresh XDG_RUNTIME_DIR: on CUDA the automatic pool
# starts itself (docs/POOL.md, "Automatic mode"); asked for with --policies, CUDA only.
DEFAULT_POLICIES = POLICIES[:5]

# One restart: a fresh interpreter that imports torch and thaw_vllm, preallocates the tensors and
# restores into them; prints one JSON line. On the mock device the tensors are views of a file
# mapped MAP_SHARED in the pool's shared-memory directory (what a pool can open there).
CHILD = r"""
import json, sys, time
started = time.perf_counter()
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["python"])
import torch
if cfg["device"] == "cuda":
    torch.cuda.init(); torch.empty(1, device="cuda")
import thaw_vllm
from thaw_vllm import _native, pool, torch_io
imported = time.perf_counter()
header = thaw_vllm.info(cfg["snapshot"])
if cfg["device"] == "cuda":
    targets = {t["name"]: torch.empty(t["shape"], dtype=torch_io.torch_dtype(t["dtype"]), device="cuda") for t in header["tensors"]}
else:
    size = max(1, header["file_length"] - header["data_offset"])
    with open(cfg["shm_file"], "wb") as f:
        f.truncate(size)
    memory = torch.from_file(cfg["shm_file"], shared=True, size=size, dtype=torch.uint8)
    targets = {t["name"]: memory[t["offset"]:t["offset"] + t["length"]].view(torch_io.torch_dtype(t["dtype"])).reshape(t["shape"])
               for t in header["tensors"]}
allocated = time.perf_counter()
if cfg["policy"] == "default":
    stats = thaw_vllm.restore_into(targets, cfg["snapshot"])
    result = {"bytes": stats["bytes"], "seconds": stats["seconds"], "via": stats.get("via", stats.get("source")), "io": None}
elif cfg["policy"].startswith("pool"):
    stats = pool.restore_tensors(targets, cfg["snapshot"], cfg["socket"])
    result = {"bytes": stats["bytes"], "seconds": stats["seconds"], "via": stats["via"], "io": None}
else:
    device = next(iter(targets.values())).device
    request = torch_io._device_request(device, io=cfg["policy"])
    stats, _ = _native.restore_checked(cfg["snapshot"], request, *torch_io._arrays(list(targets.items())))
    result = {"bytes": stats.bytes, "seconds": stats.seconds, "via": stats.source_name,
              "io": {v: k for k, v in _native.IO_MODES.items()}.get(stats.io_mode)}
if cfg["device"] == "cuda":
    torch.cuda.synchronize()
done = time.perf_counter()
result.update(gbps=result["bytes"] / result["seconds"] / 1e9 if result["seconds"] else 0.0,
              import_s=imported - started, allocate_s=allocated - imported, restore_wall_s=done - allocated,
              in_process_s=done - started)
print(json.dumps(result), flush=True)
"""


def log(out: Path, line: str):
    print(line, flush=True)
    with open(out / "warm_restart.log", "a") as f:
        f.write(line + "\n")


def make_snapshot(work: Path, gb: float) -> Path:
    snapshot = work / f"warm-restart-{gb:g}gb.thaw"
    if snapshot.exists():
        return snapshot
    checkpoint = work / f"checkpoint-{gb:g}gb"
    mib = max(1, int(gb * 1e9 / (1 << 20)))
    subprocess.run([str(THAW), "generate", str(checkpoint), "--size-mib", str(mib), "--quiet"], check=True)
    subprocess.run([str(THAW), "convert", str(checkpoint), str(snapshot), "--quiet"], check=True)
    return snapshot


def resident_fraction(path: Path):
    """How much of the file is in the page cache now (mincore over a shared mapping); None if unknown."""
    size = path.stat().st_size
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if address in (None, ctypes.c_void_p(-1).value):
            return None
        pages = (size + os.sysconf("SC_PAGE_SIZE") - 1) // os.sysconf("SC_PAGE_SIZE")
        vector = (ctypes.c_ubyte * pages)()
        ok = libc.mincore(address, size, vector) == 0
        libc.munmap(address, size)
        return sum(v & 1 for v in vector) / pages if ok else None
    finally:
        os.close(fd)


def evict(path: Path, how: str) -> dict:
    """Empties the page cache of the file: sync, then (how "all", as root) drop_caches, then fadvise DONTNEED."""
    os.sync()
    used = []
    if how == "all":
        try:
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            used.append("drop_caches")
        except OSError:
            pass
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        used.append("fadvise_dontneed")
    except OSError:
        pass
    finally:
        os.close(fd)
    return {"eviction": "+".join(used) or "none", "resident_after_eviction": resident_fraction(path)}


def restart(cfg: dict, env=None) -> dict:
    """One fresh process; its own figures plus the wall time from spawn to exit."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True,
                         env=None if env is None else dict(os.environ, **env))
    wall = time.perf_counter() - started
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout)[-2000:], "process_wall_s": wall}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def pinned_ceiling(device: str):
    if device != "cuda":
        return None, "mock device: no link to measure"
    if not PINNED_CEILING.is_file():
        return None, f"{PINNED_CEILING} is not built"
    out = subprocess.run([str(PINNED_CEILING), "1024", "5"], capture_output=True, text=True)
    figures = [float(line.split(":")[-1].split("GB/s")[0]) for line in out.stdout.splitlines()
               if line.startswith("pinned H2D ceiling") and "GB/s" in line]
    return (max(figures) if figures else None), out.stdout + out.stderr


def stop_automatic_pool(socket_path: Path, record: dict):
    """Records what the automatic pool held, then stops it (SIGTERM: it unpins and removes its socket)."""
    if not socket_path.exists():
        record["pool_status"] = "no automatic pool started"
        return
    from thaw_vllm import pool
    status = pool.status(socket_path)
    record["pool_status"] = status["snapshots"]
    os.kill(status["pid"], signal.SIGTERM)


def one_round(policy: str, snapshot: Path, args, work: Path, out: Path) -> dict:
    """Evict, then a cold and a warm fresh process (the pool: a fresh, empty pool for the round)."""
    cfg = {"python": str(ROOT / "python"), "device": args.device, "snapshot": str(snapshot), "policy": policy,
           "socket": str(work / "pool.sock"), "shm_file": str(work / "shm" / f"device-{policy}")}
    record = {}

    def cold_then_warm():
        if policy == "pool-cached":
            with open(snapshot, "rb") as f:
                while f.read(64 << 20):
                    pass
            record.update(eviction="none (read into the page cache)", resident_after_eviction=resident_fraction(snapshot))
        else:
            record.update(evict(snapshot, args.evict))
        record["cold"] = restart(cfg, env)
        record["resident_after_cold"] = resident_fraction(snapshot)
        record["warm"] = restart(cfg, env)

    env = None
    if policy == "default":
        runtime = work / f"xdg-{time.monotonic_ns()}"  # a fresh automatic pool for the round
        runtime.mkdir(mode=0o700, parents=True)
        env = {"XDG_RUNTIME_DIR": str(runtime)}
        try:
            cold_then_warm()
        finally:
            stop_automatic_pool(runtime / "thaw" / "pool.sock", record)
    elif policy.startswith("pool"):
        budget_mib = int(snapshot.stat().st_size / (1 << 20)) + 1024
        with running_pool(THAW, work / "pool.sock", budget_mib, device=args.device, extra_args=("--shm-dir", str(work / "shm"))):
            cold_then_warm()
            from thaw_vllm import pool
            record["pool_status"] = pool.status(work / "pool.sock")["snapshots"]
    else:
        cold_then_warm()
    for phase in ("cold", "warm"):
        r = record[phase]
        log(out, f"{policy:>8} {phase}: " + (f"error {r['error'][-300:]}" if "error" in r else
            f"{r['gbps']:.2f} GB/s via {r['via']}{' (io ' + r['io'] + ')' if r.get('io') else ''}, restore {r['seconds']:.3f} s, "
            f"fresh process {r['process_wall_s']:.3f} s (import {r['import_s']:.3f} s)"))
    log(out, f"{policy:>8} eviction: {record['eviction']}, resident after eviction {record['resident_after_eviction']}, "
             f"after the cold restore {record['resident_after_cold']}")
    return record


def summarize(policy: str, rounds: list) -> dict:
    """Per phase, the round of median GB/s (with every round's GB/s and process time beside it)."""
    record = {"policy": policy, "rounds": rounds}
    for key in ("eviction", "resident_after_eviction", "resident_after_cold", "pool_status"):
        if key in rounds[-1]:
            record[key] = rounds[-1][key]
    for phase in ("cold", "warm"):
        ok = sorted((r[phase] for r in rounds if "error" not in r[phase]), key=lambda x: x["gbps"])
        if not ok:
            record[phase] = rounds[0][phase]
            continue
        record[phase] = dict(ok[len(ok) // 2], gbps_runs=[x["gbps"] for x in ok],
                             process_wall_s_runs=[x["process_wall_s"] for x in ok],
                             errors=len(rounds) - len(ok))
    return record


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "mock"), default="cuda")
    ap.add_argument("--gb", type=float, default=16.0, help="size of the generated snapshot (default 16)")
    ap.add_argument("--snapshot", help="use this snapshot instead of generating one")
    ap.add_argument("--workdir", default="/tmp/thaw-warm-restart")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}")
    ap.add_argument("--evict", choices=("all", "fadvise"), default="all",
                    help="all: drop_caches (as root) and fadvise DONTNEED; fadvise: only the snapshot's pages (tests)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (each policy once a round, interleaved); medians reported")
    ap.add_argument("--out", default=".")
    args = ap.parse_args(argv)
    policies = [p for p in args.policies.split(",") if p]
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        ap.error(f"unknown policies {unknown}")
    work, out = Path(args.workdir), Path(args.out)
    (work / "shm").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "warm_restart.log").write_text("")
    snapshot = Path(args.snapshot) if args.snapshot else make_snapshot(work, args.gb)
    ceiling, ceiling_log = pinned_ceiling(args.device)
    log(out, f"snapshot {snapshot} ({snapshot.stat().st_size / 1e9:.3f} GB), device {args.device}, "
             f"pinned H2D ceiling {ceiling if ceiling is None else f'{ceiling:.1f} GB/s'}, "
             f"THAWCORE_AUTO_IO={os.environ.get('THAWCORE_AUTO_IO', '(default)')}")
    if not 1 <= args.repeat <= 100:
        ap.error("--repeat must be from 1 to 100")
    rounds = {p: [] for p in policies}
    for r in range(args.repeat):
        log(out, f"round {r + 1} of {args.repeat}")
        for p in policies:
            rounds[p].append(one_round(p, snapshot, args, work, out))
    results = [summarize(p, rounds[p]) for p in policies]
    report = {"snapshot": str(snapshot), "bytes": snapshot.stat().st_size, "device": args.device,
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "auto_rule": os.environ.get("THAWCORE_AUTO_IO", "default"),
              "pinned_ceiling_gbps": ceiling, "pinned_ceiling_log": ceiling_log, "policies": results}
    (out / "warm_restart.json").write_text(json.dumps(report, indent=2))
    lines = [f"| policy | cold GB/s (via) | warm GB/s (via) | cold / warm fresh process s | medians of {args.repeat} |",
             "|---|---|---|---|---|"]
    for r in results:
        c, w = r["cold"], r["warm"]
        cell = lambda x: "error" if "error" in x else f"{x['gbps']:.2f} ({x['via']})"  # noqa: E731
        lines.append(f"| {r['policy']} | {cell(c)} | {cell(w)} | {c['process_wall_s']:.3f} / {w['process_wall_s']:.3f} | |")
    log(out, "\n".join(lines))
    return 0 if all("error" not in x[p] for r in results for x in r["rounds"] for p in ("cold", "warm")) else 1


if __name__ == "__main__":
    sys.exit(main())
