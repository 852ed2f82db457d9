"""What a snapshot of a vLLM model holds, and what a restore puts back.

Loading produces parameters, registered buffers, a few plain tensor attributes and a few
Python scalars; running produces state (the KV cache bound by bind_kv_cache, LoRA adapter
slots) that must never be frozen. So a snapshot takes parameters and buffers, the plain
tensor attributes of TENSOR_ATTRIBUTES, and the scalars of SCALAR_ATTRIBUTES (in the
snapshot's metadata), nothing else; every entry names the vLLM code that sets it.
"""
import json
import logging
import math

import torch

from . import torch_io
from .errors import ThawFormatError, ThawMismatchError

log = logging.getLogger("thaw_vllm")

SCALARS_KEY = "thaw.vllm.scalars"

# Plain tensor attributes that post-load processing derives from the weights.
TENSOR_ATTRIBUTES = frozenset({
    # layers/attention/mla_attention.py MLAAttention.process_weights_after_loading (ROCm AITER fp8 BMM path)
    "W_K", "W_K_scale", "W_V", "W_V_scale",
    # the same function with decode context parallelism replicating queries (dcp_q_replicate)
    "W_UK_T_dcp_qrep",
})

# Python scalars (and host copies of scalars) derived by processing; restored after processing
# an empty model, which would leave them at their defaults.
SCALAR_ATTRIBUTES = frozenset({
    # layers/attention/attention.py set_default_quant_scales, then
    # layers/quantization/kv_cache.py BaseKVCacheMethod.process_weights_after_loading
    "_q_scale_float", "_k_scale_float", "_v_scale_float", "_prob_scale_float", "_o_scale_float",
    "_k_scale_cpu", "_v_scale_cpu",
})

# Runtime state that is never frozen (named to explain the warning below, not to filter).
RUNTIME_ATTRIBUTES = frozenset({
    "kv_cache",  # layers/attention_layer_base.py bind_kv_cache, after load_model
})

# lora/layers/base_linear.py: the wrapper keeps the loaded layer as .base_layer.
LORA_BASE = ".base_layer."


def _strip_lora(name: str) -> str:
    # gpu_model_runner.py reload_weights maps LoRA names back the same way.
    return name.replace(LORA_BASE, ".")


def _lora_wrappers(model) -> set:
    """Names of modules that wrap a base_layer (their own tensors are adapter state)."""
    return {name for name, module in model.named_modules(remove_duplicate=False)
            if isinstance(getattr(module, "base_layer", None), torch.nn.Module)}


def model_tensors(model) -> dict:
    """The tensors a snapshot of this model holds, by the names of the model as loaded
    (before any LoRA wrapping)."""
    wrappers = _lora_wrappers(model)
    named = {}
    for name, tensor in torch_io.module_tensors(model, attributes=TENSOR_ATTRIBUTES).items():
        owner = name.rpartition(".")[0]
        if owner in wrappers:
            continue
        named[_strip_lora(name)] = tensor
    return named


def unlisted_tensor_attributes(model) -> list:
    """Plain tensor attributes that are neither listed nor known runtime state: processing
    may have derived them, and a restore would not bring them back."""
    found = []
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if (isinstance(value, torch.Tensor) and key not in TENSOR_ATTRIBUTES and key not in SCALAR_ATTRIBUTES
                    and key not in RUNTIME_ATTRIBUTES and key not in ("_parameters", "_buffers")):
                found.append(f"{prefix}.{key}" if prefix else key)
    return found


def _scalar_value(value):
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    return ...  # not a scalar: not recorded


def derived_scalars(model) -> dict:
    """{module name: {attribute: value}} of the scalars processing derived."""
    scalars = {}
    for prefix, module in model.named_modules():
        values = {}
        for key in SCALAR_ATTRIBUTES & set(vars(module)):
            value = _scalar_value(vars(module)[key])
            if value is not ...:
                values[key] = value
        if values:
            scalars[_strip_lora(prefix + ".").rstrip(".") if prefix else ""] = values
    return scalars


def scalars_metadata(model) -> dict:
    scalars = derived_scalars(model)
    return {SCALARS_KEY: json.dumps(scalars, sort_keys=True)} if scalars else {}


def apply_scalars(model, metadata: dict, path) -> None:
    """Sets the scalars recorded in a snapshot's metadata. The metadata comes from a file:
    only listed attributes of existing modules, with finite numbers of the kind the module
    holds now, are accepted."""
    text = metadata.get(SCALARS_KEY)
    if text is None:
        return
    try:
        recorded = json.loads(text)
    except ValueError as e:
        raise ThawFormatError(f"{path}: metadata {SCALARS_KEY} is not JSON ({e})") from None
    if not isinstance(recorded, dict):
        raise ThawFormatError(f"{path}: metadata {SCALARS_KEY} is not an object")
    modules = {_strip_lora(name + ".").rstrip(".") if name else "": m for name, m in model.named_modules()}
    for module_name, values in recorded.items():
        module = modules.get(module_name)
        if module is None or not isinstance(values, dict):
            raise ThawMismatchError(f"{path}: the snapshot records scalars of module '{module_name}', "
                                    "which this model does not have")
        for key, value in values.items():
            where = f"{module_name}.{key}" if module_name else key
            if key not in SCALAR_ATTRIBUTES:
                raise ThawFormatError(f"{path}: scalar '{where}' is not one Thaw restores")
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and math.isfinite(value)):
                raise ThawFormatError(f"{path}: scalar '{where}' is {value!r}, not a finite number")
            current = getattr(module, key, None)
            if isinstance(current, torch.Tensor):
                if value is None:
                    raise ThawFormatError(f"{path}: scalar '{where}' is null, the model holds a tensor")
                current.fill_(value)
            else:
                setattr(module, key, value)
