using System.IO.MemoryMappedFiles;
using System.Text.Json;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Cli;

/// <summary>thaw pool serve|load|evict|list|status, and restores through a pool.</summary>
internal static class PoolCommands
{
    public static int Run(Arguments a)
    {
        string verb = a.Require(0, "pool command (serve, load, evict, list, status)");
        string socket = a.Get("socket") ?? PoolProtocol.DefaultSocketPath();
        switch (verb)
        {
            case "serve":
                return Serve(a, socket);
            case "load":
            case "evict":
            {
                string snapshot = Path.GetFullPath(a.Require(1, "snapshot path"));
                a.Finish(2);
                using var client = Connect(socket);
                using JsonDocument r = client.Send(PoolProtocol.Write(w => { w.WriteString("op", verb); w.WriteString("snapshot", snapshot); }));
                Console.Out.WriteLine(verb == "load"
                    ? $"pool holds {snapshot} ({Commands.Size(r.RootElement.GetProperty("bytes").GetInt64())})"
                    : r.RootElement.GetProperty("evicted").GetBoolean() ? $"evicted {snapshot}" : $"{snapshot} was not held (or is in use)");
                return 0;
            }
            case "list":
            case "status":
            {
                a.Finish(1);
                using var client = Connect(socket);
                using JsonDocument r = client.Send(PoolProtocol.Write(w => w.WriteString("op", "status")));
                JsonElement root = r.RootElement;
                Console.Out.WriteLine($"pool {socket}: {Commands.Size(root.GetProperty("used_bytes").GetInt64())} of {Commands.Size(root.GetProperty("budget_bytes").GetInt64())} used");
                foreach (JsonElement s in root.GetProperty("snapshots").EnumerateArray())
                    Console.Out.WriteLine($"  {s.GetProperty("snapshot").GetString()}  {Commands.Size(s.GetProperty("bytes").GetInt64())}  " +
                        $"{s.GetProperty("hits").GetInt64()} hits  {Commands.Size(s.GetProperty("bytes_served").GetInt64())} served");
                return 0;
            }
            default:
                throw new UsageException($"unknown pool command '{verb}'");
        }
    }

    private static int Serve(Arguments a, string socket)
    {
        DeviceKind device = a.GetEnum("device", ThawEngine.DeviceCount(DeviceKind.Cuda) > 0 ? DeviceKind.Cuda : DeviceKind.Mock);
        int ordinal = (int)a.GetLong("ordinal", 0, 0, 1024);
        long budget = a.GetLong("budget-mib", 32 << 10, 1, 1L << 30) << 20;
        string? allow = a.Get("allow-uids");
        string shmDir = Path.GetFullPath(a.Get("shm-dir") ?? PoolProtocol.DefaultSharedMemoryDirectory());
        a.Finish(1);
        var uids = allow?.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(uint.Parse).ToList();
        using var engine = ThawEngine.Create(device, ordinal);
        using var pool = new SnapshotPool(engine, budget);
        using var server = new PoolServer(pool, socket, uids)
        {
            Log = line => Console.Error.WriteLine($"thaw pool: {line}"),
            SharedMemoryDirectory = shmDir,
        };
        server.Start();
        Console.Out.WriteLine($"thaw pool: serving on {socket} ({device.ToString().ToLowerInvariant()}:{ordinal}, budget {Commands.Size(budget)}); Ctrl-C or SIGTERM stops");
        // SIGINT and SIGTERM stop it cleanly: pinned memory released, socket file removed.
        var stopped = new ManualResetEventSlim();
        using var sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGINT, context => { context.Cancel = true; stopped.Set(); });
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGTERM, context => { context.Cancel = true; stopped.Set(); });
        stopped.Wait();
        Console.Out.WriteLine("thaw pool: stopped");
        return 0;
    }

    private static PoolClient Connect(string socket)
    {
        try
        {
            return new PoolClient(socket);
        }
        catch (System.Net.Sockets.SocketException e)
        {
            throw new IOException($"no pool is serving on {socket} ({e.Message}); start one with 'thaw pool serve'");
        }
    }

    /// <summary>Restores every tensor of a snapshot through the pool into an arena of this
    /// process: CUDA memory shared by its IPC handle, or on the mock a shared-memory file.
    /// Returns null when no pool serves the snapshot, after saying so in one line.</summary>
    public static RestoreResult? RestoreThroughPool(ThawEngine engine, Snapshot snapshot, string socket, bool check)
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
                    Commands.CheckArena(engine, snapshot, arena);
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
