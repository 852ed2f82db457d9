"""load_format="thaw" against the vLLM test double in fake_vllm/ (VLLM_FACTS.md §9)."""
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_vllm"))

import safetensors_reader  # noqa: E402
from vllm import distributed  # noqa: E402
from vllm.config import DeviceConfig, LoadConfig, ModelConfig, VllmConfig  # noqa: E402
from vllm.model_executor import model_loader  # noqa: E402

import thaw_vllm  # noqa: E402
from thaw_vllm import vllm_loader  # noqa: E402
from thaw_vllm.vllm_config import rank_file  # noqa: E402
from thaw_vllm.worker import ThawWorkerExtension  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HF = SimpleNamespace(hidden_size=16, num_hidden_layers=2, vocab_size=40, architectures=["TinyForCausalLM"])


@pytest.fixture(autouse=True)
def registered():
    vllm_loader.register()
    distributed.set_ranks()
    yield
    distributed.set_ranks()


def make_checkpoint(directory, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = {"embed_tokens.weight": torch.randn(40, 16, generator=g)}
    for i in range(2):
        for kind in ("q_proj", "k_proj", "v_proj", "down_proj"):
            tensors[f"layers.{i}.{kind}.weight"] = torch.randn(16, 16, generator=g)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors_reader.write(directory / "model.safetensors", tensors, pad_to_odd=True)
    return directory


def engine_config(model_dir, load_format, extra=None, dtype=torch.float32):
    load = LoadConfig(load_format=load_format, model_loader_extra_config=extra or {})
    return VllmConfig(model_config=ModelConfig(model=str(model_dir), dtype=dtype, hf_config=HF), load_config=load,
                      device_config=DeviceConfig("cpu"))


def load(config):
    return model_loader.get_model_loader(config.load_config).load_model(vllm_config=config, model_config=config.model_config)


def freeze(model, config, path):
    worker = SimpleNamespace(get_model=lambda: model, vllm_config=config)
    return ThawWorkerExtension.thaw_freeze(worker, str(path))


def tensors(model):
    return thaw_vllm.module_tensors(model)


def assert_same(a, b):
    ta, tb = tensors(a), tensors(b)
    assert set(ta) == set(tb)
    for name in ta:
        assert ta[name].shape == tb[name].shape and torch.equal(ta[name], tb[name]), name


def test_snapshot_restores_processed_weights_without_processing_them_again(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    reference = load(engine_config(checkpoint, "auto"))
    assert reference.down_proj[0].weight.shape == (16, 16) and hasattr(reference.down_proj[0], "weight_sum")
    written = freeze(reference, engine_config(checkpoint, "auto"), tmp_path / "snap")
    assert written.endswith("weights.thaw")

    restored = load(engine_config(checkpoint, "THAW", {"snapshot": str(tmp_path / "snap")}))
    assert_same(reference, restored)  # processed once: repacked values, derived attribute, buffers
    assert restored.lm_head.weight.data_ptr() == restored.embed_tokens.weight.data_ptr()
    assert not restored.training


def test_without_a_snapshot_the_checkpoint_streams_into_load_weights(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=3)
    reference = load(engine_config(checkpoint, "auto"))
    streamed = load(engine_config(checkpoint, "thaw"))
    assert_same(reference, streamed)
    other = make_checkpoint(tmp_path / "other", seed=4)
    from_other = load(engine_config(checkpoint, "thaw", {"checkpoint": str(other)}))
    assert_same(load(engine_config(other, "auto")), from_other)


def test_draft_model_without_its_own_snapshot_streams_its_checkpoint(tmp_path):
    target_ckpt, draft_ckpt = make_checkpoint(tmp_path / "t", 1), make_checkpoint(tmp_path / "d", 2)
    config = engine_config(target_ckpt, "thaw", {"snapshot": str(tmp_path / "missing")})
    draft_config = ModelConfig(model=str(draft_ckpt), dtype=torch.float32, hf_config=HF)
    loader = model_loader.get_model_loader(config.load_config)
    draft = loader.load_model(vllm_config=config, model_config=draft_config)
    assert_same(load(engine_config(draft_ckpt, "auto")), draft)


def test_extra_config_is_validated_with_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model_loader_extra_config keys \['snapshto'\]"):
        load(engine_config(tmp_path, "thaw", {"snapshto": "x"}))
    with pytest.raises(ValueError, match="io must be"):
        load(engine_config(tmp_path, "thaw", {"io": "fast"}))
    with pytest.raises(FileNotFoundError):
        load(engine_config(make_checkpoint(tmp_path / "c"), "thaw", {"snapshot": str(tmp_path / "absent.thaw")}))


def test_fingerprint_mismatch_names_what_differs(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    freeze(load(engine_config(checkpoint, "auto")), engine_config(checkpoint, "auto"), tmp_path / "snap")
    with pytest.raises(thaw_vllm.ThawMismatchError, match="dtype"):
        load(engine_config(checkpoint, "thaw", {"snapshot": str(tmp_path / "snap")}, dtype=torch.float64))
    plain = tmp_path / "plain.thaw"
    thaw_vllm.freeze({"w": torch.zeros(2)}, plain)
    with pytest.raises(thaw_vllm.ThawMismatchError, match="not frozen from vLLM"):
        load(engine_config(checkpoint, "thaw", {"snapshot": str(plain)}))


def test_each_tensor_parallel_rank_reads_its_own_file(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    config = engine_config(checkpoint, "auto")
    files = []
    for rank in range(2):
        distributed.set_ranks(tp_rank=rank, tp_world=2)
        files.append(freeze(load(config), config, tmp_path / "tp"))
    assert [Path(f).name for f in files] == ["weights.tp0.thaw", "weights.tp1.thaw"]
    assert thaw_vllm.info(files[1])["tp_rank"] == 1
    distributed.set_ranks(tp_rank=1, tp_world=2)
    restored = load(engine_config(checkpoint, "thaw", {"snapshot": str(tmp_path / "tp")}))
    assert_same(load(config), restored)
    distributed.set_ranks(tp_rank=1, tp_world=4)  # a different layout
    with pytest.raises(thaw_vllm.ThawMismatchError, match="tp_world_size"):
        # The rank-1 file of a TP=2 freeze, presented to rank 1 of TP=4.
        load(engine_config(checkpoint, "thaw", {"snapshot": str(tmp_path / "tp" / "weights.tp{tp_rank}.thaw")}))


def test_rank_file_rules(tmp_path):
    assert rank_file(tmp_path, 0, 1) == tmp_path / "weights.thaw"
    assert rank_file(tmp_path, 3, 4, 1, 2) == tmp_path / "weights.tp3.pp1.thaw"
    assert rank_file("/s/m-{tp_rank}.thaw", 2, 4) == Path("/s/m-2.thaw")
    with pytest.raises(thaw_vllm.ThawMismatchError, match="one file"):
        rank_file("/s/model.thaw", 0, 2)


def test_registration_follows_vllm_rules():
    assert model_loader._LOAD_FORMAT_TO_MODEL_LOADER["thaw"].__name__ == "ThawModelLoader"
    vllm_loader.register()  # idempotent: once per process is enough
    with pytest.raises(ValueError):
        model_loader.register_model_loader("bogus")(object)


def test_plugin_entry_point_is_declared_in_the_package_metadata():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    plugins = project["project"]["entry-points"]["vllm.general_plugins"]
    assert plugins == {"thaw": "thaw_vllm.vllm_loader:register"}
    assert project["project"]["scripts"]["thaw"] == "thaw_vllm.cli:main"


def test_pool_key_falls_back_to_the_file_when_no_pool_serves(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    reference = load(engine_config(checkpoint, "auto"))
    freeze(reference, engine_config(checkpoint, "auto"), tmp_path / "snap")
    extra = {"snapshot": str(tmp_path / "snap"), "pool": str(tmp_path / "absent.sock")}
    assert_same(reference, load(engine_config(checkpoint, "thaw", extra)))
    assert_same(load(engine_config(checkpoint, "auto")), load(engine_config(checkpoint, "thaw", {"pool": True})))


def test_load_and_freeze_vllm_through_the_llm_api(tmp_path, monkeypatch):
    import vllm
    monkeypatch.setattr(vllm, "DEFAULT_HF_CONFIG", HF)
    checkpoint = make_checkpoint(tmp_path / "ckpt", seed=9)
    streamed = thaw_vllm.load(str(checkpoint))  # no snapshot yet: streams the checkpoint
    files = thaw_vllm.freeze_vllm(streamed, tmp_path / "snap")
    assert [Path(f).name for f in files] == ["weights.thaw"]
    restored = thaw_vllm.load(str(checkpoint), tmp_path / "snap")
    assert_same(streamed.worker.get_model(), restored.worker.get_model())
    assert_same(load(engine_config(checkpoint, "auto")), restored.worker.get_model())
