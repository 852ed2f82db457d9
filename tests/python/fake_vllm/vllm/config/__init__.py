"""The config objects a loader receives. Field names and defaults are vLLM's:
vllm/config/load.py LoadConfig, vllm/config/model.py ModelConfig, vllm/config/cache.py
CacheConfig, vllm/config/parallel.py ParallelConfig, vllm/config/speculative.py
SpeculativeConfig, vllm/config/vllm.py VllmConfig. Only the fields thaw_vllm or the
double read are kept."""
import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class LoadConfig:
    load_format: str = "auto"
    download_dir: Optional[str] = None
    model_loader_extra_config: dict = field(default_factory=dict)
    device: Optional[str] = None
    ignore_patterns: list = field(default_factory=lambda: ["original/**/*"])

    def __post_init__(self):
        # vllm/config/load.py LoadConfig._lowercase_load_format
        self.load_format = self.load_format.lower()


@dataclass
class ModelConfig:
    model: str
    dtype: torch.dtype = torch.float32
    hf_config: Any = None
    quantization: Optional[str] = None
    revision: Optional[str] = None
    model_weights: str = ""
    enable_sleep_mode: bool = False
    # vllm/config/model.py: "cumem" unless a plugin registers another backend (RFC #34303)
    sleep_mode_backend: str = "cumem"


@dataclass
class CacheConfig:
    cache_dtype: str = "auto"  # vllm/config/cache.py CacheDType: "auto", "fp8", "fp8_e4m3", ...


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    prefill_context_parallel_size: int = 1
    enable_expert_parallel: bool = False
    enable_eplb: bool = False
    # vllm/config/parallel.py: this worker's global rank and its data-parallel index, which
    # vllm/compilation/backends.py VllmBackend.__call__ names its rank directory after
    rank: int = 0
    data_parallel_index: int = 0


@dataclass
class DeviceConfig:
    device: str = "cpu"


@dataclass
class CompilationConfig:
    # vllm/config/compilation.py: layer name -> attention layer, filled by Attention.__init__
    static_forward_context: dict = field(default_factory=dict)
    # vllm/config/compilation.py: set by VllmBackend.__call__ (vllm/compilation/backends.py)
    # at the first compile: VLLM_CACHE_ROOT/torch_compile_cache/<hash>, and its rank_<r>_<dp> dir
    cache_dir: str = ""
    local_cache_dir: str = ""


@dataclass
class SpeculativeConfig:
    draft_model_config: Optional[ModelConfig] = None
    draft_load_config: Optional[LoadConfig] = None  # None: the target's load config
    method: str = "draft_model"


@dataclass
class LoRAConfig:
    max_loras: int = 1
    max_lora_rank: int = 4


@dataclass
class VllmConfig:
    model_config: ModelConfig
    load_config: LoadConfig = field(default_factory=LoadConfig)
    device_config: DeviceConfig = field(default_factory=DeviceConfig)
    cache_config: CacheConfig = field(default_factory=CacheConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    compilation_config: CompilationConfig = field(default_factory=CompilationConfig)
    speculative_config: Optional[SpeculativeConfig] = None
    lora_config: Optional[LoRAConfig] = None


_current = None


@contextlib.contextmanager
def set_current_vllm_config(vllm_config, **kwargs):
    """vllm/config/vllm.py set_current_vllm_config: initialize_model builds models inside it."""
    global _current
    previous, _current = _current, vllm_config
    try:
        yield
    finally:
        _current = previous


def get_current_vllm_config():
    return _current
