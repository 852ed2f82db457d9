using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Thaw.Interop.Freeze;

/// <summary>A file that appears under its final name complete or not at all: it is
/// written as a temporary beside the target, fsynced, renamed over it, and the
/// directory is fsynced. Disposing without <see cref="Commit"/> deletes the temporary.</summary>
internal sealed partial class AtomicFile : IDisposable
{
    private bool _committed;

    public AtomicFile(string path)
    {
        FinalPath = Path.GetFullPath(path);
        string directory = Path.GetDirectoryName(FinalPath)!;
        if (!Directory.Exists(directory))
            throw new DirectoryNotFoundException($"cannot write {FinalPath}: directory {directory} does not exist");
        TempPath = Path.Combine(directory, $".{Path.GetFileName(FinalPath)}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Handle = File.OpenHandle(TempPath, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
    }

    public string FinalPath { get; }
    public string TempPath { get; }
    public SafeFileHandle Handle { get; }

    public void Commit()
    {
        RandomAccess.FlushToDisk(Handle);
        Handle.Dispose();
        File.Move(TempPath, FinalPath, overwrite: true);
        _committed = true;
        SyncDirectory(Path.GetDirectoryName(FinalPath)!);
    }

    public void Dispose()
    {
        if (_committed)
            return;
        Handle.Dispose();
        try
        {
            File.Delete(TempPath);
        }
        catch (IOException)
        {
            // Best effort: the temporary has a name no reader opens.
        }
    }

    private static void SyncDirectory(string directory)
    {
        int fd = Open(directory, 0 /* O_RDONLY */);
        if (fd < 0)
            return;
        _ = Fsync(fd);
        _ = Close(fd);
    }

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "fsync")]
    private static partial int Fsync(int fd);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);
}
