"""Side-by-side cold and warm load benchmark on one GPU machine, in one run.

Generates a Llama-3-8B-shaped fp16 checkpoint (safetensors shards + config.json),
converts it to a Thaw snapshot with the thaw CLI, measures the pinned host->GPU
ceiling and the disk's O_DIRECT ceiling, then times, warm (page cache) and cold
(caches dropped): Thaw restore, safetensors load_file(device="cuda") and
transformers from_pretrained(device_map="cuda"); checks that every tensor Thaw
restores is bit-identical to what safetensors loads; prints a markdown table.

    python3 bench/gpu_bench.py --workdir /tmp/thaw-bench --out $OUT [--layers 32]

Needs torch, safetensors and transformers (the GPU machine has them), and
build/publish/{cli,pybridge} plus build/native/bench/direct_read built by scripts/build.sh.
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
import thaw_vllm  # noqa: E402

THAW = REPO / "build" / "publish" / "cli" / "thaw"
DIRECT_READ = REPO / "build" / "native" / "bench" / "direct_read"


def log(*args):
    print(*args, flush=True)


def llama_tensors(layers, hidden=4096, intermediate=14336, vocab=128256, heads=32, kv_heads=8):
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    yield "model.embed_tokens.weight", (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "self_attn.q_proj.weight", (hidden, hidden)
        yield p + "self_attn.k_proj.weight", (kv, hidden)
        yield p + "self_attn.v_proj.weight", (kv, hidden)
        yield p + "self_attn.o_proj.weight", (hidden, hidden)
        yield p + "mlp.gate_proj.weight", (intermediate, hidden)
        yield p + "mlp.up_proj.weight", (intermediate, hidden)
        yield p + "mlp.down_proj.weight", (hidden, intermediate)
        yield p + "input_layernorm.weight", (hidden,)
        yield p + "post_attention_layernorm.weight", (hidden,)
    yield "model.norm.weight", (hidden,)
    yield "lm_head.weight", (vocab, hidden)


def generate_checkpoint(directory: Path, layers: int, shards: int = 4):
    from safetensors.torch import save_file
    from transformers import LlamaConfig
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "model.safetensors.index.json").exists():
        log(f"checkpoint exists: {directory}")
        return
    LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                tie_word_embeddings=False, torch_dtype="float16").save_pretrained(directory)
    tensors = list(llama_tensors(layers))
    total = sum(torch.Size(s).numel() * 2 for _, s in tensors)
    per_shard = total / shards
    weight_map, shard, shard_bytes, index = {}, {}, 0, 0
    started = time.perf_counter()

    def flush():
        nonlocal shard, shard_bytes, index
        index += 1
        name = f"model-{index:05d}-of-{shards:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        for k in shard:
            weight_map[k] = name
        shard, shard_bytes = {}, 0

    g = torch.Generator(device="cuda").manual_seed(0)
    for name, shape in tensors:
        shard[name] = torch.randn(shape, dtype=torch.float16, device="cuda", generator=g).mul_(0.02).cpu()
        shard_bytes += shard[name].numel() * 2
        if shard_bytes >= per_shard and index < shards - 1:
            flush()
    flush()
    # save_file names shards as they come; rename to the true count if fewer were written.
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    os.sync()
    log(f"generated {len(tensors)} tensors, {total / 1e9:.2f} GB in {time.perf_counter() - started:.1f} s")


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError as e:
        log(f"cannot drop caches: {e}")
        return False


def warm_up(paths):
    for p in paths:
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def free_cuda():
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def pinned_h2d_ceiling(gib=1, repeats=5):
    host = torch.empty(gib << 30, dtype=torch.uint8).pin_memory()
    dev = torch.empty(gib << 30, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(repeats):
        t, _ = timed(lambda: dev.copy_(host, non_blocking=True))
        times.append(t)
    del host, dev
    free_cuda()
    return (gib << 30) / statistics.median(times) / 1e9


FRESH = """
import sys, time, torch
torch.cuda.init(); torch.empty(1, device="cuda")
sys.path.insert(0, sys.argv[2])
start = time.perf_counter()
import thaw_vllm
state = thaw_vllm.load_state_dict(sys.argv[1], device="cuda")
torch.cuda.synchronize()
print(time.perf_counter() - start)
"""


def fresh_process_restore(snapshot):
    out = subprocess.run([sys.executable, "-c", FRESH, str(snapshot), str(REPO / "python")],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/thaw-bench")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--warm-runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=2)
    ap.add_argument("--hf-warm-runs", type=int, default=3)
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()

    work = Path(args.workdir)
    checkpoint = work / "checkpoint"
    snapshot = work / "model.thaw"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0)
    log(f"GPU {gpu}; torch {torch.__version__}; {os.cpu_count()} cores")

    generate_checkpoint(checkpoint, args.layers)
    shards = sorted(checkpoint.glob("*.safetensors"))
    if not snapshot.exists():
        started = time.perf_counter()
        subprocess.run([str(THAW), "convert", str(checkpoint), str(snapshot), "--quiet"], check=True)
        log(f"convert: {time.perf_counter() - started:.1f} s")
    header = thaw_vllm.info(snapshot)
    model_bytes = header["tensor_bytes"]
    log(f"snapshot: {len(header['tensors'])} tensors, {model_bytes / 1e9:.2f} GB")

    results = {"gpu": gpu, "torch": torch.__version__, "model_bytes": model_bytes, "tensors": len(header["tensors"])}
    results["pinned_h2d_gbps"] = pinned_h2d_ceiling()
    log(f"pinned H2D ceiling: {results['pinned_h2d_gbps']:.1f} GB/s")

    def thaw_load():
        return thaw_vllm.load_state_dict(snapshot, device="cuda")

    def safetensors_load():
        from safetensors.torch import load_file
        state = {}
        for s in shards:
            state.update(load_file(str(s), device="cuda"))
        return state

    def transformers_load():
        from transformers import AutoModelForCausalLM
        return AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float16, device_map="cuda")

    def preallocated():
        # What a server does: the model's tensors exist; only the restore is timed.
        return {t["name"]: torch.empty(t["shape"], dtype=torch.float16, device="cuda") for t in header["tensors"]}

    def thaw_restore_into(state):
        return thaw_vllm.restore_into(state, snapshot, pool="off")  # the file path (CUDA's default is the automatic pool)

    # (name, setup, timed function, warm runs); setup runs before the clock starts.
    methods = [("thaw", None, thaw_load, args.warm_runs),
               ("thaw restore_into (preallocated)", preallocated, thaw_restore_into, args.warm_runs),
               ("safetensors", None, safetensors_load, args.warm_runs)]
    if not args.skip_transformers:
        methods.append(("transformers", None, transformers_load, args.hf_warm_runs))

    # Bit identity: every tensor Thaw restores equals what safetensors loads.
    reference = safetensors_load()
    restored = thaw_load()
    mismatched = [k for k in reference if not torch.equal(reference[k], restored[k])]
    results["bit_identical"] = not mismatched and set(reference) == set(restored)
    log(f"bit-identical: {results['bit_identical']} ({len(reference)} tensors; mismatched {mismatched[:3]})")
    del reference, restored
    free_cuda()

    def run_once(setup, fn):
        state = setup() if setup else None
        seconds, result = timed(lambda: fn(state) if setup else fn())
        del result, state
        free_cuda()
        return seconds

    table = {}
    for name, setup, fn, runs in methods:
        warm_up([snapshot] if name.startswith("thaw") else shards)
        table[("warm", name)] = [run_once(setup, fn) for _ in range(runs)]
        log(f"warm {name}: runs {[round(t, 3) for t in table[('warm', name)]]}")

    # A fresh process, snapshot in page cache: import, engine start (pinned staging), restore.
    fresh = [fresh_process_restore(snapshot) for _ in range(3)]
    table[("warm", "thaw, fresh process incl. engine start")] = fresh
    log(f"fresh process: {fresh}")

    # Cold rounds interleave the disk's own O_DIRECT ceiling with each loader, caches dropped before each.
    cold_ceiling = []
    for round_index in range(args.cold_runs):
        if not drop_caches():
            break
        reading = subprocess.run([str(DIRECT_READ), str(snapshot), "16", "16"], capture_output=True, text=True, check=True).stdout
        log("direct_read:", reading.strip())
        cold_ceiling.append(float(reading.split()[2]))  # seconds to read the whole file
        for name, setup, fn, _ in methods:
            if name == "thaw restore_into (preallocated)":
                continue
            drop_caches()
            table.setdefault(("cold", name), []).append(run_once(setup, fn))
            log(f"cold round {round_index} {name}: {table[('cold', name)][-1]:.3f} s")
    if cold_ceiling:
        table[("cold", "disk O_DIRECT read alone (ceiling)")] = cold_ceiling

    cli = subprocess.run([str(THAW), "restore", str(snapshot), "--device", "cuda", "--pool", "off", "--io", "buffered", "--repeat", "5", "--check", "--quiet"],
                         capture_output=True, text=True)
    log(cli.stdout + cli.stderr)
    results["cli_restore"] = cli.stdout

    lines = [f"| phase | loader | median s | GB/s | vs safetensors | of pinned H2D ceiling ({results['pinned_h2d_gbps']:.1f} GB/s) | runs (s) |",
             "|---|---|---|---|---|---|---|"]
    for (phase, name), times in table.items():
        med = statistics.median(times)
        base = table.get((phase, "safetensors"))
        ratio = statistics.median(base) / med if base else float("nan")
        gbps = model_bytes / med / 1e9
        lines.append(f"| {phase} | {name} | {med:.3f} | {gbps:.2f} | {ratio:.2f}x | {gbps / results['pinned_h2d_gbps']:.0%} | "
                     f"{', '.join(f'{t:.3f}' for t in times)} |")
    results["table"] = {f"{p}/{n}": t for (p, n), t in table.items()}
    report = "\n".join(lines)
    log(report)
    (out / "gpu_bench.md").write_text(report + "\n")
    (out / "gpu_bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
