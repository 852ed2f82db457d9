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
import json
import logging
import math
import time
from collections import deque
from datetime import timedelta

import torch

from . import _native, torch_io
from .errors import ThawChecksumError, ThawError, ThawMismatchError

log = logging.getLogger("thaw_vllm")

TOPOLOGIES = ("auto", "chain", "tree")
DEFAULT_CHUNK_BYTES = 32 << 20
MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 4 << 10, 1 << 30
MAX_GROUP_SIZE = 4096
# Chunks in flight on each link: one landing while the previous one is forwarded.
WINDOW = 2
MANIFEST_VERSION = 1


class MulticastError(ThawError):
    """The multicast did not reach this rank: a peer died, stalled or refused; the message names it."""


@dataclasses.dataclass(frozen=True)
class MulticastGroup:
    """The members of one multicast and how they send.

    store: a torch.distributed Store every member reaches (TCPStore, FileStore, PrefixStore).
    rank, size: this member and the group's size; source: the rank that holds the weights.
    topology: "chain", "tree" (fanout children a node) or "auto" (the shorter modelled time).
    timeout_s: how long one chunk may take before its peer counts as stalled.
    join_timeout_s: how long members wait for each other to arrive (and the source to restore).
    backend: "gloo", "nccl" or "auto" (nccl when the tensors are on CUDA).
    """
    store: object
    rank: int
    size: int
    name: str = "thaw"
    source: int = 0
    topology: str = "auto"
    fanout: int = 2
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    timeout_s: float = 10.0
    join_timeout_s: float = 300.0
    backend: str = "auto"

    def __post_init__(self):
        def bad(field, rule):
            raise ValueError(f"multicast group {self.name!r}: {field} {getattr(self, field)!r} {rule}")
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 200 or "/" in self.name:
            bad("name", "must be 1-200 characters without '/'")
        if not isinstance(self.size, int) or not 1 <= self.size <= MAX_GROUP_SIZE:
            bad("size", f"must be an integer in 1..{MAX_GROUP_SIZE}")
        if not isinstance(self.rank, int) or not 0 <= self.rank < self.size:
            bad("rank", f"must be an integer in 0..{self.size - 1}")
        if not isinstance(self.source, int) or not 0 <= self.source < self.size:
            bad("source", f"must be an integer in 0..{self.size - 1}")
        if self.topology not in TOPOLOGIES:
            bad("topology", f"must be one of {', '.join(TOPOLOGIES)}")
        if not isinstance(self.fanout, int) or not 2 <= self.fanout <= 64:
            bad("fanout", "must be an integer in 2..64")
        if not isinstance(self.chunk_bytes, int) or not MIN_CHUNK_BYTES <= self.chunk_bytes <= MAX_CHUNK_BYTES:
            bad("chunk_bytes", f"must be an integer in {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}")
        for field in ("timeout_s", "join_timeout_s"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0 < value <= 86400 or math.isnan(value):
                bad(field, "must be a number of seconds in (0, 86400]")
        if self.backend not in ("auto", "gloo", "nccl"):
            bad("backend", "must be auto, gloo or nccl")


def _address(address):
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"multicast store address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def tcp_store(address: str, is_host: bool, timeout_s: float = 300.0):
    """The group's meeting point at "host:port"; exactly one member (is_host) serves it."""
    import torch.distributed as dist
    host, port = _address(address)
    return dist.TCPStore(host, port, None, is_host, timedelta(seconds=timeout_s), wait_for_workers=False)


# model_loader_extra_config["multicast"] (the vLLM loader): field -> meaning.
CONFIG_FIELDS = {
    "store": "host:port where the members meet; the source engine's first worker serves it",
    "rank": "this engine's rank in the group", "size": "engines in the group",
    "source": "the rank that restores and sends (default 0)", "name": "the group's name (default thaw)",
    "topology": "auto | chain | tree", "chunk_mib": "MiB a chunk (default 32)",
    "timeout_s": "seconds a chunk may take before its peer counts as stalled (default 10)",
    "join_timeout_s": "seconds to wait for every member (default 300)",
}


def group_from_config(config, parts=(), store=None) -> MulticastGroup:
    """The group one worker joins: one group for each set of rank-file parts (tp0, tp1, ...),
    since each tensor-parallel rank multicasts its own file."""
    if not isinstance(config, dict):
        raise ValueError(f"multicast must be a dict of {', '.join(CONFIG_FIELDS)}, not {config!r}")
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    missing = sorted({"store", "rank", "size"} - set(config))
    if unknown or missing:
        raise ValueError(f"multicast: unknown fields {unknown}, missing fields {missing}; "
                         f"known: {', '.join(f'{k} ({v})' for k, v in CONFIG_FIELDS.items())}")
    _address(config["store"])
    chunk_mib = config.get("chunk_mib", DEFAULT_CHUNK_BYTES >> 20)
    if isinstance(chunk_mib, bool) or not isinstance(chunk_mib, int) or not 1 <= chunk_mib <= MAX_CHUNK_BYTES >> 20:
        raise ValueError(f"multicast: chunk_mib must be a whole number from 1 to {MAX_CHUNK_BYTES >> 20}, not {chunk_mib!r}")
    return MulticastGroup(store, config["rank"], config["size"], name=".".join([str(config.get("name", "thaw")), *parts]),
                          source=config.get("source", 0), topology=config.get("topology", "auto"),
                          chunk_bytes=chunk_mib << 20, timeout_s=config.get("timeout_s", 10.0),
                          join_timeout_s=config.get("join_timeout_s", 300.0))


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


# ---- the manifest and the members' agreement --------------------------------------------

def _byte_view(tensor):
    return tensor.detach().reshape(-1).view(torch.uint8)


def _nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _unique_tensors(tensors: dict):
    """({name: tensor} without names that share another's memory, {alias: original})."""
    kept, aliases, seen = {}, {}, {}
    for name, tensor in tensors.items():
        key = (tensor.device, tensor.data_ptr(), _nbytes(tensor))
        if _nbytes(tensor) > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = tensor
    return kept, aliases


def _entry(name, tensor, crc):
    return [name, torch_io.thaw_dtype(tensor.dtype), list(tensor.shape), _nbytes(tensor), crc]


def tensor_crc32c(tensor) -> int:
    """The CRC32C of a tensor's bytes, computed by the engine's checker (in host memory)."""
    host = _byte_view(tensor)
    if host.device.type != "cpu":
        host = host.cpu()
    return _native.crc32c(host.data_ptr(), host.numel()) if host.numel() else 0


def _check_against(manifest, tensors: dict, strict: bool, label: str):
    """This rank's destinations for the manifest's tensors, in its order, and its aliases."""
    names = [e[0] for e in manifest["tensors"]]
    aliases = manifest["aliases"]
    if strict:
        known = set(names) | set(aliases)
        missing, unexpected = sorted(set(tensors) - known), sorted(known - set(tensors))
        if missing or unexpected:
            raise ThawMismatchError(f"{label}: the source's tensors and this rank's differ: not sent {missing[:5]}, "
                                    f"not in this rank's destination {unexpected[:5]}")
    targets = []
    for name, dtype, shape, nbytes, _ in manifest["tensors"]:
        tensor = tensors.get(name)
        if tensor is None:
            raise ThawMismatchError(f"{label}: tensor '{name}' has no destination on this rank")
        if torch_io.thaw_dtype(tensor.dtype) != dtype or list(tensor.shape) != shape or _nbytes(tensor) != nbytes:
            raise ThawMismatchError(f"{label}: tensor '{name}' is {dtype} {shape} at the source, "
                                    f"{torch_io.thaw_dtype(tensor.dtype)} {list(tensor.shape)} on this rank")
        if not tensor.is_contiguous():
            raise ThawMismatchError(f"{label}: destination tensor '{name}' is not contiguous")
        targets.append(tensor)
    return targets, aliases


def _snapshot_manifest(path, tensors: dict, strict: bool):
    header = torch_io.info(path)
    wanted, aliases = torch_io.snapshot_targets(tensors, path, header, strict)
    entries = [[t["name"], t["dtype"], list(t["shape"]), t["length"], t["crc32c"]]
               for t in header["tensors"] if t["name"] in wanted]
    return {"snapshot": str(path), "tensors": entries, "aliases": aliases}


def _live_manifest(tensors: dict, verify: bool):
    kept, aliases = _unique_tensors(tensors)
    entries = [_entry(n, t, tensor_crc32c(t) if verify else None) for n, t in kept.items()]
    return {"snapshot": None, "tensors": entries, "aliases": aliases}


class _Meeting:
    """The group's keys of one round in the shared store."""

    def __init__(self, group: MulticastGroup):
        import torch.distributed as dist
        try:
            # Each member counts its own calls, so the n-th multicast of every member meets in round n.
            self.round = group.store.add(f"thaw/multicast/{group.name}/round/{group.rank}", 1)
        except RuntimeError as e:
            raise MulticastError(f"thaw multicast {group.name!r} rank {group.rank}: the group's store is "
                                 f"unreachable ({str(e).split('] ', 1)[-1][:200]})") from e
        self.store = dist.PrefixStore(f"thaw/multicast/{group.name}/{self.round}/", group.store)

    def put(self, key, value):
        try:
            self.store.set(key, json.dumps(value))
        except RuntimeError as e:  # the store's host is gone: the others will count this rank as silent
            log.debug("thaw multicast: could not publish %s: %s", key, e)

    def take(self, key, seconds):
        """The value at key, waiting up to seconds; None when it did not come."""
        try:
            self.store.wait([key], timedelta(seconds=max(seconds, 0.001)))
            return json.loads(self.store.get(key))
        except RuntimeError:
            return None

    def take_all(self, prefix, ranks, seconds):
        deadline = time.monotonic() + seconds
        return {r: self.take(f"{prefix}/{r}", deadline - time.monotonic()) for r in ranks}


# ---- the transfer -----------------------------------------------------------------------

def _chunks(sizes, chunk_bytes):
    for index, n in enumerate(sizes):
        for start in range(0, n, chunk_bytes):
            yield index, start, min(n, start + chunk_bytes)


def _backend(kind, store, rank, size, timeout_s):
    import torch.distributed as dist
    if kind == "gloo":
        return dist.ProcessGroupGloo(store, rank, size, timedelta(seconds=timeout_s))
    options = dist.ProcessGroupNCCL.Options()
    # NCCL's own watchdog must not fire before our deadline does: ours aborts cleanly.
    options._timeout = timedelta(seconds=2 * timeout_s + 30)
    return dist.ProcessGroupNCCL(store, rank, size, options)


def _shut(backend):
    for method in ("abort", "shutdown"):
        if hasattr(backend, method):
            try:
                getattr(backend, method)()
            except Exception:  # already broken: its peers are gone
                pass
            return


class _PeerFailure(Exception):
    def __init__(self, peer, upstream, reason):
        super().__init__(reason)
        self.peer, self.upstream, self.reason = peer, upstream, reason


class _Link:
    """Waits on one backend's operations with this rank's deadline. gloo's wait blocks until
    the bytes moved; NCCL's only orders the current stream after them, so its completion is
    polled against the deadline (and NCCL's own, longer watchdog never fires first)."""

    def __init__(self, backend, kind, timeout_s):
        self.backend, self.kind, self.timeout_s = backend, kind, timeout_s

    def landed(self, work, peer, upstream, what):
        """The bytes of work may be used by later operations (forwarded, checked)."""
        if self.kind == "gloo":
            self.finished(work, peer, upstream, what)
        else:
            work.wait()

    def post(self, operation, tensor, peer, tag, upstream, what):
        """Starts a send or recv; a peer already gone fails here rather than in the wait."""
        try:
            return getattr(self.backend, operation)([tensor], peer, tag)
        except RuntimeError as e:
            raise self._failure(e, peer, upstream, what) from e

    def finished(self, work, peer, upstream, what):
        try:
            if self.kind == "gloo":
                work.wait(timedelta(seconds=self.timeout_s))
                return
            deadline = time.monotonic() + self.timeout_s
            while not work.is_completed():
                if time.monotonic() > deadline:
                    raise TimeoutError("timed out")
                time.sleep(20e-6)
            work.wait()
        except (RuntimeError, TimeoutError) as e:
            raise self._failure(e, peer, upstream, what) from e

    def _failure(self, error, peer, upstream, what):
        """The backend's error in our words: which peer, which way, which tensor."""
        text = str(error).lower()
        if "timed out" in text or "timeout" in text:
            reason = f"sent nothing for {self.timeout_s:g} s" if upstream else f"took nothing for {self.timeout_s:g} s"
        elif "closed" in text or "reset" in text or "broken pipe" in text:
            reason = "closed the connection (exited, killed or gave up)"
        else:
            reason = "failed (" + str(error).split("] ", 1)[-1][:200] + ")"
        return _PeerFailure(peer, upstream, f"{'upstream' if upstream else 'downstream'} rank {peer} {reason} {what}")


def _pieces(targets, chunk_bytes, kind, device):
    """(destination view, bounce) of every chunk, in the order sent; CPU tensors sent over
    NCCL travel through a device buffer of one chunk."""
    views = [_byte_view(t) for t in targets]
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
            except _PeerFailure as e:
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
                except _PeerFailure as e:
                    failed_children[child] = e.reason
        settle(0 if bounce is not None and view.device.type == "cpu" else WINDOW * len(children))
        done += view.numel()
        if progress is not None:
            progress(done, total)
    settle(0)
    return failed_children


# ---- the whole operation ----------------------------------------------------------------

def _device_of(targets):
    devices = {t.device for t in targets}
    cuda = [d for d in devices if d.type == "cuda"]
    if len({(d.type, d.index) for d in cuda}) > 1:
        raise ThawMismatchError(f"multicast restores into one device, not {sorted(map(str, devices))}")
    return cuda[0] if cuda else torch.device("cpu")


def _summary(group, meeting, topology, statuses, own):
    """One message naming every rank that did not end well, the first cause first."""
    every = {rank: own if rank == group.rank else statuses.get(rank) for rank in range(group.size)}
    problems = []
    for rank, status in every.items():
        if status is None:
            problems.append((0, f"rank {rank} gave no word (killed, stalled or unreachable)"))
        elif not status["ok"]:
            parent = status.get("parent")
            # A rank whose upstream failed too only suffers the first cause: list it after.
            follows = parent is not None and (every.get(parent) is None or not every[parent]["ok"])
            problems.append((1 if follows else 0, f"rank {rank}: {status['error']}"))
        elif status.get("downstream"):
            problems.append((1, f"rank {rank}: " + "; ".join(status["downstream"])))
    if not problems:
        return None
    problems.sort(key=lambda p: p[0])
    return (f"thaw multicast {group.name!r} (round {meeting.round}, {topology} of {group.size} from rank {group.source}): "
            + "; ".join(text for _, text in problems))


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
        meeting = _Meeting(group)
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
    meeting.put(f"status/{group.rank}", own)
    # A rank behind a stalled peer gives up one timeout after it; the news then travels as
    # closed connections within moments: two timeouts hear from every member still alive.
    statuses = meeting.take_all("status", [r for r in range(group.size) if r != group.rank], 2 * group.timeout_s)
    # The store lives in one member's process: nobody leaves before every member still alive
    # has read the statuses, or a late reader finds the store gone and reports a live rank silent.
    meeting.put(f"read/{group.rank}", True)
    meeting.take_all("read", [r for r, status in statuses.items() if status is not None], 2 * group.timeout_s)
    group_error = _summary(group, meeting, topology, statuses, own)
    nbytes = sum(e[3] for e in (manifest or {}).get("tensors", []))
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
    log.warning("%s; rank %d restores from its own %s", why, group.rank, "pool or file" if pool else "file")
    stats = torch_io.restore_into(tensors, path, strict, pool=pool, verify=verify, **engine_options)
    return stats["source"], stats["bytes"]


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
        manifest = _snapshot_manifest(path, tensors, strict) if path is not None else _live_manifest(tensors, verify)
    except Exception as e:
        meeting.put("manifest", {"error": f"the source could not describe {path}: {e}"})
        raise
    total = sum(e[3] for e in manifest["tensors"])
    manifest.update(version=MANIFEST_VERSION, size=group.size, chunk_bytes=group.chunk_bytes,
                    topology=choose_topology(group, total), fanout=group.fanout)
    meeting.put("manifest", manifest)
    return manifest


def _bound_manifest(manifest, label):
    """The manifest comes from another process: every field is checked before it is used."""
    def bounded(value, low, high):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    ok = (bounded(manifest.get("chunk_bytes"), MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
          and bounded(manifest.get("fanout"), 2, 64) and manifest.get("topology") in ("chain", "tree")
          and isinstance(manifest.get("aliases"), dict) and isinstance(manifest.get("tensors"), list)
          and all(isinstance(e, list) and len(e) == 5 and isinstance(e[0], str) and isinstance(e[2], list)
                  and bounded(e[3], 0, 1 << 62) and (e[4] is None or bounded(e[4], 0, 0xFFFFFFFF))
                  for e in manifest["tensors"]))
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
        if manifest.get("version") != MANIFEST_VERSION or manifest.get("size") != group.size:
            raise MulticastError(f"{label}: the source's group (version {manifest.get('version')}, size "
                                 f"{manifest.get('size')}) is not this rank's (version {MANIFEST_VERSION}, size {group.size})")
        _bound_manifest(manifest, label)
        targets, aliases = _check_against(manifest, tensors, strict, label)
        if group.rank != group.source and path is not None:
            _same_snapshot(path, manifest, label)
    except (MulticastError, ThawMismatchError) as e:
        meeting.put(f"ready/{group.rank}", {"ok": False, "error": str(e).removeprefix(label + ": ")})
        raise
    meeting.put(f"ready/{group.rank}", {"ok": True})
    ready = meeting.take_all("ready", [r for r in range(group.size) if r != group.rank], group.join_timeout_s)
    absent = [r for r, v in ready.items() if v is None]
    refused = [f"rank {r} refused: {v['error']}" for r, v in ready.items() if v is not None and not v["ok"]]
    if absent:
        refused.append(f"ranks {absent} did not arrive within {group.join_timeout_s:g} s")
    if refused:
        raise not_started("; ".join(refused))
    return targets, aliases


def _same_snapshot(path, manifest, label):
    """A receiver's own file must hold what the source sends, or its fallback would differ."""
    header = torch_io.info(path)
    mine = {t["name"]: [t["dtype"], list(t["shape"]), t["length"], t["crc32c"]] for t in header["tensors"]}
    for name, dtype, shape, nbytes, crc in manifest["tensors"]:
        theirs = [dtype, shape, nbytes, crc if crc is not None else mine.get(name, [0, 0, 0, None])[3]]
        if mine.get(name) != theirs:
            raise ThawMismatchError(f"{label}: {path} is not the snapshot the source sends (tensor '{name}' differs)")


def _run(group, meeting, manifest, targets, topology, progress):
    parent, children = links(group.rank, group.size, group.source, topology, manifest["fanout"])
    device = _device_of(targets)
    kind = group.backend if group.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    plan, bounce = _pieces(targets, manifest["chunk_bytes"], kind, device)
    names = [e[0] for e in manifest["tensors"]]
    import torch.distributed as dist
    try:
        backend = _backend(kind, dist.PrefixStore("backend/", meeting.store), group.rank, group.size, group.timeout_s)
    except RuntimeError as e:
        return {"ok": False, "parent": parent,
                "error": f"could not connect to the group's members ({str(e).split('] ', 1)[-1][:200]})"}
    link = _Link(backend, kind, group.timeout_s)
    try:
        failed_children = _transfer(link, plan, bounce, names, parent, children, progress)
        if kind == "nccl":
            torch.cuda.current_stream(device).synchronize()
        return {"ok": True, "error": None, "parent": parent,
                "downstream": list(failed_children.values())}
    except _PeerFailure as e:
        _shut(backend)  # downstream ranks learn at once that no more will come
        return {"ok": False, "error": e.reason, "parent": parent}
    finally:
        del link, backend


def _verify(manifest, targets, label, parent):
    for (name, _, _, _, crc), tensor in zip(manifest["tensors"], targets):
        if crc is None:
            continue
        got = tensor_crc32c(tensor)
        if got != crc:
            raise ThawChecksumError(f"{label}: tensor '{name}' received from rank {parent} has CRC32C {got:08x}, "
                                    f"the source recorded {crc:08x}")
