"""Exceptions raised by thaw_vllm. Each maps one error kind of libthaw's C ABI."""


class ThawError(Exception):
    """Base of every error Thaw raises on purpose."""


class ThawFormatError(ThawError, ValueError):
    """A snapshot or checkpoint that is truncated, corrupt, foreign or inconsistent."""


class ThawChecksumError(ThawFormatError):
    """A region whose bytes disagree with the CRC32C recorded for it."""


class ThawMismatchError(ThawError, ValueError):
    """A snapshot and a destination (model, tensor, dtype, shape, device) that do not fit."""


class ThawDeviceError(ThawError, RuntimeError):
    """No CUDA driver or device, or a CUDA call failed."""


class ThawOutOfMemoryError(ThawDeviceError, MemoryError):
    """The device, or pinned host memory, is exhausted."""


class ThawCanceledError(ThawError):
    """The operation was cancelled."""


class ThawPoolUnavailable(ThawError):
    """No pool served the restore (none listening, the snapshot not held, the pool gone
    mid-restore): restore from the file instead."""


# libthaw returns -kind; the values are ThawErrorKind in src/Thaw.Interop/ThawException.cs.
_BY_KIND = {
    1: ThawError,
    2: ValueError,
    3: FileNotFoundError,
    4: OSError,
    5: ThawFormatError,
    6: ThawChecksumError,
    7: ThawMismatchError,
    8: ThawDeviceError,
    9: ThawDeviceError,
    10: ThawOutOfMemoryError,
    11: ThawOutOfMemoryError,
    12: ThawCanceledError,
    13: ThawPoolUnavailable,
}


def from_code(code: int, message: str) -> Exception:
    return _BY_KIND.get(-code, ThawError)(message)
