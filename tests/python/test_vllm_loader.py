"""load_format="thaw" against the vLLM test double in fake_vllm/, which copies vLLM's own
code paths (each module names the vLLM file it follows). Tests named after an item of the
vLLM issue fail on the loader before that fix."""
import json
import logging
import shutil
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_vllm"))

import safetensors_reader  # noqa: E402
import vllm  # noqa: E402
from vllm import distributed, platforms  # noqa: E402
from vllm.device_allocator.cumem import CuMemAllocator  # noqa: E402
from vllm.model_executor import model_loader  # noqa: E402
from vllm.model_executor.model_loader import utils as loader_utils  # noqa: E402
from vllm.model_executor.models import tiny  # noqa: E402

import thaw_vllm  # noqa: E402
from thaw_vllm import vllm_capture, vllm_loader  # noqa: E402
from thaw_vllm.vllm_config import Ranks, rank_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXTENSION = "thaw_vllm.worker.ThawWorkerExtension"
H100 = platforms.cuda_like("NVIDIA H100 80GB HBM3", 9, 0)


def hf(**extra):
    return SimpleNamespace(hidden_size=16, num_hidden_layers=2, vocab_size=40, architectures=["TinyForCausalLM"], **extra)


HF = hf()


@pytest.fixture(autouse=True)
def clean_double(monkeypatch):
    vllm_loader.register()
    distributed.set_ranks()
    monkeypatch.setattr(CuMemAllocator, "instance", None)
    monkeypatch.setattr(platforms, "current_platform", platforms.CpuPlatform)
    yield
    distributed.set_ranks()


def make_checkpoint(directory, seed=0, config=HF):
    g = torch.Generator().manual_seed(seed)
    tensors = {"embed_tokens.weight": torch.randn(40, 16, generator=g)}
    for i in range(config.num_hidden_layers):
        for kind in ("q_proj", "k_proj", "v_proj"):
            tensors[f"layers.{i}.{kind}.weight"] = torch.randn(16, 16, generator=g)
            tensors[f"layers.{i}.{kind}.weight_scale"] = torch.rand(1, generator=g)  # used by fp8 layers
        tensors[f"layers.{i}.attn.k_scale"] = torch.tensor(0.5 + seed + i)
        tensors[f"layers.{i}.attn.v_scale"] = torch.tensor(0.25 + seed + i)
        if getattr(config, "mla", False):
            tensors[f"layers.{i}.mla.kv_b_proj"] = torch.randn(16, 16, generator=g)
        for e in range(getattr(config, "num_experts", 0)):
            tensors[f"layers.{i}.experts.{e}.weight"] = torch.randn(16, 16, generator=g)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors_reader.write(directory / "model.safetensors", tensors, pad_to_odd=True)
    return directory


def engine(model, load_format="auto", extra=None, **kwargs):
    kwargs.setdefault("hf_config", HF)
    return vllm.LLM(model=str(model), load_format=load_format, model_loader_extra_config=extra,
                    worker_extension_cls=EXTENSION, **kwargs)


def state(model) -> dict:
    """What a model computes with: its tensors and the scalars processing derived."""
    return {**vllm_capture.model_tensors(model), **{f"{m}:{k}": v for m, values in vllm_capture.derived_scalars(model).items()
                                                    for k, v in values.items()}}


def assert_same(a, b):
    sa, sb = state(a), state(b)
    assert set(sa) == set(sb)
    for name in sa:
        if isinstance(sa[name], torch.Tensor):
            assert sa[name].shape == sb[name].shape and sa[name].dtype == sb[name].dtype, name
            assert torch.equal(sa[name], sb[name]), name
        else:
            assert sa[name] == sb[name], name


def frozen_names(path) -> set:
    return {t["name"] for t in thaw_vllm.info(path)["tensors"]}


# Items of the vLLM issue, one test each.

def test_freeze_skips_the_kv_cache_bound_after_load(tmp_path):  # item 1
    reference = engine(make_checkpoint(tmp_path / "ckpt"))
    attn = reference.worker.get_model().layers[0].attn
    assert attn.kv_cache.numel() > 0 and not attn.kv_cache.is_contiguous()  # bound by bind_kv_cache
    files = thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    assert not any("kv_cache" in n for n in frozen_names(files[0]))
    restored = engine(tmp_path / "ckpt", "thaw", {"snapshot": str(tmp_path / "snap")})
    assert_same(reference.worker.get_model(), restored.worker.get_model())
    assert restored.worker.get_model().layers[0].attn.kv_cache.numel() > 0


def test_fp8_weights_kept_transposed_are_restored(tmp_path, monkeypatch):  # item 2
    monkeypatch.setattr(platforms, "current_platform", H100)
    reference = engine(make_checkpoint(tmp_path / "ckpt"), quantization="fp8")
    assert not reference.worker.get_model().layers[0].qkv_proj.weight.is_contiguous()  # weight.t()
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    restored = engine(tmp_path / "ckpt", "thaw", {"snapshot": str(tmp_path / "snap")}, quantization="fp8")
    assert_same(reference.worker.get_model(), restored.worker.get_model())
    assert not restored.worker.get_model().layers[0].qkv_proj.weight.is_contiguous()


def test_fp8_kv_cache_scales_are_restored_as_python_floats(tmp_path):  # item 3
    reference = engine(make_checkpoint(tmp_path / "ckpt"), kv_cache_dtype="fp8")
    attn = reference.worker.get_model().layers[1].attn
    assert (attn._k_scale_float, attn._v_scale_float, float(attn._k_scale_cpu)) == (1.5, 1.25, 1.5)
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    restored = engine(tmp_path / "ckpt", "thaw", {"snapshot": str(tmp_path / "snap")}, kv_cache_dtype="fp8")
    attn = restored.worker.get_model().layers[1].attn
    assert (attn._k_scale_float, attn._v_scale_float, float(attn._k_scale_cpu)) == (1.5, 1.25, 1.5)
    assert_same(reference.worker.get_model(), restored.worker.get_model())


def test_reload_weights_streams_through_get_all_weights(tmp_path, monkeypatch):  # item 4
    monkeypatch.setattr(platforms, "current_platform", H100)
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=2)
    reference = engine(checkpoint, quantization="fp8", kv_cache_dtype="fp8")
    llm = engine(checkpoint, "thaw", quantization="fp8", kv_cache_dtype="fp8", enable_sleep_mode=True)
    model = llm.worker.get_model()
    addresses = {n: t.data_ptr() for n, t in vllm_capture.model_tensors(model).items()}
    llm.sleep(2)  # the documented level-2 recipe: weights discarded ...
    assert torch.isnan(model.layers[0].qkv_proj.weight).all()
    llm.wake_up(tags=["weights"])
    llm.collective_rpc("reload_weights")  # ... and reloaded through the loader's get_all_weights
    llm.wake_up(tags=["kv_cache"])
    assert_same(reference.worker.get_model(), model)
    assert addresses == {n: t.data_ptr() for n, t in vllm_capture.model_tensors(model).items()}


def test_thaw_restore_refreshes_a_sleeping_engine_in_place(tmp_path):  # item 4, snapshot mode
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=3)
    reference = engine(checkpoint, kv_cache_dtype="fp8")
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    llm = engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap")}, kv_cache_dtype="fp8", enable_sleep_mode=True)
    model = llm.worker.get_model()
    addresses = {n: t.data_ptr() for n, t in vllm_capture.model_tensors(model).items()}
    llm.sleep(2)
    llm.wake_up(tags=["weights"])
    assert thaw_vllm.restore_vllm(llm) > 0
    llm.wake_up(tags=["kv_cache"])
    assert_same(reference.worker.get_model(), model)
    assert addresses == {n: t.data_ptr() for n, t in vllm_capture.model_tensors(model).items()}


def test_draft_model_is_frozen_and_restored_from_its_own_snapshot(tmp_path):  # item 5
    target, draft = make_checkpoint(tmp_path / "t", 1), make_checkpoint(tmp_path / "d", 2)
    reference = engine(target, speculative_config={"model": str(draft)})
    files = thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    assert [Path(f).relative_to(tmp_path / "snap").as_posix() for f in files] == ["weights.thaw", "draft/weights.thaw"]
    expected_draft = state(reference.worker.get_draft_model())
    shutil.rmtree(draft)  # restored from the draft snapshot, never from its checkpoint
    restored = engine(target, "thaw", {"snapshot": str(tmp_path / "snap")}, speculative_config={"model": str(draft)})
    assert_same(reference.worker.get_model(), restored.worker.get_model())
    got = state(restored.worker.get_draft_model())
    assert set(got) == set(expected_draft) and all(torch.equal(got[n], expected_draft[n]) if isinstance(got[n], torch.Tensor)
                                                  else got[n] == expected_draft[n] for n in got)


def test_draft_without_a_snapshot_streams_its_own_checkpoint(tmp_path):
    target, draft = make_checkpoint(tmp_path / "t", 1), make_checkpoint(tmp_path / "d", 2)
    reference = engine(target, speculative_config={"model": str(draft)})
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    shutil.rmtree(tmp_path / "snap" / "draft")
    restored = engine(target, "thaw", {"snapshot": str(tmp_path / "snap")}, speculative_config={"model": str(draft)})
    assert_same(reference.worker.get_draft_model(), restored.worker.get_draft_model())


def test_online_quantization_is_finalized_before_freeze_and_restore(tmp_path):  # item 6
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=4)
    reference = engine(checkpoint, quantization="online_fp8")
    assert hasattr(reference.worker.get_model().layers[0].qkv_proj, "weight_scale")
    streamed = engine(checkpoint, "thaw", quantization="online_fp8")
    assert_same(reference.worker.get_model(), streamed.worker.get_model())
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    restored = engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap")}, quantization="online_fp8")
    assert_same(reference.worker.get_model(), restored.worker.get_model())


def test_model_dtype_is_kept_while_processing(tmp_path):  # item 7
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=5)
    reference = engine(checkpoint, quantization="fp8", dtype="float64")  # no fp8 hardware: Marlin
    assert reference.worker.get_model().layers[0].qkv_proj.weight_scale.dtype == torch.float64
    streamed = engine(checkpoint, "thaw", quantization="fp8", dtype="float64")
    assert_same(reference.worker.get_model(), streamed.worker.get_model())
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    restored = engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap")}, quantization="fp8", dtype="float64")
    assert_same(reference.worker.get_model(), restored.worker.get_model())


def test_hub_ids_resolve_through_the_hub_cache(tmp_path):  # item 8
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    make_checkpoint(repo / "snapshots" / "0123abc", seed=6)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    reference = engine(repo / "snapshots" / "0123abc")
    streamed = engine("acme/tiny", "thaw", download_dir=str(cache))
    assert_same(reference.worker.get_model(), streamed.worker.get_model())
    with pytest.raises(FileNotFoundError, match=r"acme/absent.*download it first"):
        engine("acme/absent", "thaw", download_dir=str(cache))


def test_expert_shards_get_one_file_per_data_parallel_rank(tmp_path):  # item 9
    config = hf(num_experts=4)
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=7, config=config)
    layout = dict(hf_config=config, data_parallel_size=2, enable_expert_parallel=True)
    reference = engine(checkpoint, **layout)
    files = thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    assert [Path(f).name for f in files] == ["weights.dp0.thaw", "weights.dp1.thaw"]
    assert json.loads(thaw_vllm.info(files[1])["metadata"]["thaw.vllm.ranks"])["ep"] == [1, 2]
    restored = engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap")}, **layout)
    for before, after in zip(reference.workers, restored.workers):
        assert_same(before.get_model(), after.get_model())
    experts = [w.get_model().layers[0].experts.w13_weight for w in restored.workers]
    assert not torch.equal(experts[0], experts[1])


@pytest.mark.parametrize("change, field", [
    ("version", "vllm_version"), ("gpu", "gpu"), ("kv_cache_dtype", "kv_cache_dtype"),
    ("kernel", "quantization_kernels")])
def test_fingerprint_holds_version_gpu_kv_cache_dtype_and_kernel(tmp_path, monkeypatch, change, field):  # item 10
    monkeypatch.setattr(platforms, "current_platform", H100)
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    thaw_vllm.freeze_vllm(engine(checkpoint, quantization="fp8"), tmp_path / "snap")
    kwargs = dict(quantization="fp8")
    if change == "version":
        monkeypatch.setattr(vllm, "__version__", "0.0.1+other")
    elif change == "gpu":
        monkeypatch.setattr(platforms, "current_platform", platforms.cuda_like("NVIDIA H200", 9, 0))
    elif change == "kv_cache_dtype":
        kwargs["kv_cache_dtype"] = "fp8"
    else:
        monkeypatch.setenv("VLLM_TEST_FORCE_FP8_MARLIN", "1")
    with pytest.raises(thaw_vllm.ThawMismatchError, match=f"frozen with thaw.vllm.{field}="):
        engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap")}, **kwargs)


def test_a_lora_engine_freezes_the_model_as_loaded(tmp_path):  # item 11
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=8)
    reference = engine(checkpoint, enable_lora=True)
    assert hasattr(reference.worker.get_model().layers[0].qkv_proj, "base_layer")
    files = thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    assert not any("base_layer" in n or "lora" in n for n in frozen_names(files[0]))
    restored = engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap")}, enable_lora=True)
    assert_same(reference.worker.get_model(), restored.worker.get_model())
    assert thaw_vllm.restore_vllm(restored) > 0  # in place into the wrapped model
    assert_same(reference.worker.get_model(), restored.worker.get_model())


def test_a_type_error_in_the_model_constructor_is_raised_once(tmp_path, monkeypatch):  # item 12
    built = []

    class Broken(torch.nn.Module):
        def __init__(self, *, vllm_config, model_config=None, prefix=""):
            built.append(prefix)
            raise TypeError("unsupported rope_scaling")

    monkeypatch.setattr(loader_utils, "MODEL_CLASS", Broken)
    with pytest.raises(TypeError, match="unsupported rope_scaling"):
        engine(make_checkpoint(tmp_path / "ckpt"), "thaw")
    assert built == [""]


def test_a_failing_registration_is_logged_and_the_engine_starts(tmp_path, monkeypatch, caplog):  # item 13
    def broken(load_format):
        raise RuntimeError("registry is read-only")

    monkeypatch.setitem(model_loader._LOAD_FORMAT_TO_MODEL_LOADER, "thaw", None)
    monkeypatch.delitem(model_loader._LOAD_FORMAT_TO_MODEL_LOADER, "thaw")
    monkeypatch.setattr(model_loader, "register_model_loader", broken)
    with caplog.at_level(logging.ERROR, logger="thaw_vllm"):
        vllm_loader.register()  # vLLM calls it unguarded (plugins/__init__.py)
    assert "registry is read-only" in caplog.text
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    assert engine(checkpoint).worker.get_model() is not None


# Sleep mode with Thaw as the backend.

def test_sleep_level_2_wakes_up_from_the_snapshot(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=9)
    reference = engine(checkpoint, kv_cache_dtype="fp8")
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    llm = engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap"), "sleep_backend": True},
                 kv_cache_dtype="fp8", enable_sleep_mode=True)
    model = llm.worker.get_model()
    assert llm.worker.vllm_config.model_config.sleep_mode_backend == "thaw"
    addresses = {n: t.data_ptr() for n, t in vllm_capture.model_tensors(model).items()}
    llm.sleep(2)
    assert torch.isnan(model.layers[0].qkv_proj.weight).all()
    llm.wake_up()
    assert_same(reference.worker.get_model(), model)
    assert addresses == {n: t.data_ptr() for n, t in vllm_capture.model_tensors(model).items()}
    llm.sleep(1)  # level 1 stays vLLM's: weights kept in host memory
    llm.wake_up()
    assert_same(reference.worker.get_model(), model)


def test_sleep_backend_needs_sleep_mode_and_a_snapshot(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    thaw_vllm.freeze_vllm(engine(checkpoint), tmp_path / "snap")
    with pytest.raises(thaw_vllm.ThawError, match="enable_sleep_mode"):
        engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap"), "sleep_backend": True})
    with pytest.raises(thaw_vllm.ThawError, match="from a snapshot"):
        engine(checkpoint, "thaw", {"sleep_backend": True}, enable_sleep_mode=True)


# What a snapshot captures.

def test_capture_takes_parameters_buffers_and_listed_attributes_only():
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.ones(2))
    module.register_buffer("table", torch.ones(3), persistent=False)
    module.W_K = torch.ones(4)             # listed: MLA's derived matrix
    module.kv_cache = torch.ones(5)        # runtime state
    module.scratch = torch.ones(6)         # unknown: reported, not frozen
    module._k_scale_float, module._k_scale_cpu = 0.5, torch.tensor(0.5)
    assert set(vllm_capture.model_tensors(module)) == {"weight", "table", "W_K"}
    assert vllm_capture.unlisted_tensor_attributes(module) == ["scratch"]
    assert vllm_capture.derived_scalars(module) == {"": {"_k_scale_float": 0.5, "_k_scale_cpu": 0.5}}


@pytest.mark.parametrize("recorded, message", [
    ('{"": {"_k_scale_float": NaN}}', "not a finite number"),
    ('{"": {"__class__": 1.0}}', "not one Thaw restores"),
    ('{"nowhere": {"_k_scale_float": 1.0}}', "does not have"),
    ('[1]', "not an object"),
    ("{", "not JSON")])
def test_recorded_scalars_are_checked_before_use(recorded, message):
    module = torch.nn.Module()
    module._k_scale_float = 1.0
    with pytest.raises(thaw_vllm.ThawError, match=message):
        vllm_capture.apply_scalars(module, {vllm_capture.SCALARS_KEY: recorded}, "snap.thaw")


# The loader's contract with vLLM.

def test_snapshot_restores_processed_weights_without_processing_them_again(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", config=hf(mla=True))
    reference = engine(checkpoint, hf_config=hf(mla=True))
    assert not reference.worker.get_model().layers[0].mla.W_UK_T.is_contiguous()
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    restored = engine(checkpoint, "THAW", {"snapshot": str(tmp_path / "snap")}, hf_config=hf(mla=True))
    assert_same(reference.worker.get_model(), restored.worker.get_model())
    model = restored.worker.get_model()
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    assert not model.training


def test_without_a_snapshot_the_checkpoint_streams_into_load_weights(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=3)
    assert_same(engine(checkpoint).worker.get_model(), engine(checkpoint, "thaw").worker.get_model())
    other = make_checkpoint(tmp_path / "other", seed=4)
    from_other = engine(checkpoint, "thaw", {"checkpoint": str(other)})
    assert_same(engine(other).worker.get_model(), from_other.worker.get_model())


@pytest.mark.parametrize("extra, message", [
    ({"snapshto": "x"}, r"unknown model_loader_extra_config keys \['snapshto'\]"),
    ({"io": "fast"}, "io must be one of"),
    ({"threads": -1}, "threads must be a whole number"),
    ({"verify": "yes"}, "verify must be true or false"),
    ({"pool": 3}, "pool must be"),
    ({"publish": "yes"}, "publish must be true or false"),
    ({"publish": True}, "set pool too"),
    ({"borrow": "fast"}, "borrow must be"),
    ({"borrow": [1, -2]}, "borrow must be"),
    ({"borrow": {"devices": [1], "rate": 2}}, "borrow takes the keys devices, weights and lanes")])
def test_extra_config_is_validated_with_clear_errors(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        engine(tmp_path, "thaw", extra)


def test_a_missing_snapshot_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        engine(make_checkpoint(tmp_path / "c"), "thaw", {"snapshot": str(tmp_path / "absent.thaw")})


def test_fingerprint_mismatch_names_what_differs(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    thaw_vllm.freeze_vllm(engine(checkpoint), tmp_path / "snap")
    with pytest.raises(thaw_vllm.ThawMismatchError, match="dtype"):
        engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap")}, dtype="float64")
    plain = tmp_path / "plain.thaw"
    thaw_vllm.freeze({"w": torch.zeros(2)}, plain)
    with pytest.raises(thaw_vllm.ThawMismatchError, match="not frozen from vLLM"):
        engine(checkpoint, "thaw", {"snapshot": str(plain)})


def test_each_tensor_parallel_rank_reads_its_own_file(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    reference = engine(checkpoint, tensor_parallel_size=2)
    files = thaw_vllm.freeze_vllm(reference, tmp_path / "tp")
    assert [Path(f).name for f in files] == ["weights.tp0.thaw", "weights.tp1.thaw"]
    assert thaw_vllm.info(files[1])["tp_rank"] == 1
    restored = engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "tp")}, tensor_parallel_size=2)
    assert_same(reference.workers[1].get_model(), restored.workers[1].get_model())
    with pytest.raises(thaw_vllm.ThawMismatchError, match="tp_world_size"):
        # The rank-0 file of a TP=2 freeze, presented to rank 0 of TP=4.
        engine(checkpoint, "thaw", {"snapshot": str(tmp_path / "tp" / "weights.tp{tp_rank}.thaw")}, tensor_parallel_size=4)


def test_rank_file_rules(tmp_path):
    assert rank_file(tmp_path) == tmp_path / "weights.thaw"
    assert rank_file(tmp_path, Ranks(3, 4, 1, 2)) == tmp_path / "weights.tp3.pp1.thaw"
    assert rank_file(tmp_path, Ranks(0, 2, dp_rank=3, dp_world=4)) == tmp_path / "weights.tp0.thaw"  # DP replicas share
    experts = Ranks(0, 2, dp_rank=3, dp_world=4, expert_parallel=True)
    assert rank_file(tmp_path, experts) == tmp_path / "weights.tp0.dp3.thaw"
    assert (experts.ep_rank, experts.ep_world) == (6, 8)
    assert rank_file("/s/m-{tp_rank}-{dp_rank}.thaw", experts) == Path("/s/m-0-3.thaw")
    with pytest.raises(thaw_vllm.ThawMismatchError, match="one file"):
        rank_file("/s/model.thaw", Ranks(0, 2))


def test_registration_follows_vllm_rules():
    assert model_loader._LOAD_FORMAT_TO_MODEL_LOADER["thaw"].__name__ == "ThawModelLoader"
    vllm_loader.register()  # idempotent: once per process is enough
    from vllm.device_allocator.sleep_mode_backend import SleepModeBackendFactory
    assert SleepModeBackendFactory.get_backend_class("thaw").supports_durable_storage()
    with pytest.raises(ValueError):
        model_loader.register_model_loader("bogus")(object)


def test_plugin_entry_point_is_declared_in_the_package_metadata():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    plugins = project["project"]["entry-points"]["vllm.general_plugins"]
    assert plugins == {"thaw": "thaw_vllm.vllm_loader:register"}
    assert project["project"]["scripts"]["thaw"] == "thaw_vllm.cli:main"


def test_pool_key_falls_back_to_the_file_when_no_pool_serves(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    reference = engine(checkpoint)
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    extra = {"snapshot": str(tmp_path / "snap"), "pool": str(tmp_path / "absent.sock")}
    assert_same(reference.worker.get_model(), engine(checkpoint, "thaw", extra).worker.get_model())
    assert_same(reference.worker.get_model(), engine(checkpoint, "thaw", {"pool": True}).worker.get_model())


from test_pool import server  # noqa: E402,F401  (the mock pool fixture)


def test_pool_key_serves_a_hit_from_the_shared_host_copy_and_the_rank_line_says_so(tmp_path, server, caplog):
    from thaw_vllm import pool
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    reference = engine(checkpoint)
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    pool.load(tmp_path / "snap" / "weights.thaw", server)
    extra = {"snapshot": str(tmp_path / "snap"), "pool": str(server)}
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        restored = engine(checkpoint, "thaw", extra)  # the double's weights: private CPU memory, no handle to open
    assert_same(reference.worker.get_model(), restored.worker.get_model())
    assert pool.status(server)["snapshots"][0]["hits"] == 1
    lines = [r.message for r in caplog.records if " rank " in r.message and " restored " in r.message]
    assert len(lines) == 1 and "via pool (pool hit, shared host copy)" in lines[0], lines


def test_load_and_freeze_vllm_through_the_one_line_api(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm, "DEFAULT_HF_CONFIG", HF)
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=9)
    streamed = thaw_vllm.load(str(checkpoint))  # no snapshot yet: streams the checkpoint
    files = thaw_vllm.freeze_vllm(streamed, tmp_path / "snap")
    assert [Path(f).name for f in files] == ["weights.thaw"]
    restored = thaw_vllm.load(str(checkpoint), tmp_path / "snap")
    assert_same(streamed.worker.get_model(), restored.worker.get_model())
    assert_same(engine(checkpoint).worker.get_model(), restored.worker.get_model())
    assert tiny.CONSTRUCTED  # the double's model was built


def test_publish_key_publishes_after_the_restore_or_says_why_not(tmp_path, caplog):
    from test_pool import server as serve_pool  # noqa: F401
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    reference = engine(checkpoint)
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    extra = {"snapshot": str(tmp_path / "snap"), "pool": str(tmp_path / "absent.sock"), "publish": True}
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        restored = engine(checkpoint, "thaw", extra)
    assert_same(reference.worker.get_model(), restored.worker.get_model())
    # The double's weights are private CPU memory and no pool listens: one warning, and the engine runs.
    [why] = [r for r in caplog.records if "did not publish" in r.message]
    assert why.levelno == logging.WARNING and "for the next instance" in why.message
    assert any("via file" in r.message for r in caplog.records)


def test_borrow_key_spreads_a_file_restore_and_the_rank_line_names_the_links(tmp_path, caplog):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    reference = engine(checkpoint)
    thaw_vllm.freeze_vllm(reference, tmp_path / "snap")
    extra = {"snapshot": str(tmp_path / "snap"), "pool": "off", "borrow": [1, 2], "chunk_mib": 0}
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        restored = engine(checkpoint, "thaw", extra)
    assert_same(reference.worker.get_model(), restored.worker.get_model())
    [line] = [r.message for r in caplog.records if "rank" in r.message and "restored" in r.message]
    assert "via file" in line and ", links: mock-0 " in line and " direct, mock-1 " in line and "mock-2" in line
