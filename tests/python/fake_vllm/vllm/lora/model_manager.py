"""LoRA wrapping after load_model (v1/worker/lora_model_runner_mixin.py load_lora_model ->
lora/model_manager.py LoRAModelManager._create_lora_modules): every supported linear
layer is replaced (lora/utils.py replace_submodule) by a wrapper that keeps the original
as .base_layer (lora/layers/base_linear.py BaseLinearLayerWithLoRA) and holds the
adapters' slots as tuples of tensors, lora_a_stacked / lora_b_stacked, which
set_lora/reset_lora overwrite at run time."""
import torch

from ..model_executor.layers.linear import LinearBase


class BaseLinearLayerWithLoRA(torch.nn.Module):
    def __init__(self, base_layer, lora_config):
        super().__init__()
        self.base_layer = base_layer
        out_size, in_size = sum(base_layer.logical_widths), base_layer.weight.shape[-1]
        self.lora_a_stacked = (torch.zeros(lora_config.max_loras, 1, lora_config.max_lora_rank, in_size),)
        self.lora_b_stacked = (torch.zeros(lora_config.max_loras, 1, out_size, lora_config.max_lora_rank),)

    @property
    def weight(self):
        return self.base_layer.weight


def replace_submodule(model, module_name, new_module):
    parent = model.get_submodule(".".join(module_name.split(".")[:-1]))
    setattr(parent, module_name.split(".")[-1], new_module)
    return new_module


def load_lora_model(model, lora_config):
    for name, module in list(model.named_modules()):
        if isinstance(module, LinearBase):
            replace_submodule(model, name, BaseLinearLayerWithLoRA(module, lora_config))
    return model
