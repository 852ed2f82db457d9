using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Thaw.Interop.Pool;

/// <summary>Serves a <see cref="SnapshotPool"/> on a Unix domain socket: owner-only
/// permissions, peers checked with SO_PEERCRED, one task per client, and a bad client
/// (malformed, disconnected, unknown snapshot, unopenable handle) gets an error line
/// while everyone else is served.</summary>
public sealed class PoolServer : IDisposable
{
    private const int SolSocket = 1, SoPeerCred = 17;
    private readonly SnapshotPool _pool;
    private readonly IReadOnlySet<uint> _allowedUids;
    private readonly Socket _listener = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly CancellationTokenSource _stop = new();
    private Task? _acceptLoop;

    /// <param name="allowedUids">Peers served; the server's own user when empty.</param>
    public PoolServer(SnapshotPool pool, string socketPath, IEnumerable<uint>? allowedUids = null)
    {
        _pool = pool;
        SocketPath = Path.GetFullPath(socketPath);
        var uids = new HashSet<uint>(allowedUids ?? []);
        if (uids.Count == 0)
            uids.Add(CurrentUid());
        _allowedUids = uids;
    }

    /// <summary>The socket the server listens on.</summary>
    public string SocketPath { get; }
    /// <summary>Receives one line per event (loads, evictions, refused peers).</summary>
    public Action<string>? Log { get; init; }

    /// <summary>Mock device only: the directory whose files a peer's handles may name
    /// (files the peer owns, no symbolic links); told to clients by ping.</summary>
    public string SharedMemoryDirectory { get; init; } = PoolProtocol.DefaultSharedMemoryDirectory();

    /// <summary>Binds the socket and starts accepting clients.</summary>
    public void Start()
    {
        if (File.Exists(SocketPath))
        {
            if (!IsStale(SocketPath))
                throw new IOException($"a pool is already serving on {SocketPath}");
            File.Delete(SocketPath);
        }
        _listener.Bind(new UnixDomainSocketEndPoint(SocketPath));
        if (!OperatingSystem.IsWindows())
            File.SetUnixFileMode(SocketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        _listener.Listen(64);
        _acceptLoop = Task.Run(AcceptLoop);
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
                client = await _listener.AcceptAsync(_stop.Token);
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
        await using (var stream = new NetworkStream(client, ownsSocket: false))
        {
            var writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
            uint uid = PeerUid(client);
            bool allowed = _allowedUids.Contains(uid);
            if (!allowed)
                Log?.Invoke($"refusing the requests of a client of uid {uid}");
            var reader = new StreamReader(stream, Encoding.UTF8);
            while (!_stop.IsCancellationRequested)
            {
                string? line;
                try
                {
                    line = await ReadLineBounded(reader, _stop.Token);
                }
                catch (Exception e) when (e is IOException or OperationCanceledException or InvalidDataException)
                {
                    return; // the client went away, or sent an endless line
                }
                if (line is null)
                    return;
                string response;
                try
                {
                    response = allowed ? Handle(line, new PoolPeer(uid, SharedMemoryDirectory))
                        : PoolProtocol.Error(new ThawException(ThawErrorKind.InvalidArgument, $"uid {uid} is not served by this pool"));
                }
                catch (Exception e)
                {
                    response = PoolProtocol.Error(e);
                }
                try
                {
                    await writer.WriteLineAsync(response);
                }
                catch (IOException)
                {
                    return;
                }
            }
        }
    }

    private string Handle(string line, PoolPeer peer)
    {
        using JsonDocument document = JsonDocument.Parse(line, new JsonDocumentOptions { MaxDepth = 8 });
        JsonElement request = document.RootElement;
        string op = PoolProtocol.Op(request);
        switch (op)
        {
            case "ping":
                return PoolProtocol.Write(w => { w.WriteBoolean("ok", true); w.WriteString("shm_dir", SharedMemoryDirectory); });
            case "load":
            {
                PoolEntryInfo info = _pool.Load(PoolProtocol.SnapshotPath(request));
                Log?.Invoke($"holding {info.Path} ({info.Bytes} bytes)");
                return PoolProtocol.Write(w => { w.WriteBoolean("ok", true); w.WriteString("snapshot", info.Path); w.WriteNumber("bytes", info.Bytes); });
            }
            case "evict":
            {
                bool evicted = _pool.Evict(PoolProtocol.SnapshotPath(request));
                return PoolProtocol.Write(w => { w.WriteBoolean("ok", true); w.WriteBoolean("evicted", evicted); });
            }
            case "list":
            case "status":
                return PoolProtocol.Write(w =>
                {
                    w.WriteBoolean("ok", true);
                    w.WriteNumber("budget_bytes", _pool.BudgetBytes);
                    w.WriteNumber("used_bytes", _pool.UsedBytes);
                    w.WriteStartArray("snapshots");
                    foreach (PoolEntryInfo e in _pool.List())
                    {
                        w.WriteStartObject();
                        w.WriteString("snapshot", e.Path);
                        w.WriteNumber("bytes", e.Bytes);
                        w.WriteNumber("tensors", e.Tensors);
                        w.WriteNumber("hits", e.Hits);
                        w.WriteNumber("bytes_served", e.BytesServed);
                        w.WriteString("last_used", e.LastUsed.ToString("O"));
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                });
            case "restore":
            {
                var result = _pool.Restore(PoolProtocol.SnapshotPath(request), PoolProtocol.ParseTargets(request), peer);
                return PoolProtocol.Write(w =>
                {
                    w.WriteBoolean("ok", true);
                    w.WriteNumber("bytes", result.Bytes);
                    w.WriteNumber("seconds", result.Seconds);
                });
            }
            default:
                throw new ArgumentException($"unknown op '{(op.Length > 40 ? op[..40] + "..." : op)}'");
        }
    }

    private static async Task<string?> ReadLineBounded(StreamReader reader, CancellationToken token)
    {
        var line = new StringBuilder();
        var one = new char[1];
        while (true)
        {
            int n = await reader.ReadAsync(one, token);
            if (n == 0)
                return null; // end of stream; a half-sent line is dropped
            if (one[0] == '\n')
                return line.ToString();
            if (line.Length >= PoolProtocol.MaxLineBytes)
                throw new InvalidDataException("request line too long");
            line.Append(one[0]);
        }
    }

    private static uint PeerUid(Socket socket)
    {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        byte[] credentials = new byte[12];
        return socket.GetRawSocketOption(SolSocket, SoPeerCred, credentials) == 12 ? BitConverter.ToUInt32(credentials, 4) : uint.MaxValue;
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
        _listener.Dispose();
        try
        {
            _acceptLoop?.Wait(TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
        }
        if (File.Exists(SocketPath))
            File.Delete(SocketPath);
    }
}
