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
        RemoveStaleTemporaries(directory, Path.GetFileName(FinalPath));
        TempPath = Path.Combine(directory, $".{Path.GetFileName(FinalPath)}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Handle = File.OpenHandle(TempPath, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
    }

    public string FinalPath { get; }
    public string TempPath { get; }
    public SafeFileHandle Handle { get; }

    /// <summary>Deletes temporaries of this target left by writers that were killed: those
    /// whose process no longer exists. A live writer's temporary is left alone.</summary>
    internal static void RemoveStaleTemporaries(string directory, string fileName)
    {
        string prefix = $".{fileName}.tmp-";
        foreach (string path in Directory.EnumerateFiles(directory, prefix + "*"))
        {
            string rest = Path.GetFileName(path)[prefix.Length..];
            int dash = rest.IndexOf('-');
            if (dash <= 0 || !int.TryParse(rest[..dash], out int pid) || Directory.Exists($"/proc/{pid}"))
                continue;
            try
            {
                File.Delete(path);
            }
            catch (IOException)
            {
                // Another writer may be removing it at the same moment.
            }
        }
    }

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
