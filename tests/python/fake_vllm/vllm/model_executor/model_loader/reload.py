"""vllm/model_executor/model_loader/reload/layerwise.py, reduced: layer-by-layer loading
for online quantization and for reload_weights.
- record_metadata_for_reloading (called by initialize_model) records each layer's
  parameters and buffers in checkpoint format, on the meta device;
- initialize_online_processing wraps each parameter's weight_loader: once the layer has
  received all its elements it is processed (quant_method.process_weights_after_loading)
  and, when reloading, the processed values are copied into the kernel tensors, whose
  storage (and CUDA-graph addresses) never changes;
- initialize_layerwise_reload saves the kernel tensors and puts checkpoint-format
  tensors back (restore_layer_on_meta);
- finalize_layerwise_processing processes what loading did not finish: layers that got
  no weights at all (first load: processed anyway; reload: kernel tensors put back) and
  attention layers, processed last.
The real code buffers the loaded weights and materializes the layer when processing;
the double materializes on the first weight it receives and loads straight into it."""
from weakref import WeakKeyDictionary

import torch

LAYERWISE_INFO = WeakKeyDictionary()


class LayerReloadingInfo:
    def __init__(self):
        self.restore_metadata = ({}, {})
        self.kernel_tensors = None
        self.reset()

    def reset(self):
        self.load_numel, self.load_numel_total = 0, None
        self.loaded_names = set()

    def can_load(self):
        return self.load_numel_total is not None


def get_layerwise_info(layer):
    if layer not in LAYERWISE_INFO:
        LAYERWISE_INFO[layer] = LayerReloadingInfo()
    return LAYERWISE_INFO[layer]


def _own(layer):
    return dict(layer._parameters), dict(layer._buffers)


def _on_meta(tensor):
    meta = torch.empty_like(tensor, device="meta")
    if isinstance(tensor, torch.nn.Parameter):
        meta = torch.nn.Parameter(meta, requires_grad=False)
        if hasattr(tensor, "weight_loader"):
            meta.weight_loader = tensor.weight_loader
    return meta


def record_metadata_for_reloading(model):
    for layer in model.modules():
        params, buffers = _own(layer)
        get_layerwise_info(layer).restore_metadata = (
            {n: _on_meta(p) for n, p in params.items() if p is not None},
            {n: _on_meta(b) for n, b in buffers.items() if b is not None})


def materialize_layer(layer):
    """reload/meta.py materialize_layer: meta tensors become empty device tensors."""
    for name, param in list(layer._parameters.items()):
        if param is not None and param.is_meta:
            new = torch.nn.Parameter(torch.empty(param.shape, dtype=param.dtype), requires_grad=False)
            if hasattr(param, "weight_loader"):
                new.weight_loader = param.weight_loader
            setattr(layer, name, new)
    for name, buffer in list(layer._buffers.items()):
        if buffer is not None and buffer.is_meta:
            layer._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype)


def initialize_online_processing(layer):
    info = get_layerwise_info(layer)
    info.load_numel = 0
    info.load_numel_total = sum(p.numel() for p in layer._parameters.values() if p is not None)
    for name, param in layer._parameters.items():
        if param is not None:
            param.weight_loader = _online_process_loader(layer, name, getattr(param, "weight_loader", None))


def _online_process_loader(layer, name, original):
    def online_process_loader(param, loaded_weight, *args):
        info = get_layerwise_info(layer)
        if not info.can_load():
            return
        materialize_layer(layer)
        target = getattr(layer, name)
        if original is None:
            target.data.copy_(loaded_weight)
        else:
            original(target, loaded_weight, *args)
        info.load_numel += loaded_weight.numel()
        info.loaded_names.add(name)
        from .utils import is_deferred_attention_layer
        if not is_deferred_attention_layer(layer) and info.load_numel >= info.load_numel_total:
            _layerwise_process(layer, info)
    online_process_loader.original = original
    return online_process_loader


def _unwrap_loaders(layer):
    for param in layer._parameters.values():
        loader = getattr(param, "weight_loader", None)
        while loader is not None and getattr(loader, "__name__", "") == "online_process_loader":
            loader = loader.original
        if param is not None:
            param.weight_loader = loader


def _layerwise_process(layer, info):
    materialize_layer(layer)
    _unwrap_loaders(layer)
    quant_method = getattr(layer, "quant_method", None)
    if quant_method is not None:
        quant_method.process_weights_after_loading(layer)
    if info.kernel_tensors is not None:
        _copy_and_restore_kernel_tensors(layer, info)
    info.reset()


def _copy_and_restore_kernel_tensors(layer, info):
    params, buffers = info.kernel_tensors
    for name, param in params.items():
        param.data.copy_(getattr(layer, name))
    for name, buffer in buffers.items():
        if name in layer._buffers:
            buffer.data.copy_(getattr(layer, name))
    _place_kernel_tensors(layer, info)


def _place_kernel_tensors(layer, info):
    for name in list(layer._parameters):
        delattr(layer, name)
    for name in list(layer._buffers):
        delattr(layer, name)
    params, buffers = info.kernel_tensors
    for name, param in params.items():
        layer.register_parameter(name, param)
    for name, buffer in buffers.items():
        layer.register_buffer(name, buffer, persistent=name not in layer._non_persistent_buffers_set)
    info.kernel_tensors = None


def initialize_layerwise_reload(model):
    for layer in model.modules():
        info = get_layerwise_info(layer)
        if info.can_load():
            continue
        info.kernel_tensors = _own(layer)
        meta_params, meta_buffers = info.restore_metadata
        for name in list(layer._parameters):
            delattr(layer, name)
        for name in list(layer._buffers):
            layer._buffers.pop(name)
        for name, param in meta_params.items():
            layer.register_parameter(name, _on_meta(param))
        for name, buffer in meta_buffers.items():
            layer._buffers[name] = _on_meta(buffer)
        initialize_online_processing(layer)


def finalize_layerwise_processing(model, model_config):
    from .utils import is_deferred_attention_layer
    deferred = []
    for layer in model.modules():
        info = get_layerwise_info(layer)
        if not info.can_load():
            continue
        if is_deferred_attention_layer(layer):
            deferred.append((layer, info))
            continue
        if info.load_numel <= 0 and info.kernel_tensors is not None:
            _place_kernel_tensors(layer, info)  # reload, nothing loaded: keep the kernel tensors
        elif info.load_numel < info.load_numel_total or info.kernel_tensors is None:
            _layerwise_process(layer, info)
        info.reset()
    for layer, info in deferred:  # _finalize_attention_layer
        if info.kernel_tensors is None:
            if info.load_numel > 0:
                _layerwise_process(layer, info)
        else:
            materialize_layer(layer)
            _unwrap_loaders(layer)
            loaded, kernel_params = dict(layer._parameters), info.kernel_tensors[0]
            _place_kernel_tensors(layer, info)
            if info.load_numel > 0:  # _reload_attention_scales
                quant_method = getattr(layer, "quant_method", None)
                if quant_method is not None:
                    quant_method.create_weights(layer)  # scale parameters back at their sentinels
                for name in info.loaded_names:
                    target = kernel_params.get(name, getattr(layer, name, None))
                    if target is not None:
                        target.data.copy_(loaded[name])
                if quant_method is not None:
                    quant_method.process_weights_after_loading(layer)
        layer.process_weights_after_loading(model_config.dtype)
        info.reset()


finalize_layerwise_reload = finalize_layerwise_processing
