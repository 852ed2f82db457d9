"""Bad files and bad names through libthaw.so: each refusal is a ThawError subclass naming the file
and the field, never a runtime's text (issue 11, items 6 and 8)."""
import json
import struct

import pytest
import torch

import thaw_vllm
from thaw_vllm import _native

RUNTIME_TEXT = ("Exception", "Cannot read", "UTF-16", "LineNumber", "One of the identified items", "requires an element")


def safetensors_bytes(header: str, data: bytes = b"\0" * 4) -> bytes:
    raw = header.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


TENSOR = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'


@pytest.mark.parametrize("header, field", [
    ('{"a\\ud800":' + TENSOR + '}', "a\\ud800"),
    ('{"a":{"dtype":"F3\\ud800","shape":[1],"data_offsets":[0,4]}}', "/a/dtype"),
    ('{"__metadata__":{"k":"\\ud800"},"a":' + TENSOR + '}', "/__metadata__/k"),
    ('{"a":', "not valid JSON"),
    ('{"a\\u0000":' + TENSOR + '}', "U+0000"),
])
def test_a_bad_safetensors_header_raises_a_format_error_naming_file_and_field(tmp_path, header, field):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header))
    for call in (lambda: _native.safetensors_info(path), lambda: _native.convert(path, tmp_path / "out.thaw")):
        with pytest.raises(thaw_vllm.ThawFormatError) as error:
            call()
        message = str(error.value)
        assert str(path) in message and field in message, message
        assert not any(fragment in message for fragment in RUNTIME_TEXT), message
    assert not (tmp_path / "out.thaw").exists()


def test_freezing_a_name_with_a_control_character_is_refused(tmp_path):
    with pytest.raises(ValueError) as error:
        thaw_vllm.freeze({"a\nb": torch.zeros(2)}, tmp_path / "x.thaw")
    assert "U+000A" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "x.thaw").exists()


def test_metadata_with_a_lone_surrogate_is_refused_as_an_argument(tmp_path):
    with pytest.raises(ValueError) as error:
        thaw_vllm.freeze({"a": torch.zeros(2)}, tmp_path / "x.thaw", metadata={"k": "\ud800"})
    message = str(error.value)
    assert "/k" in message and not any(fragment in message for fragment in RUNTIME_TEXT), message
