"""One member of a multicast or gang test group, run as its own process by test_multicast.py
and test_gang.py.

usage: multicast_worker.py SPEC.json RANK. The spec names the store, the group size, the
snapshot and the rounds to run; each round's outcome (stats or error, the most bytes its
progress saw, and a SHA-256 of every destination tensor's bytes) is written to
OUT/rank<R>.json after every round. A round ("mode": "multicast" or "gang") may make this rank
die (SIGKILL) or stall (sleep) after it has moved some bytes, stay away, restore another
snapshot, or receive into a destination that is not contiguous.
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
from thaw_vllm import gang, multicast  # noqa: E402
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


def progress_hook(round_spec, rank, state):
    kill, stall = round_spec.get("kill_after_bytes", {}), round_spec.get("stall_after_bytes", {})
    state.update(stalled=False, moved=0)

    def hook(done, total):
        state["moved"] = max(state["moved"], done)
        if str(rank) in kill and done >= kill[str(rank)] and done < total:
            os.kill(os.getpid(), signal.SIGKILL)
        if str(rank) in stall and done >= stall[str(rank)] and not state["stalled"]:
            state["stalled"] = True
            time.sleep(round_spec["stall_s"])
    return hook


def join(spec, round_spec, store, rank):
    """(group, restore function) of one round."""
    gang_mode = round_spec.get("mode") == "gang"
    restore = gang.gang_restore if gang_mode else multicast.multicast_restore
    if store is None:  # as the vLLM loader joins: model_loader_extra_config["multicast"] or ["gang"]
        config = {**spec["store"]["config"], "rank": rank}
        return (gang if gang_mode else multicast).join_from_config(config, spec["store"]["parts"], True), restore
    common = dict(name=round_spec.get("name", "test"), chunk_bytes=round_spec.get("chunk_bytes", 64 << 10),
                  timeout_s=round_spec.get("timeout_s", 30), join_timeout_s=round_spec.get("join_timeout_s", 60))
    if gang_mode:
        return gang.GangGroup(store, rank, spec["size"], **common), restore
    return multicast.MulticastGroup(store, rank, spec["size"], source=round_spec.get("source", 0),
                                    topology=round_spec.get("topology", "chain"), **common), restore


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    rank = int(sys.argv[2])
    size = spec["size"]
    if spec["store"]["kind"] == "config":
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
        for name in round_spec.get("transpose", {}).get(str(rank), []):  # same shape, not contiguous
            rows, cols = tensors[name].shape
            tensors[name] = torch.zeros(cols, rows, dtype=tensors[name].dtype).t()
        path = round_spec.get("snapshot_of", {}).get(str(rank), path)
        result, state = {}, {}
        if str(rank) in round_spec.get("absent", []):
            results.append({"absent": True})
            out.write_text(json.dumps(results))
            continue
        group, restore = join(spec, round_spec, store, rank)
        try:
            result["stats"] = restore(tensors, path, group, verify=round_spec.get("verify", False),
                                      fallback=str(rank) not in round_spec.get("no_fallback", []),
                                      progress=progress_hook(round_spec, rank, state))
        except Exception as e:
            result["error"] = {"type": type(e).__name__, "message": str(e)}
        result["digests"] = digests(tensors)
        result["moved"] = state["moved"]
        results.append(result)
        out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
