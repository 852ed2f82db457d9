"""vllm/device_allocator/sleep_mode_backend.py, as upstream: SleepModeBackend
(suspend(level), resume(tags), state(), capability class methods), the default
CuMemBackend (level 1 offloads the "weights" tag, level 2 offloads nothing), and
SleepModeBackendFactory (register_backend(name, module_path, class_name) raises on a
name already registered; create_backend(model_config) instantiates
model_config.sleep_mode_backend with no arguments)."""
import importlib


class SleepModeBackend:
    def __init__(self):
        self._state = "RUNNING"

    def suspend(self, level=1):
        raise NotImplementedError

    def resume(self, tags=None):
        raise NotImplementedError

    def state(self):
        return self._state

    @classmethod
    def is_supported(cls):
        return True

    @classmethod
    def supports_durable_storage(cls):
        return False


class CuMemBackend(SleepModeBackend):
    def suspend(self, level=1):
        from vllm.device_allocator import get_mem_allocator_instance
        self._state = "SUSPENDED"
        get_mem_allocator_instance().sleep(offload_tags=("weights",) if level == 1 else tuple())

    def resume(self, tags=None):
        from vllm.device_allocator import get_mem_allocator_instance
        self._state = "RESUMING"
        get_mem_allocator_instance().wake_up(tags)
        self._state = "RUNNING"


class SleepModeBackendFactory:
    _registry = {}

    @classmethod
    def register_backend(cls, name, module_path, class_name):
        if name in cls._registry:
            raise ValueError(f"Sleep-mode backend '{name}' is already registered.")
        cls._registry[name] = lambda: getattr(importlib.import_module(module_path), class_name)

    @classmethod
    def get_backend_class(cls, name):
        if name not in cls._registry:
            raise ValueError(f"Unsupported sleep-mode backend '{name}'. Registered backends: "
                             f"{', '.join(sorted(cls._registry)) or '<none>'}.")
        return cls._registry[name]()

    @classmethod
    def create_backend(cls, model_config):
        backend_cls = cls.get_backend_class(model_config.sleep_mode_backend)
        if not backend_cls.is_supported():
            raise ValueError(f"Sleep-mode backend '{model_config.sleep_mode_backend}' is not supported on this platform.")
        return backend_cls()


SleepModeBackendFactory.register_backend("cumem", "vllm.device_allocator.sleep_mode_backend", "CuMemBackend")
