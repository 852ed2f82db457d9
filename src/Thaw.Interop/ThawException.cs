namespace Thaw.Interop;

/// <summary>What went wrong, as a stable code that crosses the C ABI to Python.</summary>
public enum ThawErrorKind
{
    /// <summary>A failure with no more specific kind.</summary>
    Unknown = 1,
    /// <summary>An argument out of range or malformed.</summary>
    InvalidArgument = 2,
    /// <summary>A file, tensor or snapshot that does not exist.</summary>
    NotFound = 3,
    /// <summary>The operating system failed a read or write.</summary>
    Io = 4,
    /// <summary>A truncated, corrupt, foreign or inconsistent file (<see cref="ThawFormatException"/>).</summary>
    Format = 5,
    /// <summary>Bytes that disagree with their recorded CRC32C (<see cref="ThawChecksumException"/>).</summary>
    Checksum = 6,
    /// <summary>A snapshot and a destination that do not fit each other (<see cref="ThawMismatchException"/>).</summary>
    Mismatch = 7,
    /// <summary>No CUDA driver, or no GPU with the requested ordinal.</summary>
    NoDevice = 8,
    /// <summary>A CUDA driver call failed.</summary>
    Cuda = 9,
    /// <summary>The device has no memory left for an allocation.</summary>
    OutOfDeviceMemory = 10,
    /// <summary>Host (pinned) memory could not be allocated.</summary>
    OutOfHostMemory = 11,
    /// <summary>The operation was canceled through its cancellation token.</summary>
    Canceled = 12,
    /// <summary>No pool served a restore; the caller restores from the file.</summary>
    PoolUnavailable = 13,
}

/// <summary>Base of every error Thaw raises on purpose; the message names the file and what differs.</summary>
public class ThawException : Exception
{
    /// <summary>Creates an error of <paramref name="kind"/> whose message names the file and what differs.</summary>
    public ThawException(ThawErrorKind kind, string message, Exception? inner = null) : base(message, inner)
    {
        Kind = kind;
    }

    /// <summary>The stable code of this error (the same code Python and the C ABI see).</summary>
    public ThawErrorKind Kind { get; }
}

/// <summary>A snapshot or checkpoint that is truncated, corrupt, foreign or inconsistent.</summary>
public sealed class ThawFormatException : ThawException
{
    /// <summary>Creates a format error; the message is <c>path: problem</c>.</summary>
    public ThawFormatException(string path, string problem)
        : base(ThawErrorKind.Format, $"{path}: {problem}")
    {
        Path = path;
    }

    /// <summary>The file that is malformed.</summary>
    public string Path { get; }
}

/// <summary>A region whose bytes disagree with the checksum recorded for it.</summary>
public sealed class ThawChecksumException : ThawException
{
    /// <summary>Creates a checksum error with a message naming the file and region.</summary>
    public ThawChecksumException(string message) : base(ThawErrorKind.Checksum, message) { }
}

/// <summary>A snapshot and a destination (model, tensor, rank) that do not fit each other.</summary>
public sealed class ThawMismatchException : ThawException
{
    /// <summary>Creates a mismatch error with a message naming the field that differs.</summary>
    public ThawMismatchException(string message) : base(ThawErrorKind.Mismatch, message) { }
}

/// <summary>A failure of the device: no driver, no such GPU, a CUDA call, out of device memory.</summary>
public sealed class ThawDeviceException : ThawException
{
    /// <summary>Creates a device error of <paramref name="kind"/>.</summary>
    public ThawDeviceException(ThawErrorKind kind, string message) : base(kind, message) { }
}

/// <summary>No pool served the request (none listening, the snapshot not held, the pool gone
/// mid-restore): nothing it wrote counts, and the caller restores from the file instead.</summary>
public sealed class PoolUnavailableException : ThawException
{
    /// <summary>Creates the exception with the reason the pool could not serve.</summary>
    public PoolUnavailableException(string message, Exception? inner = null) : base(ThawErrorKind.PoolUnavailable, message, inner) { }
}
