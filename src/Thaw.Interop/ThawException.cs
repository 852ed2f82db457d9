namespace Thaw.Interop;

/// <summary>What went wrong, as a stable code that crosses the C ABI to Python.</summary>
public enum ThawErrorKind
{
    Unknown = 1,
    InvalidArgument = 2,
    NotFound = 3,
    Io = 4,
    Format = 5,
    Checksum = 6,
    Mismatch = 7,
    NoDevice = 8,
    Cuda = 9,
    OutOfDeviceMemory = 10,
    OutOfHostMemory = 11,
    Canceled = 12,
}

/// <summary>Base of every error Thaw raises on purpose; the message names the file and what differs.</summary>
public class ThawException : Exception
{
    public ThawException(ThawErrorKind kind, string message, Exception? inner = null) : base(message, inner)
    {
        Kind = kind;
    }

    public ThawErrorKind Kind { get; }
}

/// <summary>A snapshot or checkpoint that is truncated, corrupt, foreign or inconsistent.</summary>
public sealed class ThawFormatException : ThawException
{
    public ThawFormatException(string path, string problem)
        : base(ThawErrorKind.Format, $"{path}: {problem}")
    {
        Path = path;
    }

    public string Path { get; }
}

/// <summary>A region whose bytes disagree with the checksum recorded for it.</summary>
public sealed class ThawChecksumException : ThawException
{
    public ThawChecksumException(string message) : base(ThawErrorKind.Checksum, message) { }
}

/// <summary>A snapshot and a destination (model, tensor, rank) that do not fit each other.</summary>
public sealed class ThawMismatchException : ThawException
{
    public ThawMismatchException(string message) : base(ThawErrorKind.Mismatch, message) { }
}

/// <summary>A failure of the device: no driver, no such GPU, a CUDA call, out of device memory.</summary>
public sealed class ThawDeviceException : ThawException
{
    public ThawDeviceException(ThawErrorKind kind, string message) : base(kind, message) { }
}
