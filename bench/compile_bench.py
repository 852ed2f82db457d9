"""First compiled forward of a fresh process: cold, and with compiled artifacts restored
from a Thaw artifacts snapshot, side by side in one run (each in its own process).

    python3 bench/compile_bench.py --workdir /tmp/thaw-compile --out $OUT [--layers 32] [--restored-runs 2]

Builds a Llama-3-8B-shaped transformers model with random weights (seeded, on the GPU),
runs torch.compile's first forward over --tokens tokens with empty Inductor and Triton
cache directories (cold), freezes those directories into an artifacts snapshot, then in
new processes restores them into fresh empty directories and runs the same first forward.
Checks that the logits of every restored run equal the cold run's, bit for bit.
Writes compile_bench.json to --out. Needs torch and transformers (the GPU machine has them).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))


def build_model(layers):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=8192, torch_dtype="bfloat16")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def child(args):
    import torch
    import thaw_vllm.artifacts as artifacts
    report = {"phase": args.child}
    restore_s = 0.0
    if args.child == "restored":
        started = time.perf_counter()
        result = artifacts.restore_compiled(args.snapshot)
        restore_s = time.perf_counter() - started
        report.update(restore_s=restore_s, restored=result["restored"], files=result["files"], bytes=result["bytes"],
                      reason=result["reason"])
    model = build_model(args.layers)
    ids = torch.randint(0, 128256, (1, args.tokens), generator=torch.Generator().manual_seed(1)).cuda()
    compiled = torch.compile(model)
    torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        logits = compiled(ids).logits
    torch.cuda.synchronize()
    report["first_forward_s"] = time.perf_counter() - started
    report["with_restore_s"] = report["first_forward_s"] + restore_s
    if args.child == "cold":
        torch.save(logits.cpu(), args.logits)
        started = time.perf_counter()
        frozen = artifacts.freeze_compiled(args.snapshot)
        report.update(freeze_s=time.perf_counter() - started, files=frozen["files"], bytes=frozen["bytes"])
    else:
        report["identical"] = bool(torch.equal(logits.cpu(), torch.load(args.logits)))
    print("RESULT " + json.dumps(report), flush=True)


def run_child(phase, work, args, index):
    caches = work / f"{phase}{index}"
    shutil.rmtree(caches, ignore_errors=True)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"), TRITON_CACHE_DIR=str(caches / "triton"),
               PYTHONUNBUFFERED="1")
    cmd = [sys.executable, __file__, "--child", phase, "--layers", str(args.layers), "--tokens", str(args.tokens),
           "--snapshot", str(work / "compile.thaw"), "--logits", str(work / "cold_logits.pt")]
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    sys.stderr.write(out.stderr[-4000:])
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{phase} run failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    report = json.loads(lines[-1][len("RESULT "):])
    report["process_wall_s"] = wall
    print(json.dumps(report), flush=True)
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/thaw-compile")
    ap.add_argument("--out", default=".")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--restored-runs", type=int, default=2)
    ap.add_argument("--child")
    ap.add_argument("--snapshot")
    ap.add_argument("--logits")
    args = ap.parse_args()
    if args.child:
        return child(args)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cold = run_child("cold", work, args, 0)
    restored = [run_child("restored", work, args, i) for i in range(args.restored_runs)]
    median = statistics.median(r["with_restore_s"] for r in restored)
    summary = {"cold": cold, "restored": restored, "cold_first_forward_s": cold["first_forward_s"],
               "restored_median_s": median, "ratio": median / cold["first_forward_s"],
               "all_identical": all(r["identical"] for r in restored), "layers": args.layers, "tokens": args.tokens}
    Path(args.out, "compile_bench.json").write_text(json.dumps(summary, indent=2))
    print(f"cold first forward {cold['first_forward_s']:.2f} s; restored (restore + first forward, median of "
          f"{len(restored)}) {median:.2f} s = {100 * summary['ratio']:.0f}% of cold; logits identical: "
          f"{summary['all_identical']}", flush=True)


if __name__ == "__main__":
    main()
