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


def freeze_vllm(llm, path) -> list:
    """Every worker writes its rank's processed weights under path (a directory when the
    engine has several ranks). The engine must have been built with
    worker_extension_cls="thaw_vllm.worker.ThawWorkerExtension" (load() does that)."""
    path = Path(path)
    return llm.collective_rpc("thaw_freeze", args=(str(path),))
