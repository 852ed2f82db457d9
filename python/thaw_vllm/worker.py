"""Worker extension for vLLM (ParallelConfig.worker_extension_cls): methods every
worker gets, called by name with LLM.collective_rpc, so nothing needs pickling."""
from . import torch_io
from .vllm_config import fingerprint, parallel_ranks, rank_file


class ThawWorkerExtension:
    def thaw_freeze(self, path: str) -> str:
        """Freezes this worker's processed model into its rank's file; returns the file."""
        model = self.get_model() if hasattr(self, "get_model") else self.model_runner.get_model()
        model_config = self.vllm_config.model_config
        ranks = parallel_ranks()
        target = rank_file(path, *ranks)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch_io.freeze(torch_io.module_tensors(model), target, metadata=fingerprint(model_config, *ranks),
                        tp_rank=ranks[0], tp_world_size=ranks[1])
        return str(target)
