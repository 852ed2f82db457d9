"""Restore snapshots into PyTorch tensors and freeze tensors into snapshots.

CPU tensors go through the mock device (host memory); CUDA tensors through the
CUDA engine on their own device, in the primary context that PyTorch shares.
"""
import logging

import torch

from . import _native
from .errors import ThawMismatchError

log = logging.getLogger("thaw_vllm")

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


def _device_request(device: torch.device, **engine_options):
    if device.type == "cuda":
        ordinal = device.index if device.index is not None else torch.cuda.current_device()
        return _native.make_request(_native.DEVICE_CUDA, ordinal, **engine_options)
    if device.type == "cpu":
        return _native.make_request(_native.DEVICE_MOCK, 0, **engine_options)
    raise ValueError(f"Thaw restores into cuda or cpu tensors, not {device.type}")


def _tensors_of(module_or_state_dict) -> dict:
    if isinstance(module_or_state_dict, torch.nn.Module):
        # Every name of every parameter and buffer (non-persistent ones too, aliases of
        # tied weights too); walked by hand since older torch lacks remove_duplicate here.
        named = {}
        for prefix, module in module_or_state_dict.named_modules(remove_duplicate=False):
            owned = list(module._parameters.items()) + list(module._buffers.items())
            for name, tensor in owned:
                if tensor is not None:
                    named[f"{prefix}.{name}" if prefix else name] = tensor.data
        return named
    return dict(module_or_state_dict)


def info(path) -> dict:
    """The snapshot's header: tensors (name, dtype, shape, offset, length, crc32c), metadata, rank."""
    return _native.snapshot_info(path)


def restore_into(module_or_state_dict, path, strict: bool = True, **engine_options) -> dict:
    """Restores a snapshot in place into the tensors of a module or a state dict.

    Every destination must be contiguous and match the snapshot's dtype and shape.
    With strict, the snapshot and the destination must hold the same names.
    Returns {"bytes", "seconds", "gbps"} summed over devices.
    engine_options: io ("auto"|"buffered"|"direct"), verify, threads, chunk_bytes, staging_bytes.
    """
    tensors = _tensors_of(module_or_state_dict)
    header = info(path)
    in_snapshot = {t["name"] for t in header["tensors"]}
    missing = sorted(set(tensors) - in_snapshot)
    unexpected = sorted(in_snapshot - set(tensors))
    if strict and (missing or unexpected):
        raise ThawMismatchError(
            f"{path}: snapshot and destination differ: missing from the snapshot {missing[:5]}, "
            f"not in the destination {unexpected[:5]}")
    by_device = {}
    seen_storage = {}
    for name, tensor in tensors.items():
        if name not in in_snapshot:
            continue
        if not tensor.is_contiguous():
            raise ThawMismatchError(f"{path}: destination tensor '{name}' is not contiguous")
        # Tied parameters share storage: restore each storage once.
        key = (tensor.device, tensor.data_ptr(), tensor.numel())
        if key in seen_storage:
            continue
        seen_storage[key] = name
        by_device.setdefault(tensor.device, []).append((name, tensor))
    total_bytes, total_seconds = 0, 0.0
    for device, items in by_device.items():
        stats = _native.restore(
            path, _device_request(device, **engine_options),
            [n for n, _ in items], [thaw_dtype(t.dtype) for _, t in items],
            [list(t.shape) for _, t in items], [t.data_ptr() for _, t in items],
            [t.numel() * t.element_size() for _, t in items])
        total_bytes += stats.bytes
        total_seconds += stats.seconds
    gbps = total_bytes / total_seconds / 1e9 if total_seconds > 0 else 0.0
    log.info("thaw: restored %d bytes from %s in %.3f s (%.2f GB/s)", total_bytes, path, total_seconds, gbps)
    return {"bytes": total_bytes, "seconds": total_seconds, "gbps": gbps}


def load_state_dict(path, device="cpu", **engine_options) -> dict:
    """Restores a snapshot into new tensors on device.

    The tensors are views of one allocation laid out as the snapshot's data section:
    one allocation instead of hundreds, and copies that run across tensor boundaries.
    Their memory is released when the last of them is.
    """
    device = torch.device(device)
    header = info(path)
    arena = torch.empty(header["file_length"] - header["data_offset"], dtype=torch.uint8, device=device)
    state = {}
    for t in header["tensors"]:
        region = arena[t["offset"]:t["offset"] + t["length"]]
        state[t["name"]] = region.view(torch_dtype(t["dtype"])).reshape(t["shape"])
    restore_into(state, path, strict=True, **engine_options)
    return state


def freeze(module_or_state_dict, path, metadata=None, tp_rank=0, tp_world_size=1, **engine_options) -> None:
    """Writes the tensors of a module or state dict into a snapshot, atomically."""
    tensors = _tensors_of(module_or_state_dict)
    keep = {}
    devices = set()
    for name, tensor in tensors.items():
        keep[name] = tensor.contiguous()
        devices.add(keep[name].device)
    if len(devices) > 1:
        raise ValueError(f"freeze needs all tensors on one device, found {sorted(map(str, devices))}")
    device = devices.pop() if devices else torch.device("cpu")
    names = list(keep)
    _native.freeze(
        path, _device_request(device, **engine_options), names,
        [thaw_dtype(keep[n].dtype) for n in names], [list(keep[n].shape) for n in names],
        [keep[n].data_ptr() for n in names], metadata, tp_rank, tp_world_size)
