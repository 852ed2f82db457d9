"""vLLM's compiled state beside its weights: the torch.compile cache of one model and
rank, frozen with the weights and written back before vLLM compiles.

Where vLLM keeps it (upstream main of 2026-08-18):
- `VllmBackend.__call__` (vllm/compilation/backends.py) picks
  `VLLM_CACHE_ROOT/torch_compile_cache/<hash_key>` (hash of env, config, code and compiler
  factors) as `compilation_config.cache_dir`, the rank's `rank_<rank>_<dp_rank>/<prefix>`
  inside it as `local_cache_dir`, and `InductorAdaptor.initialize_cache`
  (vllm/compilation/compiler_interface.py) points Inductor and Triton at
  `<cache_dir>/inductor_cache` and `<cache_dir>/triton_cache`.
- With VLLM_USE_AOT_COMPILE, `_support_torch_compile.__call__`
  (vllm/compilation/decorators.py) uses `torch_compile_cache/torch_aot_compile/<hash>`
  (its own inductor_cache, and `rank_<rank>_<dp_rank>/model`) as `local_cache_dir`.
Both run at the model's first forward, inside `Worker.determine_available_memory` /
`compile_or_warm_up_model` (vllm/v1/worker/gpu_worker.py), which come after
`Worker.load_model` has run the loader: the loader writes the files back in time.
A vLLM, torch or config that differs computes another hash key and misses cleanly; the
environment recorded with the files refuses them even before that.
"""
import logging
import os

from . import artifacts

log = logging.getLogger("thaw_vllm")

SET = "vllm"


def cache_root() -> str:
    import vllm.envs as envs
    return os.path.abspath(envs.VLLM_CACHE_ROOT)


def _ranks(vllm_config):
    parallel = vllm_config.parallel_config
    return getattr(parallel, "rank", 0), getattr(parallel, "data_parallel_index", 0)


def vllm_environment(vllm_config) -> dict:
    import vllm
    rank, dp_rank = _ranks(vllm_config)
    return artifacts.environment(vllm=getattr(vllm, "__version__", "unknown"), rank=f"{rank}_{dp_rank}")


def _captured_subtrees(vllm_config, root) -> list:
    """This model's compile directories, relative to VLLM_CACHE_ROOT: the hash-level
    directory with only this rank's rank_* subdirectory (other ranks freeze their own)."""
    compilation = vllm_config.compilation_config
    rank, dp_rank = _ranks(vllm_config)
    mine = f"rank_{rank}_{dp_rank}"
    subtrees = []
    for directory in {getattr(compilation, "cache_dir", "") or "", getattr(compilation, "local_cache_dir", "") or ""}:
        directory = os.path.abspath(directory) if directory else ""
        if not directory or not directory.startswith(root + os.sep) or not os.path.isdir(directory):
            continue
        # local_cache_dir may point inside a rank directory: climb to the hash-level one.
        parts = os.path.relpath(directory, root).split(os.sep)
        cut = next((i for i, p in enumerate(parts) if p.startswith("rank_")), len(parts))
        hash_dir = os.path.join(root, *parts[:cut])
        for entry in sorted(os.listdir(hash_dir)):
            if entry.startswith("rank_") and entry != mine:
                continue
            subtrees.append(os.path.relpath(os.path.join(hash_dir, entry), root))
    return sorted(set(subtrees))


def freeze_compile_cache(vllm_config, weights_file):
    """Freezes this rank's compile cache beside its weights file; returns the artifacts file,
    or None when vLLM compiled nothing (enforce_eager, compile cache disabled)."""
    root = cache_root()
    subtrees = _captured_subtrees(vllm_config, root)
    if not subtrees:
        log.info("thaw: no torch.compile cache to freeze for %s", weights_file)
        return None
    target = artifacts.companion_path(weights_file)
    artifacts.freeze_artifacts(target, {SET: root}, env=vllm_environment(vllm_config), include={SET: subtrees})
    return target


def restore_compile_cache(vllm_config, weights_file) -> dict:
    """Writes the compile cache frozen beside weights_file back under VLLM_CACHE_ROOT when its
    environment matches this process; a missing file or a mismatch is a clean miss."""
    source = artifacts.companion_path(weights_file)
    if not os.path.isfile(source):
        return {"restored": False, "files": 0, "bytes": 0, "reason": f"no {source}"}
    result = artifacts.restore_artifacts(source, {SET: cache_root()}, env=vllm_environment(vllm_config))
    result.pop("blob", None)
    return result
