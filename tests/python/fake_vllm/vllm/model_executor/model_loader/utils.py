"""initialize_model and process_weights_after_loading (utils.py), with a model whose
processing changes shapes, values and adds attributes, as quantized layers do (§3.3)."""
import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def set_default_torch_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class RepackedLinear(nn.Module):
    """Checkpoint holds weight [out, in]; processing repacks it to [in, out] scaled by 2 and
    derives a plain attribute, so processing twice gives wrong values or shapes."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)

    def process_weights_after_loading(self):
        repacked = (self.weight.data.t() * 2).contiguous()
        self.weight = nn.Parameter(repacked, requires_grad=False)
        self.weight_sum = repacked.sum(dim=0)


class TinyModel(nn.Module):
    """Fused qkv as vLLM's Llama: checkpoint q/k/v are loaded into slices of qkv_proj."""

    def __init__(self, hidden, layers, vocab):
        super().__init__()
        self.hidden = hidden
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.qkv_proj = nn.ModuleList([nn.Linear(hidden, 3 * hidden, bias=False) for _ in range(layers)])
        self.down_proj = nn.ModuleList([RepackedLinear(hidden, hidden) for _ in range(layers)])
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied
        self.register_buffer("rope_cache", torch.arange(hidden, dtype=torch.float32), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)

    def load_weights(self, weights):
        loaded = set()
        for name, tensor in weights:
            if name.startswith("layers."):
                _, index, kind = name.split(".", 2)
                index = int(index)
                if kind in ("q_proj.weight", "k_proj.weight", "v_proj.weight"):
                    part = "qkv".index(kind[0])
                    self.qkv_proj[index].weight.data[part * self.hidden:(part + 1) * self.hidden].copy_(tensor)
                elif kind == "down_proj.weight":
                    self.down_proj[index].weight.data.copy_(tensor)
            elif name == "embed_tokens.weight":
                self.embed_tokens.weight.data.copy_(tensor)
            loaded.add(name)
        return loaded


def initialize_model(vllm_config, model_config, prefix=""):
    c = model_config.hf_config
    return TinyModel(c.hidden_size, c.num_hidden_layers, c.vocab_size)


def process_weights_after_loading(model, model_config, target_device):
    for module in model.modules():
        if hasattr(module, "process_weights_after_loading"):
            module.process_weights_after_loading()
