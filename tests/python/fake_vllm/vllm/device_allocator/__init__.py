"""vllm/device_allocator/__init__.py get_mem_allocator_instance: CuMemAllocator on CUDA."""


def get_mem_allocator_instance():
    from .cumem import CuMemAllocator
    return CuMemAllocator.get_instance()
