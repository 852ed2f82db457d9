"""A test double of the vLLM surface thaw_vllm uses, built from ../shared/VLLM_FACTS.md §9.
Only what the loader and worker extension touch; behaviour follows the cited vLLM files."""

import importlib

# The hf_config the fake engine gives its models (a real vLLM reads config.json).
DEFAULT_HF_CONFIG = None


class _Worker:
    """vllm/v1/worker/gpu_worker.py::Worker, reduced to what extensions reach."""

    def __init__(self, model, vllm_config):
        self._model = model
        self.vllm_config = vllm_config

    def get_model(self):
        return self._model


class LLM:
    """vllm.LLM with one in-process worker: builds the engine config, loads the model
    through the registered loader of load_format, and appends worker_extension_cls to
    the worker's bases as WorkerWrapperBase.init_worker does (VLLM_FACTS §4.3)."""

    def __init__(self, model, load_format="auto", model_loader_extra_config=None, worker_extension_cls=None,
                 dtype="float32", **kwargs):
        import torch
        from .config import DeviceConfig, LoadConfig, ModelConfig, VllmConfig
        from .model_executor.model_loader import get_model_loader
        from .plugins import load_general_plugins
        load_general_plugins()
        config = VllmConfig(model_config=ModelConfig(model=model, dtype=getattr(torch, dtype), hf_config=DEFAULT_HF_CONFIG),
                            load_config=LoadConfig(load_format=load_format, model_loader_extra_config=model_loader_extra_config or {}),
                            device_config=DeviceConfig("cpu"))
        loaded = get_model_loader(config.load_config).load_model(vllm_config=config, model_config=config.model_config)
        worker_class = _Worker
        if worker_extension_cls:
            module, _, name = worker_extension_cls.rpartition(".")
            extension = getattr(importlib.import_module(module), name)
            worker_class = type("WorkerWithExtension", (_Worker, extension), {})
        self.worker = worker_class(loaded, config)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]
