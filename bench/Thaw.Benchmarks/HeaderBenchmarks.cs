using BenchmarkDotNet.Attributes;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Benchmarks;

/// <summary>Host-side cost of a restore's preparation for a 10,000-tensor snapshot:
/// parsing and validating the header, and building the plan.</summary>
[MemoryDiagnoser]
public class HeaderBenchmarks
{
    private byte[] _header = [];
    private long _fileLength;
    private Snapshot _snapshot = null!;
    private List<RestoreTarget> _targets = [];

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(1);
        var specs = Enumerable.Range(0, 10_000)
            .Select(i => new TensorSpec($"model.layers.{i / 10}.block.{i % 10}.weight", DType.BF16, [random.Next(1, 512), 128]))
            .ToList();
        SnapshotLayout layout = SnapshotLayout.Create(specs);
        _header = layout.EncodeHeader(new uint[specs.Count]);
        _fileLength = layout.FileLength;
        _snapshot = SnapshotReader.Parse("/bench/10k.thaw", _header, _fileLength);
        ulong address = 1UL << 40;
        _targets = _snapshot.Tensors.Select(t => new RestoreTarget(t.Name, address + (ulong)t.Offset, t.Length, t.DType, t.Shape)).ToList();
    }

    [Benchmark]
    public Snapshot ParseHeader10kTensors() => SnapshotReader.Parse("/bench/10k.thaw", _header, _fileLength);

    [Benchmark]
    public RestorePlan PlanRestore10kTensors() => RestorePlan.Create(_snapshot, _targets);
}
