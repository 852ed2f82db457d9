"""layers/fused_moe/layer.py FusedMoE under expert parallelism: each EP rank holds
num_experts / ep_size experts, and the EP rank is dp_rank * pcp_size * tp_size +
pcp_rank * tp_size + tp_rank (FusedMoEParallelConfig.make, the same formula as
default_loader.py _init_ep_weight_filter). Its weight_loader skips experts of other
ranks (FusedMoE._map_global_expert_id_to_local_expert_id returns -1)."""
import torch


class FusedMoE(torch.nn.Module):
    def __init__(self, num_experts, hidden, vllm_config):
        super().__init__()
        from vllm.distributed import get_dp_group, get_pcp_group, get_tensor_model_parallel_rank
        parallel = vllm_config.parallel_config
        if parallel.enable_expert_parallel:
            tp, dp, pcp = parallel.tensor_parallel_size, parallel.data_parallel_size, parallel.prefill_context_parallel_size
            ep_size = dp * pcp * tp
            ep_rank = get_dp_group().rank_in_group * pcp * tp + get_pcp_group().rank_in_group * tp + get_tensor_model_parallel_rank()
        else:
            ep_size, ep_rank = 1, 0
        self.local_num_experts = num_experts // ep_size
        self.first_expert = ep_rank * self.local_num_experts
        self.w13_weight = torch.nn.Parameter(torch.empty(self.local_num_experts, hidden, hidden), requires_grad=False)
        self.w13_weight.weight_loader = self.weight_loader

    def weight_loader(self, param, loaded_weight, expert_id):
        local = expert_id - self.first_expert
        if 0 <= local < self.local_num_experts:
            param.data[local].copy_(loaded_weight)
