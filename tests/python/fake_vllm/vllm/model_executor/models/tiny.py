"""A small decoder in the shape of vllm/model_executor/models/llama.py: the constructor
takes (vllm_config, prefix); q/k/v checkpoint tensors load into one fused qkv_proj
(stacked_params_mapping); tie_word_embeddings makes lm_head the embed_tokens module;
load_weights calls each parameter's weight_loader (default_weight_loader otherwise) and
returns the names it loaded. Optional parts exercise what processing does in vLLM: an
fp8 KV cache (attention scales), fp8 / online-fp8 linear methods, an MLA projection, and
FusedMoE experts under expert parallelism."""
import torch

from ..layers.attention import Attention, MLAProjection
from ..layers.fused_moe import FusedMoE
from ..layers.linear import LinearBase
from ..layers.quantization import Fp8LinearMethod
from ..layers.rotary_embedding import RotaryEmbedding

# Counts constructions, so a test can tell that a model was built once.
CONSTRUCTED = []


def default_weight_loader(param, loaded_weight):
    """model_loader/weight_utils.py default_weight_loader."""
    param.data.copy_(loaded_weight)


class VocabParallelEmbedding(torch.nn.Module):
    def __init__(self, vocab, hidden):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(vocab, hidden), requires_grad=False)


class DecoderLayer(torch.nn.Module):
    def __init__(self, c, vllm_config, model_config, prefix):
        super().__init__()
        h = c.hidden_size
        self.qkv_proj = LinearBase(h, [h, h, h], model_config.quantization, prefix=f"{prefix}.qkv_proj")
        self.attn = Attention(2, h // 2, vllm_config, prefix=f"{prefix}.attn")
        if getattr(c, "mla", False):
            self.mla = MLAProjection(h, 2, h // 4)
        if getattr(c, "num_experts", 0):
            self.experts = FusedMoE(c.num_experts, h, vllm_config)


class TinyForCausalLM(torch.nn.Module):
    def __init__(self, *, vllm_config, model_config=None, prefix=""):
        super().__init__()
        CONSTRUCTED.append(prefix)
        model_config = model_config or vllm_config.model_config
        c = model_config.hf_config
        self.embed_tokens = VocabParallelEmbedding(c.vocab_size, c.hidden_size)
        self.layers = torch.nn.ModuleList(
            [DecoderLayer(c, vllm_config, model_config, f"{prefix + '.' if prefix else ''}layers.{i}")
             for i in range(c.num_hidden_layers)])
        self.rotary_emb = RotaryEmbedding(c.hidden_size)
        self.lm_head = self.embed_tokens  # tie_word_embeddings

    def load_weights(self, weights):
        stacked = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
        loaded = set()
        for name, tensor in weights:
            parts = name.split(".")
            if parts[0] == "layers":
                layer = self.layers[int(parts[1])]
                kind = parts[2]
                if kind in stacked:
                    param = getattr(layer.qkv_proj, parts[3], None)
                    if parts[3] == "weight_scale" and not isinstance(layer.qkv_proj.quant_method, Fp8LinearMethod):
                        continue  # the tests' one checkpoint carries an fp8 checkpoint's scales for every variant
                    param.weight_loader(param, tensor.reshape(-1) if parts[3] == "weight_scale" else tensor, stacked[kind])
                    name = f"layers.{parts[1]}.qkv_proj.{parts[3]}"
                elif kind == "attn":
                    param = getattr(layer.attn, parts[3], None)
                    if param is None:  # no fp8 KV cache: the checkpoint's scales are not used
                        continue
                    param.weight_loader(param, tensor)
                elif kind == "experts":
                    param = layer.experts.w13_weight
                    param.weight_loader(param, tensor, int(parts[3]))
                    name = f"layers.{parts[1]}.experts.w13_weight"
                else:
                    param = getattr(layer.mla, parts[3])
                    getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            else:
                param = self.embed_tokens.weight
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
        return loaded
