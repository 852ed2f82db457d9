using System.IO.MemoryMappedFiles;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Cli.Commands.Pool;

/// <summary>The client side of `thaw restore --pool`.</summary>
internal static class PoolRestore
{
    /// <summary>Restores every tensor of a snapshot through the pool into an arena of this
    /// process: CUDA memory, or on the mock a shared-memory file (what a pool can open there).
    /// Returns null when no pool serves the snapshot, after saying so in one line.</summary>
    public static PoolRestoreResult? Run(ThawEngine engine, Snapshot snapshot, string socket, bool fill, bool check)
    {
        string? sharedFile = null;
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        ulong arena = 0;
        try
        {
            using var client = PoolClient.Connect(socket);
            if (engine.Kind == DeviceKind.Cuda)
            {
                arena = engine.Allocate(Math.Max(snapshot.DataLength, 1));
            }
            else
            {
                // The pool writes only files of ours inside its directory (docs/POOL.md).
                sharedFile = Path.Combine(client.SharedMemoryDirectory(), $"thaw-arena-{Environment.ProcessId}-{Guid.NewGuid():N}");
                using (var f = File.Create(sharedFile))
                    f.SetLength(Math.Max(snapshot.DataLength, 1));
                map = MemoryMappedFile.CreateFromFile(sharedFile, FileMode.Open);
                view = map.CreateViewAccessor();
                unsafe
                {
                    byte* p = null;
                    view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
                    arena = (ulong)p;
                }
            }
            var targets = snapshot.Tensors.Select(t => new RestoreTarget(t.Name, arena + (ulong)t.Offset, t.Length)).ToList();
            PoolRestoreResult result = client.Restore(engine, snapshot, targets, fill);
            if (check)
                RestoreCommand.CheckArena(engine, snapshot, arena);
            return result;
        }
        catch (PoolUnavailableException e)
        {
            Console.Error.WriteLine($"thaw: {e.Message}; restoring from the file");
            return null;
        }
        finally
        {
            if (view is not null)
            {
                view.SafeMemoryMappedViewHandle.ReleasePointer();
                view.Dispose();
                map!.Dispose();
                File.Delete(sharedFile!);
            }
            else if (arena != 0)
            {
                engine.Free(arena);
            }
        }
    }
}
