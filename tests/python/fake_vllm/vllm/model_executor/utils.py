"""vllm/model_executor/utils.py: set_weight_attrs and replace_parameter."""
import torch


def set_weight_attrs(weight, weight_attrs):
    for key, value in (weight_attrs or {}).items():
        setattr(weight, key, value)


def replace_parameter(layer, param_name, new_tensor, prefer_copy=False):
    """Registers new_tensor (not copied: a transposed view stays one) as the parameter;
    with prefer_copy and a compatible old parameter, copies into it in place. The
    weight_loader of the old parameter is carried over."""
    if new_tensor is None:
        setattr(layer, param_name, None)
        return
    old = getattr(layer, param_name, None)
    if isinstance(new_tensor, torch.nn.Parameter):
        new_tensor = new_tensor.data
    if (prefer_copy and old is not None and old.shape == new_tensor.shape and old.dtype == new_tensor.dtype
            and old.device == new_tensor.device):
        old.copy_(new_tensor)
        return
    new_param = torch.nn.Parameter(new_tensor, requires_grad=False)
    if old is not None and hasattr(old, "weight_loader"):
        new_param.weight_loader = old.weight_loader
    setattr(layer, param_name, new_param)
