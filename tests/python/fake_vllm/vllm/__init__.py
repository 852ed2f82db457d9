"""A test double of vLLM (upstream main 2026-08-18), built from vLLM's code: every module
names the vLLM file and function whose behaviour it copies. Workers run in this one
process, one after another; parallel state is set for each worker as its process would
have it."""
import importlib

__version__ = "0.0.0+double"

# The hf_config the fake engine gives its models (a real vLLM reads config.json).
DEFAULT_HF_CONFIG = None


class LLM:
    """vllm/entrypoints/llm.py LLM, with the executor's workers in this process:
    WorkerWrapperBase.init_worker (v1/worker/worker_base.py) appends worker_extension_cls
    to the worker's bases; each worker runs init_device, load_model, then the engine
    allocates the KV cache (v1/engine/core.py _initialize_kv_caches ->
    initialize_from_config). collective_rpc calls a method by name on every worker;
    sleep/wake_up go to every worker (LLM.sleep -> ... -> Worker.sleep)."""

    def __init__(self, model, load_format="auto", model_loader_extra_config=None, worker_extension_cls=None,
                 dtype="float32", quantization=None, kv_cache_dtype="auto", tensor_parallel_size=1,
                 pipeline_parallel_size=1, data_parallel_size=1, enable_expert_parallel=False,
                 speculative_config=None, enable_lora=False, enable_sleep_mode=False, download_dir=None,
                 revision=None, hf_config=None, **kwargs):
        import torch
        from . import distributed
        from .config import (CacheConfig, DeviceConfig, LoadConfig, LoRAConfig, ModelConfig, ParallelConfig,
                             SpeculativeConfig, VllmConfig)
        from .plugins import load_general_plugins
        from .v1.worker.gpu_worker import Worker
        load_general_plugins()
        worker_class = Worker
        if worker_extension_cls:
            module, _, name = worker_extension_cls.rpartition(".")
            worker_class = type("WorkerWithExtension", (Worker, getattr(importlib.import_module(module), name)), {})
        hf_config = hf_config or DEFAULT_HF_CONFIG

        def model_config(path):
            return ModelConfig(model=path, dtype=getattr(torch, dtype), hf_config=hf_config, quantization=quantization,
                               revision=revision, enable_sleep_mode=enable_sleep_mode)

        self.workers, self.ranks = [], []
        for dp in range(data_parallel_size):
            for pp in range(pipeline_parallel_size):
                for tp in range(tensor_parallel_size):
                    ranks = dict(tp_rank=tp, tp_world=tensor_parallel_size, pp_rank=pp, pp_world=pipeline_parallel_size,
                                 dp_rank=dp, dp_world=data_parallel_size)
                    distributed.set_ranks(**ranks)
                    spec = None
                    if speculative_config:
                        spec = SpeculativeConfig(draft_model_config=model_config(speculative_config["model"]),
                                                 method=speculative_config.get("method", "draft_model"))
                    config = VllmConfig(
                        model_config=model_config(model),
                        load_config=LoadConfig(load_format=load_format, download_dir=download_dir,
                                               model_loader_extra_config=dict(model_loader_extra_config or {})),
                        device_config=DeviceConfig("cpu"), cache_config=CacheConfig(kv_cache_dtype),
                        parallel_config=ParallelConfig(tensor_parallel_size, pipeline_parallel_size, data_parallel_size,
                                                       enable_expert_parallel=enable_expert_parallel),
                        speculative_config=spec, lora_config=LoRAConfig() if enable_lora else None)
                    worker = worker_class(config, rank=len(self.workers))
                    worker.load_model()
                    self.workers.append(worker)
                    self.ranks.append(ranks)
        for worker, ranks in zip(self.workers, self.ranks):
            distributed.set_ranks(**ranks)
            worker.initialize_from_config()
        distributed.set_ranks()

    @property
    def worker(self):
        return self.workers[0]

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        from . import distributed
        results = []
        try:
            for worker, ranks in zip(self.workers, self.ranks):
                distributed.set_ranks(**ranks)
                fn = getattr(worker, method) if isinstance(method, str) else (lambda *a, **k: method(worker, *a, **k))
                results.append(fn(*args, **(kwargs or {})))
        finally:
            distributed.set_ranks()
        return results

    def sleep(self, level=1):
        self.collective_rpc("sleep", kwargs={"level": level})

    def wake_up(self, tags=None):
        self.collective_rpc("wake_up", kwargs={"tags": tags})
