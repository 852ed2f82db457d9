"""Rank getters of vllm/distributed/parallel_state.py (get_tensor_model_parallel_rank,
get_pp_group, get_dp_group, get_pcp_group, get_ep_group). GroupCoordinator exposes
rank_in_group and world_size. The double keeps one process-wide layout that the fake
engine sets for each worker it drives."""
from types import SimpleNamespace

_ranks = {"tp": (0, 1), "pp": (0, 1), "dp": (0, 1), "pcp": (0, 1)}


def set_ranks(tp_rank=0, tp_world=1, pp_rank=0, pp_world=1, dp_rank=0, dp_world=1, pcp_rank=0, pcp_world=1):
    _ranks.update(tp=(tp_rank, tp_world), pp=(pp_rank, pp_world), dp=(dp_rank, dp_world), pcp=(pcp_rank, pcp_world))


def _group(kind):
    rank, world = _ranks[kind]
    return SimpleNamespace(rank_in_group=rank, world_size=world)


def get_tensor_model_parallel_rank():
    return _ranks["tp"][0]


def get_tensor_model_parallel_world_size():
    return _ranks["tp"][1]


def get_pp_group():
    return _group("pp")


def get_dp_group():
    return _group("dp")


def get_pcp_group():
    return _group("pcp")


def get_ep_group():
    # parallel_state.py initialize_model_parallel: the EP group spans DP x PCP x TP
    tp, dp, pcp = _ranks["tp"], _ranks["dp"], _ranks["pcp"]
    return SimpleNamespace(rank_in_group=dp[0] * pcp[1] * tp[1] + pcp[0] * tp[1] + tp[0],
                           world_size=dp[1] * pcp[1] * tp[1])
