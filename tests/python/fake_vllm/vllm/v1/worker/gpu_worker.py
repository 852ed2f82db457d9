"""vllm/v1/worker/gpu_worker.py Worker: load_model, get_model, get_draft_model,
reload_weights, and sleep/wake_up through the sleep-mode backend that
SleepModeBackendFactory.create_backend(model_config) returns (created at the first
sleep). Before a level-2 sleep the worker keeps a CPU copy of every buffer
(model.named_buffers()) and copies it back on waking with weights."""
from .gpu_model_runner import GPUModelRunner


class Worker:
    def __init__(self, vllm_config, rank=0):
        self.vllm_config = vllm_config
        self.rank = rank
        self.model_runner = GPUModelRunner(vllm_config, vllm_config.device_config.device)
        self._sleep_mode_backend = None
        self._sleep_saved_buffers = {}

    def load_model(self):
        from vllm.config import set_current_vllm_config
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.load_model()
        if self.vllm_config.model_config.enable_sleep_mode:
            # CuMemAllocator.use_memory_pool(tag="weights") around load_model: the double
            # records the tensors the model holds instead of intercepting allocations.
            from vllm.device_allocator.cumem import CuMemAllocator
            allocator = CuMemAllocator.get_instance()
            for model in (self.get_model(), self.get_draft_model()):
                if model is not None:
                    allocator.track("weights", [t for t in model.state_dict(keep_vars=True).values()])

    def initialize_from_config(self):
        self.model_runner.initialize_kv_cache()
        if self.vllm_config.model_config.enable_sleep_mode:
            from vllm.device_allocator.cumem import CuMemAllocator
            CuMemAllocator.get_instance().track("kv_cache", self.model_runner.kv_caches)

    def get_model(self):
        return self.model_runner.get_model()

    def get_draft_model(self):
        return self.model_runner.get_draft_model()

    def reload_weights(self, *args, **kwargs):
        return self.model_runner.reload_weights(*args, **kwargs)

    def _get_sleep_mode_backend(self):
        if self._sleep_mode_backend is None:
            from vllm.device_allocator.sleep_mode_backend import SleepModeBackendFactory
            self._sleep_mode_backend = SleepModeBackendFactory.create_backend(self.vllm_config.model_config)
        return self._sleep_mode_backend

    def sleep(self, level=1):
        if level == 2:
            self._sleep_saved_buffers = {n: b.cpu().clone() for n, b in self.model_runner.model.named_buffers()}
        self._get_sleep_mode_backend().suspend(level)

    def wake_up(self, tags=None):
        self._get_sleep_mode_backend().resume(tags)
        if (tags is None or "weights" in tags) and self._sleep_saved_buffers:
            for name, buffer in self.model_runner.model.named_buffers():
                if name in self._sleep_saved_buffers:
                    buffer.data.copy_(self._sleep_saved_buffers[name].data)
            self._sleep_saved_buffers = {}
