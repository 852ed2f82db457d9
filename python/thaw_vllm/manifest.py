"""The manifest the members of a group restore agree on before any byte moves: every tensor's
name, dtype, shape, length and CRC32C, and the aliases. It comes from another process, so
every field is bounded before use; each member checks its destinations (and its own
snapshot, which its fallback would read) against it, and, when asked, the bytes it received."""
import torch

from . import _native, torch_io
from .errors import ThawChecksumError, ThawMismatchError

VERSION = 1


def byte_view(tensor):
    return tensor.detach().reshape(-1).view(torch.uint8)


def nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def total_bytes(manifest) -> int:
    return sum(e[3] for e in (manifest or {}).get("tensors", []))


def unique_tensors(tensors: dict):
    """({name: tensor} without names that share another's memory, {alias: original})."""
    kept, aliases, seen = {}, {}, {}
    for name, tensor in tensors.items():
        key = (tensor.device, tensor.data_ptr(), nbytes(tensor))
        if nbytes(tensor) > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = tensor
    return kept, aliases


def tensor_crc32c(tensor) -> int:
    """The CRC32C of a tensor's bytes, computed by the engine's checker (in host memory)."""
    host = byte_view(tensor)
    if host.device.type != "cpu":
        host = host.cpu()
    return _native.crc32c(host.data_ptr(), host.numel()) if host.numel() else 0


def of_snapshot(path, tensors: dict, strict: bool):
    header = torch_io.info(path)
    wanted, aliases = torch_io.snapshot_targets(tensors, path, header, strict)
    entries = [[t["name"], t["dtype"], list(t["shape"]), t["length"], t["crc32c"]]
               for t in header["tensors"] if t["name"] in wanted]
    return {"snapshot": str(path), "tensors": entries, "aliases": aliases}


def of_live_tensors(tensors: dict, verify: bool):
    kept, aliases = unique_tensors(tensors)
    entries = [[n, torch_io.thaw_dtype(t.dtype), list(t.shape), nbytes(t), tensor_crc32c(t) if verify else None]
               for n, t in kept.items()]
    return {"snapshot": None, "tensors": entries, "aliases": aliases}


def well_formed(manifest) -> bool:
    """The tensors and aliases of a manifest from another process have the shape we read."""
    def bounded(value, low, high):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return (isinstance(manifest.get("aliases"), dict) and isinstance(manifest.get("tensors"), list)
            and all(isinstance(e, list) and len(e) == 5 and isinstance(e[0], str) and isinstance(e[2], list)
                    and all(bounded(d, 0, 1 << 62) for d in e[2])
                    and bounded(e[3], 0, 1 << 62) and (e[4] is None or bounded(e[4], 0, 0xFFFFFFFF))
                    for e in manifest["tensors"]))


def check_against(manifest, tensors: dict, strict: bool, label: str, who="the source", contiguous=True):
    """This member's destinations for the manifest's tensors, in its order, and its aliases.
    contiguous: refuse destinations that are not (the multicast receives straight into them)."""
    names = [e[0] for e in manifest["tensors"]]
    aliases = manifest["aliases"]
    if strict:
        known = set(names) | set(aliases)
        missing, unexpected = sorted(set(tensors) - known), sorted(known - set(tensors))
        if missing or unexpected:
            raise ThawMismatchError(f"{label}: the tensors of {who} and of this member differ: not sent {missing[:5]}, "
                                    f"not in this member's destination {unexpected[:5]}")
    targets = []
    for name, dtype, shape, length, _ in manifest["tensors"]:
        tensor = tensors.get(name)
        if tensor is None:
            raise ThawMismatchError(f"{label}: tensor '{name}' has no destination on this member")
        if torch_io.thaw_dtype(tensor.dtype) != dtype or list(tensor.shape) != shape or nbytes(tensor) != length:
            raise ThawMismatchError(f"{label}: tensor '{name}' is {dtype} {shape} at {who}, "
                                    f"{torch_io.thaw_dtype(tensor.dtype)} {list(tensor.shape)} on this member")
        if contiguous and not tensor.is_contiguous():
            raise ThawMismatchError(f"{label}: destination tensor '{name}' is not contiguous")
        targets.append(tensor)
    return targets, aliases


def check_same_snapshot(path, manifest, label, who="the source"):
    """A member's own file must hold what the group sends, or its fallback would differ."""
    header = torch_io.info(path)
    mine = {t["name"]: [t["dtype"], list(t["shape"]), t["length"], t["crc32c"]] for t in header["tensors"]}
    for name, dtype, shape, length, crc in manifest["tensors"]:
        theirs = [dtype, shape, length, crc if crc is not None else mine.get(name, [0, 0, 0, None])[3]]
        if mine.get(name) != theirs:
            raise ThawMismatchError(f"{label}: {path} is not the snapshot {who} describes (tensor '{name}' differs)")


def verify_received(entries, targets, label, sender):
    """Checks each tensor's CRC32C against the manifest's; sender(index) names where it came from."""
    for index, ((name, _, _, _, crc), tensor) in enumerate(zip(entries, targets)):
        if crc is None:
            continue
        got = tensor_crc32c(tensor)
        if got != crc:
            raise ThawChecksumError(f"{label}: tensor '{name}' received from {sender(index)} has CRC32C {got:08x}, "
                                    f"the manifest recorded {crc:08x}")
