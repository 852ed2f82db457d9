using System.CommandLine;
using Thaw.Cli.Options;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Native;
using Thaw.Cli.Commands.Pool;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Cli.Commands;

internal sealed class RestoreCommand : Command
{
    private readonly Argument<string> _snapshot = Flags.Path("snapshot", "the snapshot file");
    private readonly EngineFlags _engine = new(EngineFlags.GpuIfPresent, "where to restore (default: cuda when a GPU is present, else mock)");
    private readonly Option<IoMode?> _io = Flags.Choice<IoMode>("--io", "how to read (default: auto, buffered so the page cache stays warm; " +
        "O_DIRECT only for an uncached file larger than half the available memory; zerocopy: DMA from the page cache)");
    private readonly Option<bool> _verify = Flags.Switch("--verify", "require the CRC32C check (fails on a file without checksums)");
    private readonly Option<bool> _noVerify = Flags.Switch("--no-verify", "skip the CRC32C check of every region (on by default when the snapshot records checksums)");
    private readonly Option<bool> _check = Flags.Switch("--check", "read the restored bytes back and compare their checksums");
    private readonly Option<long> _repeat = Flags.Integer("--repeat", "restore N times and report each and the median", 1, 1, 1000);
    private readonly Option<string> _pool = Flags.Text("--pool", "auto: through this user's automatic pool, started when none runs; off; or the pool serving on SOCKET " +
        "(default: $THAW_POOL, else auto for cuda and off for mock; falls back to the file, docs/POOL.md)", "auto|off|SOCKET");
    private readonly Option<bool> _noPoolFill = Flags.Switch("--no-pool-fill", "with --pool: when the pool does not hold the snapshot, restore from the file without having the pool read it too");
    private readonly Option<string> _borrow = Flags.Text("--borrow", "restoring from the file, also carry shares over other devices' host links, " +
        "forwarded device to device: auto (every other device), off (default), or ordinals such as 1,2,3 ($THAW_BORROW overrides it; docs/MULTI_GPU.md)",
        "auto|off|N,N");
    private readonly Option<bool> _quiet = Flags.Switch("--quiet", "no progress on stderr");

    public RestoreCommand() : base("restore", "restore into memory the engine allocates, and time it")
    {
        Add(_snapshot);
        _engine.AddTo(this);
        Add(_io);
        Add(_verify);
        Add(_noVerify);
        Add(_check);
        Add(_repeat);
        Add(_pool);
        Add(_noPoolFill);
        Add(_borrow);
        Add(_quiet);
        SetAction(Run);
    }

    private int Run(ParseResult parse)
    {
        string? borrow = parse.GetValue(_borrow);
        var options = new RestoreOptions
        {
            IoMode = parse.GetValue(_io) ?? IoMode.Auto, Verify = parse.GetValue(_noVerify) ? false : parse.GetValue(_verify) ? true : null,
            Borrow = BorrowedLinks.Decide(borrow is null ? null : BorrowedLinks.Parse(borrow)),
        };
        bool check = parse.GetValue(_check);
        string? pool = parse.GetValue(_pool);
        int repeat = (int)parse.GetValue(_repeat);
        var progress = new ProgressReporter("restore", parse.GetValue(_quiet) || repeat > 1);
        using ThawEngine engine = _engine.Create(parse);
        Snapshot snapshot = SnapshotReader.Read(parse.GetRequiredValue(_snapshot));
        if (PoolSocket(engine, pool) is { } socket && RestoreThroughPool(engine, snapshot, socket, !parse.GetValue(_noPoolFill), repeat, check))
            return 0;

        using var cancel = Interrupt.CancelOnCtrlC();
        ulong arena = engine.Allocate(Math.Max(snapshot.DataLength, 1));
        try
        {
            RestorePlan plan = RestorePlan.IntoArena(snapshot, arena);
            var seconds = new List<double>();
            for (int i = 0; i < repeat; i++)
            {
                RestoreResult r = engine.Restore(plan, options with { Progress = progress.Callback, CancellationToken = cancel.Token });
                progress.Done();
                seconds.Add(r.Seconds);
                Console.Out.WriteLine($"restore: {r.Bytes} bytes ({Units.Size(r.Bytes)}) to {Target(engine)} " +
                    $"in {r.Seconds:F3} s = {r.GigabytesPerSecond:F2} GB/s ({r.IoModeUsed.ToString().ToLowerInvariant()} io, {r.Threads} threads{(r.Verified ? ", verified" : "")}{(r.FallbackChunks > 0 ? $", {r.FallbackChunks} chunks staged" : "")})");
                ReportLinks(r, i == 0);
            }
            PrintMedian(seconds, snapshot.TensorBytes, "");
            if (check)
                CheckArena(engine, snapshot, arena);
        }
        finally
        {
            engine.Free(arena);
        }
        return 0;
    }

    /// <summary>The socket to restore through, or null: no pool asked for, or (said in one line) none usable.</summary>
    private static string? PoolSocket(ThawEngine engine, string? argument)
    {
        PoolChoice choice = PoolChoice.Decide(argument is null ? null : PoolChoice.Parse(argument), engine.Kind);
        AutoPoolResult found = choice.Locate(engine.Kind, engine.Ordinal);
        if (found.Error is not null)
            Console.Error.WriteLine($"thaw: {found.Error}; restoring from the file");
        return found.Socket;
    }

    /// <summary>False when the pool could not serve every run (it said why): the caller restores from the file.</summary>
    private static bool RestoreThroughPool(ThawEngine engine, Snapshot snapshot, string socket, bool fill, int repeat, bool check)
    {
        var seconds = new List<double>();
        for (int i = 0; i < repeat; i++)
        {
            PoolRestoreResult? r = PoolRestore.Run(engine, snapshot, socket, fill, check && i == repeat - 1);
            if (r is null)
                return false;
            seconds.Add(r.Seconds);
            Console.Out.WriteLine($"restore: {r.Bytes} bytes ({Units.Size(r.Bytes)}) through the pool to {Target(engine)} " +
                $"in {r.Seconds:F3} s = {r.GigabytesPerSecond:F2} GB/s ({(r.FromPeer ? "a live peer" : r.Filled ? "pool fill" : "pool hit")})");
        }
        PrintMedian(seconds, snapshot.TensorBytes, " through the pool");
        return true;
    }

    /// <summary>Which links served the bytes; why a helper was left out or dropped; the only-device note once.</summary>
    private static void ReportLinks(RestoreResult r, bool first)
    {
        if (first && r.LinksNote is not null)
            Console.Error.WriteLine($"thaw: {r.LinksNote}");
        if (r.LinksSummary is not null)
            Console.Out.WriteLine(r.LinksSummary);
        string[] notes = r.Links.Where(l => l.Note != "").Select(l => l.Note).ToArray();
        if (notes.Length > 0)
            Console.Error.WriteLine($"thaw: borrowed links: {string.Join("; ", notes)}");
    }

    private static string Target(ThawEngine engine) => $"{engine.Kind.ToString().ToLowerInvariant()}:{engine.Ordinal}";

    private static void PrintMedian(List<double> seconds, long bytes, string how)
    {
        if (seconds.Count < 2)
            return;
        double median = seconds.Order().ElementAt(seconds.Count / 2);
        Console.Out.WriteLine($"median: {median:F3} s = {bytes / median / 1e9:F2} GB/s over {seconds.Count} runs{how}");
    }

    /// <summary>Reads each restored region back to the host and compares its CRC32C with the snapshot's.</summary>
    internal static void CheckArena(ThawEngine engine, Snapshot snapshot, ulong arena)
    {
        byte[] buffer = [];
        foreach (TensorEntry t in snapshot.Tensors)
        {
            if (buffer.Length < t.Length)
                buffer = new byte[t.Length];
            Span<byte> region = buffer.AsSpan(0, (int)t.Length);
            engine.CopyToHost(arena + (ulong)t.Offset, region);
            uint crc = Crc32C.Compute(region);
            if (crc != t.Crc32C)
                throw new ThawChecksumException($"{snapshot.Path}: tensor '{t.Name}' differs after restore (CRC32C 0x{crc:x8}, expected 0x{t.Crc32C:x8})");
        }
        Console.Out.WriteLine($"check: all {snapshot.Tensors.Count} tensors are bit-identical to the snapshot");
    }
}
