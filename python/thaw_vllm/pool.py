"""Client of `thaw pool serve` (docs/POOL.md): restores by asking the pool, which holds the
snapshot in pinned host memory, to copy it into this process's GPU memory through CUDA
IPC handles. The bytes never pass through this process."""
import base64
import json
import logging
import os
import socket as sockets
from pathlib import Path

from . import _native
from .errors import from_code

log = logging.getLogger("thaw_vllm")


class PoolUnavailable(Exception):
    """No pool is listening, or it does not hold the snapshot: restore from the file instead."""


def default_socket() -> str:
    return _native.pool_default_socket()


def request(message: dict, socket_path=None) -> dict:
    path = str(socket_path or default_socket())
    try:
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(json.dumps(message).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                part = s.recv(1 << 16)
                if not part:
                    raise PoolUnavailable(f"the pool on {path} closed the connection")
                reply += part
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise PoolUnavailable(f"no pool on {path} ({e.strerror})") from None
    response = json.loads(reply)
    if not response["ok"]:
        if response["kind"] == 3:  # not found: the pool does not hold it
            raise PoolUnavailable(response["error"])
        raise from_code(-response["kind"], response["error"])
    return response


def cuda_target(name, tensor) -> dict:
    """The IPC handle of the allocation under a CUDA tensor, and the tensor's offset in it."""
    storage = tensor.untyped_storage() if hasattr(tensor, "untyped_storage") else tensor.storage()._untyped()
    shared = storage._share_cuda_()
    handle, storage_offset = shared[1], shared[3]
    if len(handle) > 64:
        # Newer torch prefixes the 64-byte cudaIpcMemHandle with its own version/type bytes.
        if b"e" in handle[:len(handle) - 64]:
            raise PoolUnavailable("tensors in expandable segments have no CUDA IPC handle the pool can open")
        handle = handle[-64:]
    offset = storage_offset + tensor.storage_offset() * tensor.element_size()
    return {"name": name, "handle": base64.b64encode(handle).decode(), "offset": offset,
            "capacity": tensor.numel() * tensor.element_size()}


def restore_targets(snapshot, targets, socket_path=None) -> dict:
    """Asks the pool to restore [{"name", "handle" (base64), "offset", "capacity"}]."""
    return request({"op": "restore", "snapshot": os.path.abspath(snapshot), "targets": targets}, socket_path)


def restore_tensors(tensors: dict, snapshot, socket_path=None) -> dict:
    """Restores CUDA tensors through the pool; raises PoolUnavailable to fall back."""
    if any(t.device.type != "cuda" for t in tensors.values()):
        raise PoolUnavailable("the pool restores into CUDA tensors only")
    response = restore_targets(snapshot, [cuda_target(n, t) for n, t in tensors.items()], socket_path)
    seconds = response["seconds"]
    return {"bytes": response["bytes"], "seconds": seconds, "gbps": response["bytes"] / seconds / 1e9 if seconds else 0.0}


def load(snapshot, socket_path=None) -> dict:
    return request({"op": "load", "snapshot": os.path.abspath(snapshot)}, socket_path)


def status(socket_path=None) -> dict:
    return request({"op": "status"}, socket_path)
