"""What ties a snapshot to one vLLM engine layout: the per-rank file name and the
fingerprint (model, dtype, quantization, parallel layout) checked before a restore."""
import hashlib
import json
from pathlib import Path

from .errors import ThawMismatchError

FINGERPRINT_PREFIX = "thaw.vllm."


def parallel_ranks():
    """(tp_rank, tp_world, pp_rank, pp_world) of the calling vLLM worker."""
    from vllm.distributed import (get_pp_group, get_tensor_model_parallel_rank,
                                  get_tensor_model_parallel_world_size)
    pp = get_pp_group()
    return (get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size(),
            pp.rank_in_group, pp.world_size)


def rank_file(snapshot, tp_rank=0, tp_world=1, pp_rank=0, pp_world=1) -> Path:
    """The file of one rank. A directory holds weights.thaw (one rank) or
    weights.tp<R>.thaw / weights.tp<R>.pp<P>.thaw; a path with {tp_rank}/{pp_rank}
    is formatted; any other path must be a single-rank snapshot."""
    text = str(snapshot)
    if "{tp_rank}" in text or "{pp_rank}" in text:
        return Path(text.format(tp_rank=tp_rank, pp_rank=pp_rank))
    path = Path(text)
    if path.is_dir() or not path.suffix:
        if tp_world == 1 and pp_world == 1:
            return path / "weights.thaw"
        return path / (f"weights.tp{tp_rank}.thaw" if pp_world == 1 else f"weights.tp{tp_rank}.pp{pp_rank}.thaw")
    if tp_world * pp_world > 1:
        raise ThawMismatchError(
            f"{path} is one file, but this engine has {tp_world} tensor-parallel and {pp_world} pipeline ranks: "
            "freeze with thaw_vllm.freeze_vllm into a directory, or give a path with {tp_rank}")
    return path


def _config_digest(hf_config) -> str:
    try:
        text = hf_config.to_json_string(use_diff=False)
    except Exception:  # not a transformers config: fall back to its attributes
        text = json.dumps(vars(hf_config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(model_config, tp_rank=0, tp_world=1, pp_rank=0, pp_world=1) -> dict:
    """The facts a snapshot must share with the engine that restores it."""
    hf_config = getattr(model_config, "hf_config", None)
    return {
        FINGERPRINT_PREFIX + "architectures": ",".join(getattr(hf_config, "architectures", None) or []),
        FINGERPRINT_PREFIX + "config_sha256": _config_digest(hf_config) if hf_config is not None else "",
        FINGERPRINT_PREFIX + "dtype": str(getattr(model_config, "dtype", "")),
        FINGERPRINT_PREFIX + "quantization": str(getattr(model_config, "quantization", None)),
        FINGERPRINT_PREFIX + "tp_world_size": str(tp_world),
        FINGERPRINT_PREFIX + "tp_rank": str(tp_rank),
        FINGERPRINT_PREFIX + "pp_world_size": str(pp_world),
        FINGERPRINT_PREFIX + "pp_rank": str(pp_rank),
    }


def check_fingerprint(path, metadata: dict, expected: dict) -> None:
    """Raises ThawMismatchError naming the first fact that differs."""
    recorded = {k: v for k, v in metadata.items() if k.startswith(FINGERPRINT_PREFIX)}
    if not recorded:
        raise ThawMismatchError(f"{path} was not frozen from vLLM (no {FINGERPRINT_PREFIX}* metadata); "
                                "freeze it with thaw_vllm.freeze_vllm")
    for key, value in expected.items():
        if recorded.get(key) != value:
            what = key[len(FINGERPRINT_PREFIX):]
            raise ThawMismatchError(f"{path}: snapshot was frozen with {what}={recorded.get(key)!r}, "
                                    f"this engine has {what}={value!r}")
