using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Thaw.Interop.Pool;

/// <summary>Asks the kernel to read a file's range ahead (POSIX_FADV_WILLNEED), step by step on a
/// thread of its own, while a fill reads it batch by batch: each batch's read alone leaves the
/// disk idle between batches (the H200 host's cold fill ran at 1.24 GB/s where one whole-file
/// buffered restore reached 1.98). Advice only: a failure costs speed, never bytes.</summary>
internal static partial class ReadAhead
{
    internal const int WillNeed = 3, DontNeed = 4; // POSIX_FADV_* on Linux
    private const long Step = 4L << 20; // small: some kernels read only a few MiB of one call's range

    [LibraryImport("libc.so.6", EntryPoint = "posix_fadvise")] // glibc; elsewhere the advice is skipped
    internal static partial int PosixFadvise(SafeFileHandle fd, long offset, long length, int advice);

    /// <summary>Starts advising [offset, offset + length) of <paramref name="path"/>; stops at the end or when cancelled.</summary>
    public static Task Start(string path, long offset, long length, CancellationToken stop) =>
        OperatingSystem.IsLinux()
            ? Task.Factory.StartNew(() => Advise(path, offset, length, stop), CancellationToken.None,
                TaskCreationOptions.LongRunning, TaskScheduler.Default)
            : Task.CompletedTask;

    private static void Advise(string path, long offset, long length, CancellationToken stop)
    {
        try
        {
            using SafeFileHandle file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
            for (long at = 0; at < length && !stop.IsCancellationRequested; at += Step)
                if (PosixFadvise(file, offset + at, Math.Min(Step, length - at), WillNeed) != 0)
                    return;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DllNotFoundException or EntryPointNotFoundException)
        {
            // The fill's own read reports what is wrong with the file.
        }
    }
}
