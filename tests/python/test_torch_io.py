"""The Python shim over libthaw.so, on CPU tensors through the mock device."""
import json
from pathlib import Path
import struct

import pytest
import torch

import thaw_vllm
from thaw_vllm.torch_io import TORCH_DTYPES


def random_tensor(dtype, shape, seed):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size(),),
                        dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape).clone()


def bytes_of(t):
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes()


def test_every_torch_dtype_round_trips_bit_exactly(tmp_path):
    state = {f"t.{name}": random_tensor(dtype, (3, 17), i) for i, (name, dtype) in enumerate(TORCH_DTYPES.items())
             if dtype != torch.bool}
    state["mask"] = torch.tensor([True, False, True])
    state["scalar"] = torch.tensor(2.5)
    path = tmp_path / "all.thaw"
    thaw_vllm.freeze(state, path, metadata={"model": "unit"})
    back = thaw_vllm.load_state_dict(path)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert bytes_of(back[name]) == bytes_of(tensor), name
    assert thaw_vllm.info(path)["metadata"] == {"model": "unit"}


def test_restore_into_a_module_with_tied_weights(tmp_path):
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 50, bias=True))
    source[1].weight = source[0].weight  # tied, as embed/lm_head often are
    source.register_buffer("rope", torch.randn(8), persistent=False)
    path = tmp_path / "model.thaw"
    thaw_vllm.freeze(source, path)

    target = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 50, bias=True))
    target[1].weight = target[0].weight
    target.register_buffer("rope", torch.zeros(8), persistent=False)
    stats = thaw_vllm.restore_into(target, path, verify=True)
    assert stats["bytes"] > 0
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(source.rope, target.rope)
    assert target[1].weight.data_ptr() == target[0].weight.data_ptr()


def test_mismatches_raise_clear_errors(tmp_path):
    path = tmp_path / "m.thaw"
    thaw_vllm.freeze({"w": torch.randn(4, 4)}, path)
    with pytest.raises(thaw_vllm.ThawMismatchError, match="float|F32|F16"):
        thaw_vllm.restore_into({"w": torch.zeros(4, 4, dtype=torch.float16)}, path)
    with pytest.raises(thaw_vllm.ThawMismatchError, match=r"shape \[4, 4\]"):
        thaw_vllm.restore_into({"w": torch.zeros(2, 8)}, path)
    with pytest.raises(thaw_vllm.ThawMismatchError, match="missing"):
        thaw_vllm.restore_into({"w": torch.zeros(4, 4), "extra": torch.zeros(1)}, path)
    destination = {"w": torch.zeros(4, 4), "extra": torch.zeros(1)}
    thaw_vllm.restore_into(destination, path, strict=False)
    assert destination["w"].abs().sum() > 0


def test_non_contiguous_destinations_are_restored_through_bounded_staging(tmp_path, monkeypatch):
    from thaw_vllm import torch_io
    source = {"a": torch.randn(8, 4), "b": torch.randn(6, 2, 3), "c": torch.randn(5)}
    path = tmp_path / "s.thaw"
    thaw_vllm.freeze(source, path)
    storage = {"a": torch.zeros(4, 8), "b": torch.zeros(3, 6, 2)}
    destination = {"a": storage["a"].t(), "b": storage["b"].permute(1, 2, 0), "c": torch.zeros(5)}
    monkeypatch.setattr(torch_io, "STAGING_BATCH_BYTES", 100)  # a and b in separate rounds
    stats = thaw_vllm.restore_into(destination, path)
    assert stats["bytes"] == sum(t.numel() * 4 for t in source.values())
    for name in source:
        assert torch.equal(destination[name], source[name]), name
    assert destination["a"].data_ptr() == storage["a"].data_ptr() and not destination["a"].is_contiguous()


def test_bad_files_raise_typed_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        thaw_vllm.load_state_dict(tmp_path / "absent.thaw")
    foreign = tmp_path / "foreign.thaw"
    foreign.write_bytes(b"PK\x03\x04" + b"\0" * 200)
    with pytest.raises(thaw_vllm.ThawFormatError, match="not a Thaw snapshot"):
        thaw_vllm.info(foreign)
    path = tmp_path / "ok.thaw"
    thaw_vllm.freeze({"w": torch.randn(1000)}, path)
    data = bytearray(path.read_bytes())
    data[-4096 + 10] ^= 0xFF  # inside the region of w, whose data starts at the last 4 KiB block
    corrupt = tmp_path / "corrupt.thaw"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(thaw_vllm.ThawChecksumError, match="region 0"):
        thaw_vllm.verify(corrupt)
    with pytest.raises(thaw_vllm.ThawChecksumError):
        thaw_vllm.load_state_dict(corrupt, verify=True)
    truncated = tmp_path / "truncated.thaw"
    truncated.write_bytes(bytes(data[:-100]))
    with pytest.raises(thaw_vllm.ThawFormatError, match="truncated"):
        thaw_vllm.load_state_dict(truncated)


def test_restores_check_checksums_by_default_and_verify_false_skips_them(tmp_path):
    path = tmp_path / "ok.thaw"
    w = torch.randn(1000)
    thaw_vllm.freeze({"w": w}, path)
    data = bytearray(path.read_bytes())
    data[-4096 + 10] ^= 0xFF  # inside the region of w
    corrupt = tmp_path / "corrupt.thaw"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(thaw_vllm.ThawChecksumError, match="region 0"):
        thaw_vllm.load_state_dict(corrupt)
    target = {"w": torch.zeros(1000)}
    with pytest.raises(thaw_vllm.ThawChecksumError):
        thaw_vllm.restore_into(target, corrupt)
    thaw_vllm.restore_into(target, corrupt, verify=False)
    assert not torch.equal(target["w"], w)  # the corrupt bytes arrived unchecked
    thaw_vllm.restore_into(target, path)
    assert torch.equal(target["w"], w)


def write_safetensors(path, tensors):
    """An independent, minimal safetensors writer (the format's README)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    names = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}
    for name, t in tensors.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.bfloat16 else \
            t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_convert_a_safetensors_checkpoint_then_load(tmp_path):
    tensors = {"embed": torch.randn(30, 8).half(), "norm": torch.randn(8),
               "proj": torch.randn(8, 8).to(torch.bfloat16), "step": torch.tensor([7], dtype=torch.int64)}
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    write_safetensors(checkpoint / "model.safetensors", tensors)
    out = tmp_path / "ckpt.thaw"
    thaw_vllm.convert(checkpoint, out)
    thaw_vllm.verify(out)
    back = thaw_vllm.load_state_dict(out)
    for name, t in tensors.items():
        assert torch.equal(back[name], t), name


def test_safetensors_stream_bit_exactly_even_at_unaligned_offsets(tmp_path):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_vllm"))
    import safetensors_reader
    tensors = {"a": torch.randn(7, 3).half(), "b": torch.randn(5), "c": torch.arange(9, dtype=torch.int64)}
    safetensors_reader.write(tmp_path / "odd.safetensors", tensors, pad_to_odd=True)
    loaded = thaw_vllm.load_safetensors(tmp_path / "odd.safetensors")
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t), name
    streamed = dict(thaw_vllm.iter_checkpoint(tmp_path / "odd.safetensors"))
    assert set(streamed) == set(tensors)


def test_tied_weights_are_written_once_and_restored_into_untied_targets(tmp_path):
    source = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 50, bias=False))
    source[1].weight = source[0].weight
    path = tmp_path / "tied.thaw"
    thaw_vllm.freeze(source, path)
    header = thaw_vllm.info(path)
    assert [t["name"] for t in header["tensors"]] == ["0.weight"]
    assert json.loads(header["metadata"]["thaw.aliases"]) == {"1.weight": "0.weight"}
    untied = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 50, bias=False))
    thaw_vllm.restore_into(untied, path)
    assert torch.equal(untied[1].weight, source[0].weight) and torch.equal(untied[0].weight, source[0].weight)
    state = thaw_vllm.load_state_dict(path)
    assert state["1.weight"].data_ptr() == state["0.weight"].data_ptr()


def test_plain_tensor_attributes_are_captured(tmp_path):
    module = torch.nn.Linear(4, 4)
    module.derived = torch.randn(3)
    path = tmp_path / "attr.thaw"
    thaw_vllm.freeze(module, path)
    target = torch.nn.Linear(4, 4)
    target.derived = torch.zeros(3)
    thaw_vllm.restore_into(target, path)
    assert torch.equal(target.derived, module.derived) and torch.equal(target.weight, module.weight)


def test_a_restore_parses_the_header_once_in_the_bridge(tmp_path, monkeypatch):
    from thaw_vllm import _native
    path = tmp_path / "once.thaw"
    thaw_vllm.freeze({"w": torch.randn(4, 4), "b": torch.randn(3)}, path)
    calls = []
    real = _native.restore_borrowed  # restore_checked's restoring form: one bridge call checks and restores
    monkeypatch.setattr(_native, "snapshot_info", lambda p: pytest.fail("restore_into parsed the header in Python"))
    monkeypatch.setattr(_native, "restore_borrowed", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    destination = {"w": torch.zeros(4, 4), "b": torch.zeros(3)}
    thaw_vllm.restore_into(destination, path)
    assert calls == [path] and destination["w"].abs().sum() > 0
    with pytest.raises(thaw_vllm.ThawMismatchError, match=r"once.thaw: snapshot and destination differ: missing from the destination 'b'"):
        thaw_vllm.restore_into({"w": torch.zeros(4, 4)}, path)
