"""Restores through `thaw pool` (docs/POOL.md), which holds snapshots in pinned host memory and
copies them into this process's GPU memory by CUDA IPC handle. A thin call into libthaw: this
process hands over device pointers only; the pool client, the protocol and the IPC handles (the
core's own, on the base of each allocation) live in src/Thaw.Interop/Pool. The bytes never pass
through this process, and the memory stays torch's to free."""
import logging

from . import _native
from .errors import ThawPoolUnavailable as PoolUnavailable

log = logging.getLogger("thaw_vllm")

__all__ = ["PoolUnavailable", "default_socket", "select", "restore_tensors", "load", "evict", "status"]


def default_socket() -> str:
    """The socket load, evict, status and restore_tensors talk to when given none: $THAW_POOL_SOCKET,
    else this user's automatic pool's (the one pool="auto" uses) when its socket exists, else the
    fixed per-user default (docs/POOL.md, "Automatic mode"). Looking starts no pool."""
    return _native.pool_default_socket()


def _mode(pool):
    """What the caller said, as libthaw's (mode, socket): None nothing, False or "off" no pool,
    "auto" the automatic pool, True the default socket, else a socket path."""
    if pool is None:
        return _native.POOL_UNSPECIFIED, None
    if pool is False or pool == "off":
        return _native.POOL_OFF, None
    if pool == "auto":
        return _native.POOL_AUTO, None
    return _native.POOL_SOCKET, None if pool is True else str(pool)


def select(pool, device):
    """The socket to restore through for a destination on device, or None for the file; the one
    policy (docs/POOL.md, "Automatic mode") lives in libthaw: pool, else $THAW_POOL, else auto for
    CUDA and off for CPU. The automatic pool is found or started here; raises PoolUnavailable
    (saying why) when it cannot be used."""
    if device.type == "cuda":
        import torch
        kind, ordinal = _native.DEVICE_CUDA, device.index if device.index is not None else torch.cuda.current_device()
    else:
        kind, ordinal = _native.DEVICE_MOCK, 0
    mode, socket = _mode(pool)
    return _native.pool_select(mode, socket, kind, ordinal)


def _socket(socket_path):
    # None reaches libthaw as NULL, which resolves default_socket() itself.
    return None if socket_path in (None, True) else str(socket_path)


def restore_tensors(tensors: dict, snapshot, socket_path=None, fill: bool = True, share: bool = True, **engine_options) -> dict:
    """Restores tensors (all on one device) through the pool (socket_path None: default_socket());
    raises PoolUnavailable to fall back.

    fill: when the pool does not hold the snapshot (or its copy no longer matches the file), it
    reads the file into its memory while serving this restore ("pool fill"); False: it answers
    PoolUnavailable at once and this process restores from the file alone.
    share: on a hit, map the pool's shared host copy and copy from it in this process (any
    memory, no IPC handle, docs/POOL.md "Shared host copies"); False: the pool copies.

    CUDA tensors are served by the IPC handle of their allocation. On the mock device (CPU
    tensors) only memory mapped from a shared file can be served.
    Returns {"bytes", "seconds", "gbps", "source": "pool", "via": "pool hit" or "pool fill", "timings", "opens",
    "shared"}: shared is True when this process copied from the pool's shared host copy itself
    (docs/POOL.md, "Shared host copies"; opens is then "shared", and no handle was opened).
    timings {resolve_s, request_s, pool_s, open_s, wait_s, copy_s, close_s} say where the seconds
    went (docs/POOL.md, "Where a restore's time goes"). engine_options may name mock_device=N:
    the mock device (0-7) CPU tensors stand on, as a GPU's ordinal does for CUDA tensors.
    """
    from .torch_io import _device_request, thaw_dtype
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise PoolUnavailable(f"the pool restores into one device at a time, not {sorted(map(str, devices))}")
    scattered = [n for n, t in tensors.items() if not t.is_contiguous()]
    if scattered:
        raise PoolUnavailable(f"the pool copies into contiguous tensors only, and '{scattered[0]}' is not")
    device = devices.pop() if devices else None
    if device is None:
        return {"bytes": 0, "seconds": 0.0, "gbps": 0.0, "source": "pool", "via": "pool hit"}
    names = list(tensors)
    request = _device_request(device, **engine_options)
    request.pool_flags = (0 if fill else _native.POOL_NO_FILL) | (0 if share else _native.POOL_NO_SHARE)
    stats = _native.pool_restore(
        _socket(socket_path), snapshot, request, names,
        [thaw_dtype(tensors[n].dtype) for n in names], [list(tensors[n].shape) for n in names],
        [tensors[n].data_ptr() for n in names], [tensors[n].numel() * tensors[n].element_size() for n in names])
    return {"bytes": stats.bytes, "seconds": stats.seconds,
            "gbps": stats.bytes / stats.seconds / 1e9 if stats.seconds else 0.0, "source": "pool", "via": stats.source_name,
            "timings": {k: getattr(stats, k) for k in stats.TIMINGS}, "opens": stats.OPEN_ORDERS.get(stats.open_order, "unknown"),
            "allocations": stats.allocations, "shared": stats.source == stats.SHARED_SOURCE}


def load(snapshot, socket_path=None) -> dict:
    """Has the pool read a snapshot into its memory (a no-op when held); socket_path None: default_socket()."""
    return _native.pool_call(_socket(socket_path), "load", snapshot)


def evict(snapshot, socket_path=None) -> dict:
    """Releases a snapshot the pool holds; socket_path None: default_socket()."""
    return _native.pool_call(_socket(socket_path), "evict", snapshot)


def status(socket_path=None) -> dict:
    """What the pool holds: budget_bytes, used_bytes, snapshots [{snapshot, bytes, hits, ...}];
    socket_path None: default_socket(), so with nothing said it describes the automatic pool."""
    return _native.pool_call(_socket(socket_path), "status")
