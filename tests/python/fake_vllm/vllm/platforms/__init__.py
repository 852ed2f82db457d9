"""vllm/platforms/__init__.py current_platform and vllm/platforms/interface.py
DeviceCapability. CpuPlatform.get_device_name returns "cpu" (platforms/cpu.py); a
CUDA platform reports the GPU's name and compute capability (platforms/cuda.py,
through NVML). Tests swap in a CUDA-like platform with set_platform."""
from typing import NamedTuple, Optional


class DeviceCapability(NamedTuple):
    major: int
    minor: int

    def as_version_str(self) -> str:
        return f"{self.major}.{self.minor}"

    def to_int(self) -> int:
        return self.major * 10 + self.minor


class CpuPlatform:
    device_name = "cpu"

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return "cpu"

    @classmethod
    def get_device_capability(cls, device_id: int = 0) -> Optional[DeviceCapability]:
        return None

    @classmethod
    def has_device_capability(cls, capability, device_id: int = 0) -> bool:
        # interface.py Platform.has_device_capability: False when the capability is unknown
        current = cls.get_device_capability(device_id)
        return current is not None and current.to_int() >= capability


def cuda_like(name: str, major: int, minor: int):
    """A platform that reports a GPU, as platforms/cuda.py does through NVML."""
    return type("CudaLikePlatform", (CpuPlatform,), {
        "get_device_name": classmethod(lambda cls, device_id=0: name),
        "get_device_capability": classmethod(lambda cls, device_id=0: DeviceCapability(major, minor)),
    })


current_platform = CpuPlatform


def set_platform(platform) -> None:
    global current_platform
    current_platform = platform
