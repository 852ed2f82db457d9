"""transformers on the GPU machine: greedy generation after a Thaw restore is
token-for-token identical to from_pretrained, and the time from process start to the
first generated token is measured for both, each in fresh processes.

    python3 bench/transformers_check.py --workdir /tmp/hf-check --out $OUT
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time
started = time.perf_counter()
import torch
sys.path.insert(0, sys.argv[4])
mode, model_dir, snapshot = sys.argv[1:4]
import transformers, thaw_vllm
torch.cuda.init(); torch.empty(1, device="cuda")
imported = time.perf_counter()
if mode == "transformers":
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16, device_map="cuda")
else:
    model = thaw_vllm.from_pretrained(model_dir, snapshot, device="cuda")
torch.cuda.synchronize()
loaded = time.perf_counter()
prompt = torch.tensor([[1, 306, 4966, 304, 3896, 278, 7910, 310, 263]], device="cuda")
first = model.generate(prompt, max_new_tokens=1, do_sample=False)
torch.cuda.synchronize()
first_token = time.perf_counter()
tokens = model.generate(prompt, max_new_tokens=48, do_sample=False)[0].tolist()
print("RESULT " + __import__("json").dumps({"import_s": imported - started, "load_s": loaded - imported,
                                            "first_token_s": first_token - started, "tokens": tokens}))
"""


def child(mode, model_dir, snapshot):
    wall = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(model_dir), str(snapshot), str(REPO / "python")],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    result["process_wall_s"] = time.perf_counter() - wall
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/hf-check")
    ap.add_argument("--out", default=".")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    sys.path.insert(0, str(REPO / "python"))
    import thaw_vllm

    work = Path(args.workdir)
    model_dir, snapshot = work / "llama-small", work / "llama-small.thaw"
    if not snapshot.exists():
        config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.float16)
        model.save_pretrained(model_dir)
        thaw_vllm.convert(model_dir, snapshot)
        del model
    size = thaw_vllm.info(snapshot)["tensor_bytes"]
    print(f"model: {size / 1e6:.0f} MB, snapshot {snapshot}", flush=True)

    results = {"transformers": [], "thaw": []}
    for _ in range(args.runs):
        for mode in results:
            results[mode].append(child(mode, model_dir, snapshot))
    identical = all(r["tokens"] == results["transformers"][0]["tokens"] for rs in results.values() for r in rs)
    lines = ["| loader | imports + CUDA init s | model build + weights s | process start to first token s | process wall s |",
             "|---|---|---|---|---|"]
    for mode, rs in results.items():
        lines.append(f"| {mode} | {statistics.median(r['import_s'] for r in rs):.3f} | {statistics.median(r['load_s'] for r in rs):.3f} | "
                     f"{statistics.median(r['first_token_s'] for r in rs):.3f} | {statistics.median(r['process_wall_s'] for r in rs):.3f} |")
    report = "\n".join(lines) + f"\n\ngreedy tokens identical across all runs: {identical} ({len(results['thaw'][0]['tokens'])} tokens)\n"
    print(report, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "transformers_check.md").write_text(report)
    (Path(args.out) / "transformers_check.json").write_text(json.dumps(results, indent=1))
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
