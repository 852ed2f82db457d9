"""ctypes binding of libthaw.so, the NativeAOT library built from src/Thaw.PyBridge.

The library is looked up in order: $THAW_LIBRARY, the package's own lib/ folder
(installed wheels), then the repository's build/publish/pybridge/ (a source checkout).
"""
import ctypes
import json
import os
import threading
from pathlib import Path

from .errors import ThawError, from_code

DEVICE_MOCK = 0
MOCK_DEVICES = 8  # THAWCORE_MOCK_DEVICES in bindings/thaw_core.h
DEVICE_CUDA = 1
IO_MODES = {"auto": 0, "buffered": 1, "direct": 2, "zerocopy": 3}
POOL_NO_FILL = 1    # PoolNoFill in src/Thaw.PyBridge/Exports.cs
POOL_NO_SHARE = 2   # PoolNoShare there


class EngineRequest(ctypes.Structure):
    _fields_ = [
        ("device_kind", ctypes.c_int32),
        ("device_ordinal", ctypes.c_int32),
        ("io_threads", ctypes.c_int32),
        ("io_mode", ctypes.c_int32),
        ("chunk_bytes", ctypes.c_int64),
        ("staging_bytes", ctypes.c_int64),
        ("verify", ctypes.c_int32),
        ("pool_flags", ctypes.c_int32),     # thaw_pool_restore: POOL_NO_FILL | POOL_NO_SHARE
    ]


class TensorArray(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("names", ctypes.POINTER(ctypes.c_char_p)),
        ("dtypes", ctypes.POINTER(ctypes.c_char_p)),
        ("ndims", ctypes.POINTER(ctypes.c_int32)),
        ("shapes", ctypes.POINTER(ctypes.c_int64)),
        ("addresses", ctypes.POINTER(ctypes.c_uint64)),
        ("capacities", ctypes.POINTER(ctypes.c_int64)),
    ]


class RestoreStats(ctypes.Structure):
    _fields_ = [
        ("bytes", ctypes.c_int64),
        ("bytes_read", ctypes.c_int64),
        ("seconds", ctypes.c_double),
        ("io_mode", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("source", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        # Through a pool: where the time went (docs/POOL.md, "Where a restore's time goes").
        ("resolve_s", ctypes.c_double),
        ("request_s", ctypes.c_double),
        ("pool_s", ctypes.c_double),
        ("open_s", ctypes.c_double),
        ("wait_s", ctypes.c_double),
        ("copy_s", ctypes.c_double),
        ("close_s", ctypes.c_double),
        ("open_order", ctypes.c_int32),
        ("allocations", ctypes.c_int32),
    ]
    # PeerCopyTimings.OpenOrders in src/Thaw.Interop/Restore/ThawEngine.Peer.cs.
    # 2: no handle opened at all: this process copied from the pool's shared host copy itself.
    OPEN_ORDERS = {0: "serial", 1: "pipelined", 2: "shared"}
    TIMINGS = ("resolve_s", "request_s", "pool_s", "open_s", "wait_s", "copy_s", "close_s")

    # RestoreSource in src/Thaw.PyBridge/Exports.cs: which path served the bytes.
    SOURCES = {1: "page cache", 2: "disk", 3: "pool hit", 4: "pool fill", 5: "peer", 6: "pool hit"}
    SHARED_SOURCE = 6

    @property
    def source_name(self) -> str:
        return self.SOURCES.get(self.source, "file")


_lock = threading.Lock()
_library = None


def _candidates():
    env = os.environ.get("THAW_LIBRARY")
    if env:
        yield Path(env)
    here = Path(__file__).resolve().parent
    yield here / "lib" / "libthaw.so"
    yield here.parent.parent / "build" / "publish" / "pybridge" / "libthaw.so"


def library():
    """Loads libthaw.so once per process."""
    global _library
    with _lock:
        if _library is not None:
            return _library
        tried = []
        for path in _candidates():
            tried.append(str(path))
            if path.is_file():
                lib = ctypes.CDLL(str(path))  # CDLL releases the GIL during calls
                _declare(lib)
                _library = lib
                return lib
        raise ThawError("libthaw.so not found (tried: " + ", ".join(tried) +
                        "); build it with scripts/build.sh or set THAW_LIBRARY")


def _declare(lib):
    c = ctypes
    lib.thaw_abi_version.restype = c.c_int
    lib.thaw_last_error.argtypes = [c.c_char_p, c.c_int64]
    lib.thaw_last_error.restype = c.c_int
    lib.thaw_free.argtypes = [c.c_void_p]
    lib.thaw_free.restype = None
    lib.thaw_device_count.argtypes = [c.c_int]
    lib.thaw_snapshot_info.argtypes = [c.c_char_p, c.POINTER(c.c_void_p)]
    lib.thaw_safetensors_info.argtypes = [c.c_char_p, c.POINTER(c.c_void_p)]
    lib.thaw_restore.argtypes = [c.c_char_p, c.POINTER(EngineRequest), c.POINTER(TensorArray), c.POINTER(RestoreStats)]
    lib.thaw_restore_safetensors.argtypes = lib.thaw_restore.argtypes
    lib.thaw_restore_checked.argtypes = [c.c_char_p, c.POINTER(EngineRequest), c.POINTER(TensorArray), c.c_char_p,
                                         c.POINTER(RestoreStats), c.POINTER(c.c_void_p)]
    lib.thaw_restore_borrowed.argtypes = [c.c_char_p, c.POINTER(EngineRequest), c.POINTER(TensorArray), c.c_char_p, c.c_char_p,
                                          c.POINTER(RestoreStats), c.POINTER(c.c_void_p), c.POINTER(c.c_void_p)]
    lib.thaw_freeze.argtypes = [c.c_char_p, c.POINTER(EngineRequest), c.POINTER(TensorArray), c.c_char_p, c.c_int, c.c_int]
    lib.thaw_convert.argtypes = [c.c_char_p, c.c_char_p]
    lib.thaw_pool_default_socket.argtypes = [c.POINTER(c.c_void_p)]
    lib.thaw_pool_restore.argtypes = [c.c_char_p, c.c_char_p, c.POINTER(EngineRequest), c.POINTER(TensorArray), c.POINTER(RestoreStats)]
    lib.thaw_pool_call.argtypes = [c.c_char_p, c.c_char_p, c.c_char_p, c.POINTER(c.c_void_p)]
    lib.thaw_pool_select.argtypes = [c.c_int, c.c_char_p, c.c_int, c.c_int, c.POINTER(c.c_void_p)]
    lib.thaw_verify.argtypes = [c.c_char_p]
    lib.thaw_crc32c.argtypes = [c.c_void_p, c.c_int64, c.c_uint32, c.POINTER(c.c_uint32)]
    lib.thaw_snapshot_identity.argtypes = [c.c_char_p, c.POINTER(c.c_void_p)]
    lib.thaw_pool_publish.argtypes = [c.c_char_p, c.c_char_p, c.POINTER(EngineRequest), c.POINTER(TensorArray), c.c_char_p,
                                      c.POINTER(c.c_uint32), c.c_int, c.POINTER(c.c_int64), c.POINTER(c.c_void_p)]
    lib.thaw_pool_republish.argtypes = [c.c_void_p, c.POINTER(TensorArray), c.POINTER(c.c_int64)]
    lib.thaw_pool_withdraw.argtypes = [c.c_void_p]
    lib.thaw_pool_unpublish.argtypes = [c.c_void_p]
    for name in ("thaw_snapshot_identity", "thaw_pool_publish", "thaw_pool_republish", "thaw_pool_withdraw", "thaw_pool_unpublish"):
        getattr(lib, name).restype = c.c_int
    for name in ("thaw_device_count", "thaw_pool_default_socket", "thaw_pool_restore", "thaw_pool_call", "thaw_pool_select",
                 "thaw_snapshot_info", "thaw_safetensors_info", "thaw_restore", "thaw_restore_checked", "thaw_restore_borrowed",
                 "thaw_restore_safetensors", "thaw_freeze", "thaw_convert", "thaw_verify", "thaw_crc32c"):
        getattr(lib, name).restype = c.c_int


def _check(lib, code):
    if code >= 0:
        return code
    size = lib.thaw_last_error(None, 0)
    buffer = ctypes.create_string_buffer(size + 1)
    lib.thaw_last_error(buffer, size + 1)
    raise from_code(code, buffer.value.decode("utf-8", "replace"))


def _path(path) -> bytes:
    return os.fsencode(os.fspath(path))


def _json_out(lib, call) -> dict:
    """Runs call(out) of an export that returns JSON in memory released with thaw_free."""
    out = ctypes.c_void_p()
    _check(lib, call(ctypes.byref(out)))
    try:
        return json.loads(ctypes.string_at(out).decode("utf-8"))
    finally:
        lib.thaw_free(out)


def _describe(function_name, path) -> dict:
    lib = library()
    return _json_out(lib, lambda out: getattr(lib, function_name)(_path(path), out))


def snapshot_info(path) -> dict:
    """A snapshot's header: tensors (name, dtype, shape, offset, length, crc32c), metadata, rank."""
    return _describe("thaw_snapshot_info", path)


def safetensors_info(path) -> dict:
    """A safetensors file's tensors in the snapshot-info shape (offsets from the file start)."""
    return _describe("thaw_safetensors_info", path)


def pool_default_socket() -> str:
    lib = library()
    out = ctypes.c_void_p()
    _check(lib, lib.thaw_pool_default_socket(ctypes.byref(out)))
    try:
        return ctypes.string_at(out).decode("utf-8")
    finally:
        lib.thaw_free(out)


POOL_UNSPECIFIED, POOL_OFF, POOL_AUTO, POOL_SOCKET = -1, 0, 1, 2


def pool_select(mode: int, socket, kind: int, ordinal: int):
    """The socket a restore goes through (None: none), decided by libthaw's one policy from the
    caller's mode, $THAW_POOL and the destination; the automatic pool is found or started here.
    Raises ThawPoolUnavailable when the automatic pool cannot be used (restore from the file)."""
    lib = library()
    out = ctypes.c_void_p()
    _check(lib, lib.thaw_pool_select(mode, None if socket is None else _path(socket), kind, ordinal, ctypes.byref(out)))
    if not out.value:
        return None
    try:
        return ctypes.string_at(out).decode("utf-8")
    finally:
        lib.thaw_free(out)


def device_count(kind: int) -> int:
    lib = library()
    return _check(lib, lib.thaw_device_count(kind))


def make_request(kind, ordinal, io="auto", verify=None, threads=0, chunk_bytes=0, staging_bytes=0):
    if io not in IO_MODES:
        raise ValueError(f"io must be one of {sorted(IO_MODES)}, not {io!r}")
    return EngineRequest(kind, ordinal, threads, IO_MODES[io], chunk_bytes, staging_bytes, -1 if verify is None else int(bool(verify)), 0)


class _Tensors:
    """Keeps the ctypes arrays of one call alive while libthaw reads them."""

    def __init__(self, names, dtypes, shapes, addresses, capacities=None):
        n = len(names)
        self.names = (ctypes.c_char_p * n)(*[x.encode("utf-8") for x in names])
        self.dtypes = (ctypes.c_char_p * n)(*[x.encode("ascii") for x in dtypes])
        self.ndims = (ctypes.c_int32 * n)(*[len(s) for s in shapes])
        flat = [int(d) for s in shapes for d in s]
        self.shapes = (ctypes.c_int64 * max(1, len(flat)))(*flat)
        self.addresses = (ctypes.c_uint64 * n)(*addresses)
        self.capacities = (ctypes.c_int64 * n)(*(capacities or [0] * n))
        self.array = TensorArray(n, 0, self.names, self.dtypes, self.ndims, self.shapes, self.addresses, self.capacities)


def restore(path, request, names, dtypes, shapes, addresses, capacities, safetensors=False) -> RestoreStats:
    lib = library()
    tensors = _Tensors(names, dtypes, shapes, addresses, capacities)
    stats = RestoreStats()
    fn = lib.thaw_restore_safetensors if safetensors else lib.thaw_restore
    _check(lib, fn(_path(path), ctypes.byref(request), ctypes.byref(tensors.array), ctypes.byref(stats)))
    return stats


def restore_checked(path, request, names, dtypes, shapes, addresses, capacities, requirements=None, describe=False):
    """Checks the destination against the snapshot (names, dtypes, shapes and sizes; with
    requirements {"strict", "metadata", "missing_hint"} also coverage and metadata) and, unless
    request is None, restores into it, from one parse of the header. Returns (stats or None,
    the snapshot's description when describe, else None)."""
    return restore_borrowed(path, request, names, dtypes, shapes, addresses, capacities, requirements, describe)[:2]


def _borrow_json(borrow):
    """The borrow option as the bridge reads it: None (nothing said), "auto", "off", [ordinals] or
    {"devices", "weights", "lanes"} (True: "auto", False: "off"); the bridge checks the rest."""
    if borrow is None:
        return None
    if borrow is True or borrow is False:
        borrow = "auto" if borrow else "off"
    if isinstance(borrow, tuple):
        borrow = list(borrow)
    if not isinstance(borrow, (str, list, dict)):
        raise ValueError(f"borrow must be \"auto\", \"off\", a list of device ordinals or "
                         f"{{devices, weights, lanes}}, not {borrow!r}")
    return json.dumps(borrow).encode("utf-8")


def restore_borrowed(path, request, names, dtypes, shapes, addresses, capacities, requirements=None, describe=False,
                     borrow=None):
    """restore_checked whose restore may borrow other devices' host links (docs/MULTI_GPU.md,
    "Borrowed links"; $THAW_BORROW overrides borrow). Returns (stats or None, description or None,
    links or None): links is {"links": [{device, role, bytes, ...}], "summary", "note"}."""
    lib = library()
    tensors = _Tensors(names, dtypes, shapes, addresses, capacities)
    stats = RestoreStats()
    described, links = ctypes.c_void_p(), ctypes.c_void_p()
    text = json.dumps(requirements).encode("utf-8") if requirements else None
    _check(lib, lib.thaw_restore_borrowed(_path(path), None if request is None else ctypes.byref(request),
                                          ctypes.byref(tensors.array), text, _borrow_json(borrow), ctypes.byref(stats),
                                          ctypes.byref(described) if describe else None,
                                          None if request is None else ctypes.byref(links)))
    info = _taken_json(lib, described) if describe else None
    return (None if request is None else stats), info, _taken_json(lib, links) if links.value else None


def _taken_json(lib, pointer) -> dict:
    try:
        return json.loads(ctypes.string_at(pointer).decode("utf-8"))
    finally:
        lib.thaw_free(pointer)


def pool_restore(socket, path, request, names, dtypes, shapes, addresses, capacities) -> RestoreStats:
    """Restores through a pool (socket None: the default one); raises ThawPoolUnavailable to fall back."""
    lib = library()
    tensors = _Tensors(names, dtypes, shapes, addresses, capacities)
    stats = RestoreStats()
    _check(lib, lib.thaw_pool_restore(None if socket is None else _path(socket), _path(path), ctypes.byref(request),
                                      ctypes.byref(tensors.array), ctypes.byref(stats)))
    return stats


def snapshot_identity(path) -> dict:
    """{dev, ino, size, mtime_ns, ctime_ns, header_crc32c} of a snapshot file now: what a publication of its bytes names."""
    lib = library()
    return _json_out(lib, lambda out: lib.thaw_snapshot_identity(_path(path), out))


def pool_publish(socket, path, request, identity, allow_uids, names, dtypes, shapes, addresses, capacities):
    """Publishes tensors to a pool; returns (handle, generation). The handle holds the pool connection
    until pool_unpublish."""
    lib = library()
    tensors = _Tensors(names, dtypes, shapes, addresses, capacities)
    uids = (ctypes.c_uint32 * max(1, len(allow_uids)))(*allow_uids)
    generation, handle = ctypes.c_int64(), ctypes.c_void_p()
    _check(lib, lib.thaw_pool_publish(None if socket is None else _path(socket), _path(path), ctypes.byref(request),
                                      ctypes.byref(tensors.array), json.dumps(identity).encode("ascii"), uids, len(allow_uids),
                                      ctypes.byref(generation), ctypes.byref(handle)))
    return handle.value, generation.value


def pool_republish(handle, names, dtypes, shapes, addresses, capacities) -> int:
    lib = library()
    tensors = _Tensors(names, dtypes, shapes, addresses, capacities)
    generation = ctypes.c_int64()
    _check(lib, lib.thaw_pool_republish(handle, ctypes.byref(tensors.array), ctypes.byref(generation)))
    return generation.value


def pool_withdraw(handle):
    lib = library()
    _check(lib, lib.thaw_pool_withdraw(handle))


def pool_unpublish(handle):
    lib = library()
    _check(lib, lib.thaw_pool_unpublish(handle))


def pool_call(socket, op, snapshot=None) -> dict:
    """A pool's answer to load, evict or status (docs/POOL.md)."""
    lib = library()
    return _json_out(lib, lambda out: lib.thaw_pool_call(None if socket is None else _path(socket), op.encode("ascii"),
                                                         None if snapshot is None else _path(snapshot), out))


def freeze(path, request, names, dtypes, shapes, addresses, metadata=None, tp_rank=0, tp_world_size=1):
    lib = library()
    tensors = _Tensors(names, dtypes, shapes, addresses)
    meta = json.dumps(metadata).encode("utf-8") if metadata else None
    _check(lib, lib.thaw_freeze(_path(path), ctypes.byref(request), ctypes.byref(tensors.array), meta, tp_rank, tp_world_size))


def convert(checkpoint, output):
    lib = library()
    _check(lib, lib.thaw_convert(_path(checkpoint), _path(output)))


def verify(path):
    lib = library()
    _check(lib, lib.thaw_verify(_path(path)))


def crc32c(address: int, length: int, crc: int = 0) -> int:
    """CRC32C of length bytes of host memory at address, continuing from crc: the engine's checksum."""
    lib = library()
    out = ctypes.c_uint32()
    _check(lib, lib.thaw_crc32c(address, length, crc, ctypes.byref(out)))
    return out.value
