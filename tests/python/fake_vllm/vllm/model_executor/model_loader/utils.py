"""vllm/model_executor/model_loader/utils.py: initialize_model (builds the architecture
inside set_current_vllm_config, then record_metadata_for_reloading) and
process_weights_after_loading (each module's quant method first, then every deferred
attention layer's process_weights_after_loading(model_config.dtype)); and
vllm/utils/torch_utils.py set_default_torch_dtype."""
import contextlib

import torch

from ..layers.attention import Attention, MLAProjection
from ..layers.quantization import QuantizeMethodBase
from .reload import record_metadata_for_reloading


@contextlib.contextmanager
def set_default_torch_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# Tests replace this to build another architecture (a real vLLM resolves hf_config.architectures).
MODEL_CLASS = None


def initialize_model(vllm_config, *, prefix="", model_class=None, model_config=None):
    from vllm.config import set_current_vllm_config
    from ..models.tiny import TinyForCausalLM
    model_class = model_class or MODEL_CLASS or TinyForCausalLM
    with set_current_vllm_config(vllm_config):
        model = model_class(vllm_config=vllm_config, model_config=model_config or vllm_config.model_config, prefix=prefix)
        record_metadata_for_reloading(model)
    return model


def is_deferred_attention_layer(module) -> bool:
    """layers/attention: attention-like layers process after every other module."""
    return isinstance(module, (Attention, MLAProjection))


def process_weights_after_loading(model, model_config, target_device):
    for _, module in model.named_modules():
        quant_method = getattr(module, "quant_method", None)
        if isinstance(quant_method, QuantizeMethodBase):
            quant_method.process_weights_after_loading(module)
    for _, module in model.named_modules():
        if is_deferred_attention_layer(module):
            module.process_weights_after_loading(model_config.dtype)
