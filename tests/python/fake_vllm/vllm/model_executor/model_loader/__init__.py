"""vllm/model_executor/model_loader/__init__.py: the registry of load formats
(register_model_loader, get_model_loader) and get_model, which drafters call."""
import logging

from .base_loader import BaseModelLoader
from .default_loader import DefaultModelLoader

logger = logging.getLogger("vllm")
_LOAD_FORMAT_TO_MODEL_LOADER = {"auto": DefaultModelLoader, "safetensors": DefaultModelLoader}


def register_model_loader(load_format: str):
    def _wrapper(model_loader_cls):
        if load_format in _LOAD_FORMAT_TO_MODEL_LOADER:
            logger.warning("Load format `%s` is already registered, and will be overwritten", load_format)
        if not issubclass(model_loader_cls, BaseModelLoader):
            raise ValueError("The model loader must be a subclass of `BaseModelLoader`.")
        _LOAD_FORMAT_TO_MODEL_LOADER[load_format] = model_loader_cls
        return model_loader_cls
    return _wrapper


def get_model_loader(load_config):
    load_format = load_config.load_format
    if load_format not in _LOAD_FORMAT_TO_MODEL_LOADER:
        raise ValueError(f"Load format `{load_format}` is not supported")
    return _LOAD_FORMAT_TO_MODEL_LOADER[load_format](load_config)


def get_model(*, vllm_config, model_config=None, prefix="", load_config=None):
    loader = get_model_loader(load_config or vllm_config.load_config)
    if model_config is None:
        model_config = vllm_config.model_config
    return loader.load_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
