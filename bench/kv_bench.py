"""KV-cache snapshots against prefill, transformers on one GPU: for each prefix length, the time to
restore the prefix's KV snapshot against the time to prefill it, both in a fresh process, and the
greedy tokens after the prefix with the restored cache against those with the computed one.

    PYTHONUNBUFFERED=1 PYTHONPATH=python python bench/kv_bench.py --out OUT_DIR
    (THAW_LIBRARY=.../libthaw.so when libthaw is not installed; --tiny for a small model on any device)

Llama-3-8B-shaped model (32 layers, 8 KV heads, head_dim 128, bf16), random weights drawn from one
seed, so both processes build the same model. Process 1 (freeze): prefill each prefix, freeze its
cache, generate from the computed cache. Process 2 (fresh): restore each snapshot (timed), generate
from it, then prefill the same prefix (timed) in the same process. Writes OUT_DIR/kv_bench.json and
OUT_DIR/kv_bench.log; the snapshots go to --work (deleted at the end).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768)
TINY = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)


def build_model(args):
    import torch
    import transformers
    from thaw_vllm import hf, torch_io
    config = transformers.LlamaConfig(**(TINY if args.tiny else LLAMA3_8B))
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch_io.default_dtype(dtype), hf._no_init(), torch_io.device_scope(device):
        model = transformers.LlamaForCausalLM(config)
    model.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=generator)
    model.eval()
    model.generation_config.pad_token_id = 0
    return model


def weights_digest(model) -> str:
    """Both processes must hold the same random weights for the greedy comparison to mean anything."""
    import hashlib
    digest = hashlib.sha256()
    for p in list(model.parameters())[:4] + list(model.parameters())[-2:]:
        digest.update(p.detach().float().sum().cpu().numpy().tobytes())
        digest.update(p.detach().reshape(-1)[:1024].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def prompt(args, tokens, device):
    import torch
    g = torch.Generator().manual_seed(args.seed + tokens)
    vocab = (TINY if args.tiny else LLAMA3_8B)["vocab_size"]
    prefix = torch.randint(0, vocab, (1, tokens), generator=g)
    question = torch.randint(0, vocab, (1, args.question), generator=g)
    return prefix.to(device), torch.cat([prefix, question], dim=1).to(device)


def sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def prefill(model, prefix):
    import transformers
    cache = transformers.DynamicCache(config=model.config)
    model(prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def greedy(model, full, cache, args):
    out = model.generate(full, past_key_values=cache, max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, do_sample=False)
    return out[0, full.shape[1]:].tolist()


def warm_up(model, args):
    """The first kernels, cuBLAS handles and any config attribute generate() sets, before anything is measured."""
    _, full = prompt(args, 64, model.device)
    greedy(model, full, None, args)


def phase_freeze(args):
    import torch
    import thaw_vllm
    model = build_model(args)
    warm_up(model, args)
    results = []
    with torch.no_grad():
        for tokens in args.prefixes:
            prefix, full = prompt(args, tokens, model.device)
            cache, prefill_s = timed(lambda: prefill(model, prefix))
            path = Path(args.work) / f"prefix{tokens}.thaw"
            description, freeze_s = timed(lambda: thaw_vllm.freeze_kv(cache, prefix, path, model))
            computed = greedy(model, full, cache, args)
            del cache
            # generate() over the whole prompt at once: the prefix and the question in one prefill
            # (other kernel shapes than prefix-then-question, so bf16 rounding may differ; informational).
            whole = greedy(model, full, None, args)
            results.append({"tokens": tokens, "prefill_s": prefill_s, "freeze_s": freeze_s,
                            "bytes": description["tensor_bytes"], "tokens_computed": computed, "tokens_whole_prompt": whole})
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"prefixes": results, "weights": weights_digest(model)}


def pinned_ceiling_gbps():
    import torch
    if not torch.cuda.is_available():
        return None
    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    device = torch.empty_like(host, device="cuda")
    best = None
    for _ in range(3):
        _, seconds = timed(lambda: device.copy_(host, non_blocking=True))
        best = seconds if best is None else min(best, seconds)
    return (1 << 30) / best / 1e9


def phase_restore(args):
    import torch
    import thaw_vllm
    model = build_model(args)
    warm_up(model, args)
    results = []
    with torch.no_grad():
        for tokens in args.prefixes:
            prefix, full = prompt(args, tokens, model.device)
            path = Path(args.work) / f"prefix{tokens}.thaw"
            cache, restore_s = timed(lambda: thaw_vllm.restore_kv(path, model, input_ids=full))
            restored = greedy(model, full, cache, args)
            del cache
            _, restore_again_s = timed(lambda: thaw_vllm.restore_kv(path, model, input_ids=full))
            cache, prefill_s = timed(lambda: prefill(model, prefix))
            del cache
            results.append({"tokens": tokens, "restore_s": restore_s, "restore_again_s": restore_again_s,
                            "prefill_s": prefill_s, "tokens_restored": restored})
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"prefixes": results, "pinned_h2d_gbps": pinned_ceiling_gbps(), "weights": weights_digest(model)}


def run_phase(args, phase, log):
    command = [sys.executable, __file__, "--phase", phase, "--work", args.work, "--device", args.device,
               "--prefixes", ",".join(map(str, args.prefixes)), "--new-tokens", str(args.new_tokens),
               "--question", str(args.question), "--seed", str(args.seed)] + (["--tiny"] if args.tiny else [])
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    log(f"[{phase}] fresh process, {time.perf_counter() - started:.1f} s wall, exit {done.returncode}")
    for line in done.stderr.splitlines()[-40:]:
        log(f"[{phase}] {line}")
    if done.returncode != 0:
        raise SystemExit(f"the {phase} process failed (exit {done.returncode}); see the log")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for kv_bench.json and kv_bench.log")
    parser.add_argument("--work", help="folder for the snapshots (default: a new temporary folder, deleted)")
    parser.add_argument("--prefixes", default=None, help="prefix lengths in tokens (default 4096,16384; --tiny 64,256)")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated after the prefix")
    parser.add_argument("--question", type=int, default=16, help="tokens after the prefix in the prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: checks the script anywhere")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--phase", choices=["freeze", "restore"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.prefixes = [int(x) for x in (args.prefixes or ("64,256" if args.tiny else "4096,16384")).split(",")]
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.phase:
        result = phase_freeze(args) if args.phase == "freeze" else phase_restore(args)
        print(json.dumps(result))
        return
    if not args.out:
        parser.error("--out is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    own_work = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="kv_bench.")
    log_file = open(out / "kv_bench.log", "w")

    def log(line=""):
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    try:
        log(f"kv_bench: {'tiny' if args.tiny else 'Llama-3-8B-shaped'} model, prefixes {args.prefixes}, "
            f"{args.question} question tokens, {args.new_tokens} greedy tokens, device {args.device}, work {args.work}")
        frozen = run_phase(args, "freeze", log)
        restored = run_phase(args, "restore", log)
        rows = []
        if frozen["weights"] != restored["weights"]:
            raise SystemExit(f"the two processes built different weights ({frozen['weights']} vs {restored['weights']}): "
                             "the comparison would mean nothing")
        for a, b in zip(frozen["prefixes"], restored["prefixes"]):
            row = {"tokens": a["tokens"], "kv_bytes": a["bytes"], "freeze_process_prefill_s": a["prefill_s"],
                   "freeze_s": a["freeze_s"], "restore_s": b["restore_s"], "restore_again_s": b["restore_again_s"],
                   "prefill_s": b["prefill_s"], "speedup": b["prefill_s"] / b["restore_s"],
                   "speedup_again": b["prefill_s"] / b["restore_again_s"],
                   "restore_gbps": a["bytes"] / b["restore_s"] / 1e9,
                   "restore_again_gbps": a["bytes"] / b["restore_again_s"] / 1e9,
                   "greedy_identical": a["tokens_computed"] == b["tokens_restored"],
                   "whole_prompt_identical": a["tokens_whole_prompt"] == b["tokens_restored"],
                   "tokens_whole_prompt": a["tokens_whole_prompt"],
                   "tokens_computed": a["tokens_computed"], "tokens_restored": b["tokens_restored"]}
            rows.append(row)
        import platform
        import torch
        result = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "host": platform.node(),
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                  "model": "tiny" if args.tiny else "Llama-3-8B-shaped", "weights_digest": frozen["weights"],
                  "pinned_h2d_gbps": restored["pinned_h2d_gbps"],
                  "command": " ".join([Path(sys.executable).name] + sys.argv), "prefixes": rows}
        (out / "kv_bench.json").write_text(json.dumps(result, indent=2))
        log()
        ceiling = result["pinned_h2d_gbps"]
        log(f"pinned H2D ceiling (1 GiB copy, best of 3): {ceiling:.1f} GB/s" if ceiling else "pinned H2D ceiling: no GPU")
        log(f"{'tokens':>7} {'KV MB':>8} {'prefill s':>10} {'restore s':>10} {'(again)':>8} {'GB/s':>6} {'(again)':>7} "
            f"{'speedup':>8} {'(again)':>7}  greedy identical (to one whole-prompt prefill)")
        for r in rows:
            log(f"{r['tokens']:>7} {r['kv_bytes'] / 1e6:>8.1f} {r['prefill_s']:>10.4f} {r['restore_s']:>10.4f} "
                f"{r['restore_again_s']:>8.4f} {r['restore_gbps']:>6.1f} {r['restore_again_gbps']:>7.1f} "
                f"{r['speedup']:>7.1f}x {r['speedup_again']:>6.1f}x  {'yes' if r['greedy_identical'] else 'NO'} "
                f"({'yes' if r['whole_prompt_identical'] else 'no'})")
        log(f"wrote {out / 'kv_bench.json'}")
        if not all(r["greedy_identical"] for r in rows):
            raise SystemExit("greedy tokens differ between the restored and the computed cache")
    finally:
        log_file.close()
        if own_work:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
