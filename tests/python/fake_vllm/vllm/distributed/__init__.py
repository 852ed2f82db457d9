"""vllm.distributed rank getters (vllm/distributed/parallel_state.py); tests set the ranks."""
from types import SimpleNamespace

TP_RANK, TP_WORLD, PP_RANK, PP_WORLD = 0, 1, 0, 1


def set_ranks(tp_rank=0, tp_world=1, pp_rank=0, pp_world=1):
    global TP_RANK, TP_WORLD, PP_RANK, PP_WORLD
    TP_RANK, TP_WORLD, PP_RANK, PP_WORLD = tp_rank, tp_world, pp_rank, pp_world


def get_tensor_model_parallel_rank():
    return TP_RANK


def get_tensor_model_parallel_world_size():
    return TP_WORLD


def get_pp_group():
    return SimpleNamespace(rank_in_group=PP_RANK, world_size=PP_WORLD)
