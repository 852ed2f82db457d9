"""Publishing this process's weights to `thaw pool`, so that a new process restoring the same snapshot
is served from this memory device to device, with no host copy: a second instance beside a running
one (blue/green restarts) or on another GPU (docs/POOL.md, "Restoring from a live peer").

    with thaw_vllm.publish(model, snapshot, pool=True) as published:
        ...                                # new processes restoring `snapshot` copy from this GPU memory
        with published.changing():         # before the memory changes (sleep, a weight reload)
            ...                            # withdrawn here; published again, next generation, after

The publication lives as long as its handle's connection to the pool: close() (or the process
exiting) withdraws it, and the pool never reads that memory again. The identity of the snapshot
(the file's stat identity and header CRC32C) is taken with identity() BEFORE the bytes are restored into the memory that
is published: a file replaced in between is then refused by the pool instead of served.
"""
import contextlib
import logging

from . import _native
from .errors import ThawPoolUnavailable

log = logging.getLogger("thaw_vllm")

__all__ = ["Publication", "publish", "identity"]


def identity(snapshot) -> dict:
    """{dev, ino, size, mtime_ns, ctime_ns, header_crc32c} of the snapshot file now."""
    return _native.snapshot_identity(snapshot)


def _published_tensors(model_or_tensors, snapshot) -> dict:
    """The snapshot's regions among the tensors, all on one device and contiguous (the pool copies
    whole allocations' ranges); ThawPoolUnavailable when they cannot be published."""
    from .torch_io import _tensors_of
    regions = {t["name"] for t in _native.snapshot_info(snapshot)["tensors"]}
    tensors = {n: t for n, t in _tensors_of(model_or_tensors).items() if n in regions}
    if not tensors:
        raise ThawPoolUnavailable(f"nothing to publish: no tensor of {snapshot} is among the ones given")
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise ThawPoolUnavailable(f"a publication lies on one device, not {sorted(map(str, devices))}")
    scattered = [n for n, t in tensors.items() if not t.is_contiguous()]
    if scattered:
        raise ThawPoolUnavailable(f"the pool serves contiguous tensors only, and '{scattered[0]}' is not")
    return tensors


def _arrays(tensors: dict):
    from .torch_io import thaw_dtype
    names = list(tensors)
    return (names, [thaw_dtype(tensors[n].dtype) for n in names], [list(tensors[n].shape) for n in names],
            [tensors[n].data_ptr() for n in names], [tensors[n].numel() * tensors[n].element_size() for n in names])


class Publication:
    """A live publication: its generation, bump() to publish the next one, withdraw() before the
    memory changes, close() to end it (also on leaving a with block)."""

    def __init__(self, handle, snapshot, generation, tensors):
        self._handle = handle
        self.snapshot = str(snapshot)
        self.generation = generation
        self.published = True
        self._tensors = tensors

    def _live_handle(self):
        if self._handle is None:
            raise ValueError(f"the publication of {self.snapshot} is closed")
        return self._handle

    def withdraw(self) -> None:
        """Stops offering the memory; returns once the pool has withdrawn it (a copy from it still
        running is then discarded), so the memory may change as soon as this returns."""
        _native.pool_withdraw(self._live_handle())
        self.published = False

    def bump(self, model_or_tensors=None) -> int:
        """Publishes the next generation (the memory holds the snapshot's bytes again; the tensors
        may have moved: pass them). Returns the new generation."""
        handle = self._live_handle()
        if model_or_tensors is not None:
            self._tensors = _published_tensors(model_or_tensors, self.snapshot)
        self.published = False
        self.generation = _native.pool_republish(handle, *_arrays(self._tensors))
        self.published = True
        return self.generation

    @contextlib.contextmanager
    def changing(self, model_or_tensors=None):
        """Withdrawn while the block changes the memory; the next generation is published after it
        (with model_or_tensors when the tensors moved). Nothing is published again if the block raises."""
        self.withdraw()
        yield self
        self.bump(model_or_tensors)

    def close(self) -> None:
        """Ends the publication: the pool forgets it when its connection closes, at once."""
        handle, self._handle = self._handle, None
        self.published = False
        if handle is not None:
            _native.pool_unpublish(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def publish(model_or_tensors, snapshot, pool=True, allow_uids=(), snapshot_identity=None, mock_device=0) -> Publication:
    """Offers the tensors of a module or state dict that hold the snapshot's bytes (after restoring
    it) to the pool, for new processes restoring the same snapshot.

    pool: the pool's socket path (True: the default socket; "auto": this user's automatic pool,
    started when none runs). allow_uids: uids besides this process's
    own that may be served from this memory. snapshot_identity: identity(snapshot) taken before the
    bytes were restored (default: the file's identity now). mock_device: which mock device CPU tensors stand on.
    Raises ThawPoolUnavailable when no pool listens or the tensors cannot be published, and the pool's
    refusal otherwise (ThawMismatchError: the file on disk is another version, a tensor does not fit).
    """
    from .pool import PoolUnavailable, select
    from .torch_io import _device_request
    tensors = _published_tensors(model_or_tensors, snapshot)
    uids = [int(u) for u in allow_uids]
    if any(not 0 <= u < 2 ** 32 - 1 for u in uids):
        raise ValueError(f"allow_uids: uids from 0 to {2 ** 32 - 2}, not {uids}")
    device = next(iter(tensors.values())).device
    socket = select(True if pool is None else pool, device)
    if socket is None:
        raise PoolUnavailable(f"publishing {snapshot} needs a pool, and pool is off")
    handle, generation = _native.pool_publish(
        socket, snapshot, _device_request(device, mock_device=mock_device), snapshot_identity or identity(snapshot), uids, *_arrays(tensors))
    return Publication(handle, snapshot, generation, tensors)
