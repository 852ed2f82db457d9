"""load_format="thaw" for an unmodified vLLM (v0.10.1 on: register_model_loader).

Registered from the vllm.general_plugins entry point (pyproject.toml), so the engine
core and every worker process know the format. With {"snapshot": path} the model is
built, processed once on its uninitialized weights to obtain the kernel-ready
structure, and the snapshot — which holds the weights after processing — is restored
in place: the snapshot's weights are never processed a second time. Without a
snapshot, or with {"checkpoint": dir}, the Hugging Face safetensors shards are
streamed through the engine and handed to the model's own load_weights.
docs/VLLM.md is the user's guide.
"""
import inspect
import logging
import os
import time
from pathlib import Path

import torch

from . import borrowed_links, torch_io, vllm_capture
from .errors import ThawError
from .vllm_config import fingerprint, parallel_ranks, rank_file

log = logging.getLogger("thaw_vllm")

FORMAT = "thaw"


def _choice(*allowed):
    def check(key, value):
        if value not in allowed:
            raise ValueError(f"load_format='thaw': {key} must be one of {', '.join(map(str, allowed))}, not {value!r}")
    return check


def _count(key, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 20:
        raise ValueError(f"load_format='thaw': {key} must be a whole number from 0 to {1 << 20}, not {value!r}")


def _flag(key, value):
    if not isinstance(value, bool):
        raise ValueError(f"load_format='thaw': {key} must be true or false, not {value!r}")


def _path(key, value):
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"load_format='thaw': {key} must be a path, not {value!r}")


def _pool(key, value):
    if not isinstance(value, bool) and not (isinstance(value, (str, os.PathLike)) and str(value)):
        raise ValueError(f"load_format='thaw': pool must be \"auto\", \"off\", true, false or a socket path, not {value!r}")


def _borrow(key, value):
    if value in ("auto", "off") or isinstance(value, bool):
        return
    devices = value.get("devices") if isinstance(value, dict) else value
    if isinstance(value, dict) and not set(value) <= {"devices", "weights", "lanes"}:
        raise ValueError(f"load_format='thaw': borrow takes the keys devices, weights and lanes, not {sorted(value)}")
    if devices != "auto" and not (isinstance(devices, list) and devices
                                  and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)):
        raise ValueError(f"load_format='thaw': borrow must be \"auto\", \"off\", a list of GPU ordinals such as [1, 2, 3] "
                         f"or {{devices, weights, lanes}}, not {value!r}")


def _multicast(key, value):
    from .multicast import group_from_config
    group_from_config(value)  # raises ValueError naming the field


def _gang(key, value):
    from .gang import group_from_config
    group_from_config(value)  # raises ValueError naming the field


# model_loader_extra_config keys: (meaning, check). One row per key; add a row to add a key.
EXTRA_KEYS = {
    "snapshot": ("snapshot file or per-rank directory (from thaw_vllm.freeze_vllm)", _path),
    "checkpoint": ("Hugging Face safetensors checkpoint to stream instead (default: the model's own)", _path),
    "draft_snapshot": ("snapshot of the speculative-decoding draft model (default: <snapshot>/draft when present)", _path),
    "pool": ("\"auto\" (this user's automatic pool, started when none runs), \"off\", or a thaw pool socket (true: the "
             "default socket); default: $THAW_POOL, else auto on CUDA; falls back to the file", _pool),
    "io": ("auto | buffered | direct | zerocopy", _choice("auto", "buffered", "direct", "zerocopy")),
    "verify": ("check every region's CRC32C while restoring (default: on; false turns it off)", _flag),
    "threads": ("reader threads (0: one a core, up to 16)", _count),
    "chunk_mib": ("staging chunk size in MiB", _count),
    "staging_mib": ("pinned staging memory in MiB", _count),
    "sleep_backend": ("use Thaw as vLLM's sleep-mode backend: sleep(2) then wake_up() restores the snapshot", _flag),
    "multicast": ("join a multicast group {store: host:port, rank, size, ...} whose source sends the snapshot "
                  "(docs/MULTI_GPU.md); ranks it does not reach restore their own file", _multicast),
    "publish": ("after restoring, publish the weights to the pool so that the next instance restoring the same "
                "snapshot is served from this GPU device to device (needs pool; docs/POOL.md)", _flag),
    "gang": ("join a gang {store: host:port, rank, size, ...} of engines restoring the same snapshot: each reads its "
             "share and receives the rest from the others (docs/MULTI_GPU.md); members it does not complete restore "
             "their own file", _gang),
    "borrow": ("restores from the file also use other GPUs' host links, forwarding their share over NVLink: \"auto\" "
               "(every other GPU), \"off\" (the default), [GPU ordinals] or {devices, weights, lanes}; $THAW_BORROW "
               "overrides it; the rank line says which links served the bytes (docs/MULTI_GPU.md)", _borrow),
    "compile_cache": ("write the torch.compile cache frozen beside the snapshot into VLLM_CACHE_ROOT before vLLM "
                      "compiles (default true)", _flag),
}


def validate_extra_config(extra) -> dict:
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"load_format='thaw': model_loader_extra_config must be a dict, got {type(extra).__name__}")
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(EXTRA_KEYS))
    if unknown:
        raise ValueError(f"load_format='thaw': unknown model_loader_extra_config keys {unknown}; "
                         f"known: {', '.join(f'{k} ({v[0]})' for k, v in EXTRA_KEYS.items())}")
    for key, value in extra.items():
        EXTRA_KEYS[key][1](key, value)
    if extra.get("publish") and not extra.get("pool"):
        raise ValueError("load_format='thaw': publish offers the weights through a pool: set pool too")
    if "multicast" in extra and "gang" in extra:
        raise ValueError("load_format='thaw': multicast and gang exclude each other: an engine joins one group "
                         "(multicast: one source sends everything; gang: every member reads a share)")
    return extra


def engine_options(extra) -> dict:
    options = {"pool": extra.get("pool"), "io": extra.get("io", "auto"), "verify": None if extra.get("verify") is None else bool(extra["verify"]),
               "threads": int(extra.get("threads", 0)), "chunk_bytes": int(extra.get("chunk_mib", 0)) << 20,
               "staging_bytes": int(extra.get("staging_mib", 0)) << 20}
    if "borrow" in extra:
        options["borrow"] = extra["borrow"]
    return options


def _initialize_model(vllm_config, model_config, prefix):
    from vllm.model_executor.model_loader.utils import initialize_model
    # Releases before 2026-01 have no prefix argument; ask the signature rather than
    # retrying on TypeError, which would swallow a model constructor's own TypeError.
    if "prefix" in inspect.signature(initialize_model).parameters:
        return initialize_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
    return initialize_model(vllm_config=vllm_config, model_config=model_config)


def _has_online_quant(model) -> bool:
    """base_loader.py _has_online_quant: quant methods that create weights on meta."""
    return any(getattr(getattr(m, "quant_method", None), "uses_meta_device", False) for m in model.modules())


def _process(model, model_config, device):
    """What BaseModelLoader.load_model runs after load_weights: finalize the layers that
    online quantization left unprocessed, then process_weights_after_loading."""
    from vllm.model_executor.model_loader.utils import process_weights_after_loading
    if _has_online_quant(model):
        try:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_processing
        except ImportError:
            raise ThawError("load_format='thaw': this model uses online quantization, and this vLLM has no "
                            "finalize_layerwise_processing to complete it; load it with load_format='auto'") from None
        finalize_layerwise_processing(model, model_config)
    process_weights_after_loading(model, model_config, device)


def _refuse_unmaterialized(model, what) -> None:
    left = [name for name, t in vllm_capture.model_tensors(model).items() if t.is_meta]
    if left:
        raise ThawError(f"load_format='thaw': after processing, {what} still has tensors on the meta device "
                        f"({', '.join(left[:5])}{' ...' if len(left) > 5 else ''}); this quantization method "
                        "cannot be restored from a snapshot; load it with load_format='auto'")


def is_draft(vllm_config, model_config, prefix="") -> bool:
    """Whether this load is the speculative-decoding draft: vLLM hands the draft its own
    VllmConfig whose model_config is the draft's (v1/spec_decode/draft_model.py), or the
    target's VllmConfig with the draft's model_config (llm_base_proposer.py _get_model)."""
    spec = getattr(vllm_config, "speculative_config", None)
    draft_config = getattr(spec, "draft_model_config", None)
    if draft_config is not None and model_config is draft_config:
        return True
    return model_config is not vllm_config.model_config or prefix == "draft_model"


def resolve_checkpoint(model_or_path, load_config, revision=None) -> Path:
    """A local directory of safetensors for a path or a Hugging Face id, resolved as vLLM's
    default loader resolves it (weight_utils.download_weights_from_hf: the hub cache,
    downloading unless HF_HUB_OFFLINE is set)."""
    path = Path(str(model_or_path))
    if path.exists():
        return path
    try:
        from vllm.model_executor.model_loader.weight_utils import download_weights_from_hf
    except ImportError:
        raise FileNotFoundError(f"load_format='thaw': {model_or_path} is not a local checkpoint") from None
    try:
        folder = download_weights_from_hf(str(model_or_path), getattr(load_config, "download_dir", None),
                                          ["*.safetensors"], revision,
                                          ignore_patterns=getattr(load_config, "ignore_patterns", None))
    except Exception as e:
        raise FileNotFoundError(
            f"load_format='thaw': cannot find the safetensors of '{model_or_path}' locally or on the hub "
            f"({type(e).__name__}: {e}); download it first or pass {{'checkpoint': directory}}") from None
    return Path(folder)


def _group_restore(multicast, gang):
    """(join_from_config, restore) of the group an engine joins, or None."""
    if multicast is not None:
        from .multicast import join_from_config, multicast_restore
        return join_from_config, multicast_restore
    if gang is not None:
        from .gang import gang_restore, join_from_config
        return join_from_config, gang_restore
    return None


def restore_snapshot(model, snapshot, vllm_config, model_config, options, device=None, multicast=None, publish=False,
                     gang=None) -> dict:
    """Restores this rank's file of a snapshot into an already processed model: tensors,
    then the scalars processing derived. The bridge checks names, dtypes, shapes and the
    fingerprint against the header before any byte moves. multicast, gang: the extra
    config's group to join (at most one). publish: then offer the weights to the pool for
    the next instance (vllm_peer.py)."""
    ranks = parallel_ranks(vllm_config)
    path = rank_file(snapshot, ranks)
    from . import vllm_peer
    publishing = publish or vllm_peer.has_publication(model)
    if publishing:  # an in-place restore rewrites published memory: withdrawn first, published again after
        identity = vllm_peer.identity_before_restore(path)
        vllm_peer.before_restore(model)
    started = time.perf_counter()
    tensors = vllm_capture.model_tensors(model)
    checks = dict(strict=True, metadata=fingerprint(vllm_config, model_config, ranks, model, device),
                  missing_hint="it was not frozen from vLLM: freeze it with thaw_vllm.freeze_vllm")
    joined = _group_restore(multicast, gang)
    if joined is not None:
        join_from_config, group_restore = joined
        header = torch_io.check_destination(tensors, path, **checks)
        first_worker = not any((ranks.tp_rank, ranks.pp_rank, ranks.dp_rank, ranks.pcp_rank))
        group = join_from_config(multicast if multicast is not None else gang, ranks.file_parts(), first_worker)
        group_options = {k: v for k, v in options.items() if k != "borrow"}  # borrowed links serve a restore of one's own
        stats = group_restore(tensors, path, group, strict=True, **group_options)
        served = stats["path"]
        if served == "gang":
            served = f"gang (its share of {stats['share_bytes']} bytes via {stats['share_path']})"
    else:
        stats, header = torch_io.restore_checked(tensors, path, **checks, **options)
        served = "peer" if stats.get("via") == "peer" else stats["source"]
        if served == "pool":  # users need to know the fast path ran: a hit, a fill, and whether copied here
            served = f"pool ({stats.get('via', 'pool hit')}{', shared host copy' if stats.get('shared') else ''})"
    vllm_capture.apply_scalars(model, header["metadata"], path)
    seconds = time.perf_counter() - started
    log.info("thaw: rank %s restored %d bytes from %s via %s in %.3f s (%.2f GB/s)%s", ranks.describe(), stats["bytes"],
             path, served, seconds, stats["bytes"] / seconds / 1e9 if seconds else 0.0, borrowed_links.log_suffix(stats))
    if publishing:
        vllm_peer.after_restore(model, tensors, path, identity, options.get("pool"), ranks.describe(), publish)
    return stats


def restore_compile_cache(vllm_config, snapshot) -> None:
    """vLLM compiles at the first forward, after the loader returns (vllm_compile.py says
    where): its cache files written back now are found, or a mismatch is one log line."""
    from . import vllm_compile
    ranks = parallel_ranks(vllm_config)
    result = vllm_compile.restore_compile_cache(vllm_config, rank_file(snapshot, ranks))
    if result["restored"]:
        log.info("thaw: rank %s wrote %d torch.compile cache files (%d bytes) into %s", ranks.describe(),
                 result["files"], result["bytes"], vllm_compile.cache_root())


def draft_snapshot(extra):
    """The draft's snapshot: draft_snapshot, else <snapshot>/draft when freeze_vllm wrote one."""
    if extra.get("draft_snapshot"):
        return extra["draft_snapshot"]
    snapshot = extra.get("snapshot")
    if snapshot is not None and (Path(snapshot) / "draft").is_dir():
        return str(Path(snapshot) / "draft")
    return None


def make_loader_class():
    """Builds the loader class; vllm is imported only here, inside vLLM's processes."""
    try:
        from vllm.model_executor.model_loader.base_loader import BaseModelLoader
    except ImportError:
        from vllm.model_executor.model_loader import BaseModelLoader

    class ThawModelLoader(BaseModelLoader):
        """Restores a Thaw snapshot in place, or streams a safetensors checkpoint."""

        def __init__(self, load_config):
            super().__init__(load_config)
            self.extra = validate_extra_config(load_config.model_loader_extra_config)

        def _device(self, vllm_config):
            return torch.device(self.load_config.device or vllm_config.device_config.device)

        def _checkpoint(self, model_config, draft=False) -> Path:
            source = None if draft else (self.extra.get("checkpoint") or getattr(model_config, "model_weights", None))
            return resolve_checkpoint(source or model_config.model, self.load_config, getattr(model_config, "revision", None))

        def download_model(self, model_config) -> None:
            if self.extra.get("snapshot") is None:
                self._checkpoint(model_config)

        def get_all_weights(self, model_config, model):
            """The checkpoint's (name, tensor) pairs, read through the engine: what
            reload_weights (sleep level 2) feeds to model.load_weights."""
            device = next((t.device for t in model.parameters() if not t.is_meta), torch.device("cpu"))
            yield from torch_io.iter_checkpoint(self._checkpoint(model_config), device, **engine_options(self.extra))

        def load_weights(self, model, model_config) -> None:
            # Reached when vLLM calls load_weights on a built model: stream the checkpoint in.
            model.load_weights(self.get_all_weights(model_config, model))

        def load_model(self, vllm_config, model_config, prefix: str = "", **kwargs):
            device = self._device(vllm_config)
            draft = is_draft(vllm_config, model_config, prefix)
            snapshot = draft_snapshot(self.extra) if draft else self.extra.get("snapshot")
            options = engine_options(self.extra)
            # BaseModelLoader.load_model keeps the model dtype for the whole load: processing
            # allocates in the default dtype too.
            with torch_io.default_dtype(model_config.dtype):
                with torch_io.device_scope(device):
                    model = _initialize_model(vllm_config, model_config, prefix)
                if snapshot is None:
                    checkpoint = self._checkpoint(model_config, draft)
                    started = time.perf_counter()
                    model.load_weights(torch_io.iter_checkpoint(checkpoint, device, **options))
                    log.info("thaw: streamed checkpoint %s in %.3f s", checkpoint, time.perf_counter() - started)
                    _process(model, model_config, device)
                else:
                    # Processing runs once, on the empty model, to build the processed
                    # structure; the snapshot already holds processed values.
                    _process(model, model_config, device)
                    _refuse_unmaterialized(model, "the draft model" if draft else "the model")
                    restore_snapshot(model, snapshot, vllm_config, model_config, options, device,
                                     None if draft else self.extra.get("multicast"), publish=bool(self.extra.get("publish")),
                                     gang=None if draft else self.extra.get("gang"))
                    if not draft and self.extra.get("compile_cache", True):
                        restore_compile_cache(vllm_config, snapshot)
            if self.extra.get("sleep_backend"):
                from . import vllm_sleep
                vllm_sleep.attach(model, snapshot, vllm_config, model_config, options, device, draft)
            return model.eval()

    return ThawModelLoader


def register() -> None:
    """The vllm.general_plugins entry point: runs once in every vLLM process. vLLM calls it
    unguarded (vllm/plugins/__init__.py load_general_plugins), so a failure here is logged,
    never raised: an engine that does not use load_format="thaw" must still start."""
    try:  # the KV connector: --kv-transfer-config '{"kv_connector": "ThawKVConnector", ...}'
        from .kv_connector import register as register_kv_connector
        register_kv_connector()
    except Exception:
        log.exception("thaw: registering the ThawKVConnector KV connector failed")
    try:
        from vllm.model_executor import model_loader
        registry = getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", {})
        if not (FORMAT in registry and getattr(registry[FORMAT], "__name__", "") == "ThawModelLoader"):
            model_loader.register_model_loader(FORMAT)(make_loader_class())
    except Exception:
        log.exception("thaw: registering load_format='thaw' failed; this process cannot load with it")
        return
    try:
        from . import vllm_sleep
        vllm_sleep.register_backend()
    except Exception:
        log.exception("thaw: registering the 'thaw' sleep-mode backend failed")
