"""Multicast restore: one source rank restores a snapshot (from the pool or the file) or holds
its weights already (a live model), and sends them to the other ranks of a group through
torch.distributed point-to-point operations — NCCL for CUDA tensors, gloo for CPU tensors —
down a chain, or a tree when the group is large (docs/MULTI_GPU.md). Every hop forwards a
chunk as soon as it lands; receivers receive straight into their destination tensors.

Members meet through a torch.distributed store (a TCPStore or FileStore they share): the
source publishes a manifest (every tensor's name, dtype, shape, length and CRC32C), each
member checks its destinations against it and says whether it is ready, and the transfer
starts only when all are. Afterwards every member publishes how it ended and reads the
others', so a dead or stalled peer gives every rank one message that names it; the ranks
that did not receive everything restore from their own pool or file.
"""
import dataclasses
import logging
import time
from collections import deque

import torch

from . import manifest as manifests
from . import torch_io
from .errors import ThawChecksumError, ThawMismatchError
from .group import (CONFIG_FIELDS as GROUP_CONFIG_FIELDS, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, WINDOW, GroupError,
                    GroupSettings, Link, Meeting, PeerFailure, backend_text, device_and_backend, open_backend, restore_alone, settings_from_config, shut, summary, tcp_store)

log = logging.getLogger("thaw_vllm")

TOPOLOGIES = ("auto", "chain", "tree")
__all__ = ["MulticastError", "MulticastGroup", "multicast_restore", "tcp_store", "group_from_config", "join_from_config"]


class MulticastError(GroupError):
    """The multicast did not reach this rank: a peer died, stalled or refused; the message names it."""


@dataclasses.dataclass(frozen=True)
class MulticastGroup(GroupSettings):
    """The members of one multicast and how they send (GroupSettings: store, rank, size, name,
    chunk_bytes, timeout_s, join_timeout_s, backend). source: the rank that holds the weights.
    topology: "chain", "tree" (fanout children a node) or "auto" (the shorter modelled time)."""
    KIND = "multicast"
    source: int = 0
    topology: str = "auto"
    fanout: int = 2

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.source, bool) or not isinstance(self.source, int) or not 0 <= self.source < self.size:
            self.refuse("source", f"must be an integer in 0..{self.size - 1}")
        if self.topology not in TOPOLOGIES:
            self.refuse("topology", f"must be one of {', '.join(TOPOLOGIES)}")
        if isinstance(self.fanout, bool) or not isinstance(self.fanout, int) or not 2 <= self.fanout <= 64:
            self.refuse("fanout", "must be an integer in 2..64")


# model_loader_extra_config["multicast"] (the vLLM loader): field -> meaning.
CONFIG_FIELDS = {**GROUP_CONFIG_FIELDS, "source": "the rank that restores and sends (default 0)",
                 "topology": "auto | chain | tree"}


def group_from_config(config, parts=(), store=None) -> MulticastGroup:
    """The group one worker joins: one group for each set of rank-file parts (tp0, tp1, ...),
    since each tensor-parallel rank multicasts its own file."""
    settings = settings_from_config("multicast", config, CONFIG_FIELDS, parts)
    return MulticastGroup(store, **settings, source=config.get("source", 0), topology=config.get("topology", "auto"))


def join_from_config(config, parts, first_worker: bool) -> MulticastGroup:
    """group_from_config with its store: the source engine's first worker serves it."""
    group = group_from_config(config, parts)
    store = tcp_store(config["store"], first_worker and group.rank == group.source, group.join_timeout_s)
    return dataclasses.replace(group, store=store)


# ---- where each rank sits ---------------------------------------------------------------

def modelled_seconds(topology: str, size: int, total_bytes: int, chunk_bytes: int, fanout: int = 2) -> float:
    """Transfer time in units of "one payload over one link", links all alike: a chain
    streams the payload once plus one chunk a hop to fill the pipe; a tree node sends
    each chunk to its fanout children over its one outgoing link, on each of its levels."""
    if size <= 1 or total_bytes <= 0:
        return 0.0
    chunks = max(1, -(-total_bytes // chunk_bytes))
    if topology == "chain":
        return (chunks + size - 2) / chunks
    depth, reached, width = 0, 1, 1
    while reached < size:
        width *= fanout
        reached += width
        depth += 1
    return fanout * (chunks + depth - 1) / chunks


def choose_topology(group: MulticastGroup, total_bytes: int) -> str:
    if group.topology != "auto":
        return group.topology
    chain = modelled_seconds("chain", group.size, total_bytes, group.chunk_bytes)
    tree = modelled_seconds("tree", group.size, total_bytes, group.chunk_bytes, group.fanout)
    return "tree" if tree < chain else "chain"


def links(rank: int, size: int, source: int, topology: str, fanout: int):
    """(parent rank or None, [child ranks]) of a rank; the source comes first, then the
    others in rank order (so ranks of one node, numbered together, are neighbours)."""
    order = [source] + [r for r in range(size) if r != source]
    position = order.index(rank)
    if topology == "chain":
        parent = order[position - 1] if position > 0 else None
        children = order[position + 1:position + 2]
    else:
        parent = order[(position - 1) // fanout] if position > 0 else None
        children = order[fanout * position + 1:fanout * position + 1 + fanout]
    return parent, children


# ---- the transfer -----------------------------------------------------------------------

def _chunks(sizes, chunk_bytes):
    for index, n in enumerate(sizes):
        for start in range(0, n, chunk_bytes):
            yield index, start, min(n, start + chunk_bytes)


def _pieces(targets, chunk_bytes, kind, device):
    """(destination view, bounce) of every chunk, in the order sent; CPU tensors sent over
    NCCL travel through a device buffer of one chunk."""
    views = [manifests.byte_view(t) for t in targets]
    plan = []
    for index, start, end in _chunks([v.numel() for v in views], chunk_bytes):
        plan.append((index, views[index][start:end]))
    bounce = None
    if kind == "nccl" and any(t.device.type == "cpu" for t in targets):
        bounce = torch.empty(chunk_bytes, dtype=torch.uint8, device=device)
    return plan, bounce


def _transfer(link, plan, bounce, names, parent, children, progress):
    """Receives every chunk from parent (unless this is the source) and forwards it to each
    child. A failed child is dropped and the rest go on; a failed parent ends the transfer.
    Returns {child: reason} of the children that failed."""
    total = sum(view.numel() for _, view in plan)
    failed_children = {}
    recvs, sends = {}, deque()
    done = 0

    def what(k):
        index, view = plan[k]
        return f"at tensor '{names[index]}' (chunk {k + 1} of {len(plan)})"

    def wire(k):
        view = plan[k][1]
        if bounce is not None and view.device.type == "cpu":
            return bounce[:view.numel()]
        return view

    def post_recv(k):
        if k < len(plan):
            recvs[k] = link.post("recv", wire(k), parent, k, True, what(k))

    def settle(limit):
        while len(sends) > limit:
            child, k, work = sends.popleft()
            if child in failed_children:
                continue
            try:
                link.finished(work, child, False, what(k))
            except PeerFailure as e:
                failed_children[child] = e.reason

    if parent is not None and bounce is None:
        for k in range(min(WINDOW, len(plan))):
            post_recv(k)
    for k, (index, view) in enumerate(plan):
        if parent is not None:
            if bounce is not None:
                post_recv(k)  # one bounce buffer: one chunk at a time
            link.landed(recvs.pop(k), parent, True, what(k))
            if bounce is not None and view.device.type == "cpu":
                view.copy_(bounce[:view.numel()])
            elif bounce is None:
                post_recv(k + WINDOW)
        elif bounce is not None and view.device.type == "cpu":
            bounce[:view.numel()].copy_(view)
        for child in children:
            if child not in failed_children:
                try:
                    sends.append((child, k, link.post("send", wire(k), child, k, False, what(k))))
                except PeerFailure as e:
                    failed_children[child] = e.reason
        settle(0 if bounce is not None and view.device.type == "cpu" else WINDOW * len(children))
        done += view.numel()
        if progress is not None:
            progress(done, total)
    settle(0)
    return failed_children


# ---- the whole operation ----------------------------------------------------------------

def _summary(group, meeting, topology, statuses, own):
    title = f"thaw multicast {group.name!r} (round {meeting.round}, {topology} of {group.size} from rank {group.source})"
    return summary(title, "rank", group.size, group.rank, statuses, own)


def multicast_restore(module_or_state_dict, path, group: MulticastGroup, strict: bool = True, pool=None,
                      verify=None, fallback: bool = True, progress=None, **engine_options) -> dict:
    """Restores the same weights on every rank of group; every member calls it.

    The source restores path (through pool when given) into its tensors — or, with path
    None, sends what its tensors hold now — and the weights travel rank to rank into each
    member's destination tensors. verify=True: every rank checks every tensor's CRC32C (the
    snapshot's, or the live source's) after the transfer, through a host copy of device
    tensors; None (the default) checks only what restores read from files or the pool, as
    restore_into does; False checks nothing. A rank the multicast did not reach restores its own
    path (through its pool) when fallback is on and it has a path; else MulticastError.
    progress(bytes_done, bytes_total) runs after each chunk this rank received or sent.
    Returns {"bytes", "seconds", "gbps", "path", "group_error", "round", "topology"}: path is
    "multicast" for a receiver served by its parent, "pool"/"file" for a restore of its own,
    "live" for a live source; group_error names whatever went wrong anywhere in the group.
    """
    tensors = torch_io._tensors_of(module_or_state_dict)
    started = time.perf_counter()
    try:
        meeting = Meeting(group, "multicast", MulticastError)
    except MulticastError as e:
        if not fallback or path is None:
            raise
        served, nbytes = _restore_alone(tensors, path, group, str(e), strict, pool, verify, engine_options)
        return _finish(group, started, nbytes, served, str(e), None, None, None)
    label = f"thaw multicast {group.name!r} rank {group.rank}"
    is_source = group.rank == group.source
    source_path = "live"
    if is_source:
        manifest = _publish_manifest(group, meeting, tensors, path, strict, verify)
        if path is not None:
            try:
                source_path = torch_io.restore_into(tensors, path, strict, pool=pool, verify=verify,
                                                    **engine_options)["source"]
            except Exception as e:
                failure = {"ok": False, "error": f"the source could not restore {path}: {e}", "parent": None}
                meeting.put(f"ready/{group.rank}", failure)
                meeting.put(f"status/{group.rank}", failure)
                raise
    else:
        manifest = meeting.take("manifest", group.join_timeout_s)
    topology = (manifest or {}).get("topology", group.topology)
    try:
        targets, aliases = _join(group, meeting, manifest, tensors, path, strict, label)
        own = _run(group, meeting, manifest, targets, topology, progress)
        if own["ok"] and not is_source:
            if verify:
                _verify(manifest, targets, label, own["parent"])
            torch_io.copy_untied_aliases(tensors, aliases)
    except (MulticastError, ThawMismatchError, ThawChecksumError) as e:
        own = {"ok": False, "error": str(e).removeprefix(label + ": "), "parent": None}
    statuses = meeting.statuses(group, own)
    group_error = _summary(group, meeting, topology, statuses, own)
    nbytes = manifests.total_bytes(manifest)
    if own["ok"]:
        served = "multicast" if not is_source else source_path
        if group_error:
            log.warning("%s", group_error)
    else:
        if not fallback or path is None:
            raise MulticastError(group_error or f"{label}: {own['error']}")
        served, nbytes = _restore_alone(tensors, path, group, group_error, strict, pool, verify, engine_options)
    return _finish(group, started, nbytes, served, group_error, meeting.round, topology, own.get("parent"))


def _restore_alone(tensors, path, group, why, strict, pool, verify, engine_options):
    return restore_alone(tensors, path, group.rank, "rank", why, strict, pool, verify, engine_options)


def _finish(group, started, nbytes, served, group_error, round_number, topology, parent):
    seconds = time.perf_counter() - started
    stats = {"bytes": nbytes, "seconds": seconds, "gbps": nbytes / seconds / 1e9 if seconds > 0 else 0.0,
             "path": served, "group_error": group_error, "round": round_number, "topology": topology}
    via = f"multicast from rank {parent}" if served == "multicast" else served
    log.info("thaw: rank %d of multicast %r restored %d bytes via %s in %.3f s (%.2f GB/s)",
             group.rank, group.name, nbytes, via, seconds, stats["gbps"])
    return stats


def _publish_manifest(group, meeting, tensors, path, strict, verify):
    try:
        manifest = manifests.of_snapshot(path, tensors, strict) if path is not None else manifests.of_live_tensors(tensors, verify)
    except Exception as e:
        meeting.put("manifest", {"error": f"the source could not describe {path}: {e}"})
        raise
    total = sum(e[3] for e in manifest["tensors"])
    manifest.update(version=manifests.VERSION, size=group.size, chunk_bytes=group.chunk_bytes,
                    topology=choose_topology(group, total), fanout=group.fanout)
    meeting.put("manifest", manifest)
    return manifest


def _bound_manifest(manifest, label):
    """The manifest comes from another process: every field is checked before it is used."""
    def bounded(value, low, high):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    ok = (bounded(manifest.get("chunk_bytes"), MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
          and bounded(manifest.get("fanout"), 2, 64) and manifest.get("topology") in ("chain", "tree")
          and manifests.well_formed(manifest))
    if not ok:
        raise MulticastError(f"{label}: the source's manifest is malformed")


def _join(group, meeting, manifest, tensors, path, strict, label):
    """Checks this rank's destinations against the manifest, tells the group, and waits
    for every other member's word: the transfer starts only when all are ready."""
    def not_started(why):
        return MulticastError(f"thaw multicast {group.name!r} (round {meeting.round}) did not start: {why}")
    if manifest is None:
        raise not_started(f"no manifest from source rank {group.source} within {group.join_timeout_s:g} s")
    if "error" in manifest:
        raise not_started(f"source rank {group.source} refused: {manifest['error']}")
    try:
        if manifest.get("version") != manifests.VERSION or manifest.get("size") != group.size:
            raise MulticastError(f"{label}: the source's group (version {manifest.get('version')}, size "
                                 f"{manifest.get('size')}) is not this rank's (version {manifests.VERSION}, size {group.size})")
        _bound_manifest(manifest, label)
        targets, aliases = manifests.check_against(manifest, tensors, strict, label)
        if group.rank != group.source and path is not None:
            manifests.check_same_snapshot(path, manifest, label)
    except (MulticastError, ThawMismatchError) as e:
        meeting.put(f"ready/{group.rank}", {"ok": False, "error": str(e).removeprefix(label + ": ")})
        raise
    absent, refused = meeting.gather("ready", group, {"ok": True}, group.join_timeout_s, "rank")
    if absent:
        refused.append(f"ranks {absent} did not arrive within {group.join_timeout_s:g} s")
    if refused:
        raise not_started("; ".join(refused))
    return targets, aliases


def _run(group, meeting, manifest, targets, topology, progress):
    parent, children = links(group.rank, group.size, group.source, topology, manifest["fanout"])
    device, kind = device_and_backend(group, targets)
    plan, bounce = _pieces(targets, manifest["chunk_bytes"], kind, device)
    names = [e[0] for e in manifest["tensors"]]
    import torch.distributed as dist
    try:
        backend = open_backend(kind, dist.PrefixStore("backend/", meeting.store), group.rank, group.size, group.timeout_s)
    except RuntimeError as e:
        return {"ok": False, "parent": parent,
                "error": f"could not connect to the group's members ({backend_text(e)})"}
    link = Link(backend, kind, group.timeout_s)
    try:
        failed_children = _transfer(link, plan, bounce, names, parent, children, progress)
        if kind == "nccl":
            torch.cuda.current_stream(device).synchronize()
        return {"ok": True, "error": None, "parent": parent,
                "downstream": list(failed_children.values())}
    except PeerFailure as e:
        shut(backend)  # downstream ranks learn at once that no more will come
        return {"ok": False, "error": e.reason, "parent": parent}
    finally:
        del link, backend


def _verify(manifest, targets, label, parent):
    manifests.verify_received(manifest["tensors"], targets, label, lambda index: f"rank {parent}")
