"""Thaw as a vLLM sleep-mode backend (vllm/device_allocator/sleep_mode_backend.py,
RFC #34303): with model_loader_extra_config {"snapshot": ..., "sleep_backend": true} and
enable_sleep_mode=True, llm.sleep(2) releases the weights without keeping a copy, and
llm.wake_up() maps the memory back at the same addresses (captured CUDA graphs stay
valid) and restores the snapshot into it, in place. Level 1 is vLLM's own: weights
offloaded to host RAM.

vLLM creates the backend with no arguments (SleepModeBackendFactory.create_backend), so
the loader, which runs in the same worker process, records here which models to restore
from which snapshot, and selects the backend on the worker's model config
(ModelConfig.sleep_mode_backend, which EngineArgs does not expose)."""
import logging
import weakref

from .errors import ThawError

log = logging.getLogger("thaw_vllm")

BACKEND_NAME = "thaw"

# (model, snapshot, vllm_config, model_config, engine options, device) per model this worker loaded.
_attached = []


def attach(model, snapshot, vllm_config, model_config, options, device, draft=False) -> None:
    what = "the draft model" if draft else "the model"
    if snapshot is None:
        raise ThawError(f"load_format='thaw': sleep_backend restores weights from a snapshot, and {what} has none "
                        "(freeze_vllm writes the draft's into <snapshot>/draft)")
    if not draft:
        if not hasattr(model_config, "sleep_mode_backend"):
            raise ThawError("load_format='thaw': this vLLM has no pluggable sleep-mode backends "
                            "(vllm/device_allocator/sleep_mode_backend.py); drop sleep_backend")
        if not getattr(model_config, "enable_sleep_mode", False):
            raise ThawError("load_format='thaw': sleep_backend needs enable_sleep_mode=True")
        model_config.sleep_mode_backend = BACKEND_NAME
    _attached.append((weakref.ref(model), snapshot, vllm_config, model_config, options, device))


def restore_attached() -> int:
    """Restores every live model this worker loaded from its snapshot; returns the bytes."""
    from .vllm_loader import restore_snapshot
    total = 0
    for model_ref, snapshot, vllm_config, model_config, options, device in list(_attached):
        model = model_ref()
        if model is not None:
            total += restore_snapshot(model, snapshot, vllm_config, model_config, options, device)["bytes"]
    return total


def register_backend() -> None:
    """Registers the "thaw" backend where this vLLM has pluggable sleep backends."""
    try:
        from vllm.device_allocator.sleep_mode_backend import SleepModeBackendFactory
    except ImportError:
        return
    try:
        SleepModeBackendFactory.register_backend(BACKEND_NAME, __name__, "ThawSleepBackend")
    except ValueError:
        pass  # registered already: plugins run once per process, this is the second


try:
    from vllm.device_allocator.sleep_mode_backend import SleepModeBackend
except ImportError:
    SleepModeBackend = None

if SleepModeBackend is not None:
    class ThawSleepBackend(SleepModeBackend):
        """Level 1 as vLLM's cumem backend (weights offloaded to host RAM); level 2 discards
        the weights and restores them from the snapshot when they wake."""

        def __init__(self):
            super().__init__()
            self._level = 0

        def suspend(self, level: int = 1) -> None:
            from vllm.device_allocator import get_mem_allocator_instance
            from . import vllm_peer
            vllm_peer.withdraw_all()  # before the weights' memory is offloaded or released
            self._state = "SUSPENDED"
            self._level = level
            get_mem_allocator_instance().sleep(offload_tags=("weights",) if level == 1 else tuple())

        def resume(self, tags=None) -> None:
            from vllm.device_allocator import get_mem_allocator_instance
            self._state = "RESUMING"
            get_mem_allocator_instance().wake_up(tags)
            if self._level == 2 and (tags is None or "weights" in tags):
                restored = restore_attached()
                log.info("thaw: woke from sleep level 2, %d bytes restored from snapshots", restored)
                self._level = 0
            if tags is None or "weights" in tags:
                from . import vllm_peer
                vllm_peer.republish_all()  # the weights hold their snapshot's bytes again
            self._state = "RUNNING"

        @classmethod
        def supports_durable_storage(cls) -> bool:
            return True
