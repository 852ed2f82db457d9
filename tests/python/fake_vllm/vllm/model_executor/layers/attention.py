"""layers/attention/attention.py Attention and layers/attention/mla_attention.py, as far
as loading sees them:
- __init__ registers the layer in compilation_config.static_forward_context under its
  prefix and sets self.kv_cache = torch.tensor([]), a placeholder that bind_kv_cache
  (v1/worker/utils.py, AttentionLayerBase.bind_kv_cache) replaces with the real cache
  once the engine has allocated it, after load_model;
- _init_kv_cache_quant: set_default_quant_scales registers _k_scale/_v_scale/_q_scale/
  _prob_scale buffers and sets the host copies (_q_scale_float ..., _k_scale_cpu,
  _v_scale_cpu); with an fp8 KV cache the kv-cache quant method creates the loadable
  k_scale/v_scale parameters;
- MLA's process_weights_after_loading registers W_UK_T = W_UK.permute(1, 2, 0) through
  replace_parameter (a non-contiguous parameter)."""
import torch

from ..utils import replace_parameter
from .quantization import BaseKVCacheMethod


def set_default_quant_scales(layer, register_buffer=False):
    if register_buffer:
        for name in ("_k_scale", "_v_scale", "_q_scale", "_prob_scale"):
            layer.register_buffer(name, torch.tensor(1.0, dtype=torch.float32))
    else:
        for name in ("_k_scale", "_v_scale", "_q_scale", "_prob_scale"):
            getattr(layer, name).fill_(1.0)
    layer._q_scale_float = 1.0
    layer._k_scale_float = 1.0
    layer._v_scale_float = 1.0
    layer._k_scale_cpu = torch.tensor(1.0, dtype=torch.float32)
    layer._v_scale_cpu = torch.tensor(1.0, dtype=torch.float32)
    layer._prob_scale_float = 1.0


class Attention(torch.nn.Module):
    def __init__(self, num_heads, head_size, vllm_config, prefix):
        super().__init__()
        self.num_heads, self.head_size, self.layer_name = num_heads, head_size, prefix
        self.kv_cache_dtype = vllm_config.cache_config.cache_dtype
        context = vllm_config.compilation_config.static_forward_context
        if prefix in context:
            raise ValueError(f"Duplicate layer name: {prefix}")
        context[prefix] = self
        self.kv_cache = torch.tensor([])
        set_default_quant_scales(self, register_buffer=True)
        self._o_scale_float = None
        self.uses_quant_scales = self.kv_cache_dtype.startswith("fp8")  # should_load_quant_weights
        if self.uses_quant_scales:
            self.quant_method = BaseKVCacheMethod()
            self.quant_method.create_weights(self)

    def process_weights_after_loading(self, act_dtype):
        if not self.uses_quant_scales:
            set_default_quant_scales(self, register_buffer=False)

    def bind_kv_cache(self, kv_cache):
        self.kv_cache = kv_cache


class MLAProjection(torch.nn.Module):
    """The absorbed projections of MLAAttention.process_weights_after_loading (non-AITER
    path): kv_b_proj's dequantized weight, transposed and viewed (L, N, P + V), split into
    W_UK and W_UV, registered as W_UV = W_UV.transpose(0, 1) and W_UK_T = W_UK.permute(1, 2, 0)."""

    def __init__(self, lora_rank, heads, head_dim):
        super().__init__()
        self.kv_b_proj = torch.nn.Parameter(torch.empty(heads * 2 * head_dim, lora_rank), requires_grad=False)
        self.lora_rank, self.heads, self.head_dim = lora_rank, heads, head_dim

    def process_weights_after_loading(self, act_dtype):
        kv_b = self.kv_b_proj.data.clone().T.reshape(self.lora_rank, self.heads, 2 * self.head_dim)
        w_uk, w_uv = kv_b.split([self.head_dim, self.head_dim], dim=-1)
        replace_parameter(self, "W_UV", w_uv.transpose(0, 1), prefer_copy=True)
        replace_parameter(self, "W_UK_T", w_uk.permute(1, 2, 0), prefer_copy=True)
