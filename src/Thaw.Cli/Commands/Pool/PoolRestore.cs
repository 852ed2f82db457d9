using System.IO.MemoryMappedFiles;
using System.Text.Json;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Cli.Commands.Pool;

/// <summary>The client side of `thaw restore --pool`.</summary>
internal static class PoolRestore
{
    /// <summary>Restores every tensor of a snapshot through the pool into an arena of this
    /// process: CUDA memory shared by its IPC handle, or on the mock a shared-memory file.
    /// Returns null when no pool serves the snapshot, after saying so in one line.</summary>
    public static RestoreResult? Run(ThawEngine engine, Snapshot snapshot, string socket, bool check)
    {
        PoolClient client;
        try
        {
            client = new PoolClient(socket);
        }
        catch (System.Net.Sockets.SocketException)
        {
            Console.Error.WriteLine($"thaw: no pool on {socket}; restoring from the file");
            return null;
        }
        using (client)
        {
            string? sharedFile = null;
            MemoryMappedFile? map = null;
            MemoryMappedViewAccessor? view = null;
            ulong arena = 0;
            byte[] handle;
            try
            {
                if (engine.Kind == DeviceKind.Cuda)
                {
                    arena = engine.Allocate(Math.Max(snapshot.DataLength, 1));
                    handle = engine.IpcHandle(arena);
                }
                else
                {
                    // The pool writes only files of ours inside its directory (docs/POOL.md).
                    string directory;
                    using (JsonDocument ping = client.Send(PoolProtocol.Write(w => w.WriteString("op", "ping"))))
                        directory = ping.RootElement.TryGetProperty("shm_dir", out JsonElement d) ? d.GetString()! : PoolProtocol.DefaultSharedMemoryDirectory();
                    sharedFile = Path.Combine(directory, $"thaw-arena-{Environment.ProcessId}-{Guid.NewGuid():N}");
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
                    handle = System.Text.Encoding.UTF8.GetBytes(Path.GetFileName(sharedFile));
                }
                string request = PoolProtocol.Write(w =>
                {
                    w.WriteString("op", "restore");
                    w.WriteString("snapshot", snapshot.Path);
                    w.WriteStartArray("targets");
                    foreach (TensorEntry t in snapshot.Tensors)
                    {
                        w.WriteStartObject();
                        w.WriteString("name", t.Name);
                        w.WriteBase64String("handle", handle);
                        w.WriteNumber("offset", t.Offset);
                        w.WriteNumber("capacity", t.Length);
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                });
                var started = System.Diagnostics.Stopwatch.StartNew();
                try
                {
                    using JsonDocument r = client.Send(request);
                }
                catch (FileNotFoundException)
                {
                    Console.Error.WriteLine($"thaw: the pool on {socket} does not hold {snapshot.Path}; restoring from the file");
                    return null;
                }
                var result = new RestoreResult(snapshot.TensorBytes, 0, started.Elapsed.TotalSeconds, IoMode.Buffered, 0);
                if (check)
                    RestoreCommand.CheckArena(engine, snapshot, arena);
                return result;
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
}
