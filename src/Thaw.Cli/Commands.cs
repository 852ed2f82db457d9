using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Native;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;

namespace Thaw.Cli;

/// <summary>One method per command; each returns the process exit code.</summary>
internal static class Commands
{
    public static int Convert(Arguments a)
    {
        string checkpoint = a.Require(0, "checkpoint path");
        string output = a.Require(1, "output snapshot path");
        var progress = new ProgressReporter("convert", a.Has("quiet"));
        using ThawEngine engine = CreateEngine(a, DeviceKind.Mock);
        a.Finish(2);
        var started = DateTime.UtcNow;
        Snapshot snapshot = CheckpointConverter.Convert(checkpoint, output, engine, progress.Callback);
        progress.Done();
        double seconds = (DateTime.UtcNow - started).TotalSeconds;
        Console.Out.WriteLine($"converted {checkpoint} -> {snapshot.Path}: {snapshot.Tensors.Count} tensors, " +
            $"{Size(snapshot.TensorBytes)} in {seconds:F2} s ({snapshot.TensorBytes / seconds / 1e9:F2} GB/s)");
        return 0;
    }

    public static int Info(Arguments a)
    {
        string path = a.Require(0, "snapshot path");
        bool listTensors = a.Has("tensors");
        a.Finish(1);
        Snapshot s = SnapshotReader.Read(path);
        var o = Console.Out;
        o.WriteLine($"snapshot  {s.Path}");
        o.WriteLine($"format    v{SnapshotFormat.Version}, {Size(s.FileLength)} on disk, data at offset {s.DataOffset}");
        o.WriteLine($"tensors   {s.Tensors.Count}, {Size(s.TensorBytes)} ({s.TensorBytes} bytes)");
        o.WriteLine($"parallel  tensor-parallel rank {s.TpRank} of {s.TpWorldSize}");
        foreach (var group in s.Tensors.GroupBy(t => t.DType).OrderByDescending(g => g.Sum(t => t.Length)))
            o.WriteLine($"dtype     {group.Key,-8} {group.Count(),6} tensors  {Size(group.Sum(t => t.Length))}");
        foreach (var (key, value) in s.Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            o.WriteLine($"metadata  {key} = {(value.Length > 120 ? value[..117] + "..." : value)}");
        if (listTensors)
        {
            o.WriteLine();
            o.WriteLine($"{"name",-56} {"dtype",-8} {"shape",-22} {"bytes",14}  crc32c");
            foreach (TensorEntry t in s.Tensors)
                o.WriteLine($"{t.Name,-56} {t.DType,-8} {t.ShapeText,-22} {t.Length,14}  {t.Crc32C:x8}");
        }
        return 0;
    }

    public static int Verify(Arguments a)
    {
        string path = a.Require(0, "snapshot path");
        var progress = new ProgressReporter("verify", a.Has("quiet"));
        using ThawEngine engine = CreateEngine(a, DeviceKind.Mock);
        a.Finish(1);
        Snapshot snapshot = SnapshotReader.Read(path);
        using var cancel = CancelOnCtrlC();
        RestoreResult r = engine.Verify(snapshot, progress.Callback, cancel.Token);
        progress.Done();
        Console.Out.WriteLine($"ok: {snapshot.Path}: header and {snapshot.Tensors.Count} region checksums verified, " +
            $"{Size(r.BytesRead)} read in {r.Seconds:F2} s ({r.BytesRead / r.Seconds / 1e9:F2} GB/s)");
        return 0;
    }

    public static int Restore(Arguments a)
    {
        string path = a.Require(0, "snapshot path");
        DeviceKind defaultDevice = ThawEngine.DeviceCount(DeviceKind.Cuda) > 0 ? DeviceKind.Cuda : DeviceKind.Mock;
        var options = new RestoreOptions { IoMode = a.GetEnum("io", IoMode.Auto), Verify = a.Has("verify") };
        bool check = a.Has("check");
        string? pool = a.Has("pool") ? a.Get("pool") ?? Thaw.Interop.Pool.PoolProtocol.DefaultSocketPath() : null;
        int repeat = (int)a.GetLong("repeat", 1, 1, 1000);
        var progress = new ProgressReporter("restore", a.Has("quiet") || repeat > 1);
        using ThawEngine engine = CreateEngine(a, defaultDevice);
        a.Finish(1);

        Snapshot snapshot = SnapshotReader.Read(path);
        if (pool is not null)
        {
            var viaPool = new List<double>();
            for (int i = 0; i < repeat; i++)
            {
                RestoreResult? r = PoolCommands.RestoreThroughPool(engine, snapshot, pool, check && i == repeat - 1);
                if (r is null)
                    break;
                viaPool.Add(r.Seconds);
                Console.Out.WriteLine($"restore: {r.Bytes} bytes ({Size(r.Bytes)}) through the pool to {engine.Kind.ToString().ToLowerInvariant()}:{engine.Ordinal} " +
                    $"in {r.Seconds:F3} s = {r.GigabytesPerSecond:F2} GB/s");
            }
            if (viaPool.Count == repeat)
            {
                PrintMedian(viaPool, snapshot.TensorBytes, " through the pool");
                return 0;
            }
        }
        using var cancel = CancelOnCtrlC();
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
                Console.Out.WriteLine($"restore: {r.Bytes} bytes ({Size(r.Bytes)}) to {engine.Kind.ToString().ToLowerInvariant()}:{engine.Ordinal} " +
                    $"in {r.Seconds:F3} s = {r.GigabytesPerSecond:F2} GB/s ({r.IoModeUsed.ToString().ToLowerInvariant()} io, {r.Threads} threads{(options.Verify ? ", verified" : "")})");
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

    private static void PrintMedian(List<double> seconds, long bytes, string how)
    {
        if (seconds.Count < 2)
            return;
        double median = seconds.Order().ElementAt(seconds.Count / 2);
        Console.Out.WriteLine($"median: {median:F3} s = {bytes / median / 1e9:F2} GB/s over {seconds.Count} runs{how}");
    }

    public static int Generate(Arguments a)
    {
        string directory = a.Require(0, "output directory");
        long sizeMib = a.GetLong("size-mib", 1024, 16, 1 << 24);
        int shards = (int)a.GetLong("shards", 2, 1, 10000);
        int seed = (int)a.GetLong("seed", 1, 0, int.MaxValue);
        var progress = new ProgressReporter("generate", a.Has("quiet"));
        a.Finish(1);
        long bytes = CheckpointGenerator.Generate(directory, sizeMib << 20, shards, seed, progress.Callback);
        progress.Done();
        Console.Out.WriteLine($"generated {directory}: Llama-shaped safetensors checkpoint, {Size(bytes)} in {shards} shard(s)");
        return 0;
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

    private static ThawEngine CreateEngine(Arguments a, DeviceKind defaultDevice)
    {
        DeviceKind device = a.GetEnum("device", defaultDevice);
        int ordinal = (int)a.GetLong("ordinal", 0, 0, 1024);
        var settings = new EngineSettings
        {
            IoThreads = (int)a.GetLong("threads", 0, 0, 64),
            ChunkBytes = a.GetLong("chunk-mib", 0, 0, 4096) << 20,
            StagingBytes = a.GetLong("staging-mib", 0, 0, 1 << 20) << 20,
        };
        return ThawEngine.Create(device, ordinal, settings);
    }

    private static CancellationTokenSource CancelOnCtrlC()
    {
        var source = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            source.Cancel();
        };
        return source;
    }

    internal static string Size(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:F1} KiB",
        _ => $"{bytes} B",
    };
}
