using System.Runtime.InteropServices;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

public class RestoreTests
{
    private TestFiles _files = null!;

    [SetUp]
    public void SetUp() => _files = new TestFiles();

    [TearDown]
    public void TearDown() => _files.Dispose();

    internal static List<TestFiles.HostTensor> ModelTensors(int count, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count)
            .Select(i => new TestFiles.HostTensor($"layers.{i}.weight", DType.F16, [random.Next(1, 300), random.Next(1, 900)], seed + i))
            .ToList();
    }

    [TestCase(IoMode.Buffered)]
    [TestCase(IoMode.Direct)]
    [TestCase(IoMode.Auto)]
    public void MockRestoreIntoAnArenaMatchesEveryByte(IoMode mode)
    {
        List<TestFiles.HostTensor> tensors = ModelTensors(40, 5);
        // Small chunks: regions straddle chunks, lanes and staging slots.
        using var engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 128 << 10, StagingBytes = 2 << 20, IoThreads = 4 });
        string path = _files.PathOf("model.thaw");
        Snapshot s = TestFiles.Freeze(engine, path, tensors);
        ulong arena = engine.Allocate(s.DataLength);
        try
        {
            var progress = new List<(long, long)>();
            RestoreResult r = engine.Restore(RestorePlan.IntoArena(s, arena),
                new RestoreOptions { IoMode = mode, Verify = true, Progress = (d, t) => { lock (progress) progress.Add((d, t)); } });
            Assert.That(r.Bytes, Is.EqualTo(s.TensorBytes));
            Assert.That(progress, Is.Not.Empty);
            Assert.That(progress[^1], Is.EqualTo((s.TensorBytes, s.TensorBytes)));
            for (int i = 0; i < tensors.Count; i++)
            {
                byte[] back = new byte[tensors[i].Bytes.Length];
                engine.CopyToHost(arena + (ulong)s.Tensors[i].Offset, back);
                Assert.That(back, Is.EqualTo(tensors[i].Bytes), tensors[i].Name);
            }
        }
        finally
        {
            engine.Free(arena);
            tensors.ForEach(t => t.Dispose());
        }
    }

    [Test]
    public void VerifiedRestoreIntoAnArenaChecksEveryRegionEvenWhenCopiesMerge()
    {
        // Page-multiple tensors are adjacent in the file and in the arena: their copies merge.
        var tensors = Enumerable.Range(0, 5).Select(i => new TestFiles.HostTensor($"w{i}", DType.F32, [1024 * (i + 1)], i)).ToList();
        using var engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 8192, StagingBytes = 65536, IoThreads = 2 });
        string path = _files.PathOf("merged.thaw");
        Snapshot s = TestFiles.Freeze(engine, path, tensors);
        ulong arena = engine.Allocate(s.DataLength);
        try
        {
            RestorePlan plan = RestorePlan.IntoArena(s, arena);
            Assert.That(plan.SegmentCount, Is.EqualTo(1), "the copies merged");
            Assert.That(engine.Restore(plan, new RestoreOptions { Verify = true }).Bytes, Is.EqualTo(s.TensorBytes));
            byte[] bytes = File.ReadAllBytes(path);
            bytes[s.FileOffsetOf(s.Tensors[3]) + 5] ^= 0x40;
            File.WriteAllBytes(path, bytes);
            Assert.That(() => engine.Restore(plan, new RestoreOptions { Verify = true }),
                Throws.TypeOf<ThawChecksumException>().With.Message.Contains("region 3").And.Message.StartsWith("tensor 'w3': "));
        }
        finally
        {
            engine.Free(arena);
            tensors.ForEach(t => t.Dispose());
        }
    }

    [Test]
    public void PartialRestoreWritesOnlyTheRequestedTensors()
    {
        List<TestFiles.HostTensor> tensors = ModelTensors(6, 11);
        using var engine = ThawEngine.Create(DeviceKind.Mock);
        Snapshot s = TestFiles.Freeze(engine, _files.PathOf("p.thaw"), tensors);
        byte[] third = new byte[tensors[3].Bytes.Length];
        GCHandle pin = GCHandle.Alloc(third, GCHandleType.Pinned);
        try
        {
            engine.RestoreInto(s, [new RestoreTarget(tensors[3].Name, (ulong)pin.AddrOfPinnedObject(), third.Length)]);
            Assert.That(third, Is.EqualTo(tensors[3].Bytes));
        }
        finally
        {
            pin.Free();
            tensors.ForEach(t => t.Dispose());
        }
    }

    [Test]
    public void CancelledRestoreThrowsAndTheEngineStaysUsable()
    {
        List<TestFiles.HostTensor> tensors = ModelTensors(4, 3);
        using var engine = ThawEngine.Create(DeviceKind.Mock);
        Snapshot s = TestFiles.Freeze(engine, _files.PathOf("c.thaw"), tensors);
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        Assert.Throws<OperationCanceledException>(() => engine.Verify(s, cancellationToken: cancelled.Token));
        Assert.DoesNotThrow(() => engine.Verify(s));
        tensors.ForEach(t => t.Dispose());
    }

    [Test]
    public void WriteReplacesAnExistingFileOnlyWhenItSucceeds()
    {
        using var engine = ThawEngine.Create(DeviceKind.Mock);
        string path = _files.PathOf("keep.thaw");
        File.WriteAllText(path, "previous");
        using var t = new TestFiles.HostTensor("x", DType.F32, [4], 1);
        Assert.Throws<ArgumentException>(() => Thaw.Interop.Freeze.SnapshotWriter.Write(engine, path, [t.Source, t.Source], sourceIsHost: true));
        Assert.That(File.ReadAllText(path), Is.EqualTo("previous"));
        Assert.That(Directory.GetFiles(_files.Directory), Has.Length.EqualTo(1), "no temporary left behind");
        TestFiles.Freeze(engine, path, [t]);
        Assert.That(SnapshotReader.Read(path).Tensors, Has.Count.EqualTo(1));
        Assert.That(Directory.GetFiles(_files.Directory), Has.Length.EqualTo(1));
    }

    [Test]
    public void MissingSnapshotAndMissingDirectoryGiveFileErrors()
    {
        Assert.Throws<FileNotFoundException>(() => SnapshotReader.Read(_files.PathOf("absent.thaw")));
        using var engine = ThawEngine.Create(DeviceKind.Mock);
        using var t = new TestFiles.HostTensor("x", DType.F32, [4], 1);
        Assert.Throws<DirectoryNotFoundException>(() => TestFiles.Freeze(engine, _files.PathOf("no/such/dir/x.thaw"), [t]));
    }

    [Test]
    public void CudaIsAbsentOrWorks()
    {
        if (ThawEngine.DeviceCount(DeviceKind.Cuda) == 0)
        {
            var e = Assert.Throws<ThawDeviceException>(() => ThawEngine.Create(DeviceKind.Cuda))!;
            Assert.That(e.Kind, Is.EqualTo(ThawErrorKind.NoDevice));
            return;
        }
        using var engine = ThawEngine.Create(DeviceKind.Cuda);
        Assert.That(engine.DeviceMemory().Total, Is.GreaterThan(0));
    }
}
