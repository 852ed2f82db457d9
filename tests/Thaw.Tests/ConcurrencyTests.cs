using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

public class ConcurrencyTests
{
    private TestFiles _files = null!;

    [SetUp]
    public void SetUp() => _files = new TestFiles();

    [TearDown]
    public void TearDown() => _files.Dispose();

    private (Snapshot Snapshot, List<byte[]> Data) MakeSnapshot(ThawEngine engine, string name, int seed)
    {
        var tensors = Enumerable.Range(0, 8).Select(i => new TestFiles.HostTensor($"w{i}", DType.F32, [2048 + i * 512], seed * 100 + i)).ToList();
        Snapshot s = TestFiles.Freeze(engine, _files.PathOf(name), tensors);
        var data = tensors.Select(t => t.Bytes).ToList();
        tensors.ForEach(t => t.Dispose());
        return (s, data);
    }

    private static void RestoreAndCompare(ThawEngine engine, Snapshot s, List<byte[]> expected)
    {
        ulong arena = engine.Allocate(s.DataLength);
        try
        {
            engine.Restore(RestorePlan.IntoArena(s, arena), new RestoreOptions { Verify = true });
            for (int i = 0; i < expected.Count; i++)
            {
                byte[] back = new byte[expected[i].Length];
                engine.CopyToHost(arena + (ulong)s.Tensors[i].Offset, back);
                Assert.That(back, Is.EqualTo(expected[i]));
            }
        }
        finally
        {
            engine.Free(arena);
        }
    }

    [Test]
    public void ManyRestoresAtOnceOfDifferentAndSameSnapshotsGiveCorrectBytes()
    {
        var settings = new EngineSettings { ChunkBytes = 8192, StagingBytes = 8192 * 8, IoThreads = 2 };
        using var shared = ThawEngine.Create(DeviceKind.Mock, settings: settings);
        var snapshots = Enumerable.Range(0, 3).Select(i => MakeSnapshot(shared, $"s{i}.thaw", i)).ToList();
        const int restores = 24;
        // Half share one engine (they queue on it), half bring their own; all at once.
        Parallel.For(0, restores, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            var (snapshot, data) = snapshots[i % snapshots.Count];
            if (i % 2 == 0)
            {
                RestoreAndCompare(shared, snapshot, data);
                return;
            }
            using var own = ThawEngine.Create(DeviceKind.Mock, settings: settings);
            RestoreAndCompare(own, snapshot, data);
        });
        TestContext.Out.WriteLine($"concurrent restores: {restores} over {snapshots.Count} snapshots, all bit-exact");
    }

    [Test]
    public void CancellingMidRestoreStopsItAndTheEngineRestoresAfterwards()
    {
        using var engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 4096, StagingBytes = 4096 * 4, IoThreads = 2 });
        var (snapshot, data) = MakeSnapshot(engine, "c.thaw", 7);
        ulong arena = engine.Allocate(snapshot.DataLength);
        try
        {
            using var cancel = new CancellationTokenSource();
            long progressAtCancel = 0;
            var options = new RestoreOptions
            {
                CancellationToken = cancel.Token,
                Progress = (done, total) =>
                {
                    if (done < total && !cancel.IsCancellationRequested)
                    {
                        progressAtCancel = done;
                        cancel.Cancel();
                    }
                },
            };
            Assert.Throws<OperationCanceledException>(() => engine.Restore(RestorePlan.IntoArena(snapshot, arena), options));
            Assert.That(progressAtCancel, Is.LessThan(snapshot.TensorBytes), "it was cancelled part-way");
        }
        finally
        {
            engine.Free(arena);
        }
        RestoreAndCompare(engine, snapshot, data);
    }
}
