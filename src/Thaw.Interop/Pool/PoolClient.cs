using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>What a restore through the pool did: the bytes, the time from request to answer, and whether
/// the pool already held the snapshot (a hit) or read it from the file while serving (a fill), or a live
/// peer's memory served it device to device.</summary>
public sealed record PoolRestoreResult(long Bytes, double Seconds, bool Filled, bool FromPeer = false)
{
    /// <summary>This process copied from the pool's shared host copy itself (docs/POOL.md, "Shared host copies").</summary>
    public bool Shared { get; init; }
    /// <summary>Where the time went, on both sides (docs/POOL.md, "Where a restore's time goes").</summary>
    public PoolRestoreTimings Timings { get; init; } = PoolRestoreTimings.None;
    /// <summary>The identity of the device the pool copied into.</summary>
    public string Device { get; init; } = "";

    /// <summary>Bytes over seconds, in GB/s.</summary>
    public double GigabytesPerSecond => Seconds > 0 ? Bytes / Seconds / 1e9 : 0;
}

/// <summary>A connection to a pool: one request line out, one response line back. The one
/// client of the protocol in docs/POOL.md; the CLI and libthaw (Python) both restore through it.</summary>
public sealed partial class PoolClient : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly StreamReader _reader;
    private readonly StreamWriter _writer;

    /// <exception cref="SocketException">No pool is listening there.</exception>
    public PoolClient(string socketPath)
    {
        SocketPath = socketPath;
        try
        {
            _socket.Connect(new UnixDomainSocketEndPoint(socketPath));
        }
        catch
        {
            _socket.Dispose();
            throw;
        }
        var stream = new NetworkStream(_socket, ownsSocket: false);
        _reader = new StreamReader(stream, Encoding.UTF8);
        _writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
    }

    /// <summary>The socket this client is connected to.</summary>
    public string SocketPath { get; }

    /// <summary>Connects, or says in a <see cref="PoolUnavailableException"/> that nothing listens there.</summary>
    public static PoolClient Connect(string socketPath)
    {
        try
        {
            return new PoolClient(socketPath);
        }
        catch (Exception e) when (e is SocketException or IOException or ArgumentException)
        {
            throw new PoolUnavailableException($"no pool on {socketPath} ({e.Message})", e);
        }
    }

    /// <summary>How long <see cref="Send"/> waits for an answer (a probe must not hang on a stuck pool).</summary>
    public TimeSpan AnswerTimeout { set => _socket.ReceiveTimeout = (int)Math.Clamp(value.TotalMilliseconds, 1, int.MaxValue); }

    /// <summary>The uid of the process serving this socket (SO_PEERCRED).</summary>
    public uint PeerUid => PeerCredentials.PeerUid(_socket);

    /// <summary>Sends one request; returns the response, or throws its error.</summary>
    /// <exception cref="ThawException">The pool answered with an error.</exception>
    /// <exception cref="IOException">The pool closed the connection before answering.</exception>
    public JsonDocument Send(string requestJson)
    {
        _writer.WriteLine(requestJson);
        string line = _reader.ReadLine() ?? throw new IOException($"the pool on {SocketPath} closed the connection");
        var response = JsonDocument.Parse(line);
        if (!response.RootElement.GetProperty("ok").GetBoolean())
        {
            var kind = (ThawErrorKind)response.RootElement.GetProperty("kind").GetInt32();
            string message = response.RootElement.GetProperty("error").GetString() ?? "pool error";
            response.Dispose();
            throw kind == ThawErrorKind.NotFound ? new FileNotFoundException(message) : new ThawException(kind, message);
        }
        return response;
    }

    /// <summary>Where the pool opens mock clients' shared files (its answer to ping).</summary>
    /// <exception cref="PoolUnavailableException">The pool went away before answering: restore from the file.</exception>
    public string SharedMemoryDirectory()
    {
        try
        {
            using JsonDocument ping = Send(PoolProtocol.Write(w => w.WriteString("op", "ping")));
            return ping.RootElement.TryGetProperty("shm_dir", out JsonElement d) && d.GetString() is { } dir
                ? dir : PoolProtocol.DefaultSharedMemoryDirectory();
        }
        catch (IOException e)
        {
            throw new PoolUnavailableException($"the pool on {SocketPath} went away before answering ping ({e.Message})", e);
        }
    }

    /// <summary>Has the pool copy the named tensors of a snapshot into this process's device memory
    /// at the targets' addresses. Targets are checked against the snapshot (names, dtypes, shapes,
    /// sizes) exactly as for a restore from the file, before anything is sent.</summary>
    /// <param name="fill">When the pool does not hold the snapshot (or holds a copy the file on disk no
    /// longer matches), let it read the file into its memory while serving this restore (one read
    /// fills both). The request carries the identity of the file this client parsed, so the pool
    /// never serves bytes of another one.</param>
    /// <param name="share">On a hit, map the pool's shared host copy and copy from it here (docs/POOL.md,
    /// "Shared host copies"); without it, or where the pool offers none, the pool copies by IPC handle.</param>
    /// <exception cref="ThawMismatchException">A target does not fit the snapshot.</exception>
    /// <exception cref="PoolUnavailableException">The pool does not hold the snapshot (and did not fill),
    /// a destination has no IPC handle, or the pool went away mid-restore: restore from the file.</exception>
    /// <exception cref="ThawException">The pool refused the request for another reason, or did not answer in time.</exception>
    public PoolRestoreResult Restore(ThawEngine engine, Snapshot snapshot, IReadOnlyList<RestoreTarget> targets, bool fill = true,
        bool share = true)
    {
        var started = System.Diagnostics.Stopwatch.StartNew();
        RestorePlan.Create(snapshot, targets, mergeSegments: false);
        SnapshotIdentity identity = SnapshotIdentity.Of(snapshot);
        if (share && SharingWanted() && TryShare(engine, snapshot, targets, identity, started) is { } shared)
            return shared;
        var ipc = new IpcTargets(engine, engine.Kind == DeviceKind.Mock ? SharedMemoryDirectory() : null);
        var wanted = new List<PoolTarget>(targets.Count);
        long bytes = 0;
        foreach (RestoreTarget t in targets)
        {
            long length = snapshot.Tensors[snapshot.IndexOf(t.Name)].Length;
            if (length == 0)
                continue;
            wanted.Add(ipc.Resolve(t.Name, t.Address, length));
            bytes += length;
        }
        // A pool that stops answering must not hang the restore; one that is slow must not be
        // abandoned while its copies may still land (the file restore would then race them):
        // the limit allows a fill from a slow disk.
        _socket.ReceiveTimeout = (int)Math.Min(int.MaxValue, 120_000 + bytes / 200_000);
        JsonDocument response;
        double resolved = started.Elapsed.TotalSeconds;
        try
        {
            response = Send(PoolProtocol.RestoreRequest(snapshot.Path, wanted, fill, engine.Identity, identity));
        }
        catch (FileNotFoundException e)
        {
            throw new PoolUnavailableException(e.Message, e);
        }
        catch (IOException e) when (e.InnerException is SocketException { SocketErrorCode: SocketError.TimedOut })
        {
            throw new ThawException(ThawErrorKind.Io, $"the pool on {SocketPath} did not answer a restore of {snapshot.Path} within {_socket.ReceiveTimeout / 1000} s");
        }
        catch (IOException e)
        {
            throw new PoolUnavailableException($"the pool on {SocketPath} went away during the restore of {snapshot.Path} ({e.Message})", e);
        }
        catch (ThawException e) when (e is not PoolUnavailableException)
        {
            // The targets were checked against the file above: whatever the pool objects to
            // (its budget, its copy of the file), the file itself can still be restored.
            throw new PoolUnavailableException($"the pool on {SocketPath} refused the restore of {snapshot.Path}: {e.Message}", e);
        }
        using (response)
        {
            JsonElement root = response.RootElement;
            double total = started.Elapsed.TotalSeconds;
            string? served = root.TryGetProperty("served", out JsonElement s) ? s.GetString() : null;
            return new PoolRestoreResult(root.GetProperty("bytes").GetInt64(), total, served == "fill", served == "peer")
            {
                Timings = PoolRestoreTimings.From(root, resolved, total),
                Device = root.TryGetProperty("device", out JsonElement d) ? d.GetString() ?? "" : "",
            };
        }
    }

    /// <summary>Closes the connection.</summary>
    public void Dispose()
    {
        _writer.Dispose();
        _reader.Dispose();
        _socket.Dispose();
    }
}
