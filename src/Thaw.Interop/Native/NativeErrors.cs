using System.Runtime.InteropServices;

namespace Thaw.Interop.Native;

/// <summary>The one table that turns core return codes into .NET exceptions.</summary>
internal static class NativeErrors
{
    private const int ENOENT = 2, EIO = 5, ENOMEM = 12, EACCES = 13, EINVAL = 22, ENOSPC = 28, ECANCELED = 125;

    internal static string LastMessage()
    {
        string? text = Marshal.PtrToStringUTF8(Interop.ThawCore.LastError());
        return string.IsNullOrEmpty(text) ? "unknown error" : text;
    }

    /// <summary>Throws for a negative code, with the core's message; returns the code otherwise.</summary>
    internal static int Check(int code)
    {
        if (code >= 0)
            return code;
        throw FromCode(code, LastMessage());
    }

    internal static Exception FromCode(int code, string message) => code switch
    {
        -ENOENT => new FileNotFoundException(message),
        -EACCES => new UnauthorizedAccessException(message),
        -ENOSPC => new IOException($"no space left on device: {message}"),
        -ENOMEM => new ThawException(ThawErrorKind.OutOfHostMemory, message),
        -EINVAL => new ArgumentException(message),
        -EIO => new IOException(message),
        -ECANCELED or Interop.ThawCore.ErrCanceled => new OperationCanceledException(message),
        Interop.ThawCore.ErrChecksum => new ThawChecksumException(message),
        Interop.ThawCore.ErrShortRead => new ThawException(ThawErrorKind.Format, message),
        Interop.ThawCore.ErrNoDevice => new ThawDeviceException(ThawErrorKind.NoDevice, message),
        Interop.ThawCore.ErrCuda => new ThawDeviceException(ThawErrorKind.Cuda, message),
        Interop.ThawCore.ErrOutOfDeviceMemory => new ThawDeviceException(ThawErrorKind.OutOfDeviceMemory, message),
        Interop.ThawCore.ErrOutOfPinnedMemory => new ThawException(ThawErrorKind.OutOfHostMemory, message),
        Interop.ThawCore.ErrBadDestination => new ThawMismatchException(message),
        Interop.ThawCore.ErrInvalidPlan => new ThawException(ThawErrorKind.InvalidArgument, message),
        _ => new IOException($"{message} (error {code})"),
    };
}
