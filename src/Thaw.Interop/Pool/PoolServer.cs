using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>Serves a <see cref="SnapshotPool"/> on a Unix domain socket: owner-only
/// permissions, peers checked with SO_PEERCRED before a byte is read, one task per client,
/// connections, request memory and time bounded by <see cref="PoolLimits"/>, and a bad client
/// (malformed, disconnected, unknown snapshot, unopenable handle, too slow, too big) gets an
/// error line while everyone else is served.</summary>
public sealed partial class PoolServer : IDisposable
{
    private readonly SnapshotPool _pool;
    private readonly IReadOnlySet<uint> _allowedUids;
    private Socket? _listener;
    private readonly CancellationTokenSource _stop = new();
    private Task? _acceptLoop;
    private RequestBudget _budget = null!;
    private int _connections;
    private long _lastActive = Environment.TickCount64;
    private long _hits, _misses;
    private (ulong Device, ulong Inode, ulong Changed)? _bound;

    /// <summary>Memory a parsed request may take per byte of its line (its targets), reserved while it is handled.</summary>
    private const int ParsingBytesPerLineByte = 4;

    /// <param name="allowedUids">Peers served; the server's own user when empty.</param>
    public PoolServer(SnapshotPool pool, string socketPath, IEnumerable<uint>? allowedUids = null)
    {
        _pool = pool;
        SocketPath = Path.GetFullPath(socketPath);
        var uids = new HashSet<uint>(allowedUids ?? []);
        if (uids.Count == 0)
            uids.Add(PeerCredentials.CurrentUid());
        _allowedUids = uids;
        _peers = new PeerPublications(pool.Engines);
    }

    /// <summary>The socket the server listens on.</summary>
    public string SocketPath { get; }
    /// <summary>Receives one line per event (loads, evictions, refused peers).</summary>
    public Action<string>? Log { get; init; }

    /// <summary>Mock device only: the directory whose files a peer's handles may name
    /// (files the peer owns, no symbolic links); told to clients by ping.</summary>
    public string SharedMemoryDirectory { get; init; } = PoolProtocol.DefaultSharedMemoryDirectory();

    /// <summary>What clients may hold: connections, request memory, time (docs/POOL.md, "Limits").</summary>
    public PoolLimits Limits { get; init; } = new();

    /// <summary>Started by a client as the user's automatic pool (docs/POOL.md, "Automatic mode"); told by status.</summary>
    public bool Auto { get; init; }

    /// <summary>Idle time after which the serving command exits (zero: never); told by status.</summary>
    public TimeSpan IdleExit { get; init; }

    /// <summary>When the server started.</summary>
    public DateTime Started { get; } = DateTime.UtcNow;

    /// <summary>How long no connection has been open (zero while one is): a pool that is
    /// serving, or has a restore in flight, is never idle.</summary>
    public TimeSpan IdleTime => Volatile.Read(ref _connections) > 0 ? TimeSpan.Zero
        : TimeSpan.FromMilliseconds(Environment.TickCount64 - Interlocked.Read(ref _lastActive));

    /// <summary>Request memory in use across connections (see <see cref="PoolLimits.MaxRequestBytes"/>).</summary>
    public long RequestBytesInUse => _budget?.Used ?? 0;

    /// <summary>Binds the socket and starts accepting clients.</summary>
    public void Start()
    {
        if (File.Exists(SocketPath))
        {
            if (!IsStale(SocketPath))
                throw new IOException($"a pool is already serving on {SocketPath}");
            File.Delete(SocketPath);
        }
        // Bound in the core: a managed socket would delete the file when closed, even a newer pool's.
        _listener = Thaw.Interop.Native.PosixPaths.Listen(SocketPath, Math.Max(64, Limits.MaxConnections)); // the kernel caps it at somaxconn
        if (!OperatingSystem.IsWindows())
            File.SetUnixFileMode(SocketPath, SocketMode(_allowedUids));
        _bound = Thaw.Interop.Native.PosixPaths.Identity(SocketPath);
        _budget = new RequestBudget(Limits.MaxRequestBytes);
        _acceptLoop = Task.Run(AcceptLoop);
    }

    /// <summary>Owner only, unless other uids are served: they must be able to connect at all, and
    /// SO_PEERCRED, checked on every connection, still turns away every uid not named.</summary>
    internal static UnixFileMode SocketMode(IReadOnlySet<uint> allowedUids)
    {
        const UnixFileMode owner = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        uint self = PeerCredentials.CurrentUid();
        return allowedUids.Any(uid => uid != self)
            ? owner | UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.OtherRead | UnixFileMode.OtherWrite
            : owner;
    }

    /// <summary>Serves until cancelled (the CLI's foreground mode).</summary>
    public Task Completion => _acceptLoop ?? Task.CompletedTask;

    private async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener!.AcceptAsync(_stop.Token);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            _ = Task.Run(() => Serve(client));
        }
    }

    private async Task Serve(Socket client)
    {
        using (client)
        {
            if (Interlocked.Increment(ref _connections) > Limits.MaxConnections)
            {
                Interlocked.Decrement(ref _connections);
                await Refuse(client, PoolRefusalException.Busy(
                    $"the pool serves at most {Limits.MaxConnections} connections at once; retry later"));
                return;
            }
            try
            {
                uint uid = PeerCredentials.PeerUid(client);
                if (!_allowedUids.Contains(uid))
                {
                    Log?.Invoke($"refusing the requests of a client of uid {uid}");
                    await Refuse(client, new ThawException(ThawErrorKind.InvalidArgument, $"uid {uid} is not served by this pool"));
                    return;
                }
                await ServeRequests(client, new PoolPeer(uid, SharedMemoryDirectory));
            }
            catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or ObjectDisposedException)
            {
                // the client went away, or the pool is stopping
            }
            finally
            {
                Interlocked.Exchange(ref _lastActive, Environment.TickCount64);
                Interlocked.Decrement(ref _connections);
            }
        }
    }

    private async Task ServeRequests(Socket client, PoolPeer peer)
    {
        RequestReader reader;
        try
        {
            reader = new RequestReader(client, _budget, Limits);
        }
        catch (PoolRefusalException e)
        {
            await Refuse(client, e);
            return;
        }
        long connection = Interlocked.Increment(ref _nextConnection);
        using var shares = new ConnectionShares();
        using (reader)
        using (_peers.ForgetOnClose(connection))
        {
            while (!_stop.IsCancellationRequested)
            {
                ReadOnlyMemory<byte>? line;
                try
                {
                    line = await reader.NextAsync(_stop.Token);
                }
                catch (PoolRefusalException e)
                {
                    Log?.Invoke($"closing a connection of uid {peer.Uid}: {e.Message}");
                    await Refuse(client, e);
                    return;
                }
                if (line is null)
                    return;
                (string response, PoolShareGrant? grant) = Respond(line.Value.Span, peer, connection, shares);
                if (grant is null)
                    await Send(client, response, _stop.Token);
                else
                    await SendShare(client, response, grant, shares);
                reader.MayIdle = _peers.Holds(connection); // a publisher stays connected as long as it publishes
            }
        }
    }

    /// <summary>Handles one request; what parsing it takes (its targets) is drawn from the budget too.
    /// A share's answer comes with the grant whose descriptors go with it.</summary>
    private (string, PoolShareGrant?) Respond(ReadOnlySpan<byte> line, PoolPeer peer, long connection, ConnectionShares shares)
    {
        long parsing = (long)line.Length * ParsingBytesPerLineByte;
        if (!_budget.TryTake(parsing))
            return (PoolProtocol.Error(PoolRefusalException.Busy(
                $"the pool is short of request memory ({_budget.Used} of {_budget.Limit} bytes in use); retry later")), null);
        try
        {
            PoolRequest request = PoolRequest.Parse(line);
            if (request.Op == "share")
                return Share(request, peer, shares);
            if (request.Op == "unshare")
                return (PoolProtocol.Write(w => { w.WriteBoolean("ok", true); w.WriteNumber("released", shares.Release(request.SnapshotPath())); }), null);
            return (HandlePeerOp(request, line, peer, connection) ?? Handle(request, peer), null);
        }
        catch (Exception e)
        {
            return (PoolProtocol.Error(e), null);
        }
        finally
        {
            _budget.Give(parsing);
        }
    }

    /// <summary>Tells the client why, then closes; what it still sends is read and dropped
    /// for a moment so that its own write does not fail before it reads the reason.</summary>
    private async Task Refuse(Socket client, Exception reason)
    {
        try
        {
            using var linger = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            linger.CancelAfter(TimeSpan.FromSeconds(1));
            await Send(client, PoolProtocol.Error(reason), linger.Token);
            client.Shutdown(SocketShutdown.Send);
            byte[] sink = new byte[4096];
            while (await client.ReceiveAsync(sink, SocketFlags.None, linger.Token) > 0)
            {
            }
        }
        catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    private async Task Send(Socket client, string response, CancellationToken stop)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(response + "\n");
        // A client that never reads its answers must not hold the connection forever either.
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(stop);
        deadline.CancelAfter(Limits.RequestTimeout);
        for (int sent = 0; sent < bytes.Length;)
            sent += await client.SendAsync(bytes.AsMemory(sent), SocketFlags.None, deadline.Token);
    }

    private string Handle(PoolRequest request, PoolPeer peer)
    {
        string op = request.Op;
        switch (op)
        {
            case "ping":
                return PoolProtocol.Write(w => { w.WriteBoolean("ok", true); w.WriteString("shm_dir", SharedMemoryDirectory); });
            case "load":
            {
                PoolEntryInfo info = _pool.Load(request.SnapshotPath());
                Log?.Invoke($"holding {info.Path} ({info.Bytes} bytes)");
                return PoolProtocol.Write(w => { w.WriteBoolean("ok", true); w.WriteString("snapshot", info.Path); w.WriteNumber("bytes", info.Bytes); });
            }
            case "evict":
            {
                bool evicted = _pool.Evict(request.SnapshotPath());
                return PoolProtocol.Write(w => { w.WriteBoolean("ok", true); w.WriteBoolean("evicted", evicted); });
            }
            case "list":
            case "status":
                return PoolProtocol.Write(w =>
                {
                    w.WriteBoolean("ok", true);
                    WriteIdentity(w);
                    w.WriteNumber("budget_bytes", _pool.BudgetBytes);
                    w.WriteNumber("used_bytes", _pool.UsedBytes);
                    w.WriteNumber("connections", Volatile.Read(ref _connections));
                    w.WriteNumber("request_bytes", _budget.Used);
                    w.WriteStartArray("snapshots");
                    foreach (PoolEntryInfo e in _pool.List())
                    {
                        w.WriteStartObject();
                        w.WriteString("snapshot", e.Path);
                        w.WriteNumber("bytes", e.Bytes);
                        w.WriteNumber("tensors", e.Tensors);
                        w.WriteNumber("hits", e.Hits);
                        w.WriteNumber("misses", e.Misses);
                        w.WriteNumber("fills", e.Fills);
                        w.WriteNumber("bytes_read", e.BytesRead);
                        w.WriteNumber("bytes_served", e.BytesServed);
                        w.WriteString("last_used", e.LastUsed.ToString("O"));
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                    PoolStatus.WriteDevices(w, _pool.Devices);
                    WritePublications(w);
                });
            case "restore":
            {
                PoolServedRestore result;
                try
                {
                    result = _pool.Restore(request.SnapshotPath(), request.RestoreTargets(), peer, request.Device,
                        new PoolAsk(request.Fill, request.FileIdentity));
                }
                catch (FileNotFoundException)
                {
                    Interlocked.Increment(ref _misses);
                    throw;
                }
                if (result.Filled)
                    Interlocked.Increment(ref _misses); // not held: read while serving
                else
                    Interlocked.Increment(ref _hits);
                return PoolProtocol.Write(w =>
                {
                    w.WriteBoolean("ok", true);
                    result.WriteTo(w);
                });
            }
            default:
                throw new ArgumentException($"unknown op '{(op.Length > 40 ? op[..40] + "..." : op)}'");
        }
    }

    /// <summary>Who and what this server is, for status (docs/POOL.md).</summary>
    private void WriteIdentity(Utf8JsonWriter w)
    {
        w.WriteNumber("pid", Environment.ProcessId);
        w.WriteNumber("uid", PeerCredentials.CurrentUid());
        w.WriteBoolean("auto", Auto);
        w.WriteString("socket", SocketPath);
        w.WriteNumber("idle_exit_s", (long)IdleExit.TotalSeconds);
        w.WriteString("started", Started.ToString("O"));
        w.WriteNumber("hits", Interlocked.Read(ref _hits));
        w.WriteNumber("misses", Interlocked.Read(ref _misses));
    }

    internal static uint CurrentUid()
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("Uid:", StringComparison.Ordinal))
                return uint.Parse(line.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1]);
        throw new InvalidOperationException("no Uid line in /proc/self/status");
    }

    private static bool IsStale(string path)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return false;
        }
        catch (SocketException)
        {
            return true;
        }
    }

    /// <summary>Stops accepting, closes every connection and removes the socket file.</summary>
    public void Dispose()
    {
        _stop.Cancel();
        _listener?.Dispose();
        _peers.Dispose();
        try
        {
            _acceptLoop?.Wait(TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
        }
        // Only the socket this server bound: a newer server may have replaced a file it thought stale.
        if (_bound is not null && Thaw.Interop.Native.PosixPaths.Identity(SocketPath) == _bound)
            File.Delete(SocketPath);
    }
}
