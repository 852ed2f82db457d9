"""What ties a snapshot to one vLLM engine layout: the ranks of a worker, the per-rank file
name (the convention of docs/FORMAT.md, "Ranks"), and the fingerprint, which the bridge
compares with the snapshot's metadata before a restore moves any byte."""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ThawMismatchError

FINGERPRINT_PREFIX = "thaw.vllm."


@dataclass(frozen=True)
class Ranks:
    """Where a worker sits in the engine. Expert parallelism spreads the experts over
    ep_world = dp_world * pcp_world * tp_world ranks (vLLM's FusedMoEParallelConfig.make),
    so with it the data-parallel and context-parallel ranks hold different weights."""
    tp_rank: int = 0
    tp_world: int = 1
    pp_rank: int = 0
    pp_world: int = 1
    dp_rank: int = 0
    dp_world: int = 1
    pcp_rank: int = 0
    pcp_world: int = 1
    expert_parallel: bool = False

    @property
    def ep_rank(self) -> int:
        return (self.dp_rank * self.pcp_world + self.pcp_rank) * self.tp_world + self.tp_rank if self.expert_parallel else 0

    @property
    def ep_world(self) -> int:
        return self.dp_world * self.pcp_world * self.tp_world if self.expert_parallel else 1

    def file_parts(self) -> list:
        """The parts of the per-rank file name: a dimension appears when its ranks hold
        different weights (data and context parallel ranks only under expert parallelism)."""
        parts = []
        if self.tp_world > 1:
            parts.append(f"tp{self.tp_rank}")
        if self.pp_world > 1:
            parts.append(f"pp{self.pp_rank}")
        if self.expert_parallel and self.dp_world > 1:
            parts.append(f"dp{self.dp_rank}")
        if self.expert_parallel and self.pcp_world > 1:
            parts.append(f"pcp{self.pcp_rank}")
        return parts

    def describe(self) -> str:
        return "/".join(self.file_parts()) or "0"


def parallel_ranks(vllm_config=None) -> Ranks:
    """The ranks of the calling vLLM worker (vllm/distributed/parallel_state.py)."""
    from vllm import distributed
    pp = distributed.get_pp_group()
    parallel = getattr(vllm_config, "parallel_config", None)
    dp_world = getattr(parallel, "data_parallel_size", 1)
    pcp_world = getattr(parallel, "prefill_context_parallel_size", 1)
    dp_rank = distributed.get_dp_group().rank_in_group if dp_world > 1 else 0
    pcp_rank = distributed.get_pcp_group().rank_in_group if pcp_world > 1 else 0
    return Ranks(distributed.get_tensor_model_parallel_rank(), distributed.get_tensor_model_parallel_world_size(),
                 pp.rank_in_group, pp.world_size, dp_rank, dp_world, pcp_rank, pcp_world,
                 bool(getattr(parallel, "enable_expert_parallel", False)))


RANK_FIELDS = ("tp_rank", "pp_rank", "dp_rank", "pcp_rank")


def rank_file(snapshot, ranks: Ranks = Ranks()) -> Path:
    """The file of one rank (docs/FORMAT.md, "Ranks"): a directory holds weights.thaw for a
    single rank, else weights.<parts>.thaw (e.g. weights.tp1.pp0.thaw, weights.tp0.dp3.thaw);
    a path containing {tp_rank}, {pp_rank}, {dp_rank} or {pcp_rank} is formatted; any other
    path must be a single-rank snapshot."""
    text = str(snapshot)
    if any("{" + f + "}" in text for f in RANK_FIELDS):
        return Path(text.format(**{f: getattr(ranks, f) for f in RANK_FIELDS}))
    path = Path(text)
    parts = ranks.file_parts()
    if path.is_dir() or not path.suffix:
        return path / ".".join(["weights", *parts, "thaw"])
    if parts:
        raise ThawMismatchError(
            f"{path} is one file, but this engine's workers hold different weights ({ranks.describe()}): "
            "freeze with thaw_vllm.freeze_vllm into a directory, or give a path with {tp_rank}")
    return path


def _config_digest(hf_config) -> str:
    try:
        text = hf_config.to_json_string(use_diff=False)
    except Exception:  # not a transformers config: fall back to its attributes
        text = json.dumps(vars(hf_config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _device_identity(device) -> tuple:
    """(name, compute capability) of the worker's GPU as vLLM's platform reports them."""
    from vllm.platforms import current_platform
    index = getattr(device, "index", None)
    if index is None:
        import torch
        index = torch.cuda.current_device() if getattr(device, "type", "cpu") == "cuda" else 0
    capability = current_platform.get_device_capability(index)
    return current_platform.get_device_name(index), capability.as_version_str() if capability is not None else ""


def quantization_kernels(model) -> str:
    """The quantization methods and kernels the layers were built with: the same checkpoint
    processes into different layouts for different kernels (fp8 on Marlin keeps (K, N)
    weights and other scales, layers/quantization/fp8.py)."""
    if model is None:
        return ""
    chosen = set()
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is None:
            continue
        kernels = sorted({type(v).__name__ for v in vars(method).values() if "Kernel" in type(v).__name__})
        chosen.add("+".join([type(method).__name__, *kernels]))
    return ",".join(sorted(chosen))


def fingerprint(vllm_config, model_config, ranks: Ranks, model=None, device=None) -> dict:
    """The facts a snapshot must share with the engine that restores it."""
    import vllm
    hf_config = getattr(model_config, "hf_config", None)
    cache = getattr(vllm_config, "cache_config", None)
    gpu, capability = _device_identity(device)
    facts = {
        "architectures": ",".join(getattr(hf_config, "architectures", None) or []),
        "config_sha256": _config_digest(hf_config) if hf_config is not None else "",
        "dtype": str(getattr(model_config, "dtype", "")),
        "quantization": str(getattr(model_config, "quantization", None)),
        "kv_cache_dtype": str(getattr(cache, "cache_dtype", "auto")),
        "vllm_version": str(getattr(vllm, "__version__", "")),
        "gpu": gpu,
        "compute_capability": capability,
        "quantization_kernels": quantization_kernels(model),
        "tp_world_size": str(ranks.tp_world),
        "tp_rank": str(ranks.tp_rank),
        "pp_world_size": str(ranks.pp_world),
        "pp_rank": str(ranks.pp_rank),
        "expert_parallel": f"ep{ranks.ep_rank}/{ranks.ep_world}" if ranks.expert_parallel else "off",
    }
    return {FINGERPRINT_PREFIX + k: v for k, v in facts.items()}


def ranks_metadata(ranks: Ranks) -> dict:
    """Every rank of the writer, recorded beside the fingerprint (the preamble holds only
    the tensor-parallel rank)."""
    return {FINGERPRINT_PREFIX + "ranks": json.dumps({
        "tp": [ranks.tp_rank, ranks.tp_world], "pp": [ranks.pp_rank, ranks.pp_world],
        "dp": [ranks.dp_rank, ranks.dp_world], "pcp": [ranks.pcp_rank, ranks.pcp_world],
        "ep": [ranks.ep_rank, ranks.ep_world]}, sort_keys=True)}
