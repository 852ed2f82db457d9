"""KV-cache snapshots of Hugging Face transformers caches: freeze the cache of a prefix once,
restore it in any later process, and let generate() continue from it without the prefill.

Written against transformers 5.x's Cache API (cache.layers[i].keys / .values, cache.update);
a legacy tuple of (keys, values) per layer is accepted when freezing.
"""
import torch

from . import kv, torch_io
from .errors import ThawMismatchError
from .vllm_config import _config_digest

DEFAULT_BLOCK_SIZE = 16


def model_fingerprint(model) -> str:
    """What a KV cache is only valid for: the architecture and its full configuration."""
    config = model.config
    architectures = ",".join(getattr(config, "architectures", None) or [type(model).__name__])
    return f"transformers:{architectures}:{_config_digest(config)}"


def _model_layout(model) -> dict:
    config = model.config
    config = getattr(config, "get_text_config", lambda: config)()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"layers": config.num_hidden_layers, "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": head_dim}


def _token_ids(input_ids) -> list:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise ValueError(f"KV snapshots hold one prefix per batch; input_ids has batch {input_ids.shape[0]}")
            input_ids = input_ids[0]
        return [int(t) for t in input_ids.tolist()]
    return [int(t) for t in input_ids]


def _cache_layers(cache) -> list:
    """(keys, values) of every layer of a transformers Cache, or of a legacy tuple of pairs."""
    if isinstance(cache, (tuple, list)):
        return [(k, v) for k, v in cache]
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"{type(cache).__name__} is not a transformers Cache with .layers (transformers >= 4.56)")
    return [(layer.keys, layer.values) for layer in layers]


def freeze_kv(cache, input_ids, path, model=None, *, fingerprint=None, block_size=DEFAULT_BLOCK_SIZE, **engine_options):
    """Writes the KV cache of the prefix input_ids into a KV snapshot at path, atomically.

    cache: a DynamicCache (or StaticCache) that holds exactly the prefix's keys and values, e.g. after
    model(input_ids, past_key_values=cache). model (or fingerprint=) ties the snapshot to the model,
    so that a restore into another one is refused. Returns the snapshot's description.
    """
    if fingerprint is None:
        if model is None:
            raise ValueError("freeze_kv needs the model (or fingerprint=) so that a restore into another model is refused")
        fingerprint = model_fingerprint(model)
    tokens = _token_ids(input_ids)
    if not tokens:
        raise ValueError("input_ids is empty: there is no prefix to freeze")
    layers = _cache_layers(cache)
    if not layers:
        raise ValueError("the cache holds no layers")
    regions = {}
    first = layers[0][0]
    if first is None or first.dim() != 4:
        raise ValueError("the cache's layer 0 holds no [batch, kv_heads, tokens, head_dim] keys (was the prefix run?)")
    _, kv_heads, _, head_dim = first.shape
    for index, (keys, values) in enumerate(layers):
        for what, t in (("keys", keys), ("values", values)):
            if t is None or t.dim() != 4 or t.shape[0] != 1 or t.shape[1] != kv_heads or t.shape[3] != head_dim \
                    or t.dtype != first.dtype or t.device != first.device:
                raise ValueError(f"cache layer {index} {what}: {None if t is None else (tuple(t.shape), t.dtype)} "
                                 f"differs from layer 0's [1, {kv_heads}, tokens, {head_dim}] {first.dtype}")
            static = hasattr(getattr(cache, "layers", [None] * len(layers))[index], "max_cache_len")
            if t.shape[2] < len(tokens) or (t.shape[2] > len(tokens) and not static):
                raise ValueError(f"cache layer {index} {what} holds {t.shape[2]} tokens, input_ids has {len(tokens)}: "
                                 "freeze the cache right after the prefix ran (a sliding-window layer cannot be frozen)")
        # A static cache is preallocated past the prefix: only the prefix's positions are saved.
        regions[kv.keys_region(0, index)] = keys[:, :, :len(tokens)].contiguous()
        regions[kv.values_region(0, index)] = values[:, :, :len(tokens)].contiguous()
    regions[kv.tokens_region(0)] = torch.tensor(tokens, dtype=torch.int64, device=first.device)
    meta = kv.metadata(model=fingerprint, tensor_layout=kv.TRANSFORMERS, layers=len(layers), kv_heads=kv_heads,
                       head_dim=head_dim, dtype=torch_io.thaw_dtype(first.dtype), block_size=block_size,
                       prefixes=[tokens])
    torch_io.freeze(regions, path, metadata=meta, **engine_options)
    return kv.info(path)


def _new_cache(model, max_cache_len):
    import transformers
    if max_cache_len is not None:
        return transformers.StaticCache(config=model.config, max_cache_len=max_cache_len)
    DynamicCache = transformers.DynamicCache
    try:
        return DynamicCache(config=model.config)  # per-layer types (sliding windows) from the config
    except TypeError:
        return DynamicCache()


def restore_kv(path, model, input_ids=None, *, cache=None, max_cache_len=None, device=None, pool=None, **engine_options):
    """A transformers cache holding the prefix frozen at path, for model(...) or
    model.generate(full_input_ids, past_key_values=cache) to continue from without the prefill.

    The snapshot must be for this model (fingerprint), layout and dtype; the first field that
    differs is named in a ThawMismatchError. input_ids, if given, must start with the saved prefix.
    cache: an empty Cache to fill (default: a new DynamicCache; a StaticCache of max_cache_len
    tokens when that is given). pool: restore through a `thaw pool` (True: the default socket).
    """
    description = kv.info(path)
    layout = _model_layout(model)
    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype
    # The layout fields first: they name what differs more precisely than the fingerprint does.
    kv.check(path, description, {"tensor_layout": kv.TRANSFORMERS, **layout, "dtype": torch_io.thaw_dtype(dtype),
                                 "model": model_fingerprint(model)})
    device = torch.device(device) if device is not None else getattr(model, "device", torch.device("cpu"))
    tokens = description["prefixes"][0]["tokens"]
    shape = (1, layout["kv_heads"], tokens, layout["head_dim"])
    regions = {kv.tokens_region(0): torch.empty(tokens, dtype=torch.int64, device=device)}
    for layer in range(layout["layers"]):
        regions[kv.keys_region(0, layer)] = torch.empty(shape, dtype=dtype, device=device)
        regions[kv.values_region(0, layer)] = torch.empty(shape, dtype=dtype, device=device)
    torch_io.restore_into(regions, path, pool=pool, **engine_options)
    if input_ids is not None:
        given = _token_ids(input_ids)[:tokens]
        saved = regions[kv.tokens_region(0)].tolist()
        if given != saved:
            at = next((i for i, (a, b) in enumerate(zip(given, saved)) if a != b), len(given))
            raise ThawMismatchError(f"{path}: input_ids do not start with the saved {tokens}-token prefix "
                                    f"(they differ at position {at})")
    if cache is None:
        cache = _new_cache(model, max_cache_len)
    positions = {"cache_position": torch.arange(tokens, device=device)}
    for layer in range(layout["layers"]):
        keys = regions.pop(kv.keys_region(0, layer))
        values = regions.pop(kv.values_region(0, layer))
        cache.update(keys, values, layer, positions)
    return cache
