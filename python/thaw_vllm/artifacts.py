"""Compiled state in a snapshot: the files a compiler cache holds (Inductor, Triton,
vLLM's torch_compile_cache) and PyTorch's cache-artifact blob, frozen into an
artifacts snapshot and written back before the next process compiles.

An artifacts snapshot is an ordinary Thaw snapshot (docs/FORMAT.md, "Artifacts
snapshots"): every file is one U8 region, so checksums, atomic writes and the one
hostile-file reader come with the container. Its metadata names each file's set and
relative path and the environment the files are valid for. A restore writes files only
where every environment field matches; otherwise it skips with one log line naming the
field, so a cache is never applied to a torch, Triton, GPU or vLLM it was not built by.
"""
import ctypes
import json
import logging
import os
import platform
import stat
import sys

from .errors import ThawFormatError

log = logging.getLogger("thaw_vllm")

KIND_KEY = "thaw.kind"
KIND = "compile-artifacts"
ARTIFACTS_KEY = "thaw.artifacts"
FORMAT_VERSION = 1

MAX_FILES = 200_000
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_SETS = 64
MAX_ENVIRONMENT_FIELDS = 256
MAX_FIELD_BYTES = 4096
MAX_TOTAL_BYTES = 256 << 30
BLOB_REGION = "blob/torch_cache_artifacts"


# ---------------------------------------------------------------- environment

def _triton_version():
    try:
        import triton
        return triton.__version__
    except Exception:
        return None


def _driver_version():
    """The CUDA driver's version (e.g. 13000), read from libcuda without creating a context."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        return version.value if cuda.cuDriverGetVersion(ctypes.byref(version)) == 0 else None
    except OSError:
        return None


def environment(device=None, **extra) -> dict:
    """What compiled artifacts depend on, as {field: str}: Python, torch, Triton, CUDA and
    the driver, the GPU's name and architecture, plus the caller's extra fields (vLLM's
    version, its compile hash key, the rank). Fields that do not apply are left out."""
    import torch
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "cuda_driver": _driver_version(),
    }
    if torch.cuda.is_available():
        index = torch.device(device).index if device is not None and torch.device(device).index is not None \
            else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        env["gpu"] = torch.cuda.get_device_name(index)
        env["gpu_arch"] = f"sm_{major}{minor}"
    env.update(extra)
    return {k: str(v) for k, v in env.items() if v is not None}


def first_difference(recorded: dict, current: dict):
    """The first field (sorted) whose recorded value differs here, as a sentence; None if all match."""
    for field in sorted(recorded):
        if current.get(field) != recorded[field]:
            here = current.get(field, "absent")
            return f"field '{field}' differs: snapshot {recorded[field]!r}, this process {here!r}"
    return None


# ---------------------------------------------------------------- paths

def _check_relative_path(path, where) -> list:
    """The components of a stored relative path, or ThawFormatError: no absolute path, no '..',
    no empty or '.' component, no NUL or control character, bounded lengths."""
    if not isinstance(path, str) or not path:
        raise ThawFormatError(f"{where}: a file path must be a non-empty string")
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_PATH_BYTES:
        raise ThawFormatError(f"{where}: file path of {len(encoded)} bytes exceeds {MAX_PATH_BYTES}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ThawFormatError(f"{where}: file path {path!r} holds a control character")
    if path.startswith("/"):
        raise ThawFormatError(f"{where}: file path {path!r} is absolute")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ThawFormatError(f"{where}: file path {path!r} has a '{part}' component")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise ThawFormatError(f"{where}: a component of {path!r} exceeds {MAX_COMPONENT_BYTES} bytes")
    return parts


def _collect(root, include=None):
    """[(relative path, absolute path, mode)] of the regular files under root (or under its
    include subpaths), sorted; symbolic links are skipped, never followed."""
    root = os.path.abspath(root)
    tops = [os.path.join(root, p) for p in include] if include else [root]
    found, skipped_links = [], 0
    for top in tops:
        if os.path.islink(top) or not os.path.isdir(top):
            continue
        for directory, subdirs, files in os.walk(top, followlinks=False):
            skipped_links += sum(os.path.islink(os.path.join(directory, d)) for d in subdirs)
            for name in files:
                full = os.path.join(directory, name)
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    skipped_links += 1
                elif stat.S_ISREG(st.st_mode) and ".tmp-" not in name:
                    found.append((os.path.relpath(full, root).replace(os.sep, "/"), full, st.st_mode & 0o755))
    if skipped_links:
        log.info("thaw: %d symbolic links under %s were not captured", skipped_links, root)
    return sorted(set(found))


def _read_file(path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


# ---------------------------------------------------------------- freeze

def freeze_artifacts(path, sources: dict, blob: bytes = None, env: dict = None, include: dict = None) -> dict:
    """Writes the regular files under each source directory ({set name: directory}) and an
    optional PyTorch cache-artifact blob into an artifacts snapshot at path, atomically.

    include: {set name: [relative subpaths]} to capture only those subtrees of a set.
    env: the environment the files are valid for (default: environment()).
    Returns {"files": N, "bytes": N}."""
    import torch
    from . import torch_io
    if len(sources) > MAX_SETS:
        raise ValueError(f"at most {MAX_SETS} artifact sets, got {len(sources)}")
    tensors, entries, total = {}, {}, 0
    for set_name, root in sorted(sources.items()):
        _check_relative_path(set_name, "artifact set name")
        files = []
        for relative, full, mode in _collect(root, (include or {}).get(set_name)):
            _check_relative_path(relative, f"{full}")
            data = _read_file(full)
            total += len(data)
            if len(files) >= MAX_FILES or total > MAX_TOTAL_BYTES:
                raise ValueError(f"{root}: more than {MAX_FILES} files or {MAX_TOTAL_BYTES} bytes to capture")
            region = f"file/{set_name}/{relative}"
            tensors[region] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
            files.append({"path": relative, "region": region, "mode": mode})
        entries[set_name] = files
    if blob is not None:
        tensors[BLOB_REGION] = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)
        total += len(blob)
    description = {"version": FORMAT_VERSION, "environment": env if env is not None else environment(),
                   "sets": entries, "blob": BLOB_REGION if blob is not None else None}
    metadata = {KIND_KEY: KIND, ARTIFACTS_KEY: json.dumps(description, sort_keys=True)}
    torch_io.freeze(tensors, path, metadata=metadata)
    count = sum(len(f) for f in entries.values())
    log.info("thaw: froze %d compiled-artifact files (%d bytes) into %s", count, total, path)
    return {"files": count, "bytes": total}


# ---------------------------------------------------------------- read

def describe(path, header=None) -> dict:
    """The artifacts snapshot's description (environment, sets, blob), every field checked
    against the header: hostile metadata is a ThawFormatError naming the file and field."""
    from . import _native
    header = header if header is not None else _native.snapshot_info(path)
    metadata = header.get("metadata", {})
    if metadata.get(KIND_KEY) != KIND:
        raise ThawFormatError(f"{path}: not an artifacts snapshot (metadata '{KIND_KEY}' is "
                              f"{metadata.get(KIND_KEY)!r}, expected {KIND!r})")
    try:
        description = json.loads(metadata.get(ARTIFACTS_KEY, ""))
    except ValueError:
        raise ThawFormatError(f"{path}: metadata '{ARTIFACTS_KEY}' is not JSON") from None
    if not isinstance(description, dict) or description.get("version") != FORMAT_VERSION:
        raise ThawFormatError(f"{path}: metadata '{ARTIFACTS_KEY}' has no version {FORMAT_VERSION}")
    regions = {t["name"]: t for t in header["tensors"]}
    env = description.get("environment")
    if not isinstance(env, dict) or len(env) > MAX_ENVIRONMENT_FIELDS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_FIELD_BYTES and len(v) <= MAX_FIELD_BYTES
            for k, v in env.items()):
        raise ThawFormatError(f"{path}: '{ARTIFACTS_KEY}.environment' must be at most {MAX_ENVIRONMENT_FIELDS} "
                              f"string fields of at most {MAX_FIELD_BYTES} bytes")
    sets = description.get("sets")
    if not isinstance(sets, dict) or len(sets) > MAX_SETS:
        raise ThawFormatError(f"{path}: '{ARTIFACTS_KEY}.sets' must be an object of at most {MAX_SETS} sets")
    used, count = set(), 0
    for set_name, files in sets.items():
        _check_relative_path(set_name, f"{path}: artifact set name")
        if not isinstance(files, list):
            raise ThawFormatError(f"{path}: artifact set '{set_name}' must be a list")
        count += len(files)
        if count > MAX_FILES:
            raise ThawFormatError(f"{path}: more than {MAX_FILES} artifact files")
        paths = set()
        for entry in files:
            if not isinstance(entry, dict):
                raise ThawFormatError(f"{path}: artifact set '{set_name}' holds a non-object entry")
            _check_relative_path(entry.get("path"), f"{path}: artifact set '{set_name}'")
            _check_region(path, regions, entry.get("region"), used, f"file '{entry['path']}'")
            mode = entry.get("mode")
            if not isinstance(mode, int) or isinstance(mode, bool) or mode & ~0o755:
                raise ThawFormatError(f"{path}: file '{entry['path']}' has mode {mode!r}; only permission bits 0o755 are allowed")
            if entry["path"] in paths:
                raise ThawFormatError(f"{path}: file '{entry['path']}' appears twice in set '{set_name}'")
            paths.add(entry["path"])
        # A file and a directory of one name cannot both be written.
        for p in paths:
            parts = p.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in paths:
                    raise ThawFormatError(f"{path}: '{p}' lies under the file '{'/'.join(parts[:i])}' in set '{set_name}'")
    blob = description.get("blob")
    if blob is not None:
        _check_region(path, regions, blob, used, "the cache-artifact blob")
    if set(regions) - used:
        raise ThawFormatError(f"{path}: region '{sorted(set(regions) - used)[0]}' belongs to no artifact")
    return description


def _check_region(path, regions, name, used, what):
    if not isinstance(name, str) or name not in regions:
        raise ThawFormatError(f"{path}: {what} names region {name!r}, which the snapshot lacks")
    if name in used:
        raise ThawFormatError(f"{path}: region '{name}' is claimed twice")
    region = regions[name]
    if region["dtype"] != "U8" or len(region["shape"]) != 1:
        raise ThawFormatError(f"{path}: region '{name}' must be a 1-D U8 region, not {region['dtype']}{region['shape']}")
    used.add(name)


# ---------------------------------------------------------------- restore

def _open_directory(root_fd, parts):
    """A descriptor of root/parts..., each component made if absent and opened with
    O_NOFOLLOW: a symbolic link planted in the target never redirects a write."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _write_file(root_fd, parts, data, mode):
    """Writes one file beside its final name and renames it over it: a reader (the next
    compile) sees the old file or the whole new one."""
    directory = _open_directory(root_fd, parts[:-1])
    try:
        temporary = f".{parts[-1][:200]}.tmp-{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode | 0o600,
                     dir_fd=directory)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temporary, parts[-1], src_dir_fd=directory, dst_dir_fd=directory)
    finally:
        os.close(directory)


def restore_artifacts(path, targets: dict, env: dict = None, verify: bool = True) -> dict:
    """Writes the files of the sets named in targets ({set name: directory}) back, where the
    snapshot's environment matches env (default: environment()).

    Returns {"restored": bool, "files", "bytes", "blob": bytes or None, "reason": str or None}.
    On a mismatch nothing is written, one log line names the field, and "reason" says it.
    A damaged or hostile file raises (ThawFormatError, ThawChecksumError) before any write."""
    from . import _native, torch_io
    header = _native.snapshot_info(path)
    description = describe(path, header)
    current = env if env is not None else environment()
    reason = first_difference(description["environment"], current)
    if reason:
        log.info("thaw: compiled artifacts in %s not restored: %s", path, reason)
        return {"restored": False, "files": 0, "bytes": 0, "blob": None, "reason": reason}
    regions = torch_io.load_state_dict(path, device="cpu", verify=verify)
    files = written = 0
    for set_name, target in targets.items():
        entries = description["sets"].get(set_name)
        if entries is None:
            continue
        os.makedirs(target, exist_ok=True)
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for entry in entries:
                data = regions[entry["region"]].numpy().tobytes()
                try:
                    _write_file(root_fd, entry["path"].split("/"), data, entry["mode"])
                except OSError as e:
                    raise OSError(e.errno, f"{path}: cannot write artifact '{entry['path']}' under {target}: "
                                           f"{e.strerror}") from None
                files += 1
                written += len(data)
        finally:
            os.close(root_fd)
    blob = regions[description["blob"]].numpy().tobytes() if description.get("blob") else None
    log.info("thaw: restored %d compiled-artifact files (%d bytes) from %s", files, written, path)
    return {"restored": True, "files": files, "bytes": written, "blob": blob, "reason": None}


# ---------------------------------------------------------------- plain PyTorch

def default_cache_dirs() -> dict:
    """Where this process's Inductor and Triton caches live: {"inductor": dir, "triton": dir}."""
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not inductor:
        try:
            from torch._inductor.runtime.cache_dir_utils import cache_dir
            inductor = cache_dir()
        except Exception:
            import getpass
            import tempfile
            inductor = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    triton = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    return {"inductor": inductor, "triton": triton}


def freeze_compiled(path, dirs: dict = None, blob: bool = True, **env_extra) -> dict:
    """After a torch.compile'd model has run: its Inductor and Triton cache directories (and
    PyTorch's cache-artifact blob, when this torch has one) into an artifacts snapshot."""
    import torch
    data = None
    if blob and hasattr(torch, "compiler") and hasattr(torch.compiler, "save_cache_artifacts"):
        saved = torch.compiler.save_cache_artifacts()
        data = saved[0] if saved else None
    return freeze_artifacts(path, dirs or default_cache_dirs(), blob=data, env=environment(**env_extra))


def restore_compiled(path, dirs: dict = None, load_blob: bool = False, **env_extra) -> dict:
    """Before the first compile of a fresh process: writes the caches back into dirs (default:
    this process's Inductor and Triton cache directories). load_blob also hands the blob to
    torch.compiler.load_cache_artifacts (the directories alone are the faster path)."""
    import torch
    result = restore_artifacts(path, dirs or default_cache_dirs(), env=environment(**env_extra))
    if load_blob and result["blob"] and hasattr(torch.compiler, "load_cache_artifacts"):
        torch.compiler.load_cache_artifacts(result["blob"])
    return result


def companion_path(snapshot) -> str:
    """The artifacts snapshot that goes with a weights snapshot: 'weights.tp0.thaw' ->
    'weights.tp0.compile.thaw' (per rank, as the weights are)."""
    snapshot = os.fspath(snapshot)
    base = snapshot[:-len(".thaw")] if snapshot.endswith(".thaw") else snapshot
    return base + ".compile.thaw"


def _cli_summary(path) -> dict:
    """What `thaw info` prints for an artifacts snapshot (sets, file counts, environment)."""
    description = describe(path)
    return {"environment": description["environment"],
            "sets": {k: len(v) for k, v in description["sets"].items()},
            "blob": description.get("blob") is not None}


if __name__ == "__main__":  # python -m thaw_vllm.artifacts SNAPSHOT: a summary
    print(json.dumps(_cli_summary(sys.argv[1]), indent=2))
