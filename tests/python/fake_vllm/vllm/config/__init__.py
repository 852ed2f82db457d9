"""vllm/config/load.py LoadConfig and the config objects a loader receives."""
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class LoadConfig:
    load_format: str = "auto"
    model_loader_extra_config: dict = field(default_factory=dict)
    device: Optional[str] = None

    def __post_init__(self):
        self.load_format = self.load_format.lower()  # _lowercase_load_format


@dataclass
class ModelConfig:
    model: str
    dtype: torch.dtype = torch.float32
    hf_config: Any = None
    quantization: Optional[str] = None


@dataclass
class DeviceConfig:
    device: str = "cpu"


@dataclass
class VllmConfig:
    model_config: ModelConfig
    load_config: LoadConfig
    device_config: DeviceConfig = field(default_factory=DeviceConfig)
