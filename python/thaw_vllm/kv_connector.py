"""ThawKVConnector: vLLM's prefix blocks saved to KV snapshots and loaded by any later engine.

    --kv-transfer-config '{"kv_connector": "ThawKVConnector", "kv_role": "kv_both",
                           "kv_connector_extra_config": {"snapshot_dir": "/path/kv"}}'

(registered by the thaw plugin; without it add "kv_connector_module_path": "thaw_vllm.kv_connector").
A producer (kv_producer, kv_both) saves the whole blocks of each prompt of at least min_tokens
tokens once they are computed, one snapshot per prompt and tensor-parallel rank, named by the
prefix hash. A consumer (kv_consumer, kv_both) asked for a new request finds the longest saved
prefix of its prompt by its block hashes (sha256-chain-v1 of the token ids and the model: stable
across processes, no PYTHONHASHSEED) and loads those blocks instead of recomputing them. A load
that fails (missing rank file, checksum, another layout) reports its blocks to vLLM, whose
kv_load_failure_policy then recomputes them or fails the request.

Loads and saves are synchronous: the whole load in start_load_kv, the whole save in wait_for_save.
"""
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1, KVConnectorMetadata,
                                                               KVConnectorRole)

from . import kv, torch_io
from .errors import ThawError, ThawMismatchError

log = logging.getLogger("thaw_vllm")

NAME = "ThawKVConnector"
SAVE_MODES = ("all", "requested", "none")
_OPTIONS = {"snapshot_dir": None, "save": "all", "min_tokens": 256, "staging_mib": 1024, "verify": True}
SAVE_PARAM = "thaw_save"  # kv_transfer_params of a request: {"thaw_save": true} with save="requested"


def register() -> None:
    """Makes --kv-transfer-config '{"kv_connector": "ThawKVConnector", ...}' find this class."""
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    if NAME not in getattr(KVConnectorFactory, "_registry", {}):
        KVConnectorFactory.register_connector(NAME, __name__, "ThawKVConnector")


def options(extra_config: dict) -> dict:
    """kv_connector_extra_config, validated: unknown keys and impossible values are errors."""
    unknown = sorted(set(extra_config) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"{NAME}: unknown kv_connector_extra_config keys {unknown} (known: {sorted(_OPTIONS)})")
    merged = {**_OPTIONS, **extra_config}
    if not merged["snapshot_dir"]:
        raise ValueError(f"{NAME}: kv_connector_extra_config needs 'snapshot_dir', the folder of the KV snapshots")
    if merged["save"] not in SAVE_MODES:
        raise ValueError(f"{NAME}: 'save' must be one of {SAVE_MODES}, not {merged['save']!r}")
    for key in ("min_tokens", "staging_mib"):
        if not isinstance(merged[key], int) or isinstance(merged[key], bool) or not 1 <= merged[key] <= 1 << 24:
            raise ValueError(f"{NAME}: '{key}' must be an integer 1..{1 << 24}, not {merged[key]!r}")
    if not isinstance(merged["verify"], bool):
        raise ValueError(f"{NAME}: 'verify' must be true or false, not {merged['verify']!r}")
    merged["snapshot_dir"] = Path(merged["snapshot_dir"])
    return merged


def model_id(vllm_config) -> str:
    """The model fingerprint in a vLLM layout's prefix hashes: the same for the scheduler and every
    rank (the rank itself is checked by the snapshot's preamble and file name)."""
    from .vllm_config import _config_digest
    model_config = vllm_config.model_config
    hf_config = getattr(model_config, "hf_config", None)
    facts = {
        "config_sha256": _config_digest(hf_config) if hf_config is not None else "",
        "dtype": str(getattr(model_config, "dtype", "")),
        "quantization": str(getattr(model_config, "quantization", None)),
        "kv_cache_dtype": str(getattr(getattr(vllm_config, "cache_config", None), "cache_dtype", "auto")),
        "tp_world_size": vllm_config.parallel_config.tensor_parallel_size,
        "pp_world_size": getattr(vllm_config.parallel_config, "pipeline_parallel_size", 1),
    }
    architectures = ",".join(getattr(hf_config, "architectures", None) or []) or "unknown"
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return f"vllm:{architectures}:{digest}"


def rank_path(directory: Path, stem: str, tp_rank: int, tp_world: int) -> Path:
    return directory / (f"{stem}.thaw" if tp_world == 1 else f"{stem}.rank{tp_rank}.thaw")


@dataclasses.dataclass
class LoadJob:
    request_id: str
    stem: str
    first_block: int          # blocks of the file before this one were computed locally
    block_ids: list           # where the file's blocks [first_block, first_block + len) go
    block_hashes: list        # the request's hashes of blocks [0, first_block + len)


@dataclasses.dataclass
class SaveJob:
    request_id: str
    stem: str
    token_ids: list
    block_ids: list


@dataclasses.dataclass
class ThawKVMetadata(KVConnectorMetadata):
    loads: list = dataclasses.field(default_factory=list)
    saves: list = dataclasses.field(default_factory=list)


class PrefixIndex:
    """Block hash → (snapshot stem, block position) over the snapshot folder, rescanned when the
    folder changes (writers publish by rename, which changes its mtime)."""

    def __init__(self, directory: Path, model: str, tp_world: int):
        self.directory, self.model, self.tp_world = directory, model, tp_world
        self._mtime = None
        self._scanned = set()
        self._blocks = {}

    def refresh(self) -> None:
        try:
            mtime = self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        suffix = ".thaw" if self.tp_world == 1 else ".rank0.thaw"
        for entry in os.scandir(self.directory):
            if not entry.name.endswith(suffix) or entry.name.startswith(".") or entry.name in self._scanned:
                continue
            self._scanned.add(entry.name)
            try:
                description = kv.info(entry.path)
            except (ThawError, OSError) as e:
                log.warning("thaw kv: skipping %s: %s", entry.path, e)
                continue
            if description["model"] != self.model:
                continue
            stem = entry.name[:-len(suffix)]
            for position, block_hash in enumerate(description["prefixes"][0]["block_hashes"]):
                self._blocks.setdefault(block_hash, (stem, position))

    def longest(self, hashes: list):
        """(stem, blocks) of the snapshot holding the longest prefix of hashes, or (None, 0). A chained
        hash at position i matches only when every block before it does, so the file that holds the
        last matching hash holds the whole matched prefix."""
        matched = 0
        while matched < len(hashes) and self._blocks.get(hashes[matched], (None, -1))[1] == matched:
            matched += 1
        return (self._blocks[hashes[matched - 1]][0], matched) if matched else (None, 0)

    def has(self, block_hash: str) -> bool:
        return block_hash in self._blocks


def paged_view(cache: torch.Tensor, num_blocks: int):
    """A layer's KV cache as stored in memory (the backend's logical shape permuted by its stride
    order, e.g. FlashAttention's (blocks, heads, block, 2·head) stored NHD as (blocks, block, heads,
    2·head)) and which of its dimensions counts blocks."""
    order = sorted(range(cache.dim()), key=lambda d: (-cache.stride(d), d))
    physical = cache.permute(*order)
    if not physical.is_contiguous():
        raise ValueError(f"KV cache of shape {tuple(cache.shape)} and strides {cache.stride()} is not one dense tensor")
    candidates = [i for i, d in enumerate(order) if cache.shape[d] == num_blocks]
    if not candidates:
        raise ValueError(f"KV cache of shape {tuple(cache.shape)} has no dimension of {num_blocks} blocks")
    return physical, candidates[0]


class ThawKVConnector(KVConnectorBase_V1):

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._options = options(dict(self._kv_transfer_config.kv_connector_extra_config))
        self._block_size = vllm_config.cache_config.block_size
        self._model = model_id(vllm_config)
        self._tp_world = vllm_config.parallel_config.tensor_parallel_size
        if getattr(vllm_config.parallel_config, "pipeline_parallel_size", 1) != 1:
            raise ValueError(f"{NAME} supports tensor parallelism only (pipeline_parallel_size must be 1)")
        self._producer = self._kv_transfer_config.is_kv_producer
        self._consumer = self._kv_transfer_config.is_kv_consumer
        self._directory = self._options["snapshot_dir"]
        # scheduler side
        self._index = PrefixIndex(self._directory, self._model, self._tp_world)
        self._requests = {}
        self._pending_loads = {}
        self._loads = []
        # worker side
        self._caches = {}
        self._save_buffers = {}
        self._load_errors = set()

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a dropped save is a future cache miss, never a lost request

    # ---- scheduler side -------------------------------------------------------------------

    def _prompt_hashes(self, request) -> list:
        state = self._requests.setdefault(request.request_id, {"block_ids": [], "computed": 0, "save_blocks": 0})
        if "hashes" not in state:
            tokens = list(request.prompt_token_ids or [])
            state["tokens"] = tokens
            state["hashes"] = kv.block_hashes(self._model, tokens[:len(tokens) // self._block_size * self._block_size],
                                              self._block_size)
        return state["hashes"]

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        if not self._consumer:
            return 0, False
        hashes = self._prompt_hashes(request)
        # At least one prompt token is always computed here (vLLM needs its logits).
        usable = (len(request.prompt_token_ids or []) - 1) // self._block_size
        self._index.refresh()
        stem, blocks = self._index.longest(hashes[:usable])
        if blocks * self._block_size <= num_computed_tokens:
            return 0, False
        self._pending_loads[request.request_id] = (stem, blocks, num_computed_tokens)
        return blocks * self._block_size - num_computed_tokens, False

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        hashes = self._prompt_hashes(request)
        state = self._requests[request.request_id]
        state["block_ids"] = list(blocks.get_block_ids()[0])
        pending = self._pending_loads.pop(request.request_id, None)
        if num_external_tokens > 0 and pending is not None:
            stem, matched, local_tokens = pending
            first = local_tokens // self._block_size
            count = num_external_tokens // self._block_size
            self._loads.append(LoadJob(request.request_id, stem, first, state["block_ids"][first:first + count],
                                       hashes[:first + count]))
        if self._producer and not state["save_blocks"] and self._wants_save(request, hashes):
            state["save_blocks"] = len(hashes)

    def _wants_save(self, request, hashes) -> bool:
        mode = self._options["save"]
        if mode == "none" or len(hashes) * self._block_size < self._options["min_tokens"] or not hashes:
            return False
        if mode == "requested" and not (getattr(request, "kv_transfer_params", None) or {}).get(SAVE_PARAM):
            return False
        self._index.refresh()
        return not self._index.has(hashes[-1])

    def build_connector_meta(self, scheduler_output):
        meta = ThawKVMetadata(loads=self._loads)
        self._loads = []
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            state = self._requests.get(new.req_id)
            if state is not None:
                state["block_ids"] = list(new.block_ids[0])
                state["computed"] = new.num_computed_tokens + scheduled.get(new.req_id, 0)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self._requests.get(req_id)
            if state is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                state["block_ids"] = list(new_ids[0]) if new_ids is not None else []
            elif new_ids is not None:
                state["block_ids"].extend(new_ids[0])
            state["computed"] = cached.num_computed_tokens[i] + scheduled.get(req_id, 0)
        for req_id, state in self._requests.items():
            blocks = state["save_blocks"]
            # Saved in the step that computes the prompt's last whole block (chunked prefill may take several).
            if blocks and state["computed"] >= blocks * self._block_size and len(state["block_ids"]) >= blocks:
                meta.saves.append(SaveJob(req_id, state["hashes"][blocks - 1], state["tokens"][:blocks * self._block_size],
                                          state["block_ids"][:blocks]))
                state["save_blocks"] = -1  # saved
        return meta

    def request_finished(self, request, block_ids):
        self._requests.pop(request.request_id, None)
        self._pending_loads.pop(request.request_id, None)
        return False, None

    # ---- worker side ----------------------------------------------------------------------

    def register_kv_caches(self, kv_caches):
        num_blocks = getattr(self._kv_cache_config, "num_blocks", None)
        first = next(iter(kv_caches.values()))
        if num_blocks is None:
            num_blocks = first.shape[0]
        self._caches = {}
        for name, cache in kv_caches.items():
            physical, block_dim = paged_view(cache, num_blocks)
            self._caches[name] = (physical, block_dim)
        shapes = {(tuple(p.shape[:d] + p.shape[d + 1:]), d, p.dtype) for p, d in self._caches.values()}
        if len(shapes) != 1:
            raise ValueError(f"{NAME} needs every layer's KV cache in one layout; this engine has {sorted(map(str, shapes))}")
        (per_block, block_dim, dtype), = shapes
        model_config = self._vllm_config.model_config
        backend = getattr(getattr(self._vllm_config, "attention_config", None), "backend", None)
        dims = [str(n) for n in per_block]
        dims.insert(block_dim, "B")  # e.g. FlashAttention NHD: Bx16x8x256 (blocks, block, heads, 2·head)
        order = "x".join(dims)
        self._layout = {
            "tensor_layout": f"vllm/{getattr(backend, 'name', backend) or 'auto'}/{order}",
            "layers": len(self._caches), "kv_heads": model_config.get_num_kv_heads(self._vllm_config.parallel_config),
            "head_dim": model_config.get_head_size(), "dtype": torch_io.thaw_dtype(dtype),
            "block_size": self._block_size, "block_dim": block_dim, "layer_names": list(self._caches),
            "model": self._model,
        }

    def _rank(self) -> int:
        if self._tp_world == 1:
            return 0
        from vllm.distributed import get_tensor_model_parallel_rank
        return get_tensor_model_parallel_rank()

    def start_load_kv(self, forward_context, **kwargs):
        metadata = self._get_connector_metadata()
        for job in metadata.loads:
            path = rank_path(self._directory, job.stem, self._rank(), self._tp_world)
            try:
                self._load(path, job)
            except (ThawError, OSError, ValueError) as e:
                log.warning("thaw kv: loading %d blocks of request %s from %s failed: %s", len(job.block_ids),
                            job.request_id, path, e)
                self._load_errors.update(job.block_ids)

    def _load(self, path: Path, job: LoadJob) -> None:
        description = kv.info(path)
        kv.check(path, description, self._layout)
        recorded = description["prefixes"][0]["block_hashes"]
        if recorded[:len(job.block_hashes)] != job.block_hashes:
            raise ThawMismatchError(f"{path}: holds another prefix than the one it was chosen for")
        first, count = job.first_block, len(job.block_ids)
        caches = list(self._caches.values())
        device = caches[0][0].device
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the engine writes from its own streams
        block_bytes = caches[0][0].numel() // caches[0][0].shape[caches[0][1]] * caches[0][0].element_size()
        budget = self._options["staging_mib"] << 20
        per_group = max(1, budget // max(1, block_bytes * len(recorded)))  # layers restored at once
        destination = torch.tensor(job.block_ids, dtype=torch.int64, device=device)
        for start in range(0, len(caches), per_group):
            group = range(start, min(start + per_group, len(caches)))
            staging = {}
            for layer in group:
                physical, block_dim = caches[layer]
                shape = list(physical.shape)
                shape[block_dim] = len(recorded)
                staging[kv.paged_region(0, layer)] = torch.empty(shape, dtype=physical.dtype, device=device)
            torch_io.restore_into(staging, path, strict=False, verify=self._options["verify"])
            for layer in group:
                physical, block_dim = caches[layer]
                source = staging[kv.paged_region(0, layer)].narrow(block_dim, first, count)
                physical.index_copy_(block_dim, destination, source)

    def wait_for_layer_load(self, layer_name):
        return  # start_load_kv has loaded every layer

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        if not self.has_connector_metadata():
            return
        for job in self._get_connector_metadata().saves:
            if layer_name not in self._caches:
                continue
            physical, block_dim = self._caches[layer_name]
            ids = torch.tensor(job.block_ids, dtype=torch.int64, device=physical.device)
            self._save_buffers.setdefault(job.request_id, {})[layer_name] = physical.index_select(block_dim, ids)

    def wait_for_save(self):
        if not self.has_connector_metadata():
            return
        for job in self._get_connector_metadata().saves:
            buffers = self._save_buffers.pop(job.request_id, {})
            path = rank_path(self._directory, job.stem, self._rank(), self._tp_world)
            if set(buffers) != set(self._caches) or path.exists():
                continue
            try:
                self._save(path, job, buffers)
            except (ThawError, OSError, ValueError) as e:
                log.warning("thaw kv: saving request %s's prefix to %s failed: %s", job.request_id, path, e)
        self._save_buffers.clear()

    def _save(self, path: Path, job: SaveJob, buffers: dict) -> None:
        names = list(self._caches)
        device = buffers[names[0]].device
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the gathers above run on torch's stream
        regions = {kv.paged_region(0, i): buffers[name] for i, name in enumerate(names)}
        regions[kv.tokens_region(0)] = torch.tensor(job.token_ids, dtype=torch.int64, device=device)
        layout = self._layout
        meta = kv.metadata(model=self._model, tensor_layout=layout["tensor_layout"], layers=layout["layers"],
                           kv_heads=layout["kv_heads"], head_dim=layout["head_dim"], dtype=layout["dtype"],
                           block_size=self._block_size, prefixes=[job.token_ids], block_dim=layout["block_dim"],
                           layer_names=names)
        self._directory.mkdir(parents=True, exist_ok=True)
        torch_io.freeze(regions, path, metadata=meta, tp_rank=self._rank(), tp_world_size=self._tp_world)
        log.info("thaw kv: saved %d tokens of request %s to %s", len(job.token_ids), job.request_id, path)

    def get_block_ids_with_load_errors(self):
        errors, self._load_errors = self._load_errors, set()
        return errors
