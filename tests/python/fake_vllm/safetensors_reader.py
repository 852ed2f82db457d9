"""An independent reader and writer of safetensors files (the format's README), for the tests."""
import json
import struct
from pathlib import Path

import torch

NAMES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}
DTYPES = {v: k for k, v in NAMES.items()}


def write(path, tensors, pad_to_odd=False):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
        if pad_to_odd:  # an unused byte after each tensor: offsets that suit no dtype
            blobs.append(b"\0")
            offset += 1
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def read_file(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        raw = bytearray(data[8 + n + begin:8 + n + end])
        yield name, torch.frombuffer(raw, dtype=DTYPES[meta["dtype"]]).reshape(meta["shape"]).clone()


def read_checkpoint(directory):
    for shard in sorted(Path(directory).glob("*.safetensors")):
        yield from read_file(shard)
