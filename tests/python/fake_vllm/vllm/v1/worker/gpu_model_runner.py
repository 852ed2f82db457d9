"""vllm/v1/worker/gpu_model_runner.py GPUModelRunner, the parts around loading:
- load_model: get_model_loader(load_config).load_model(vllm_config=..., model_config=...),
  then the LoRA wrapper (load_lora_model, lora_model_runner_mixin.py), then the drafter;
- initialize_kv_cache: allocates one cache per attention layer and bind_kv_cache
  (after load_model: v1/engine/core.py _initialize_kv_caches);
- reload_weights: with no iterator, asks the loader for get_all_weights (NotImplementedError
  when it has none), then initialize_layerwise_reload, model.load_weights,
  finalize_layerwise_reload, in place;
- get_model / get_draft_model."""
import time

import torch

from ..spec_decode.draft_model import DraftModelProposer
from .utils import bind_kv_cache


class GPUModelRunner:
    def __init__(self, vllm_config, device):
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.load_config = vllm_config.load_config
        self.lora_config = vllm_config.lora_config
        self.device = device
        self.kv_caches = []
        if vllm_config.speculative_config is not None:
            self.drafter = DraftModelProposer(vllm_config, device)

    def load_model(self, load_dummy_weights=False):
        from vllm.model_executor.model_loader import get_model_loader
        if load_dummy_weights:
            self.load_config.load_format = "dummy"
        model_loader = get_model_loader(self.load_config)
        self.model = model_loader.load_model(vllm_config=self.vllm_config, model_config=self.model_config)
        if self.lora_config:
            from vllm.lora.model_manager import load_lora_model
            self.model = load_lora_model(self.model, self.lora_config)
        if hasattr(self, "drafter"):
            self.drafter.load_model(self.model)

    def initialize_kv_cache(self, num_blocks=6, block_size=4):
        """gpu_model_runner.py initialize_kv_cache -> _allocate_kv_cache_tensors -> bind_kv_cache.
        The cache is allocated as (2, blocks, block, heads, head) and viewed permuted, as
        backends' get_kv_cache_stride_order makes it: not contiguous."""
        kv_caches = {}
        for name, layer in self.vllm_config.compilation_config.static_forward_context.items():
            raw = torch.zeros(num_blocks, 2, block_size, layer.num_heads, layer.head_size)
            kv_caches[name] = raw.permute(1, 0, 2, 3, 4)
        bind_kv_cache(kv_caches, self.vllm_config.compilation_config.static_forward_context, self.kv_caches)

    def get_model(self):
        return self.model

    def get_draft_model(self):
        drafter = getattr(self, "drafter", None)
        return None if drafter is None else getattr(drafter, "model", None)

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
        from vllm.model_executor.model_loader import get_model_loader
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload
        model = self.get_model()
        started = time.perf_counter()
        if weights_iterator is None:
            model_loader = get_model_loader(self.load_config)
            if not hasattr(model_loader, "get_all_weights"):
                raise NotImplementedError(f"Model reloading with `{self.load_config.load_format}` format")
            if weights_path is not None:
                self.model_config.model = weights_path
                self.model_config.revision = None
            weights_iterator = model_loader.get_all_weights(self.model_config, model)
        if is_checkpoint_format:
            initialize_layerwise_reload(model)
            loaded = model.load_weights(weights_iterator)
            finalize_layerwise_reload(model, self.model_config)
        else:
            loaded = set()
            for name, weight in weights_iterator:
                model.get_parameter(name).copy_(weight)
                loaded.add(name)
        self.reload_seconds = time.perf_counter() - started
        return loaded
