using System.CommandLine;
using System.Runtime.InteropServices;
using Thaw.Cli.Options;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Cli.Commands.Pool;

internal sealed class PoolServeCommand : Command
{
    private readonly Option<string> _socket = PoolCommand.SocketOption();
    private readonly Option<DeviceKind?> _device = Flags.Choice<DeviceKind>("--device", "device whose pinned memory holds the snapshots (default: cuda when a GPU is present, else mock)");
    private readonly Option<long> _ordinal = Flags.Integer("--ordinal", "the default device: serves clients that do not say which device their memory is on (every device of the node is served)", 0, 0, 1024);
    private readonly Option<string> _deviceId = Flags.Text("--device-id", "the default device by its identity, as restore requests name it (a GPU's UUID, or mock-N); wins over --ordinal", "ID");
    private readonly Option<long> _budgetMib = Flags.Integer("--budget-mib",
        $"pinned memory the pool may hold (default: ${PoolBudget.EnvironmentVariable}, else half of MemAvailable with --auto, else 32768)",
        PoolBudget.FixedDefaultBytes >> 20, 1, 1L << 30);
    private readonly Option<bool> _auto = Flags.Switch("--auto", "serve as this user's automatic pool: the socket in the per-user directory (docs/POOL.md, \"Automatic mode\")");
    private readonly Option<long> _idleExit = Flags.Integer("--idle-exit-s", "exit after N seconds without a connection (default: 600 with --auto, else 0: never)", 0, 0, 365L * 86400);
    private readonly Option<string> _allowUids = Flags.Text("--allow-uids", "other users allowed to connect, comma-separated", "U,V");
    private readonly Option<string> _shmDir = Flags.Text("--shm-dir", $"where mock clients make their shared files (default: {PoolProtocol.DefaultSharedMemoryDirectory()})", "DIR");
    private static readonly PoolLimits Defaults = new();
    private readonly Option<long> _maxConnections = Flags.Integer("--max-connections", "connections served at once; more are told to retry", Defaults.MaxConnections, 1, 65536);
    private readonly Option<long> _maxRequestMib = Flags.Integer("--max-request-mib", "memory for requests being read, summed over connections", Defaults.MaxRequestBytes >> 20, 1, 1L << 20);
    private readonly Option<long> _requestTimeout = Flags.Integer("--request-timeout-s", "seconds a request may take to arrive (and its answer to be read)", (long)Defaults.RequestTimeout.TotalSeconds, 1, 86400);
    private readonly Option<long> _idleTimeout = Flags.Integer("--idle-timeout-s", "seconds a connection may stay silent between requests", (long)Defaults.IdleTimeout.TotalSeconds, 1, 7 * 86400);

    public PoolServeCommand() : base("serve", "hold snapshots in pinned memory and serve restores until SIGINT or SIGTERM")
    {
        Add(_socket);
        Add(_device);
        Add(_ordinal);
        Add(_deviceId);
        Add(_budgetMib);
        Add(_auto);
        Add(_idleExit);
        Add(_allowUids);
        Add(_shmDir);
        Add(_maxConnections);
        Add(_maxRequestMib);
        Add(_requestTimeout);
        Add(_idleTimeout);
        _allowUids.Validators.Add(result =>
        {
            string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
            if (!text.Split(',', StringSplitOptions.RemoveEmptyEntries).All(u => uint.TryParse(u, out _)))
                result.AddError($"--allow-uids must be comma-separated user ids, not '{text}'");
        });
        SetAction(Run);
    }

    private int Run(ParseResult parse)
    {
        bool auto = parse.GetValue(_auto);
        if (auto && parse.GetValue(_socket) is not null)
            throw new ArgumentException("--auto serves on the per-user socket; leave out --socket");
        string socket = auto ? AutoSocket() : PoolCommand.Socket(parse, _socket);
        DeviceKind device = parse.GetValue(_device) ?? EngineFlags.GpuIfPresent();
        int ordinal = parse.GetValue(_deviceId) is { } id ? OrdinalOf(device, id) : (int)parse.GetValue(_ordinal);
        long budget = Budget(parse, auto);
        long idleExit = parse.GetResult(_idleExit) is { Implicit: false } || !auto ? parse.GetValue(_idleExit) : 600;
        string shmDir = System.IO.Path.GetFullPath(parse.GetValue(_shmDir) ?? PoolProtocol.DefaultSharedMemoryDirectory());
        var uids = parse.GetValue(_allowUids)?.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(uint.Parse).ToList();
        Thaw.Interop.Native.PosixLimits.RaiseOpenFiles(); // a descriptor per chunk of every shared copy held
        using var engines = new DeviceEngines(device, ordinal); // the default device; the others opened as clients name them
        using var pool = new SnapshotPool(engines, budget) { Log = line => Console.Error.WriteLine($"thaw pool: {line}") };
        using var server = new PoolServer(pool, socket, uids)
        {
            Auto = auto,
            IdleExit = TimeSpan.FromSeconds(idleExit),
            Log = line => Console.Error.WriteLine($"thaw pool: {line}"),
            SharedMemoryDirectory = shmDir,
            Limits = new PoolLimits
            {
                MaxConnections = (int)parse.GetValue(_maxConnections),
                MaxRequestBytes = parse.GetValue(_maxRequestMib) << 20,
                RequestTimeout = TimeSpan.FromSeconds(parse.GetValue(_requestTimeout)),
                IdleTimeout = TimeSpan.FromSeconds(parse.GetValue(_idleTimeout)),
            },
        };
        server.Start();
        Console.Out.WriteLine($"thaw pool: serving on {socket} (pid {Environment.ProcessId}, {device.ToString().ToLowerInvariant()}:{ordinal}, " +
            $"budget {Units.Size(budget)}{(idleExit > 0 ? $", exits after {idleExit} s idle" : "")}); Ctrl-C or SIGTERM stops");
        // SIGINT, SIGTERM and the idle time stop it cleanly: pinned memory released, its own socket file removed.
        var stopped = new ManualResetEventSlim();
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, context => { context.Cancel = true; stopped.Set(); });
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => { context.Cancel = true; stopped.Set(); });
        string why = WaitForStop(stopped, server, idleExit);
        Console.Out.WriteLine($"thaw pool: stopped ({why})");
        return 0;
    }

    private static string WaitForStop(ManualResetEventSlim stopped, PoolServer server, long idleExitSeconds)
    {
        if (idleExitSeconds == 0)
        {
            stopped.Wait();
            return "signal";
        }
        var limit = TimeSpan.FromSeconds(idleExitSeconds);
        while (!stopped.Wait(TimeSpan.FromMilliseconds(Math.Min(1000, idleExitSeconds * 250))))
            if (server.IdleTime >= limit)
                return $"idle for {idleExitSeconds} s";
        return "signal";
    }

    private static int OrdinalOf(DeviceKind device, string identity) =>
        DeviceEngines.OrdinalOf(device, identity)
        ?? throw new ArgumentException($"--device-id {identity} is no {device.ToString().ToLowerInvariant()} device of this node");

    private static string AutoSocket()
    {
        string directory = AutoPoolDirectory.Choose();
        if (AutoPoolDirectory.Prepare(directory) is { } fault)
            throw new IOException($"the automatic pool is refused: {fault}");
        return System.IO.Path.Combine(directory, AutoPoolDirectory.SocketName);
    }

    /// <summary>--budget-mib when given, else the default (<see cref="PoolBudget"/>).</summary>
    private long Budget(ParseResult parse, bool auto)
    {
        if (parse.GetResult(_budgetMib) is { Implicit: false })
            return parse.GetValue(_budgetMib) << 20;
        long budget = PoolBudget.Default(auto, out string? error);
        return error is null ? budget : throw new ArgumentException(error);
    }
}
