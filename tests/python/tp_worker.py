"""One tensor-parallel rank of test_tensor_parallel.py, run as its own process: waits for the
start signal (so all ranks restore at once), restores its own rank's file from the file or
through the pool, and writes the SHA-256 of every restored tensor to OUT/tp<R>.json.

usage: tp_worker.py SPEC.json RANK
"""
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

import torch  # noqa: E402

import thaw_vllm  # noqa: E402
from thaw_vllm import pool  # noqa: E402
from thaw_vllm.torch_io import torch_dtype  # noqa: E402
from thaw_vllm.vllm_config import Ranks, rank_file  # noqa: E402


def digest(tensor):
    return hashlib.sha256(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def from_the_file(path):
    header = thaw_vllm.info(path)
    tensors = {t["name"]: torch.zeros(t["shape"], dtype=torch_dtype(t["dtype"])) for t in header["tensors"]}
    stats = thaw_vllm.restore_into(tensors, path, verify=True)
    return {n: digest(t) for n, t in tensors.items()}, stats["source"]


def through_the_pool(path, socket_path, shm_dir, rank):
    """The mock pool opens files in its --shm-dir: this rank's "device memory" is one mapped
    MAP_SHARED from there, and the client hands the pool pointers into it. Each rank stands on
    its own mock device (mock-<rank>), as each rank has its own GPU."""
    header = thaw_vllm.info(path)
    memory = Path(shm_dir) / f"rank{rank}-memory"
    size = header["file_length"] - header["data_offset"]
    memory.write_bytes(b"\0" * size)
    raw = torch.from_file(str(memory), shared=True, size=size, dtype=torch.uint8)
    tensors = {t["name"]: raw[t["offset"]:t["offset"] + t["length"]].view(torch_dtype(t["dtype"])).reshape(t["shape"])
               for t in header["tensors"]}
    stats = pool.restore_tensors(tensors, path, socket_path, mock_device=rank)
    return {n: digest(t) for n, t in tensors.items()}, stats["source"]


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    rank = int(sys.argv[2])
    path = rank_file(spec["snapshot"], Ranks(tp_rank=rank, tp_world=spec["world"]))
    go = Path(spec["out"]) / "go"
    (Path(spec["out"]) / f"ready{rank}").touch()
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    header = thaw_vllm.info(path)
    if spec["mode"] == "pool":
        digests, served = through_the_pool(path, spec["socket"], spec["shm_dir"], rank)
    else:
        digests, served = from_the_file(path)
    result = {"file": str(path), "tp_rank": header["tp_rank"], "tp_world_size": header["tp_world_size"],
              "digests": digests, "served": served}
    (Path(spec["out"]) / f"tp{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
