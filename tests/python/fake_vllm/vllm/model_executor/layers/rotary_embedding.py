"""layers/rotary_embedding/base.py RotaryEmbedding: cos_sin_cache is a non-persistent
buffer computed at construction, in the default dtype."""
import torch


class RotaryEmbedding(torch.nn.Module):
    def __init__(self, rotary_dim):
        super().__init__()
        cache = torch.arange(rotary_dim, dtype=torch.float32).to(torch.get_default_dtype())
        self.register_buffer("cos_sin_cache", cache, persistent=False)
