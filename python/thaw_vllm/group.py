"""What the group restores (multicast.py, gang.py) share: the members' settings, their meeting
in a torch.distributed store, the links between them over a gloo or NCCL group (a stalled or
dead peer in our words, never the backend's), and the one message that names every member
that did not end well. docs/MULTI_GPU.md describes the keys and the failures."""
import dataclasses
import json
import logging
import math
import time
from datetime import timedelta

import torch

from . import torch_io
from .errors import ThawError, ThawMismatchError

log = logging.getLogger("thaw_vllm")

DEFAULT_CHUNK_BYTES = 32 << 20
MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 4 << 10, 1 << 30
MAX_GROUP_SIZE = 4096
# Chunks in flight on each link: one landing while the previous one is forwarded.
WINDOW = 2


class GroupError(ThawError):
    """A group restore did not reach this member: a peer died, stalled or refused; the message names it."""


@dataclasses.dataclass(frozen=True)
class GroupSettings:
    """What every group restore needs. store: a torch.distributed Store every member reaches
    (TCPStore, FileStore, PrefixStore); rank, size: this member and the group's size.
    timeout_s: how long one chunk may take before its peer counts as stalled.
    join_timeout_s: how long members wait for each other to arrive (and to restore their part).
    backend: "gloo", "nccl" or "auto" (nccl when the tensors are on CUDA)."""
    KIND = "group"
    store: object
    rank: int
    size: int
    name: str = "thaw"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    timeout_s: float = 10.0
    join_timeout_s: float = 300.0
    backend: str = "auto"

    def refuse(self, field, rule):
        raise ValueError(f"{self.KIND} group {self.name!r}: {field} {getattr(self, field)!r} {rule}")

    def __post_init__(self):
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 200 or "/" in self.name:
            self.refuse("name", "must be 1-200 characters without '/'")
        if not _whole(self.size, 1, MAX_GROUP_SIZE):
            self.refuse("size", f"must be an integer in 1..{MAX_GROUP_SIZE}")
        if not _whole(self.rank, 0, self.size - 1):
            self.refuse("rank", f"must be an integer in 0..{self.size - 1}")
        if not _whole(self.chunk_bytes, MIN_CHUNK_BYTES, MAX_CHUNK_BYTES):
            self.refuse("chunk_bytes", f"must be an integer in {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}")
        for field in ("timeout_s", "join_timeout_s"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 < value <= 86400:
                self.refuse(field, "must be a number of seconds in (0, 86400]")
        if self.backend not in ("auto", "gloo", "nccl"):
            self.refuse("backend", "must be auto, gloo or nccl")


def _whole(value, low, high) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def parse_address(address, kind="multicast"):
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{kind} store address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def tcp_store(address: str, is_host: bool, timeout_s: float = 300.0):
    """The group's meeting point at "host:port"; exactly one member (is_host) serves it."""
    import torch.distributed as dist
    host, port = parse_address(address)
    return dist.TCPStore(host, port, None, is_host, timedelta(seconds=timeout_s), wait_for_workers=False)


# ---- model_loader_extra_config groups -----------------------------------------------------

def settings_from_config(kind, config, fields, parts=()) -> dict:
    """The GroupSettings fields of a loader config dict ({store, rank, size, name, chunk_mib,
    timeout_s, join_timeout_s} and the kind's own), checked field by field; one group for
    each set of rank-file parts (tp0, tp1, ...), since each tensor-parallel rank has its own file."""
    if not isinstance(config, dict):
        raise ValueError(f"{kind} must be a dict of {', '.join(fields)}, not {config!r}")
    unknown = sorted(set(config) - set(fields))
    missing = sorted({"store", "rank", "size"} - set(config))
    if unknown or missing:
        raise ValueError(f"{kind}: unknown fields {unknown}, missing fields {missing}; "
                         f"known: {', '.join(f'{k} ({v})' for k, v in fields.items())}")
    parse_address(config["store"], kind)
    chunk_mib = config.get("chunk_mib", DEFAULT_CHUNK_BYTES >> 20)
    if not _whole(chunk_mib, 1, MAX_CHUNK_BYTES >> 20):
        raise ValueError(f"{kind}: chunk_mib must be a whole number from 1 to {MAX_CHUNK_BYTES >> 20}, not {chunk_mib!r}")
    return dict(rank=config["rank"], size=config["size"], name=".".join([str(config.get("name", "thaw")), *parts]),
                chunk_bytes=chunk_mib << 20, timeout_s=config.get("timeout_s", 10.0),
                join_timeout_s=config.get("join_timeout_s", 300.0))


CONFIG_FIELDS = {
    "store": "host:port where the members meet; the first worker of rank 0 (multicast: of the source) serves it",
    "rank": "this engine's rank in the group", "size": "engines in the group",
    "name": "the group's name (default thaw)", "chunk_mib": "MiB a chunk (default 32)",
    "timeout_s": "seconds a chunk may take before its peer counts as stalled (default 10)",
    "join_timeout_s": "seconds to wait for every member (default 300)",
}


# ---- the meeting --------------------------------------------------------------------------

class Meeting:
    """The group's keys of one round in the shared store, under thaw/<kind>/<name>/<round>/."""

    def __init__(self, group: GroupSettings, kind: str, error=GroupError):
        import torch.distributed as dist
        try:
            # Each member counts its own calls, so the n-th restore of every member meets in round n.
            self.round = group.store.add(f"thaw/{kind}/{group.name}/round/{group.rank}", 1)
        except RuntimeError as e:
            raise error(f"thaw {kind} {group.name!r} rank {group.rank}: the group's store is "
                        f"unreachable ({backend_text(e)})") from e
        self.store = dist.PrefixStore(f"thaw/{kind}/{group.name}/{self.round}/", group.store)

    def put(self, key, value):
        try:
            self.store.set(key, json.dumps(value))
        except RuntimeError as e:  # the store's host is gone: the others will count this rank as silent
            log.debug("thaw: could not publish %s: %s", key, e)

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

    def gather(self, prefix, group, own, seconds, noun):
        """Publishes own ({ok} or {ok: false, error}) at prefix/<rank> and waits for every other
        member's word there: ([members absent], [texts naming the members that refused])."""
        self.put(f"{prefix}/{group.rank}", own)
        words = self.take_all(prefix, [r for r in range(group.size) if r != group.rank], seconds)
        absent = [r for r, v in words.items() if v is None]
        refused = [f"{noun} {r} refused: {v['error']}" for r, v in words.items() if v is not None and not v["ok"]]
        return absent, refused

    def statuses(self, group, own):
        """Publishes how this member ended and returns every other's ({rank: status or None})."""
        self.put(f"status/{group.rank}", own)
        # A member behind a stalled peer gives up one timeout after it; the news then travels as
        # closed connections within moments: two timeouts hear from every member still alive.
        statuses = self.take_all("status", [r for r in range(group.size) if r != group.rank], 2 * group.timeout_s)
        # The store lives in one member's process: nobody leaves before every member still alive
        # has read the statuses, or a late reader finds the store gone and reports a live one silent.
        self.put(f"read/{group.rank}", True)
        self.take_all("read", [r for r, status in statuses.items() if status is not None], 2 * group.timeout_s)
        return statuses


def backend_text(error) -> str:
    """The part of a torch.distributed error worth showing: without its source location."""
    return str(error).split("] ", 1)[-1][:200]


def summary(title, noun, size, rank, statuses, own):
    """One message naming every member that did not end well, the first cause first."""
    every = {r: own if r == rank else statuses.get(r) for r in range(size)}
    problems = []
    for r, status in every.items():
        if status is None:
            problems.append((0, f"{noun} {r} gave no word (killed, stalled or unreachable)"))
        elif not status["ok"]:
            parent = status.get("parent")
            # A member whose upstream failed too only suffers the first cause: list it after.
            follows = parent is not None and (every.get(parent) is None or not every[parent]["ok"])
            problems.append((1 if follows else 0, f"{noun} {r}: {status['error']}"))
        elif status.get("downstream"):
            problems.append((1, f"{noun} {r}: " + "; ".join(status["downstream"])))
    if not problems:
        return None
    problems.sort(key=lambda p: p[0])
    return f"{title}: " + "; ".join(text for _, text in problems)


def restore_alone(tensors, path, rank, noun, why, strict, pool, verify, engine_options):
    """The fallback: this member restores the whole snapshot from its own pool or file.
    Returns (path that served it, bytes)."""
    log.warning("%s; %s %d restores from its own %s", why, noun, rank, "pool or file" if pool else "file")
    stats = torch_io.restore_into(tensors, path, strict, pool=pool, verify=verify, **engine_options)
    return stats["source"], stats["bytes"]


# ---- the links ---------------------------------------------------------------------------

def device_and_backend(group: GroupSettings, targets):
    """The one device a member restores into (host memory when no tensor is on CUDA) and the
    backend its bytes travel by: NCCL between GPUs, gloo between hosts."""
    devices = {t.device for t in targets}
    cuda = {(d.type, d.index) for d in devices if d.type == "cuda"}
    if len(cuda) > 1:
        raise ThawMismatchError(f"{group.KIND} restores into one device, not {sorted(map(str, devices))}")
    device = next((d for d in devices if d.type == "cuda"), torch.device("cpu"))
    kind = group.backend if group.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    return device, kind


def open_backend(kind, store, rank, size, timeout_s):
    """A gloo or NCCL group of the members over the store, as vLLM builds its stateless
    groups (vllm/distributed/utils.py, stateless_init_torch_distributed_process_group)."""
    import torch.distributed as dist
    if kind == "gloo":
        return dist.ProcessGroupGloo(store, rank, size, timedelta(seconds=timeout_s))
    options = dist.ProcessGroupNCCL.Options()
    # NCCL's own watchdog must not fire before our deadline does: ours aborts cleanly.
    options._timeout = timedelta(seconds=2 * timeout_s + 30)
    return dist.ProcessGroupNCCL(store, rank, size, options)


def shut(backend):
    for method in ("abort", "shutdown"):
        if hasattr(backend, method):
            try:
                getattr(backend, method)()
            except Exception:  # already broken: its peers are gone
                pass
            return


class PeerFailure(Exception):
    def __init__(self, peer, upstream, reason):
        super().__init__(reason)
        self.peer, self.upstream, self.reason = peer, upstream, reason


class Link:
    """Waits on one backend's operations with this member's deadline. gloo's wait blocks until
    the bytes moved; NCCL's only orders the current stream after them, so its completion is
    polled against the deadline (and NCCL's own, longer watchdog never fires first)."""

    def __init__(self, backend, kind, timeout_s, noun="rank"):
        self.backend, self.kind, self.timeout_s, self.noun = backend, kind, timeout_s, noun

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
            reason = f"failed ({backend_text(error)})"
        way = "upstream" if upstream else "downstream"
        return PeerFailure(peer, upstream, f"{way} {self.noun} {peer} {reason} {what}")
