"""KV-cache snapshots on the CPU (the mock device): the transformers path with a cache and model that
have transformers 5.x's shape (cache.layers[i].keys/.values, cache.update; model.config/.dtype/.device),
the format's refusals, and the same snapshot served by a pool. The real-transformers round trip runs
where transformers is installed (the GPU machine; bench/kv_bench.py measures it there)."""
import json
import subprocess
import types
from pathlib import Path

import pytest
import torch

import thaw_vllm
from thaw_vllm import kv, kv_hf
from thaw_vllm.errors import ThawFormatError, ThawMismatchError
from test_pool import THAW, server  # noqa: F401 (the pool fixture: thaw pool serve on the mock device)


class Layer:
    """transformers.cache_utils.DynamicLayer's fields and update (concatenates along the token axis)."""

    def __init__(self):
        self.keys = self.values = None

    def update(self, keys, values):
        self.keys = keys if self.keys is None else torch.cat([self.keys, keys], dim=-2)
        self.values = values if self.values is None else torch.cat([self.values, values], dim=-2)
        return self.keys, self.values


class Cache:
    """transformers.cache_utils.DynamicCache's surface that freeze_kv/restore_kv use."""

    def __init__(self):
        self.layers = []

    def update(self, keys, values, layer_idx, cache_kwargs=None):
        while len(self.layers) <= layer_idx:
            self.layers.append(Layer())
        return self.layers[layer_idx].update(keys, values)


def tiny_model(layers=3, kv_heads=2, head_dim=8, dtype=torch.float32, **extra):
    config = types.SimpleNamespace(architectures=["TinyForCausalLM"], num_hidden_layers=layers, num_attention_heads=4,
                                   num_key_value_heads=kv_heads, head_dim=head_dim, hidden_size=32, **extra)
    return types.SimpleNamespace(config=config, dtype=dtype, device=torch.device("cpu"))


def computed_cache(model, tokens, seed=0):
    """What a forward pass over `tokens` leaves in the cache: per layer [1, kv_heads, tokens, head_dim]."""
    g = torch.Generator().manual_seed(seed)
    cache = Cache()
    c = model.config
    for layer in range(c.num_hidden_layers):
        shape = (1, c.num_key_value_heads, tokens, c.head_dim)
        cache.update(torch.randn(shape, generator=g).to(model.dtype), torch.randn(shape, generator=g).to(model.dtype), layer)
    return cache


def test_a_frozen_prefix_restores_bit_exactly_and_continues(tmp_path):
    model = tiny_model()
    ids = torch.tensor([[5, 9, 2, 7, 7, 1, 3, 8, 4, 6, 0, 2, 5, 5, 9, 1, 3, 3, 2]])
    cache = computed_cache(model, ids.shape[1])
    path = tmp_path / "prefix.thaw"
    description = thaw_vllm.freeze_kv(cache, ids, path, model)
    assert description["prefixes"][0]["tokens"] == 19 and len(description["prefixes"][0]["block_hashes"]) == 2
    restored = thaw_vllm.restore_kv(path, model, input_ids=torch.cat([ids, torch.tensor([[4, 4]])], dim=1), cache=Cache())
    for a, b in zip(cache.layers, restored.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # The restored cache goes on growing like the computed one: the next token's keys append after the prefix.
    step = torch.ones(1, 2, 1, 8)
    keys, _ = restored.update(step, step, 0)
    assert keys.shape[2] == 20 and torch.equal(keys[:, :, :19], cache.layers[0].keys)
    thaw_vllm.verify(path)


def test_a_static_cache_saves_only_the_prefix_positions(tmp_path):
    model = tiny_model(layers=2)
    cache = computed_cache(model, 32)
    for layer in cache.layers:
        layer.max_cache_len = 32  # a StaticLayer is preallocated past the prefix
    path = tmp_path / "static.thaw"
    thaw_vllm.freeze_kv(cache, list(range(10)), path, model)
    restored = thaw_vllm.restore_kv(path, model, cache=Cache())
    assert torch.equal(restored.layers[1].values, cache.layers[1].values[:, :, :10])


def test_prefix_hashes_are_stable_across_processes_and_bound_to_the_model(tmp_path):
    here = kv.block_hashes("m", range(40), 16)
    code = "from thaw_vllm import kv; print(kv.block_hashes('m', range(40), 16))"
    python_dir = str(Path(kv.__file__).resolve().parents[1])
    other = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PYTHONPATH": python_dir}).stdout
    assert eval(other) == here and len(here) == 3
    assert kv.block_hashes("m", range(32), 16) == here[:2], "a block's hash depends only on the tokens up to it"
    assert kv.block_hashes("other", range(40), 16)[0] != here[0]
    assert kv.block_hashes("m", [1] + list(range(1, 40)), 16)[0] != here[0]


@pytest.mark.parametrize("change, field", [
    (dict(layers=4), "layers"),
    (dict(kv_heads=4), "kv_heads"),
    (dict(head_dim=16), "head_dim"),
    (dict(dtype=torch.float64), "dtype"),
    (dict(rope_theta=1.0), "model"),
])
def test_a_snapshot_for_another_model_dtype_or_layout_is_refused_naming_the_field(tmp_path, change, field):
    model = tiny_model()
    path = tmp_path / "p.thaw"
    thaw_vllm.freeze_kv(computed_cache(model, 8), list(range(8)), path, model)
    other = tiny_model(**change)
    with pytest.raises(ThawMismatchError, match=rf"KV snapshot has {field}="):
        thaw_vllm.restore_kv(path, other, cache=Cache())


def test_input_ids_that_do_not_start_with_the_prefix_are_refused(tmp_path):
    model = tiny_model()
    path = tmp_path / "p.thaw"
    thaw_vllm.freeze_kv(computed_cache(model, 8), list(range(8)), path, model)
    with pytest.raises(ThawMismatchError, match="differ at position 3"):
        thaw_vllm.restore_kv(path, model, input_ids=[0, 1, 2, 9, 4, 5, 6, 7, 8], cache=Cache())


def test_a_weights_snapshot_is_not_a_kv_snapshot(tmp_path):
    path = tmp_path / "w.thaw"
    thaw_vllm.freeze({"w": torch.zeros(4)}, path)
    with pytest.raises(ThawFormatError, match="not a KV snapshot"):
        thaw_vllm.restore_kv(path, tiny_model(), cache=Cache())


def test_freezing_refuses_caches_that_do_not_hold_the_prefix(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="holds 8 tokens, input_ids has 9"):
        thaw_vllm.freeze_kv(computed_cache(model, 8), list(range(9)), tmp_path / "x.thaw", model)
    with pytest.raises(ValueError, match="needs the model"):
        thaw_vllm.freeze_kv(computed_cache(model, 8), list(range(8)), tmp_path / "x.thaw")
    assert not (tmp_path / "x.thaw").exists()


def _write_raw(path, description: dict, regions: dict):
    """A KV snapshot whose description a test chose, written through the ordinary writer."""
    thaw_vllm.freeze(regions, path, metadata={kv.KIND_KEY: kv.KIND, kv.DESCRIPTION_KEY: json.dumps(description)})


def _good_description(tokens=4, **override):
    d = {"version": 1, "hash": kv.HASH, "model": "m", "tensor_layout": "transformers", "layers": 1, "kv_heads": 1,
         "head_dim": 2, "dtype": "F32", "block_size": 16,
         "prefixes": [{"tokens": tokens, "block_hashes": kv.block_hashes("m", range(tokens), 16)}]}
    d.update(override)
    return d


def _good_regions(tokens=4):
    return {"p0.tokens": torch.arange(tokens), "p0.l0.k": torch.zeros(1, 1, tokens, 2), "p0.l0.v": torch.ones(1, 1, tokens, 2)}


@pytest.mark.parametrize("override, message", [
    (dict(layers=0), "'layers' is 0"),
    (dict(layers=10**12), "'layers' is 1000000000000"),
    (dict(kv_heads=-1), "'kv_heads' is -1"),
    (dict(head_dim=2.5), "'head_dim' is 2.5"),
    (dict(block_size="16"), "'block_size' is not an integer"),
    (dict(dtype="F99"), "'dtype' is 'F99'"),
    (dict(hash="md5"), "'hash' is 'md5'"),
    (dict(version=2), "version 2 is not supported"),
    (dict(tensor_layout="mine"), "'tensor_layout' is 'mine'"),
    (dict(model=""), "'model' is empty"),
    (dict(surprise=1), "'surprise' is unknown"),
    (dict(prefixes=[]), "'prefixes' has 0 entries"),
    (dict(prefixes=[{"tokens": 4, "block_hashes": ["zz"]}]), "not 64 lowercase hex"),
    (dict(prefixes=[{"tokens": 4, "block_hashes": []}]), "'prefixes[0].block_hashes' has 0 entries"),
    (dict(prefixes=[{"tokens": 1 << 40, "block_hashes": []}]), "'prefixes[0].tokens' is 1099511627776"),
    (dict(head_dim=3), "region 'p0.l0.k' has shape [1, 1, 4, 2], the description implies [1, 1, 4, 3]"),
    (dict(layers=2), "lacks region 'p0.l1.k'"),
    (dict(block_dim=1), "'block_dim' belongs to vLLM layouts only"),
])
def test_hostile_descriptions_are_refused_before_writing_naming_the_field(tmp_path, override, message):
    with pytest.raises(ThawFormatError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        _write_raw(tmp_path / "k.thaw", _good_description(**override), _good_regions())
    assert not (tmp_path / "k.thaw").exists()


def test_a_region_beyond_the_description_is_refused(tmp_path):
    with pytest.raises(ThawFormatError, match="unexpected: 'extra'"):
        _write_raw(tmp_path / "k.thaw", _good_description(), {**_good_regions(), "extra": torch.zeros(1)})


def test_verify_recomputes_the_prefix_hashes_from_the_stored_token_ids(tmp_path):
    path = tmp_path / "k.thaw"
    wrong = _good_description()
    wrong["prefixes"][0]["block_hashes"] = kv.block_hashes("m", [0, 1, 2, 4], 16)
    _write_raw(path, wrong, _good_regions())  # well-formed, but the hash belongs to other tokens
    assert kv.info(path)["prefixes"][0]["tokens"] == 4
    with pytest.raises(ThawFormatError, match="block 0's recorded hash"):
        thaw_vllm.verify(path)


def test_a_pool_holds_kv_snapshots_like_weights(tmp_path, server):
    """The pool serves a KV snapshot's regions into another process's memory (mock device: the IPC
    handle names a shared-memory file), bit-exactly, with no KV-specific code in the pool."""
    from thaw_vllm import pool
    model = tiny_model()
    cache = computed_cache(model, 24)
    path = tmp_path / "prefix.thaw"
    thaw_vllm.freeze_kv(cache, list(range(24)), path, model)
    assert pool.load(path, server)["bytes"] > 0
    header = thaw_vllm.info(path)
    shared = tmp_path / "device-memory"
    size = header["file_length"] - header["data_offset"]
    shared.write_bytes(b"\0" * size)  # a file inside the pool's --shm-dir, mapped shared: the client hands over pointers
    memory = torch.from_file(str(shared), shared=True, size=size, dtype=torch.uint8)
    from thaw_vllm.torch_io import torch_dtype
    pool.restore_tensors({t["name"]: memory[t["offset"]:t["offset"] + t["length"]].view(torch_dtype(t["dtype"])).reshape(t["shape"])
                          for t in header["tensors"]}, path, server)
    regions = {t["name"]: memory[t["offset"]:t["offset"] + t["length"]] for t in header["tensors"]}
    for layer in range(3):
        assert torch.equal(regions[kv.keys_region(0, layer)].view(torch.float32).reshape(1, 2, 24, 8), cache.layers[layer].keys)
        assert torch.equal(regions[kv.values_region(0, layer)].view(torch.float32).reshape(1, 2, 24, 8), cache.layers[layer].values)
    assert regions[kv.tokens_region(0)].view(torch.int64).tolist() == list(range(24))


def test_the_real_transformers_cache_round_trip():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed here (the GPU machine has it; bench/kv_bench.py)")
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 97, (1, 20))
    import tempfile
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        cache = transformers.DynamicCache(config=config)
        model(ids, past_key_values=cache)
        thaw_vllm.freeze_kv(cache, ids, f"{d}/p.thaw", model)
        full = torch.cat([ids, torch.randint(0, 97, (1, 5))], dim=1)
        fresh = transformers.DynamicCache(config=config)
        model(ids, past_key_values=fresh)
        expected = model.generate(full, past_key_values=fresh, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        restored = thaw_vllm.restore_kv(f"{d}/p.thaw", model, input_ids=full)
        got = model.generate(full, past_key_values=restored, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(expected, got)


def test_thaw_info_shows_the_prefixes_and_layout_and_thaw_verify_checks_the_hashes(tmp_path):
    if not THAW.is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    model = tiny_model()
    path = tmp_path / "prefix.thaw"
    thaw_vllm.freeze_kv(computed_cache(model, 19), list(range(19)), path, model)
    shown = subprocess.run([str(THAW), "info", str(path)], capture_output=True, text=True, check=True).stdout
    assert f"KV cache of model {kv_hf.model_fingerprint(model)}" in shown
    assert "transformers: 3 layers, 2 KV heads, head_dim 8, F32" in shown
    assert f"prefix 0  19 tokens, 2 blocks, last block hash {kv.block_hashes(kv_hf.model_fingerprint(model), range(19), 16)[-1]}" in shown
    subprocess.run([str(THAW), "verify", str(path), "--quiet"], capture_output=True, text=True, check=True)
    wrong = tmp_path / "wrong.thaw"
    description = _good_description()
    description["prefixes"][0]["block_hashes"] = kv.block_hashes("m", [9, 9, 9, 9], 16)
    _write_raw(wrong, description, _good_regions())
    refused = subprocess.run([str(THAW), "verify", str(wrong), "--quiet"], capture_output=True, text=True)
    assert refused.returncode != 0 and "block 0's recorded hash" in refused.stderr
