"""ThawKVConnector driven the way vLLM drives a v1 KV connector, on the CPU (mock device):
scheduler side (get_num_new_matched_tokens → update_state_after_alloc → build_connector_meta per
step, vllm/v1/core/sched/scheduler.py) and worker side (bind_connector_metadata → start_load_kv →
per layer save_kv_layer → wait_for_save → get_block_ids_with_load_errors → clear, as
vllm/v1/worker/kv_connector_model_runner_mixin.py's _get_kv_connector_output does), against the
test double of vLLM's connector interface in fake_vllm/vllm/distributed/kv_transfer/."""
import random
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_vllm"))

from thaw_vllm import kv, kv_connector
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

BLOCK, HEADS, HEAD_DIM, LAYERS = 16, 2, 4, 3


@dataclass
class KVTransferConfig:
    """vllm/config/kv_transfer.py, KVTransferConfig: the fields and role predicates a connector reads."""
    kv_connector: str = "ThawKVConnector"
    kv_role: str = "kv_both"
    kv_connector_extra_config: dict = field(default_factory=dict)
    kv_connector_module_path: str = None
    kv_load_failure_policy: str = "fail"

    @property
    def is_kv_producer(self):
        return self.kv_role in ("kv_producer", "kv_both")

    @property
    def is_kv_consumer(self):
        return self.kv_role in ("kv_consumer", "kv_both")


class ModelConfig:
    """vllm/config/model.py, ModelConfig: what the fingerprint and the layout read."""

    def __init__(self, name="tiny-llama", kv_heads=HEADS):
        self.hf_config = types.SimpleNamespace(architectures=["LlamaForCausalLM"], name=name)
        self.dtype, self.quantization, self._kv_heads = "torch.float32", None, kv_heads

    def get_num_kv_heads(self, parallel_config):
        return self._kv_heads // parallel_config.tensor_parallel_size

    def get_head_size(self):
        return HEAD_DIM


@dataclass
class Request:
    """vllm/v1/request.py, Request: the id, prompt and per-request transfer params."""
    request_id: str
    prompt_token_ids: list
    kv_transfer_params: dict = None


@dataclass
class Blocks:
    """vllm/v1/core/kv_cache_manager.py, KVCacheBlocks.get_block_ids: one list per KV cache group."""
    ids: list

    def get_block_ids(self):
        return (list(self.ids),)


def kv_value(token, position, layer):
    """What "computing" a token's KV writes (a function of the token, its position and the layer)."""
    return float(token * 1000 + position) + layer / 8


class Engine:
    """One vLLM engine: a scheduler-side and a worker-side connector, and FlashAttention KV caches
    (vllm/v1/attention/backends/flash_attn.py, get_kv_cache_shape: (blocks, heads, block, 2·head),
    stored NHD by get_kv_cache_stride_order: (blocks, block, heads, 2·head))."""

    def __init__(self, directory, role="kv_both", model="tiny-llama", kv_heads=HEADS, num_blocks=32, seed=0, **extra):
        transfer = KVTransferConfig(kv_role=role, kv_connector_extra_config={"snapshot_dir": str(directory), "min_tokens": 16, **extra})
        config = types.SimpleNamespace(kv_transfer_config=transfer, cache_config=types.SimpleNamespace(block_size=BLOCK),
                                       model_config=ModelConfig(model, kv_heads),
                                       parallel_config=types.SimpleNamespace(tensor_parallel_size=1),
                                       attention_config=types.SimpleNamespace(backend="FLASH_ATTN"))
        kv_cache_config = types.SimpleNamespace(num_blocks=num_blocks)
        kv_connector.register()
        self.scheduler = KVConnectorFactory.create_connector(config, KVConnectorRole.SCHEDULER, kv_cache_config)
        self.worker = KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, kv_cache_config)
        self.caches = {f"model.layers.{i}.self_attn.attn":
                       torch.full((num_blocks, BLOCK, kv_heads, 2 * HEAD_DIM), -1.0).permute(0, 2, 1, 3) for i in range(LAYERS)}
        self.worker.register_kv_caches(self.caches)
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)
        self.metas = []

    def run(self, request, chunk=1 << 30, after_match=lambda: None):
        """Schedules the prompt's prefill in chunks, as the scheduler would; returns (loaded tokens, load errors, block ids)."""
        external, asynchronous = self.scheduler.get_num_new_matched_tokens(request, 0)
        after_match()
        assert asynchronous is False
        tokens = request.prompt_token_ids
        ids = [self.free.pop() for _ in range((len(tokens) + BLOCK - 1) // BLOCK)]
        self.scheduler.update_state_after_alloc(request, Blocks(ids), external)
        computed, errors, first = external, set(), True
        while computed < len(tokens):
            n = min(chunk, len(tokens) - computed)
            if first:
                new = [types.SimpleNamespace(req_id=request.request_id, prompt_token_ids=tokens, block_ids=(ids,), num_computed_tokens=computed)]
                cached = types.SimpleNamespace(req_ids=[], resumed_req_ids=set(), new_block_ids=[], num_computed_tokens=[])
            else:
                new = []
                cached = types.SimpleNamespace(req_ids=[request.request_id], resumed_req_ids=set(), new_block_ids=[None],
                                               num_computed_tokens=[computed])
            meta = self.scheduler.build_connector_meta(types.SimpleNamespace(
                scheduled_new_reqs=new, scheduled_cached_reqs=cached, num_scheduled_tokens={request.request_id: n}))
            self.metas.append(meta)
            self.worker.bind_connector_metadata(meta)
            self.worker.start_load_kv(None)
            for layer, (name, cache) in enumerate(self.caches.items()):
                for position in range(computed, computed + n):
                    cache[ids[position // BLOCK], :, position % BLOCK, :] = kv_value(tokens[position], position, layer)
                self.worker.save_kv_layer(name, cache, None)
            self.worker.wait_for_save()
            errors |= self.worker.get_block_ids_with_load_errors()
            self.worker.clear_connector_metadata()
            computed += n
            first = False
        self.scheduler.request_finished(request, ids)
        return external, errors, ids

    def assert_holds(self, tokens, ids, upto):
        for layer, cache in enumerate(self.caches.values()):
            for position in range(upto):
                slot = cache[ids[position // BLOCK], :, position % BLOCK, :]
                assert torch.all(slot == kv_value(tokens[position], position, layer)), (layer, position)


PROMPT = list(range(100, 140))  # 40 tokens: 2 whole blocks and 8 more


def test_a_new_engine_loads_a_saved_prefix_instead_of_computing_it(tmp_path):
    first = Engine(tmp_path)
    loaded, errors, _ = first.run(Request("a", PROMPT))
    assert loaded == 0 and not errors
    saved = list(tmp_path.glob("*.thaw"))
    assert len(saved) == 1 and saved[0].stem == kv.block_hashes(first.scheduler._model, PROMPT[:32], BLOCK)[-1]
    description = kv.info(saved[0])
    assert description["tensor_layout"] == "vllm/FLASH_ATTN/Bx16x2x8" and description["block_dim"] == 0
    assert description["prefixes"][0]["tokens"] == 32
    kv_connector.register()  # the plugin runs once per process; a second registration is harmless

    second = Engine(tmp_path, seed=1)  # another process: other block ids, hashes recomputed from the token ids
    prompt = PROMPT[:35] + [7, 7, 7]
    loaded, errors, ids = second.run(Request("b", prompt))
    assert loaded == 32 and not errors
    assert [len(m.loads) for m in second.metas] == [1]
    second.assert_holds(prompt, ids, len(prompt))


def test_chunked_prefill_saves_once_the_last_whole_block_is_computed(tmp_path):
    engine = Engine(tmp_path)
    engine.run(Request("a", PROMPT), chunk=10)
    assert [len(m.saves) for m in engine.metas] == [0, 0, 0, 1]  # computed 10, 20, 30, then 40 ≥ 32
    loaded, _, ids = Engine(tmp_path, seed=2).run(Request("b", PROMPT))
    assert loaded == 32


def test_a_prompt_of_one_block_loads_nothing_and_a_shorter_one_saves_nothing(tmp_path):
    engine = Engine(tmp_path)
    engine.run(Request("a", PROMPT[:12]))
    assert not list(tmp_path.glob("*.thaw"))
    engine.run(Request("b", PROMPT[:16]))
    assert len(list(tmp_path.glob("*.thaw"))) == 1
    # vLLM must compute at least one prompt token: a 16-token prompt cannot use its own 16-token snapshot.
    loaded, _, _ = Engine(tmp_path, seed=3).run(Request("c", PROMPT[:16]))
    assert loaded == 0


def test_another_model_never_matches(tmp_path):
    Engine(tmp_path).run(Request("a", PROMPT))
    loaded, _, _ = Engine(tmp_path, model="other-model").run(Request("b", PROMPT))
    assert loaded == 0


def test_a_failed_load_reports_its_blocks_for_the_failure_policy(tmp_path, caplog):
    Engine(tmp_path).run(Request("a", PROMPT))
    engine = Engine(tmp_path, role="kv_consumer", seed=4)

    def vanish():  # the file goes between the scheduler's match and the worker's load
        for f in tmp_path.glob("*.thaw"):
            f.unlink()
    loaded, errors, ids = engine.run(Request("b", PROMPT), after_match=vanish)
    assert loaded == 32 and errors == set(ids[:2]), "vLLM's kv_load_failure_policy recomputes or fails these"
    assert "failed" in caplog.text
    assert engine.worker.get_block_ids_with_load_errors() == set(), "reported once"


def test_a_snapshot_of_another_layout_is_refused_naming_the_field(tmp_path, caplog):
    Engine(tmp_path).run(Request("a", PROMPT))
    # Same model id, but this engine's cache has other heads per rank (another layout).
    engine = Engine(tmp_path, kv_heads=4, seed=5)
    loaded, errors, ids = engine.run(Request("b", PROMPT))
    assert loaded == 32 and errors == set(ids[:2])
    assert "KV snapshot has tensor_layout=" in caplog.text


def test_roles_decide_who_saves_and_who_loads(tmp_path):
    Engine(tmp_path, role="kv_consumer").run(Request("a", PROMPT))
    assert not list(tmp_path.glob("*.thaw"))
    Engine(tmp_path, role="kv_producer").run(Request("b", PROMPT))
    assert len(list(tmp_path.glob("*.thaw"))) == 1
    assert Engine(tmp_path, role="kv_producer").run(Request("c", PROMPT))[0] == 0
    assert Engine(tmp_path, role="kv_consumer").run(Request("d", PROMPT))[0] == 32


def test_save_requested_saves_only_the_requests_that_ask(tmp_path):
    engine = Engine(tmp_path, save="requested")
    engine.run(Request("a", PROMPT))
    assert not list(tmp_path.glob("*.thaw"))
    engine.run(Request("b", PROMPT, kv_transfer_params={"thaw_save": True}))
    assert len(list(tmp_path.glob("*.thaw"))) == 1


@pytest.mark.parametrize("extra, message", [
    ({"snapshot_dir": ""}, "needs 'snapshot_dir'"),
    ({"snapshot_dir": "/x", "colour": 1}, "unknown kv_connector_extra_config keys \\['colour'\\]"),
    ({"snapshot_dir": "/x", "save": "sometimes"}, "'save' must be one of"),
    ({"snapshot_dir": "/x", "min_tokens": 0}, "'min_tokens' must be an integer"),
    ({"snapshot_dir": "/x", "verify": "yes"}, "'verify' must be true or false"),
])
def test_extra_config_is_validated(extra, message):
    with pytest.raises(ValueError, match=message):
        kv_connector.options(extra)


def test_the_plugin_registers_the_connector_and_a_module_path_finds_it_too():
    from thaw_vllm import vllm_loader
    vllm_loader.register()
    vllm_loader.register()  # once per process in vLLM, but harmless twice
    assert KVConnectorFactory.get_connector_class(KVTransferConfig()) is kv_connector.ThawKVConnector
    by_path = KVTransferConfig(kv_connector_module_path="thaw_vllm.kv_connector")
    assert KVConnectorFactory.get_connector_class(by_path) is kv_connector.ThawKVConnector


def test_a_corrupt_snapshot_fails_its_checksum_and_is_reported_not_loaded(tmp_path, caplog):
    import thaw_vllm
    Engine(tmp_path).run(Request("a", PROMPT))
    path = next(tmp_path.glob("*.thaw"))
    header = thaw_vllm.info(path)
    region = next(t for t in header["tensors"] if t["name"] == kv.paged_region(0, 1))
    data = bytearray(path.read_bytes())
    data[header["data_offset"] + region["offset"] + 5] ^= 0x40
    path.write_bytes(bytes(data))
    engine = Engine(tmp_path, role="kv_consumer", seed=6)
    loaded, errors, ids = engine.run(Request("b", PROMPT))
    assert loaded == 32 and errors == set(ids[:2])
    assert "CRC32C" in caplog.text or "checksum" in caplog.text.lower()
