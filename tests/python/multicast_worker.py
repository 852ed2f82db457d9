"""One member of a multicast test group, run as its own process by test_multicast.py.

usage: multicast_worker.py SPEC.json RANK. The spec names the store, the group size, the
snapshot and the rounds to run; each round's outcome (stats or error, and a SHA-256 of every
destination tensor's bytes) is written to OUT/rank<R>.json after every round.
A round may make this rank die (SIGKILL) or stall (sleep) after it has moved some bytes.
"""
import hashlib
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import thaw_vllm  # noqa: E402
from thaw_vllm import multicast  # noqa: E402
from thaw_vllm.torch_io import torch_dtype  # noqa: E402


def destinations(snapshot):
    """Zeroed tensors for every tensor of the snapshot, aliases as tensors of their own."""
    header = thaw_vllm.info(snapshot)
    tensors = {t["name"]: torch.zeros(t["shape"], dtype=torch_dtype(t["dtype"])) for t in header["tensors"]}
    for alias, original in json.loads(header["metadata"].get("thaw.aliases", "{}")).items():
        tensors[alias] = torch.zeros_like(tensors[original])
    return tensors


def digests(tensors):
    return {n: hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest() for n, t in tensors.items()}


def progress_hook(round_spec, rank):
    kill, stall = round_spec.get("kill_after_bytes", {}), round_spec.get("stall_after_bytes", {})
    state = {"stalled": False}

    def hook(done, total):
        if str(rank) in kill and done >= kill[str(rank)] and done < total:
            os.kill(os.getpid(), signal.SIGKILL)
        if str(rank) in stall and done >= stall[str(rank)] and not state["stalled"]:
            state["stalled"] = True
            time.sleep(round_spec["stall_s"])
    return hook


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    rank = int(sys.argv[2])
    size = spec["size"]
    if spec["store"]["kind"] == "config":  # as the vLLM loader joins: model_loader_extra_config["multicast"]
        store = None
    elif spec["store"]["kind"] == "tcp":
        store = multicast.tcp_store(spec["store"]["address"], rank == 0, 60)
    else:
        store = dist.FileStore(spec["store"]["path"], size)
        store.set_timeout(timedelta(seconds=60))
    results = []
    out = Path(spec["out"]) / f"rank{rank}.json"
    for round_spec in spec["rounds"]:
        tensors = destinations(spec["snapshot"])
        source = round_spec.get("source", 0)
        path = spec["snapshot"]
        if rank == source and round_spec.get("live_source"):
            tensors = thaw_vllm.load_state_dict(spec["snapshot"])  # a live model: aliases tied to originals
            path = None
        if str(rank) in round_spec.get("reshape", {}):
            name = round_spec["reshape"][str(rank)]
            tensors[name] = torch.zeros(tensors[name].numel() + 1, dtype=tensors[name].dtype)
        if store is None:
            config = {**spec["store"]["config"], "rank": rank}
            group = multicast.join_from_config(config, spec["store"]["parts"], first_worker=True)
        else:
            group = multicast.MulticastGroup(
                store, rank, size, name=round_spec.get("name", "test"), source=source,
                topology=round_spec.get("topology", "chain"), chunk_bytes=round_spec.get("chunk_bytes", 64 << 10),
                timeout_s=round_spec.get("timeout_s", 30), join_timeout_s=60)
        result = {}
        try:
            result["stats"] = multicast.multicast_restore(
                tensors, path, group, verify=round_spec.get("verify", False),
                fallback=str(rank) not in round_spec.get("no_fallback", []), progress=progress_hook(round_spec, rank))
        except Exception as e:
            result["error"] = {"type": type(e).__name__, "message": str(e)}
        result["digests"] = digests(tensors)
        results.append(result)
        out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
