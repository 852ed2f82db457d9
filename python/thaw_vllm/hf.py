"""Hugging Face transformers: build a model without initializing its weights and
restore a snapshot into it on the GPU."""
import contextlib
import json

import torch

from . import torch_io
from .errors import ThawMismatchError


def _no_init():
    """transformers' own switch that skips weight initialization (its module moved over releases)."""
    for module in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return __import__(module, fromlist=["no_init_weights"]).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


def from_pretrained(model_dir_or_config, snapshot, device="cuda", dtype=None, model_class=None, **engine_options):
    """A transformers model built from its config, weights restored from a Thaw snapshot.

    model_dir_or_config: a directory with config.json, or a PretrainedConfig.
    The snapshot may come from `thaw convert` of the model's safetensors checkpoint or
    from thaw_vllm.freeze(model); every parameter must be in it (buffers that are
    computed at construction, like rotary frequencies, may be absent).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
    config = model_dir_or_config if isinstance(model_dir_or_config, PretrainedConfig) \
        else AutoConfig.from_pretrained(model_dir_or_config)
    header = torch_io.info(snapshot)
    if dtype is None:
        dtypes = {t["dtype"] for t in header["tensors"] if t["dtype"] in ("F16", "BF16", "F32")}
        dtype = torch_io.torch_dtype(dtypes.pop()) if len(dtypes) == 1 else torch.float32
    device = torch.device(device)
    with torch_io.default_dtype(dtype), _no_init(), torch_io.device_scope(device):
        model = (model_class or AutoModelForCausalLM).from_config(config)
    tensors = torch_io.module_tensors(model)
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    in_snapshot = {t["name"] for t in header["tensors"]} | set(json.loads(header["metadata"].get(torch_io.ALIASES_KEY, "{}")))
    missing = sorted(parameters - in_snapshot)
    if missing:
        raise ThawMismatchError(f"{snapshot}: the snapshot lacks parameters of {type(model).__name__}: {missing[:5]}")
    unexpected = sorted(in_snapshot - set(tensors))
    if unexpected:
        raise ThawMismatchError(f"{snapshot}: the snapshot holds tensors {type(model).__name__} does not have: {unexpected[:5]}")
    torch_io.restore_into({n: t for n, t in tensors.items() if n in in_snapshot}, snapshot, strict=False, **engine_options)
    return model.eval()
