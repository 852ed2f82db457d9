"""KV-cache snapshots (docs/FORMAT.md, "KV-cache snapshots"): ordinary Thaw snapshots of kind
"kv-cache", so checksums, atomic writes, the pipelined restore and the pool come with them.

This module holds what the transformers and vLLM paths share: the prefix hash, the metadata a
writer records, the validated description a reader gets (validated once, in libthaw), and the
check that names the first field in which a snapshot and the restoring model differ.
"""
import ctypes
import hashlib
import json
import struct

from . import _native
from .errors import ThawMismatchError

KIND_KEY = "thaw.kind"
KIND = "kv-cache"
DESCRIPTION_KEY = "thaw.kv"
DESCRIPTION_VERSION = 1
HASH = "sha256-chain-v1"
TRANSFORMERS = "transformers"
VLLM_PREFIX = "vllm/"
_HASH_DOMAIN = b"thaw.kv.sha256-chain-v1\n"


def tokens_region(prefix: int) -> str:
    return f"p{prefix}.tokens"


def keys_region(prefix: int, layer: int) -> str:
    return f"p{prefix}.l{layer}.k"


def values_region(prefix: int, layer: int) -> str:
    return f"p{prefix}.l{layer}.v"


def paged_region(prefix: int, layer: int) -> str:
    return f"p{prefix}.l{layer}"


def block_hashes(model: str, token_ids, block_size: int) -> list:
    """The sha256-chain-v1 digest of every block of token_ids (the last may be partial).
    The same in every process: it depends on the token ids and the model fingerprint only."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, not {block_size}")
    parent = hashlib.sha256(_HASH_DOMAIN + model.encode("utf-8")).digest()
    token_ids = [int(t) for t in token_ids]
    hashes = []
    for start in range(0, len(token_ids), block_size):
        block = token_ids[start:start + block_size]
        parent = hashlib.sha256(parent + struct.pack(f"<I{len(block)}q", len(block), *block)).digest()
        hashes.append(parent.hex())
    return hashes


def metadata(*, model: str, tensor_layout: str, layers: int, kv_heads: int, head_dim: int, dtype: str,
             block_size: int, prefixes: list, block_dim=None, layer_names=None) -> dict:
    """The metadata of a KV snapshot; prefixes: the token ids of each saved prefix."""
    description = {
        "version": DESCRIPTION_VERSION, "hash": HASH, "model": model, "tensor_layout": tensor_layout,
        "layers": int(layers), "kv_heads": int(kv_heads), "head_dim": int(head_dim), "dtype": dtype,
        "block_size": int(block_size),
        "prefixes": [{"tokens": len(ids), "block_hashes": block_hashes(model, ids, block_size)} for ids in prefixes],
    }
    if block_dim is not None:
        description["block_dim"] = int(block_dim)
    if layer_names is not None:
        description["layer_names"] = list(layer_names)
    return {KIND_KEY: KIND, DESCRIPTION_KEY: json.dumps(description, sort_keys=True)}


def info(path) -> dict:
    """A KV snapshot's validated description: model, hash, tensor_layout, layers, kv_heads, head_dim,
    dtype, block_size (block_dim, layer_names for vLLM layouts), prefixes [{index, tokens, block_hashes}].
    Raises ThawFormatError for a weights snapshot or a description that disagrees with its regions."""
    lib = _native.library()
    lib.thaw_kv_info.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.thaw_kv_info.restype = ctypes.c_int
    return _native._describe("thaw_kv_info", path)


def check(path, description: dict, expected: dict) -> None:
    """Raises ThawMismatchError naming the first field in which the snapshot and the restoring side differ."""
    for field, value in expected.items():
        if description.get(field) != value:
            raise ThawMismatchError(f"{path}: KV snapshot has {field}={description.get(field)!r}, "
                                    f"the restoring model has {field}={value!r}")
