"""Restore snapshots into PyTorch tensors, freeze tensors into snapshots, and stream
plain safetensors checkpoints through the same engine.

CPU tensors go through the mock device (host memory); CUDA tensors through the
CUDA engine on their own device, in the primary context that PyTorch shares.
"""
import contextlib
import json
import os
import logging
from pathlib import Path

import torch

from . import _native, borrowed_links
from .errors import ThawMismatchError

log = logging.getLogger("thaw_vllm")

ALIASES_KEY = "thaw.aliases"

_DTYPE_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64", "F16": "float16",
    "BF16": "bfloat16", "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu", "C64": "complex64",
}
# Only the dtypes this torch build has (float8 and unsigned types arrived in later releases).
TORCH_DTYPES = {name: getattr(torch, attr) for name, attr in _DTYPE_NAMES.items() if hasattr(torch, attr)}
THAW_DTYPES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def thaw_dtype(dtype: "torch.dtype") -> str:
    try:
        return THAW_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no Thaw snapshot equivalent") from None


def torch_dtype(name: str) -> "torch.dtype":
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"snapshot dtype {name} has no equivalent in torch {torch.__version__}") from None


@contextlib.contextmanager
def default_dtype(dtype):
    """torch's default dtype for new tensors, restored on exit."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def device_scope(device):
    """`with device:` makes it the default for new tensors (torch >= 2.0, as vLLM needs);
    older torch has no such scope and allocates on the CPU."""
    return device if hasattr(device, "__enter__") else contextlib.nullcontext()


def _device_request(device: torch.device, mock_device: int = 0, **engine_options):
    """mock_device: which of the mock's devices (0-7) CPU tensors stand on; ignored for CUDA tensors."""
    if device.type == "cuda":
        ordinal = device.index if device.index is not None else torch.cuda.current_device()
        return _native.make_request(_native.DEVICE_CUDA, ordinal, **engine_options)
    if device.type == "cpu":
        if not isinstance(mock_device, int) or isinstance(mock_device, bool) or not 0 <= mock_device < _native.MOCK_DEVICES:
            raise ValueError(f"mock_device must be an integer from 0 to {_native.MOCK_DEVICES - 1}, not {mock_device!r}")
        return _native.make_request(_native.DEVICE_MOCK, mock_device, **engine_options)
    raise ValueError(f"Thaw restores into cuda or cpu tensors, not {device.type}")


def module_tensors(module: torch.nn.Module, attributes=True) -> dict:
    """Every tensor a module holds, by dotted name: parameters and buffers (non-persistent
    ones too, every alias of a tied one too) and plain tensors kept as module attributes
    (what post-load processing often derives): with attributes=True every public one,
    with a collection of names only those, with False none."""
    named = {}
    for prefix, child in module.named_modules(remove_duplicate=False):
        owned = list(child._parameters.items()) + list(child._buffers.items())
        if attributes is True:
            owned += [(k, v) for k, v in vars(child).items() if isinstance(v, torch.Tensor) and not k.startswith("_")]
        elif attributes:
            owned += [(k, v) for k, v in vars(child).items() if k in attributes and isinstance(v, torch.Tensor)]
        for name, tensor in owned:
            if tensor is not None:
                named[f"{prefix}.{name}" if prefix else name] = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    return named


def _tensors_of(module_or_state_dict) -> dict:
    if isinstance(module_or_state_dict, torch.nn.Module):
        return module_tensors(module_or_state_dict)
    return dict(module_or_state_dict)


def info(path) -> dict:
    """The snapshot's header: tensors (name, dtype, shape, offset, length, crc32c), metadata, rank."""
    return _native.snapshot_info(path)


# Destinations that are not contiguous (vLLM's fp8 layers keep weight.t()) are restored
# into contiguous staging tensors of at most this many bytes at a time, then copied.
STAGING_BATCH_BYTES = 1 << 30


def _nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _nbytes_all(items: list) -> int:
    return sum(_nbytes(t) for _, t in items)


def _staging_batches(staged: list, limit: int) -> list:
    """[(name, destination)] in groups of at most limit bytes (a larger tensor alone)."""
    batches, current, size = [], [], 0
    for name, tensor in staged:
        if current and size + _nbytes(tensor) > limit:
            batches.append(current)
            current, size = [], 0
        current.append((name, tensor))
        size += _nbytes(tensor)
    return batches + ([current] if current else [])


def _restore(path, tensors: dict, safetensors: bool, engine_options: dict, requirements=None, borrow=None):
    """Restores {name: tensor} from the file, one engine call per device; destinations that
    are not contiguous go through contiguous staging copies, in bounded batches. The bridge
    checks the destination (names, dtypes, shapes, sizes, and the requirements) from the
    same parse of the header that plans the restore. Returns (stats, snapshot description);
    the description is None for safetensors files."""
    staged = [(n, t) for n, t in tensors.items() if not t.is_contiguous()]
    strict = bool((requirements or {}).get("strict"))
    header = None
    if not safetensors and (len({t.device for t in tensors.values()}) > 1 or _nbytes_all(staged) > STAGING_BATCH_BYTES
                            or (staged and not strict)):
        # Several engine calls, or staging for names the snapshot may lack: check the whole
        # destination once, before any byte moves, and stage only what the snapshot holds.
        header = _check_call(path, list(tensors.items()), requirements)
        requirements = {"strict": False}
        known = {t["name"] for t in header["tensors"]} | set(json.loads(header["metadata"].get(ALIASES_KEY, "{}")))
        tensors = {n: t for n, t in tensors.items() if n in known}
        staged = [(n, t) for n, t in tensors.items() if not t.is_contiguous()]
    direct = [(n, t) for n, t in tensors.items() if t.is_contiguous()]
    batches = _staging_batches(staged, STAGING_BATCH_BYTES)
    total_bytes, total_seconds, links = 0, 0.0, []
    for round_index in range(max(1, len(batches))):
        pairs = [(n, torch.empty(t.shape, dtype=t.dtype, device=t.device), t) for n, t in (batches[round_index] if batches else [])]
        items = list(direct) if round_index == 0 else []
        items += [(n, stage) for n, stage, _ in pairs]
        nbytes, seconds, described, round_links = _restore_call(path, items, safetensors, engine_options, requirements, borrow)
        header = header or described
        links += round_links
        for _, stage, destination in pairs:
            destination.copy_(stage)
        total_bytes += nbytes
        total_seconds += seconds
    gbps = total_bytes / total_seconds / 1e9 if total_seconds > 0 else 0.0
    stats = {"bytes": total_bytes, "seconds": total_seconds, "gbps": gbps}
    if links:
        stats.update(borrowed_links.stats_of(links))
    return stats, header


def _arrays(items: list) -> list:
    return [[n for n, _ in items], [thaw_dtype(t.dtype) for _, t in items], [list(t.shape) for _, t in items],
            [t.data_ptr() for _, t in items], [_nbytes(t) for _, t in items]]


def _check_call(path, items: list, requirements) -> dict:
    """Checks a destination without restoring (the bridge's check-only mode); returns the description."""
    return _native.restore_checked(path, None, *_arrays(items), requirements=requirements, describe=True)[1]


def _restore_call(path, items: list, safetensors: bool, engine_options: dict, requirements=None, borrow=None):
    """One engine call per device for [(name, contiguous tensor)]; returns (bytes, seconds, description,
    [what each call's borrowed links did])."""
    by_device = {}
    for name, tensor in items:
        by_device.setdefault(tensor.device, []).append((name, tensor))
    total_bytes, total_seconds, header, links = 0, 0.0, None, []
    for device, group in by_device.items():
        request = _device_request(device, **engine_options)
        if safetensors:
            stats = _native.restore(path, request, *_arrays(group), safetensors=True)
        else:
            stats, described, used = _native.restore_borrowed(path, request, *_arrays(group), requirements=requirements,
                                                              describe=header is None, borrow=borrow)
            header = header or described
            if used is not None and (used["links"] or used["note"]):
                links.append(used)
        total_bytes += stats.bytes
        total_seconds += stats.seconds
    return total_bytes, total_seconds, header, links


def _requirements(strict, metadata, missing_hint) -> dict:
    requirements = {"strict": bool(strict), "metadata": dict(metadata or {})}
    if missing_hint:
        requirements["missing_hint"] = missing_hint
    return requirements


def check_destination(module_or_state_dict, path, strict: bool = True, metadata=None, missing_hint=None) -> dict:
    """The checks of restore_checked without restoring (for bytes another path delivers);
    returns the snapshot's description."""
    return _check_call(path, list(_tensors_of(module_or_state_dict).items()), _requirements(strict, metadata, missing_hint))


def restore_checked(module_or_state_dict, path, strict: bool = True, pool=None, metadata=None, missing_hint=None,
                    **engine_options):
    """restore_into that also requires metadata values ({key: value}, None: absent) and
    returns (stats, the snapshot's description) from the one header parse that checked it."""
    tensors = _tensors_of(module_or_state_dict)
    requirements = _requirements(strict, metadata, missing_hint)
    stats = None
    asks = _pool_asks(engine_options)
    borrow = engine_options.pop("borrow", None)
    if tensors:
        stats, header = _restore_through_pool(tensors, path, pool, asks, requirements, engine_options)
    if stats is None:
        stats, header = _restore(path, tensors, False, engine_options, requirements, borrow)
        stats["source"] = "file"
    # Each region was restored once; aliases not tied to their original get its bytes.
    copy_untied_aliases(tensors, json.loads(header["metadata"].get(ALIASES_KEY, "{}")))
    log.info("thaw: restored %d bytes from %s (%s) in %.3f s (%.2f GB/s)%s",
             stats["bytes"], path, stats["source"], stats["seconds"], stats["gbps"], borrowed_links.log_suffix(stats))
    return stats, header


def _pool_asks(engine_options) -> tuple:
    """(fill, share) taken out of engine_options: pool_fill (default True) and pool_share
    (default True unless THAW_POOL_SHARE=off)."""
    return (engine_options.pop("pool_fill", True),
            engine_options.pop("pool_share", os.environ.get("THAW_POOL_SHARE", "on").lower() != "off"))


def _restore_through_pool(tensors, path, pool, fill_share, requirements, engine_options):
    """(stats, header) of a restore through the pool the policy picks (pool.select), or
    (None, header) after one log line saying why the file serves instead; (None, None) when no
    pool is asked for. The destination is checked against the snapshot before the pool is asked."""
    from .pool import PoolUnavailable, restore_tensors, select
    try:
        socket = select(pool, next(iter(tensors.values())).device)
    except PoolUnavailable as e:
        log.info("thaw: %s; restoring from the file", e)
        return None, None
    if socket is None:
        return None, None
    header = _check_call(path, list(tensors.items()), requirements)
    try:
        regions = {t["name"] for t in header["tensors"]}
        fill, share = fill_share
        stats = restore_tensors({n: t for n, t in tensors.items() if n in regions}, path, socket, fill, share, **engine_options)
        return dict(stats, source="pool"), header
    except PoolUnavailable as e:
        log.info("thaw: %s; restoring from the file", e)
        return None, header


def snapshot_targets(tensors: dict, path, header, strict: bool = True):
    """Which destination tensors a snapshot fills: ({name: tensor} of its regions, {alias: original}).
    With strict, the snapshot (its tensors and their recorded aliases) and the destination
    must hold the same names."""
    regions = {t["name"] for t in header["tensors"]}
    aliases = json.loads(header["metadata"].get(ALIASES_KEY, "{}"))
    known = regions | set(aliases)
    if strict:
        missing = sorted(set(tensors) - known)
        unexpected = sorted(known - set(tensors))
        if missing or unexpected:
            raise ThawMismatchError(
                f"{path}: snapshot and destination differ: missing from the snapshot {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, not in the destination {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''}")
    return {n: t for n, t in tensors.items() if n in regions}, aliases


def copy_untied_aliases(tensors: dict, aliases: dict) -> None:
    """An alias whose destination is not tied to its original gets the original's bytes."""
    for alias, original in aliases.items():
        if alias in tensors and original in tensors and tensors[alias].data_ptr() != tensors[original].data_ptr():
            tensors[alias].copy_(tensors[original])


def restore_into(module_or_state_dict, path, strict: bool = True, pool=None, **engine_options) -> dict:
    """Restores a snapshot in place into the tensors of a module or a state dict.

    Every destination must match the snapshot's dtype and shape; destinations that are not
    contiguous are filled through contiguous staging copies. With strict, the snapshot (its
    tensors and their recorded aliases) and the destination must hold the same names;
    without, names the snapshot lacks are left alone. Returns {"bytes", "seconds", "gbps",
    "source"}, source being "pool" or "file" (what served the bytes).
    engine_options: io ("auto"|"buffered"|"direct"|"zerocopy"), verify (default: when the snapshot
    records checksums; False skips them), threads, chunk_bytes, staging_bytes, borrow (restores from
    the file: other devices whose host links carry a share, forwarded device to device: "auto" every
    other device, "off" (the default), [ordinals], or {"devices", "weights", "lanes"}; $THAW_BORROW
    overrides it; stats "links" and "links_summary" say which links served how many bytes;
    docs/MULTI_GPU.md, "Borrowed links").
    pool: "auto" (this user's automatic pool, started when none runs), "off" or False, a `thaw pool`
    socket path (True: the default one); None (the default): $THAW_POOL, else "auto" for CUDA
    destinations and off for CPU ones (docs/POOL.md, "Automatic mode"). A pool that does
    not hold the snapshot reads it into its memory while serving this restore (stats "via":
    "pool fill"; the next restore is a "pool hit"), unless pool_fill=False; when no pool can serve,
    one log line says why and the file is read instead. On a hit this process maps the pool's
    shared host copy and copies from it itself (stats "shared"), unless pool_share=False or
    THAW_POOL_SHARE=off (the pool then copies into this process's memory by IPC handle).
    """
    return restore_checked(module_or_state_dict, path, strict, pool, **engine_options)[0]


def _arena_views(header, device, aligned: bool) -> dict:
    """Tensors as views of one allocation; aligned: each at its own 256-byte boundary
    (safetensors offsets need not suit every dtype), else at the snapshot's offsets."""
    layout, end = [], 0
    for t in header["tensors"]:
        offset = (end + 255) // 256 * 256 if aligned else t["offset"]
        layout.append((t, offset))
        end = offset + t["length"]
    size = end if aligned else header["file_length"] - header["data_offset"]
    arena = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
    return {t["name"]: arena[o:o + t["length"]].view(torch_dtype(t["dtype"])).reshape(t["shape"]) for t, o in layout}


def load_state_dict(path, device="cpu", pool=None, **engine_options) -> dict:
    """Restores a snapshot into new tensors on device.

    The tensors are views of one allocation laid out as the snapshot's data section:
    one allocation instead of hundreds, and copies that run across tensor boundaries.
    Their memory is released when the last of them is. Aliases are views of their original.
    pool, pool_fill, pool_share: as for restore_into (CUDA: the automatic pool by default).
    """
    header = info(path)
    state = _arena_views(header, torch.device(device), aligned=False)
    borrow = engine_options.pop("borrow", None)
    asks = _pool_asks(engine_options)
    stats = None
    if state:
        stats, _ = _restore_through_pool(state, path, pool, asks, _requirements(True, None, None), engine_options)
    if stats is None:
        stats, _ = _restore(path, state, False, engine_options, borrow=borrow)
        stats["source"] = "file"
    log.info("thaw: loaded %d bytes from %s (%s) in %.3f s (%.2f GB/s)%s", stats["bytes"], path, stats["source"],
             stats["seconds"], stats["gbps"], borrowed_links.log_suffix(stats))
    for alias, original in json.loads(header["metadata"].get(ALIASES_KEY, "{}")).items():
        state[alias] = state[original]
    return state


def load_safetensors(path, device="cpu", **engine_options) -> dict:
    """Streams one plain safetensors file into new tensors on device through the engine."""
    if engine_options.pop("borrow", None) not in (None, "off", False):
        raise ValueError("borrow applies to snapshot restores, not to streaming a safetensors checkpoint")
    header = _native.safetensors_info(path)
    state = _arena_views(header, torch.device(device), aligned=True)
    engine_options.pop("verify", None)  # safetensors records no checksums
    engine_options.pop("pool", None)    # pools hold snapshots, not checkpoints
    _restore(path, state, True, engine_options)
    return state


def checkpoint_shards(checkpoint) -> list:
    """The safetensors files of a Hugging Face checkpoint directory (or the one file given)."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        return [checkpoint]
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [checkpoint / n for n in names]
    shards = sorted(checkpoint.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors files in {checkpoint}")
    return shards


def iter_checkpoint(checkpoint, device="cpu", **engine_options):
    """Yields (name, tensor) for every tensor of a checkpoint, one shard at a time in
    device memory: what a model's load_weights consumes, read at engine speed."""
    for shard in checkpoint_shards(checkpoint):
        state = load_safetensors(shard, device, **engine_options)
        yield from state.items()
        del state


def freeze(module_or_state_dict, path, metadata=None, tp_rank=0, tp_world_size=1, **engine_options) -> None:
    """Writes the tensors of a module or state dict into a snapshot, atomically.

    Tensors that share memory (tied weights) are written once; the other names are
    recorded as aliases (metadata "thaw.aliases") and restored from the one copy.
    """
    tensors = _tensors_of(module_or_state_dict)
    keep, aliases, canonical = {}, {}, {}
    for name, tensor in tensors.items():
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() > 0 and key in canonical:
            aliases[name] = canonical[key]
            continue
        canonical[key] = name
        keep[name] = tensor.contiguous()
    # One engine writes the file: the few tensors on another device (a model's CPU-side
    # index tensors, say) are copied to the device most of the bytes are on.
    by_device = {}
    for t in keep.values():
        by_device[t.device] = by_device.get(t.device, 0) + t.numel() * t.element_size()
    device = max(by_device, key=by_device.get) if by_device else torch.device("cpu")
    keep = {n: t if t.device == device else t.to(device) for n, t in keep.items()}
    metadata = dict(metadata or {})
    if aliases:
        metadata[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    names = list(keep)
    _native.freeze(
        path, _device_request(device, **engine_options), names,
        [thaw_dtype(keep[n].dtype) for n in names], [list(keep[n].shape) for n in names],
        [keep[n].data_ptr() for n in names], metadata, tp_rank, tp_world_size)
