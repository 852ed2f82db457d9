"""vllm/model_executor/model_loader/base_loader.py: the template of §1.4."""
import contextlib
from abc import ABC, abstractmethod

import torch


class BaseModelLoader(ABC):
    def __init__(self, load_config):
        self.load_config = load_config

    @abstractmethod
    def download_model(self, model_config) -> None: ...

    @abstractmethod
    def load_weights(self, model, model_config) -> None: ...

    def load_model(self, vllm_config, model_config, prefix: str = ""):
        from .utils import initialize_model, process_weights_after_loading, set_default_torch_dtype
        device = torch.device(vllm_config.load_config.device or vllm_config.device_config.device)
        scope = device if hasattr(device, "__enter__") else contextlib.nullcontext()  # torch < 2.0
        with set_default_torch_dtype(model_config.dtype), scope:
            model = initialize_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
        self.load_weights(model, model_config)
        process_weights_after_loading(model, model_config, device)
        return model.eval()
