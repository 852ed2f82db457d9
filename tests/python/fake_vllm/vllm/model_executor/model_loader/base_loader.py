"""vllm/model_executor/model_loader/base_loader.py BaseModelLoader.load_model, step by
step: initialize under the model dtype and the target device, load_weights, then
(still under the model dtype) finalize_layerwise_processing for online quantization
and process_weights_after_loading; returns model.eval()."""
import contextlib
from abc import ABC, abstractmethod

import torch

from .reload import finalize_layerwise_processing
from .utils import initialize_model, process_weights_after_loading, set_default_torch_dtype


class BaseModelLoader(ABC):
    def __init__(self, load_config):
        self.load_config = load_config

    @abstractmethod
    def download_model(self, model_config) -> None: ...

    @abstractmethod
    def load_weights(self, model, model_config) -> None: ...

    def load_model(self, vllm_config, model_config, prefix: str = ""):
        load_config = vllm_config.load_config
        target_device = torch.device(vllm_config.device_config.device if load_config.device is None else load_config.device)
        device_scope = target_device if hasattr(target_device, "__enter__") else contextlib.nullcontext()  # torch < 2.0
        with set_default_torch_dtype(model_config.dtype):
            with device_scope:
                model = initialize_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
            self.load_weights(model, model_config)
            if _has_online_quant(model):
                finalize_layerwise_processing(model, model_config)
            process_weights_after_loading(model, model_config, target_device)
        return model.eval()


def _has_online_quant(model):
    """base_loader.py _has_online_quant."""
    return any(getattr(getattr(m, "quant_method", None), "uses_meta_device", False) for m in model.modules())
