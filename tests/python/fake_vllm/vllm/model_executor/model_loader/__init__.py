"""vllm/model_executor/model_loader/__init__.py: the registry of load formats (§2.1)."""
import logging

from .base_loader import BaseModelLoader

log = logging.getLogger("vllm")
_LOAD_FORMAT_TO_MODEL_LOADER = {}


def register_model_loader(load_format: str):
    def wrap(cls):
        if load_format in _LOAD_FORMAT_TO_MODEL_LOADER:
            log.warning("load format %s is already registered; overwriting", load_format)
        if not issubclass(cls, BaseModelLoader):
            raise ValueError("the model loader must be a subclass of BaseModelLoader")
        _LOAD_FORMAT_TO_MODEL_LOADER[load_format] = cls
        return cls
    return wrap


class DefaultModelLoader(BaseModelLoader):
    """Loads the checkpoint's safetensors in checkpoint format, as "auto" does."""

    def download_model(self, model_config):
        pass

    def load_weights(self, model, model_config):
        from safetensors_reader import read_checkpoint
        model.load_weights(read_checkpoint(model_config.model))


_LOAD_FORMAT_TO_MODEL_LOADER["auto"] = DefaultModelLoader


def get_model_loader(load_config):
    if load_config.load_format not in _LOAD_FORMAT_TO_MODEL_LOADER:
        raise ValueError(f"Load format `{load_config.load_format}` is not supported")
    return _LOAD_FORMAT_TO_MODEL_LOADER[load_config.load_format](load_config)
