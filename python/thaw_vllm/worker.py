"""Worker extension for vLLM (ParallelConfig.worker_extension_cls): methods every
worker gets, called by name with LLM.collective_rpc, so nothing needs pickling."""
import logging
from pathlib import Path

from . import torch_io, vllm_capture, vllm_compile
from .vllm_config import fingerprint, parallel_ranks, rank_file, ranks_metadata

log = logging.getLogger("thaw_vllm")


def freeze_model(model, path, vllm_config, model_config) -> str:
    """Freezes one processed model (target or draft) into its rank's file under path."""
    ranks = parallel_ranks(vllm_config)
    target = rank_file(path, ranks)
    target.parent.mkdir(parents=True, exist_ok=True)
    unlisted = vllm_capture.unlisted_tensor_attributes(model)
    if unlisted:
        log.warning("thaw: not frozen, and so not restored: plain tensor attributes %s; if processing derives "
                    "them from the weights, add them to thaw_vllm.vllm_capture.TENSOR_ATTRIBUTES", unlisted[:8])
    device = next((t.device for t in model.parameters()), None)
    metadata = {**fingerprint(vllm_config, model_config, ranks, model, device), **ranks_metadata(ranks),
                **vllm_capture.scalars_metadata(model)}
    torch_io.freeze(vllm_capture.model_tensors(model), target, metadata=metadata,
                    tp_rank=ranks.tp_rank, tp_world_size=ranks.tp_world)
    return str(target)


class ThawWorkerExtension:
    def _thaw_models(self):
        model = self.get_model() if hasattr(self, "get_model") else self.model_runner.get_model()
        draft = self.get_draft_model() if hasattr(self, "get_draft_model") else None
        return model, draft

    def thaw_freeze(self, path: str, draft_path: str = None) -> list:
        """Freezes this worker's processed model into its rank's file, and the draft model of
        speculative decoding (when there is one) under draft_path (default: path/draft).
        Returns the files written."""
        model, draft = self._thaw_models()
        written = [freeze_model(model, path, self.vllm_config, self.vllm_config.model_config)]
        # The compiled state of the target model goes beside its weights (vllm_compile.py).
        compiled = vllm_compile.freeze_compile_cache(self.vllm_config, written[0])
        if compiled:
            written.append(compiled)
        if draft is not None:
            spec = self.vllm_config.speculative_config
            written.append(freeze_model(draft, draft_path or str(Path(path) / "draft"), self.vllm_config,
                                        spec.draft_model_config))
        return written

    def thaw_restore(self, path: str = None) -> int:
        """Restores this worker's model (and draft) in place from a snapshot (default: the
        one it was loaded from): tensor storage, and so captured CUDA graphs, stay valid.
        Returns the bytes restored."""
        from .vllm_loader import draft_snapshot, engine_options, restore_snapshot, validate_extra_config
        load_config = self.vllm_config.load_config
        extra = validate_extra_config(load_config.model_loader_extra_config) if load_config.load_format == "thaw" else {}
        if path is not None:
            extra = {**extra, "snapshot": str(path), "draft_snapshot": None}
        if extra.get("snapshot") is None:
            raise ValueError("thaw_restore: no snapshot given, and the engine was not loaded from one")
        options = engine_options(extra)
        model, draft = self._thaw_models()
        total = restore_snapshot(model, extra["snapshot"], self.vllm_config, self.vllm_config.model_config,
                                 options)["bytes"]
        if draft is not None and draft_snapshot(extra):
            total += restore_snapshot(draft, draft_snapshot(extra), self.vllm_config,
                                      self.vllm_config.speculative_config.draft_model_config, options)["bytes"]
        return total
