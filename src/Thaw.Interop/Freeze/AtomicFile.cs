using Microsoft.Win32.SafeHandles;
using Thaw.Interop.Native;

namespace Thaw.Interop.Freeze;

/// <summary>A file that appears under its final name complete or not at all: it is
/// written as a temporary beside the target, fsynced, renamed over it, and the
/// directory is fsynced. Disposing without <see cref="Commit"/> deletes the temporary.</summary>
internal sealed class AtomicFile : IDisposable
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
        NativeErrors.Check(Thaw.Interop.Native.Interop.ThawCore.SyncDirectory(Path.GetDirectoryName(FinalPath)!));
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
}
