"""layers/linear.py LinearBase: the quant method creates the parameters
(quant_method.create_weights) and the fused qkv loader writes each checkpoint shard
into its slice (QKVParallelLinear.weight_loader with loaded_shard_id)."""
import torch

from .quantization import get_linear_method


class LinearBase(torch.nn.Module):
    def __init__(self, input_size, output_sizes, quantization=None, prefix=""):
        super().__init__()
        self.prefix = prefix
        self.logical_widths = list(output_sizes)
        self.quant_method = get_linear_method(quantization)
        self.quant_method.create_weights(self, input_size, sum(output_sizes), torch.get_default_dtype(), self.weight_loader)

    def weight_loader(self, param, loaded_weight, loaded_shard_id=None):
        if loaded_shard_id is None:
            param.data.copy_(loaded_weight)
            return
        start = sum(self.logical_widths[:loaded_shard_id])
        param.data[start:start + self.logical_widths[loaded_shard_id]].copy_(loaded_weight)
