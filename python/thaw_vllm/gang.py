"""Gang restore: K members (data-parallel replicas, or K new instances scaling out) restore the
same snapshot together. Each restores only its share — about 1/K of the bytes — from its own
pool or file, over its own PCIe link, and the shares then travel round a ring of the members
through torch.distributed point-to-point operations (NCCL between GPUs, gloo between hosts),
each member receiving straight into its destination tensors and forwarding what it received
to the next. docs/MULTI_GPU.md ("Gang restore") gives the keys, the split and the cost.

Members meet through a torch.distributed store, as a multicast does (group.py): member 0
publishes the manifest of its snapshot, every member checks its destinations and its own
snapshot against it, and nothing moves until all are ready; a member that dies, stalls or
never arrives gives every other one message naming it, and each member that did not receive
everything restores the whole snapshot from its own pool or file.
"""
import dataclasses
import heapq
import logging
import time
from collections import deque

import torch

from . import manifest as manifests
from . import torch_io
from .errors import ThawError, ThawMismatchError
from .group import (CONFIG_FIELDS, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, WINDOW, GroupError, GroupSettings, Link, Meeting,
                    PeerFailure, backend_text, device_and_backend, open_backend, restore_alone, settings_from_config,
                    shut, summary, tcp_store)

log = logging.getLogger("thaw_vllm")

__all__ = ["GangError", "GangGroup", "gang_restore", "tcp_store", "group_from_config", "join_from_config",
           "assign_shares", "share_chunks", "ring_steps"]

LEADER = 0  # the member whose snapshot the others check theirs against
HANDSHAKE_TAG = 1 << 30  # above every chunk's tag (a link's message count)


class GangError(GroupError):
    """The gang did not give this member every byte: a member died, stalled, refused or never came."""


@dataclasses.dataclass(frozen=True)
class GangGroup(GroupSettings):
    """The members of one gang (GroupSettings: store, rank, size, name — the gang's id —,
    chunk_bytes, timeout_s, join_timeout_s after which each member restores alone, backend)."""
    KIND = "gang"


def group_from_config(config, parts=(), store=None) -> GangGroup:
    """model_loader_extra_config["gang"]: one gang for each set of rank-file parts (tp0, ...)."""
    return GangGroup(store, **settings_from_config("gang", config, CONFIG_FIELDS, parts))


def join_from_config(config, parts, first_worker: bool) -> GangGroup:
    """group_from_config with its store: the first worker of member 0 serves it."""
    group = group_from_config(config, parts)
    store = tcp_store(config["store"], first_worker and group.rank == LEADER, group.join_timeout_s)
    return dataclasses.replace(group, store=store)


# ---- the shares ---------------------------------------------------------------------------

def assign_shares(lengths, size) -> list:
    """The member that restores each tensor: the largest first, each to the least loaded member
    (ties to the lowest rank), so shares differ by at most one tensor's bytes. Whole tensors,
    since a restore reads whole regions; deterministic, so every member computes the same."""
    owners = [0] * len(lengths)
    loads = [(0, member) for member in range(size)]
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, member = heapq.heappop(loads)
        owners[index] = member
        heapq.heappush(loads, (load + lengths[index], member))
    return owners


def share_chunks(lengths, owners, size, chunk_bytes) -> list:
    """[(tensor index, start, end)] of each member's share, in manifest order, in chunks."""
    shares = [[] for _ in range(size)]
    for index, (length, owner) in enumerate(zip(lengths, owners)):
        shares[owner].extend((index, start, min(length, start + chunk_bytes)) for start in range(0, length, chunk_bytes))
    return shares


def ring_steps(rank, size, chunk_counts) -> list:
    """The ring all-gather of one member: [(send, recv)], each a (share, chunk) or None. At step s
    of chunk round j a member sends chunk j of share rank - s to the next member and receives
    chunk j of share rank - 1 - s from the previous one, so a share travels the ring from its
    owner and every link carries every share but one; the next member receives in the order
    this one sends."""
    steps = []
    for j in range(max(chunk_counts, default=0)):
        for s in range(size - 1):
            send, recv = (rank - s) % size, (rank - 1 - s) % size
            step = ((send, j) if j < chunk_counts[send] else None, (recv, j) if j < chunk_counts[recv] else None)
            if step != (None, None):
                steps.append(step)
    return steps


# ---- the exchange -------------------------------------------------------------------------

class _Wires:
    """The contiguous bytes a tensor travels in: its destination's own, or, where the destination
    is not contiguous (or is host memory sent over NCCL), a bounce copy on the group's device
    that lives as long as this member's operations on the tensor."""

    def __init__(self, targets, device, kind, owned, uses):
        self.targets, self.device, self.kind, self.owned, self.left = targets, device, kind, owned, uses
        self.bounces = {}

    def _direct(self, tensor):
        return tensor.is_contiguous() and not (self.kind == "nccl" and tensor.device.type != "cuda")

    def view(self, index, start, end):
        tensor = self.targets[index]
        if self._direct(tensor):
            return manifests.byte_view(tensor)[start:end]
        if index not in self.bounces:
            self.bounces[index] = (manifests.byte_view(tensor.contiguous()).to(self.device, copy=True) if index in self.owned
                                   else torch.empty(manifests.nbytes(tensor), dtype=torch.uint8, device=self.device))
        return self.bounces[index][start:end]

    def used(self, index):
        """One operation on the tensor is over; after the last, a received bounce lands in place."""
        self.left[index] -= 1
        if self.left[index] == 0 and index in self.bounces:
            bounce = self.bounces.pop(index)
            if index not in self.owned:
                tensor = self.targets[index]
                tensor.copy_(bounce.view(tensor.dtype).reshape(tensor.shape))


def _exchange(send_link, recv_link, wires, shares, steps, group, names, progress):
    """Runs this member's ring steps: every chunk received is forwarded when its step comes;
    recvs are posted WINDOW ahead, sends settled WINDOW behind. Any failure ends the exchange."""
    after, before = (group.rank + 1) % group.size, (group.rank - 1) % group.size
    recv_pieces = [recv for _, recv in steps if recv is not None]
    total = sum(shares[m][j][2] - shares[m][j][1] for step in steps for m, j in filter(None, step))
    recvs, sends = {}, deque()
    posted = sent = received = done = 0

    def what(piece):
        share, j = piece
        return f"at tensor '{names[shares[share][j][0]]}' (chunk {j + 1} of {len(shares[share])} of member {share}'s share)"

    def view(piece):
        return wires.view(*shares[piece[0]][piece[1]])

    def post_recv():
        nonlocal posted
        if posted < len(recv_pieces):
            piece = recv_pieces[posted]
            recvs[posted] = recv_link.post("recv", view(piece), before, posted, True, what(piece))
            posted += 1

    def settle(limit):
        while len(sends) > limit:
            piece, work = sends.popleft()
            send_link.finished(work, after, False, what(piece))
            wires.used(shares[piece[0]][piece[1]][0])

    def moved(piece):
        nonlocal done
        _, start, end = shares[piece[0]][piece[1]]
        done += end - start
        if progress is not None:
            progress(done, total)

    for _ in range(WINDOW):
        post_recv()
    for send, recv in steps:
        if send is not None:
            sends.append((send, send_link.post("send", view(send), after, sent, False, what(send))))
            sent += 1
        if recv is not None:
            recv_link.landed(recvs.pop(received), before, True, what(recv))
            received += 1
            wires.used(shares[recv[0]][recv[1]][0])
            post_recv()
            moved(recv)
        if send is not None:
            moved(send)
        settle(WINDOW)
    settle(0)


def _handshake(send_link, recv_link, group, device):
    """One byte round the ring before any chunk, in an order that cannot wait in a circle: NCCL
    joins a pair's communicator on its first operation and blocks until both ends do, so
    member 0 sends first and every other member first receives (then sends on)."""
    after, before = (group.rank + 1) % group.size, (group.rank - 1) % group.size
    token = torch.zeros(1, dtype=torch.uint8, device=device)
    what = "while the gang's links opened"

    def send():
        send_link.finished(send_link.post("send", token, after, HANDSHAKE_TAG, False, what), after, False, what)

    def recv():
        recv_link.finished(recv_link.post("recv", token, before, HANDSHAKE_TAG, True, what), before, True, what)
    for step in ((send, recv) if group.rank == LEADER else (recv, send)):
        step()


def _open_links(group, meeting, kind):
    """(send link, recv link, backends). Over NCCL a pair of members shares one stream for both
    ways, so a gang of two, whose two links join the same pair, gets one backend a direction."""
    import torch.distributed as dist
    ways = 2 if kind == "nccl" and group.size == 2 else 1
    backends = [open_backend(kind, dist.PrefixStore(f"backend/{w}/", meeting.store), group.rank, group.size,
                             group.timeout_s) for w in range(ways)]
    before = (group.rank - 1) % group.size
    send = Link(backends[group.rank % ways], kind, group.timeout_s, "member")
    recv = Link(backends[before % ways], kind, group.timeout_s, "member")
    return send, recv, backends


def _run(group, meeting, manifest, targets, owners, progress):
    """The exchange of this member's ring steps; returns its status for the group."""
    before = (group.rank - 1) % group.size
    device, kind = device_and_backend(group, targets)
    lengths = [e[3] for e in manifest["tensors"]]
    shares = share_chunks(lengths, owners, group.size, manifest["chunk_bytes"])
    steps = ring_steps(group.rank, group.size, [len(s) for s in shares])
    uses = {}
    for step in steps:
        for share, j in filter(None, step):
            index = shares[share][j][0]
            uses[index] = uses.get(index, 0) + 1
    if not steps:  # a gang of one: its share is everything
        return {"ok": True, "error": None, "parent": None}
    wires = _Wires(targets, device, kind, {i for i, o in enumerate(owners) if o == group.rank}, uses)
    try:
        send_link, recv_link, backends = _open_links(group, meeting, kind)
    except RuntimeError as e:
        return {"ok": False, "parent": before, "error": f"could not connect to the gang's members ({backend_text(e)})"}
    try:
        _handshake(send_link, recv_link, group, device)
        _exchange(send_link, recv_link, wires, shares, steps, group, [e[0] for e in manifest["tensors"]], progress)
        if kind == "nccl":
            torch.cuda.current_stream(device).synchronize()
        return {"ok": True, "error": None, "parent": before}
    except PeerFailure as e:
        for backend in backends:  # the others learn at once that no more will come
            shut(backend)
        return {"ok": False, "error": e.reason, "parent": before}
    finally:
        del send_link, recv_link, backends


# ---- the whole operation ------------------------------------------------------------------

def gang_restore(module_or_state_dict, path, group: GangGroup, strict: bool = True, pool=None, verify=None,
                 fallback: bool = True, progress=None, **engine_options) -> dict:
    """Restores the same snapshot on every member of group, each member restoring only its
    share (through pool when given) and receiving the rest from the others; every member calls
    it with its own copy of the snapshot at path and its own destination.

    verify=True: every member checks the CRC32C of every tensor it received against the
    manifest (the snapshot's), through a host copy of device tensors, and its own share while
    reading it; None (the default) checks only what it read from its file or pool, as
    restore_into does; False checks nothing. A member the gang did not complete restores the
    whole snapshot from its own pool or file when fallback is on; else GangError.
    progress(bytes_done, bytes_total) runs after each chunk this member received or sent.
    Returns {"bytes", "seconds", "gbps", "path", "share_path", "share_bytes", "group_error",
    "round", "members"}: path is "gang" when the gang served the bytes ("share_path": what served
    this member's share, "pool" or "file"), else what served the fallback ("pool" or "file");
    group_error names whatever went wrong anywhere in the gang.
    """
    tensors = torch_io._tensors_of(module_or_state_dict)
    started = time.perf_counter()
    try:
        meeting = Meeting(group, "gang", GangError)
    except GangError as e:
        if not fallback:
            raise
        served, nbytes = restore_alone(tensors, path, group.rank, "member", str(e), strict, pool, verify, engine_options)
        return _finish(group, started, nbytes, served, {}, str(e), None)
    label = f"thaw gang {group.name!r} member {group.rank}"
    share = {}
    try:
        manifest, targets, aliases = _agree(group, meeting, tensors, path, strict, label)
        owners = assign_shares([e[3] for e in manifest["tensors"]], group.size)
        share = _restore_share(group, meeting, manifest, targets, owners, path, pool, verify, engine_options)
        own = _run(group, meeting, manifest, targets, owners, progress)
        if own["ok"]:
            if verify:
                received = [i for i, o in enumerate(owners) if o != group.rank]
                manifests.verify_received([manifest["tensors"][i] for i in received], [targets[i] for i in received],
                                          label, lambda k: f"member {owners[received[k]]}'s share")
            torch_io.copy_untied_aliases(tensors, aliases)
    except (ThawError, ValueError) as e:  # said to the others, so that none waits for this member
        own = {"ok": False, "error": str(e).removeprefix(label + ": "), "parent": None}
    statuses = meeting.statuses(group, own)
    title = f"thaw gang {group.name!r} (round {meeting.round}, {group.size} members)"
    group_error = summary(title, "member", group.size, group.rank, statuses, own)
    if own["ok"]:
        served, nbytes = "gang", manifests.total_bytes(manifest)
        if group_error:
            log.warning("%s", group_error)
    else:
        if not fallback:
            raise GangError(group_error or f"{label}: {own['error']}")
        served, nbytes = restore_alone(tensors, path, group.rank, "member", group_error, strict, pool, verify,
                                       engine_options)
    return _finish(group, started, nbytes, served, share, group_error, meeting.round)


def _agree(group, meeting, tensors, path, strict, label):
    """Member 0 publishes its snapshot's manifest; every member checks it (and its own snapshot
    and destinations) and says so; once every member is ready, returns the manifest and this
    member's destinations and aliases for it."""
    deadline = time.monotonic() + group.join_timeout_s

    def not_started(why):
        return GangError(f"thaw gang {group.name!r} (round {meeting.round}) did not start: {why}")
    if group.rank == LEADER:
        try:
            manifest = manifests.of_snapshot(path, tensors, strict)
        except Exception as e:
            meeting.put("manifest", {"error": f"member {LEADER} could not describe {path}: {e}"})
            raise
        manifest.update(version=manifests.VERSION, size=group.size, chunk_bytes=group.chunk_bytes)
        meeting.put("manifest", manifest)
    else:
        manifest = meeting.take("manifest", group.join_timeout_s)
        if manifest is None:
            raise not_started(f"no manifest from member {LEADER} within {group.join_timeout_s:g} s")
        if "error" in manifest:
            raise not_started(manifest["error"])
    try:
        targets, aliases = _check_manifest(group, manifest, tensors, path, strict, label)
    except (GangError, ThawMismatchError) as e:
        meeting.put(f"ready/{group.rank}", {"ok": False, "error": str(e).removeprefix(label + ": ")})
        raise
    absent, refused = meeting.gather("ready", group, {"ok": True}, deadline - time.monotonic(), "member")
    if absent:
        refused.append(f"members {absent} did not arrive within {group.join_timeout_s:g} s")
    if refused:
        raise not_started("; ".join(refused))
    return manifest, targets, aliases


def _check_manifest(group, manifest, tensors, path, strict, label):
    """The manifest comes from another process: bounded before use, then checked against this
    member's destinations and its own snapshot (its share and its fallback read that file)."""
    def bounded(value, low, high):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if manifest.get("version") != manifests.VERSION or manifest.get("size") != group.size:
        raise GangError(f"{label}: member {LEADER}'s gang (version {manifest.get('version')}, size "
                        f"{manifest.get('size')}) is not this member's (version {manifests.VERSION}, size {group.size})")
    if not bounded(manifest.get("chunk_bytes"), MIN_CHUNK_BYTES, MAX_CHUNK_BYTES) or not manifests.well_formed(manifest):
        raise GangError(f"{label}: member {LEADER}'s manifest is malformed")
    checked = manifests.check_against(manifest, tensors, strict, label, f"member {LEADER}", contiguous=False)
    if group.rank != LEADER:
        manifests.check_same_snapshot(path, manifest, label, f"member {LEADER}")
    return checked


def _restore_share(group, meeting, manifest, targets, owners, path, pool, verify, engine_options):
    """Restores this member's share from its own pool or file, then waits until every member
    holds its own: no chunk is asked of a member still reading its share."""
    names = {manifest["tensors"][i][0]: targets[i] for i, o in enumerate(owners) if o == group.rank}
    try:
        stats = (torch_io.restore_into(names, path, False, pool=pool, verify=verify, **engine_options) if names
                 else {"source": "file", "bytes": 0})
        word = {"ok": True}
    except Exception as e:
        word = {"ok": False, "error": f"could not restore its share from {path}: {e}"}
    absent, refused = meeting.gather("restored", group, word, group.join_timeout_s, "member")
    if not word["ok"]:
        refused.insert(0, f"member {group.rank} {word['error']}")
    if absent:
        refused.append(f"members {absent} did not restore their shares within {group.join_timeout_s:g} s")
    if refused:
        raise GangError(f"thaw gang {group.name!r} (round {meeting.round}) did not start its exchange: "
                        + "; ".join(refused))
    return {"path": stats["source"], "bytes": stats["bytes"]}


def _finish(group, started, nbytes, served, share, group_error, round_number):
    seconds = time.perf_counter() - started
    stats = {"bytes": nbytes, "seconds": seconds, "gbps": nbytes / seconds / 1e9 if seconds > 0 else 0.0,
             "path": served, "share_path": share.get("path"), "share_bytes": share.get("bytes", 0),
             "group_error": group_error, "round": round_number, "members": group.size}
    via = f"gang (its share of {stats['share_bytes']} bytes via {share.get('path')})" if served == "gang" else served
    log.info("thaw: member %d of gang %r restored %d bytes via %s in %.3f s (%.2f GB/s)",
             group.rank, group.name, nbytes, via, seconds, stats["gbps"])
    return stats
