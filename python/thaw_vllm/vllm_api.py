"""One-line vLLM entry points: build an engine that restores a snapshot, and freeze one."""
from pathlib import Path

WORKER_EXTENSION = "thaw_vllm.worker.ThawWorkerExtension"


def load(model, snapshot=None, **llm_kwargs):
    """LLM(model, load_format="thaw", ...) restoring snapshot (or streaming the checkpoint when None)."""
    from vllm import LLM
    extra = dict(llm_kwargs.pop("model_loader_extra_config", None) or {})
    if snapshot is not None:
        extra["snapshot"] = str(snapshot)
    llm_kwargs.setdefault("worker_extension_cls", WORKER_EXTENSION)
    return LLM(model=model, load_format="thaw", model_loader_extra_config=extra, **llm_kwargs)


def freeze_vllm(llm, path, draft_path=None) -> list:
    """Every worker writes its rank's processed weights under path (a directory when the
    engine has several ranks), and the speculative-decoding draft's under draft_path
    (default: path/draft). The engine must have been built with
    worker_extension_cls="thaw_vllm.worker.ThawWorkerExtension" (load() does that).
    Returns the files written."""
    args = (str(Path(path)), None if draft_path is None else str(draft_path))
    return [f for files in llm.collective_rpc("thaw_freeze", args=args) for f in files]


def restore_vllm(llm, path=None) -> int:
    """Every worker restores its weights in place from path (default: the snapshot the
    engine was loaded from), e.g. after llm.wake_up(tags=["weights"]) from sleep level 2.
    Returns the bytes restored."""
    return sum(llm.collective_rpc("thaw_restore", args=(None if path is None else str(path),)))
