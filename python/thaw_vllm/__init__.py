"""Thaw: fast cold start for LLM inference.

Snapshots of model weights restored at the speed of the hardware: one pipelined
stream of large aligned reads into pinned memory and asynchronous copies to the GPU.
"""
from ._native import convert, verify
from ._native import snapshot_info as info
from .errors import (ThawCanceledError, ThawChecksumError, ThawDeviceError, ThawError,
                     ThawFormatError, ThawMismatchError, ThawOutOfMemoryError, ThawPoolUnavailable)

__version__ = "0.1.0"


def __getattr__(name):
    # torch is imported only when a torch helper is used, so info/convert/verify work without it.
    if name in ("load_state_dict", "restore_into", "freeze", "load_safetensors", "iter_checkpoint", "module_tensors"):
        from . import torch_io
        return getattr(torch_io, name)
    if name in ("freeze_compiled", "restore_compiled", "freeze_artifacts", "restore_artifacts"):
        from . import artifacts
        return getattr(artifacts, name)
    if name == "from_pretrained":
        from .hf import from_pretrained
        return from_pretrained
    if name in ("freeze_kv", "restore_kv"):
        from . import kv_hf
        return getattr(kv_hf, name)
    if name == "kv_info":
        from .kv import info
        return info
    if name == "publish":
        from .peer import publish
        return publish
    if name in ("multicast_restore", "MulticastGroup", "MulticastError"):
        from . import multicast
        return getattr(multicast, name)
    if name in ("gang_restore", "GangGroup", "GangError"):
        from . import gang
        return getattr(gang, name)
    if name == "tcp_store":
        from .group import tcp_store
        return tcp_store
    if name in ("load", "freeze_vllm", "restore_vllm"):
        from . import vllm_api
        return getattr(vllm_api, name)
    raise AttributeError(name)


__all__ = ["convert", "verify", "info", "load_state_dict", "restore_into", "freeze",
           "load_safetensors", "iter_checkpoint", "module_tensors", "load", "freeze_vllm", "restore_vllm", "from_pretrained",
           "freeze_compiled", "restore_compiled", "freeze_artifacts", "restore_artifacts",
           "freeze_kv", "restore_kv", "kv_info", "publish", "multicast_restore", "MulticastGroup", "MulticastError",
           "gang_restore", "GangGroup", "GangError", "tcp_store",
           "ThawError", "ThawPoolUnavailable", "ThawFormatError", "ThawChecksumError", "ThawMismatchError",
           "ThawDeviceError", "ThawOutOfMemoryError", "ThawCanceledError"]
