"""The `thaw` command of the pip package. `thaw freeze` runs here, in Python, because it
needs vLLM; every other command is the bundled native thaw executable."""
import argparse
import os
import sys
from pathlib import Path


def native_executable() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "bin" / "thaw", here.parent.parent / "build" / "publish" / "cli" / "thaw"):
        if candidate.is_file():
            return candidate
    raise SystemExit("thaw: error: the thaw executable is missing from this installation")


def freeze(argv) -> int:
    parser = argparse.ArgumentParser(prog="thaw freeze",
                                     description="Freeze a model's processed weights from a live vLLM engine.")
    parser.add_argument("--model", required=True, help="model name or path, as for vllm serve")
    parser.add_argument("--output", required=True, help="snapshot directory (one file per rank)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("thaw: error: thaw freeze needs vLLM installed in this environment", file=sys.stderr)
        return 1
    from .vllm_api import WORKER_EXTENSION, freeze_vllm
    from vllm import LLM
    kwargs = {k: v for k, v in {"quantization": args.quantization, "max_model_len": args.max_model_len}.items() if v}
    llm = LLM(model=args.model, tensor_parallel_size=args.tensor_parallel_size,
              pipeline_parallel_size=args.pipeline_parallel_size, dtype=args.dtype,
              worker_extension_cls=WORKER_EXTENSION, **kwargs)
    for path in freeze_vllm(llm, args.output):
        print(f"froze {path}")
    return 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "freeze":
        sys.exit(freeze(sys.argv[2:]))
    executable = native_executable()
    os.execv(str(executable), [str(executable), *sys.argv[1:]])
