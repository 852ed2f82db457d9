"""vllm/model_executor/model_loader/default_loader.py DefaultModelLoader: resolves the
model (a local directory, else download_weights_from_hf), reads its safetensors,
get_all_weights yields checkpoint-format (name, tensor) pairs, load_weights hands them
to model.load_weights. The EP weight filter (_init_ep_weight_filter) is not imitated:
the double's experts skip non-local experts in their own weight loader."""
import glob
import os

from .base_loader import BaseModelLoader
from .weight_utils import download_weights_from_hf, safetensors_weights_iterator


class DefaultModelLoader(BaseModelLoader):
    def __init__(self, load_config):
        super().__init__(load_config)
        extra = load_config.model_loader_extra_config
        unexpected = set(extra) - {"enable_multithread_load", "num_threads", "enable_weights_track"}
        if unexpected:
            raise ValueError(f"Unexpected extra config keys for load format {load_config.load_format}: {unexpected}")

    def _prepare_weights(self, model_name_or_path, revision):
        if os.path.isdir(model_name_or_path):
            folder = model_name_or_path
        else:
            folder = download_weights_from_hf(model_name_or_path, self.load_config.download_dir, ["*.safetensors"],
                                              revision, ignore_patterns=self.load_config.ignore_patterns)
        files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        if not files:
            raise RuntimeError(f"Cannot find any model weights with `{model_name_or_path}`")
        return files

    def get_all_weights(self, model_config, model):
        yield from safetensors_weights_iterator(self._prepare_weights(model_config.model, model_config.revision))

    def download_model(self, model_config):
        self._prepare_weights(model_config.model, model_config.revision)

    def load_weights(self, model, model_config):
        model.load_weights(self.get_all_weights(model_config, model))
