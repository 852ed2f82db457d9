"""vLLM's torch.compile cache frozen beside the weights and written back before compile."""
import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_vllm"))

import safetensors_reader  # noqa: E402
import vllm  # noqa: E402
from vllm import distributed  # noqa: E402
from vllm.config import CompilationConfig, ModelConfig, ParallelConfig, VllmConfig  # noqa: E402

import thaw_vllm  # noqa: E402
from thaw_vllm import artifacts, vllm_compile, vllm_loader  # noqa: E402

from file_trees import tree_of  # noqa: E402

EXTENSION = "thaw_vllm.worker.ThawWorkerExtension"


@pytest.fixture
def vllm_env(tmp_path, monkeypatch):
    """VLLM_CACHE_ROOT as vllm/envs.py reads it, from the environment."""
    root = tmp_path / "vllm-cache"
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(root))
    vllm_loader.register()
    distributed.set_ranks()
    yield root
    distributed.set_ranks()


def vllm_config(rank=0, dp_rank=0):
    return VllmConfig(model_config=ModelConfig(model="m"), parallel_config=ParallelConfig(rank=rank, data_parallel_index=dp_rank),
                      compilation_config=CompilationConfig())


def compile_like_vllm(config, root, factors="factors", prefix="backbone"):
    """The directories vllm/compilation/backends.py VllmBackend.__call__ makes at the first
    compile (cache_dir = VLLM_CACHE_ROOT/torch_compile_cache/<sha256(factors)[:10]>,
    local_cache_dir = <cache_dir>/rank_<rank>_<dp_rank>/<prefix>), with the inductor_cache and
    triton_cache that compiler_interface.py InductorAdaptor.initialize_cache points torch at,
    and files in them standing in for what the compilers write."""
    hash_key = hashlib.sha256(str(factors).encode()).hexdigest()[:10]
    cache_dir = os.path.join(root, "torch_compile_cache", hash_key)
    rank = config.parallel_config.rank
    local = os.path.join(cache_dir, f"rank_{rank}_{config.parallel_config.data_parallel_index}", prefix)
    for d in (local, os.path.join(cache_dir, "inductor_cache", "fx"), os.path.join(cache_dir, "triton_cache", "k")):
        os.makedirs(d, exist_ok=True)
    files = {os.path.join(local, "vllm_compile_cache.py"): b"{graph: artifact}",
             os.path.join(local, "computation_graph.py"): b"def forward(): ...",
             os.path.join(cache_dir, "inductor_cache", "fx", "entry"): os.urandom(5000),
             os.path.join(cache_dir, "triton_cache", "k", "kernel.cubin"): os.urandom(9000)}
    for path, data in files.items():
        with open(path, "wb") as f:
            f.write(data)
    config.compilation_config.cache_dir = cache_dir
    config.compilation_config.local_cache_dir = local
    return {os.path.relpath(p, root): d for p, d in files.items()}


def test_a_frozen_compile_cache_is_where_the_next_engine_looks(tmp_path, vllm_env):
    config = vllm_config()
    expected = compile_like_vllm(config, str(vllm_env))
    weights = tmp_path / "weights.thaw"
    frozen = vllm_compile.freeze_compile_cache(config, weights)
    assert frozen == str(tmp_path / "weights.compile.thaw")
    shutil.rmtree(vllm_env)
    result = vllm_compile.restore_compile_cache(vllm_config(), weights)
    assert result["restored"] and result["files"] == 4
    assert tree_of(vllm_env) == expected


def test_only_this_ranks_directory_is_frozen(tmp_path, vllm_env):
    compile_like_vllm(vllm_config(rank=1), str(vllm_env))
    config = vllm_config(rank=0)
    mine = compile_like_vllm(config, str(vllm_env))
    vllm_compile.freeze_compile_cache(config, tmp_path / "w.thaw")
    frozen = {e["path"] for e in artifacts.describe(tmp_path / "w.compile.thaw")["sets"]["vllm"]}
    assert frozen == set(mine)
    assert not any("rank_1_0" in p for p in frozen)


def test_another_rank_or_vllm_version_misses_cleanly(tmp_path, vllm_env, monkeypatch):
    config = vllm_config(rank=0)
    compile_like_vllm(config, str(vllm_env))
    vllm_compile.freeze_compile_cache(config, tmp_path / "w.thaw")
    shutil.rmtree(vllm_env)
    assert "'rank'" in vllm_compile.restore_compile_cache(vllm_config(rank=1), tmp_path / "w.thaw")["reason"]
    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    assert "'vllm'" in vllm_compile.restore_compile_cache(config, tmp_path / "w.thaw")["reason"]
    assert not vllm_env.exists()


def test_nothing_compiled_freezes_nothing_and_restores_as_a_miss(tmp_path, vllm_env):
    assert vllm_compile.freeze_compile_cache(vllm_config(), tmp_path / "w.thaw") is None
    result = vllm_compile.restore_compile_cache(vllm_config(), tmp_path / "w.thaw")
    assert not result["restored"] and "no " in result["reason"]


def test_a_cache_dir_outside_the_cache_root_is_not_captured(tmp_path, vllm_env):
    config = vllm_config()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret").write_bytes(b"x")
    config.compilation_config.cache_dir = str(outside)
    assert vllm_compile.freeze_compile_cache(config, tmp_path / "w.thaw") is None


def test_the_loader_writes_the_cache_back_before_vllm_compiles(tmp_path, vllm_env):
    """Freeze through the worker extension after a (simulated) compile, then a new engine
    loaded with load_format="thaw" finds the files where VllmBackend.__call__ will look."""
    g = torch.Generator().manual_seed(0)
    tensors = {"embed_tokens.weight": torch.randn(40, 16, generator=g)}
    for i in range(2):
        for kind in ("q_proj", "k_proj", "v_proj"):
            tensors[f"layers.{i}.{kind}.weight"] = torch.randn(16, 16, generator=g)
            tensors[f"layers.{i}.{kind}.weight_scale"] = torch.rand(1, generator=g)
        tensors[f"layers.{i}.attn.k_scale"] = torch.tensor(0.5)
        tensors[f"layers.{i}.attn.v_scale"] = torch.tensor(0.25)
    (tmp_path / "ckpt").mkdir()
    safetensors_reader.write(tmp_path / "ckpt" / "model.safetensors", tensors)
    from types import SimpleNamespace
    hf = SimpleNamespace(hidden_size=16, num_hidden_layers=2, vocab_size=40, architectures=["TinyForCausalLM"])
    reference = vllm.LLM(model=str(tmp_path / "ckpt"), hf_config=hf, worker_extension_cls=EXTENSION)
    expected = compile_like_vllm(reference.worker.vllm_config, str(vllm_env))
    files = thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    assert files[-1].endswith(".compile.thaw")
    shutil.rmtree(vllm_env)
    vllm.LLM(model=str(tmp_path / "ckpt"), hf_config=hf, load_format="thaw", worker_extension_cls=EXTENSION,
             model_loader_extra_config={"snapshot": str(tmp_path / "snap")})
    assert tree_of(vllm_env) == expected
    shutil.rmtree(vllm_env)
    vllm.LLM(model=str(tmp_path / "ckpt"), hf_config=hf, load_format="thaw", worker_extension_cls=EXTENSION,
             model_loader_extra_config={"snapshot": str(tmp_path / "snap"), "compile_cache": False})
    assert not vllm_env.exists()
