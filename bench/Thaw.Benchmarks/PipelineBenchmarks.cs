using BenchmarkDotNet.Attributes;
using Thaw.Interop.Format;
using Thaw.Interop.Native;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;

namespace Thaw.Benchmarks;

/// <summary>Throughput of the mock-device pipeline (page cache → staging → "device"),
/// of CRC32C, and of converting a safetensors checkpoint, on a 256 MiB model.</summary>
public class PipelineBenchmarks
{
    private const long ModelBytes = 256L << 20;
    private string _directory = "";
    private string _checkpoint = "";
    private string _snapshotPath = "";
    private ThawEngine _engine = null!;
    private Snapshot _snapshot = null!;
    private ulong _arena;
    private RestorePlan _plan = null!;
    private byte[] _buffer = [];

    [GlobalSetup]
    public void Setup()
    {
        _directory = Path.Combine(Path.GetTempPath(), "thaw-bench-" + Environment.ProcessId);
        Directory.CreateDirectory(_directory);
        _checkpoint = Path.Combine(_directory, "model.safetensors");
        WriteCheckpoint(_checkpoint);
        _engine = ThawEngine.Create(DeviceKind.Mock);
        _snapshotPath = Path.Combine(_directory, "model.thaw");
        _snapshot = CheckpointConverter.Convert(_checkpoint, _snapshotPath, _engine);
        _arena = _engine.Allocate(_snapshot.DataLength);
        _plan = RestorePlan.IntoArena(_snapshot, _arena);
        _buffer = new byte[64 << 20];
        new Random(3).NextBytes(_buffer);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _engine.Free(_arena);
        _engine.Dispose();
        Directory.Delete(_directory, recursive: true);
    }

    [Benchmark(Description = "mock restore, 256 MiB warm (GB/s = 0.268 / mean s)")]
    public RestoreResult MockRestore() => _engine.Restore(_plan, new RestoreOptions { IoMode = IoMode.Buffered });

    [Benchmark(Description = "mock restore with CRC32C verification, 256 MiB")]
    public RestoreResult MockRestoreVerified() => _engine.Restore(_plan, new RestoreOptions { IoMode = IoMode.Buffered, Verify = true });

    [Benchmark(Description = "CRC32C of 64 MiB, one thread")]
    public uint Crc32COf64MiB() => Crc32C.Compute(_buffer);

    [Benchmark(Description = "convert 256 MiB safetensors -> snapshot (fsync included)")]
    public Snapshot Convert() => CheckpointConverter.Convert(_checkpoint, Path.Combine(_directory, "converted.thaw"), _engine);

    private static void WriteCheckpoint(string path)
    {
        // 64 tensors of 4 MiB, hand-written safetensors (see docs/FORMAT.md for ours).
        const int count = 64;
        long each = ModelBytes / count;
        var json = new System.Text.StringBuilder("{");
        for (int i = 0; i < count; i++)
            json.Append($"{(i > 0 ? "," : "")}\"w{i}\":{{\"dtype\":\"F16\",\"shape\":[{each / 2}],\"data_offsets\":[{i * each},{(i + 1) * each}]}}");
        json.Append('}');
        while (json.Length % 8 != 0)
            json.Append(' ');
        using var file = File.Create(path);
        file.Write(BitConverter.GetBytes((ulong)json.Length));
        file.Write(System.Text.Encoding.ASCII.GetBytes(json.ToString()));
        var chunk = new byte[each];
        var random = new Random(2);
        for (int i = 0; i < count; i++)
        {
            random.NextBytes(chunk);
            file.Write(chunk);
        }
    }
}
