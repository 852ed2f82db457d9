"""load_format="thaw" for an unmodified vLLM (v0.10.1 on: register_model_loader).

Registered from the vllm.general_plugins entry point (pyproject.toml), so the engine
core and every worker process know the format. With {"snapshot": path} the model is
built, processed once on its uninitialized weights to obtain the kernel-ready
structure, and the snapshot — which holds the weights after processing — is restored
in place: the snapshot's weights are never processed a second time. Without a
snapshot, or with {"checkpoint": dir}, the Hugging Face safetensors shards are
streamed through the engine and handed to the model's own load_weights.
"""
import logging
import time

import torch

from . import torch_io
from .errors import ThawMismatchError
from .vllm_config import check_fingerprint, fingerprint, parallel_ranks, rank_file

log = logging.getLogger("thaw_vllm")

FORMAT = "thaw"
EXTRA_KEYS = {
    "snapshot": "snapshot file or per-rank directory (from thaw_vllm.freeze_vllm)",
    "checkpoint": "Hugging Face safetensors checkpoint to stream instead (default: the model's own)",
    "draft_snapshot": "snapshot for the speculative-decoding draft model",
    "pool": "a thaw pool socket to restore through (true: the default socket); falls back to the file",
    "io": "auto | buffered | direct",
    "verify": "check every region's CRC32C while restoring",
    "threads": "reader threads (0: one a core, up to 16)",
    "chunk_mib": "staging chunk size in MiB",
    "staging_mib": "pinned staging memory in MiB",
}


def validate_extra_config(extra) -> dict:
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(EXTRA_KEYS))
    if unknown:
        raise ValueError(f"load_format='thaw': unknown model_loader_extra_config keys {unknown}; "
                         f"known: {', '.join(f'{k} ({v})' for k, v in EXTRA_KEYS.items())}")
    if extra.get("io", "auto") not in ("auto", "buffered", "direct"):
        raise ValueError(f"load_format='thaw': io must be auto, buffered or direct, not {extra['io']!r}")
    return extra


def engine_options(extra) -> dict:
    return {"pool": extra.get("pool"), "io": extra.get("io", "auto"), "verify": bool(extra.get("verify", False)),
            "threads": int(extra.get("threads", 0)), "chunk_bytes": int(extra.get("chunk_mib", 0)) << 20,
            "staging_bytes": int(extra.get("staging_mib", 0)) << 20}


def _initialize_model(vllm_config, model_config, prefix):
    from vllm.model_executor.model_loader.utils import initialize_model
    try:
        return initialize_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
    except TypeError:  # releases before the prefix argument (2026-01)
        return initialize_model(vllm_config=vllm_config, model_config=model_config)


def _process(model, model_config, device):
    from vllm.model_executor.model_loader.utils import process_weights_after_loading
    process_weights_after_loading(model, model_config, device)


def restore_snapshot(model, snapshot, model_config, options) -> dict:
    """Restores this rank's file of a snapshot into an already processed model."""
    ranks = parallel_ranks()
    path = rank_file(snapshot, *ranks)
    header = torch_io.info(path)
    check_fingerprint(path, header["metadata"], fingerprint(model_config, *ranks))
    if (header["tp_rank"], header["tp_world_size"]) != (ranks[0], ranks[1]):
        raise ThawMismatchError(f"{path} is tensor-parallel rank {header['tp_rank']} of {header['tp_world_size']}, "
                                f"this worker is rank {ranks[0]} of {ranks[1]}")
    started = time.perf_counter()
    stats = torch_io.restore_into(torch_io.module_tensors(model), path, strict=True, **options)
    seconds = time.perf_counter() - started
    log.info("thaw: rank tp%d/pp%d restored %d bytes from %s in %.3f s (%.2f GB/s)",
             ranks[0], ranks[2], stats["bytes"], path, seconds, stats["bytes"] / seconds / 1e9 if seconds else 0.0)
    return stats


def make_loader_class():
    """Builds the loader class; vllm is imported only here, inside vLLM's processes."""
    try:
        from vllm.model_executor.model_loader.base_loader import BaseModelLoader
    except ImportError:
        from vllm.model_executor.model_loader import BaseModelLoader

    class ThawModelLoader(BaseModelLoader):
        """Restores a Thaw snapshot in place, or streams a safetensors checkpoint."""

        def __init__(self, load_config):
            super().__init__(load_config)
            self.extra = validate_extra_config(load_config.model_loader_extra_config)

        def download_model(self, model_config) -> None:
            pass  # snapshots are local files; checkpoints are resolved by vLLM

        def _device(self, vllm_config):
            return torch.device(self.load_config.device or vllm_config.device_config.device)

        def load_weights(self, model, model_config) -> None:
            # Reached by reload_weights on a live, processed model: copy the snapshot in place.
            snapshot = self.extra.get("snapshot")
            if snapshot is None:
                model.load_weights(torch_io.iter_checkpoint(self._checkpoint(model_config), "cuda", **engine_options(self.extra)))
                return
            restore_snapshot(model, snapshot, model_config, engine_options(self.extra))

        def _checkpoint(self, model_config):
            return self.extra.get("checkpoint") or getattr(model_config, "model_weights", None) or model_config.model

        def load_model(self, vllm_config, model_config, prefix: str = "", **kwargs):
            device = self._device(vllm_config)
            is_draft = model_config is not vllm_config.model_config
            snapshot = self.extra.get("draft_snapshot" if is_draft else "snapshot")
            with torch_io.default_dtype(model_config.dtype), torch_io.device_scope(device):
                model = _initialize_model(vllm_config, model_config, prefix)
            options = engine_options(self.extra)
            if snapshot is None:
                # A draft model without its own snapshot streams its own checkpoint.
                checkpoint = model_config.model if is_draft else self._checkpoint(model_config)
                started = time.perf_counter()
                model.load_weights(torch_io.iter_checkpoint(checkpoint, device, **options))
                log.info("thaw: streamed checkpoint %s in %.3f s", checkpoint, time.perf_counter() - started)
                _process(model, model_config, device)
            else:
                # Processing runs once, on the empty model, to build the processed
                # structure; the snapshot already holds processed values.
                _process(model, model_config, device)
                restore_snapshot(model, snapshot, model_config, options)
            return model.eval()

    return ThawModelLoader


def register() -> None:
    """The vllm.general_plugins entry point: runs once in every vLLM process."""
    from vllm.model_executor import model_loader
    registry = getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", {})
    if FORMAT in registry and getattr(registry[FORMAT], "__name__", "") == "ThawModelLoader":
        return
    model_loader.register_model_loader(FORMAT)(make_loader_class())
