"""vllm/device_allocator/cumem.py CuMemAllocator: sleep(offload_tags) backs up the
allocations of the offloaded tags to the CPU and unmaps every allocation; wake_up(tags)
maps new physical memory at the same virtual addresses (tensor addresses, and so
captured CUDA graphs, stay valid) and copies backups back. Allocations that were not
backed up come back with undefined contents. The double cannot unmap host memory: it
overwrites the discarded tensors with NaN at sleep, keeping their storage."""
import torch


class CuMemAllocator:
    instance = None

    @staticmethod
    def get_instance():
        if CuMemAllocator.instance is None:
            CuMemAllocator.instance = CuMemAllocator()
        return CuMemAllocator.instance

    def __init__(self):
        self.tagged = {}
        self.backups = {}

    def track(self, tag, tensors):
        self.tagged.setdefault(tag, []).extend(t for t in tensors if t is not None)

    def sleep(self, offload_tags=None):
        offload_tags = tuple(offload_tags or ())
        for tag, tensors in self.tagged.items():
            if tag in offload_tags:
                self.backups[tag] = [t.detach().clone() for t in tensors]
            for t in tensors:
                if t.is_floating_point():
                    t.data.fill_(float("nan"))
                else:
                    t.data.fill_(-1)

    def wake_up(self, tags=None):
        for tag in list(self.backups):
            if tags is None or tag in tags:
                for t, backup in zip(self.tagged[tag], self.backups.pop(tag)):
                    t.data.copy_(backup)
