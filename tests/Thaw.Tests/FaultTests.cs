using System.Diagnostics;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Tests;

/// <summary>Failures at every point of the C# paths: writes that hit a full disk leave
/// the previous file and no temporary; restores that fail leave the engine usable.
/// Faults are process-wide, so these tests do not run in parallel with others.</summary>
[NonParallelizable]
public class FaultTests
{
    private TestFiles _files = null!;

    [SetUp]
    public void SetUp() => _files = new TestFiles();

    [TearDown]
    public void TearDown()
    {
        Core.FaultInject(Core.FaultNone, -1);
        _files.Dispose();
    }

    [Test]
    public void ConvertThatHitsAFullDiskAtAnyWriteLeavesThePreviousSnapshot()
    {
        string checkpoint = _files.PathOf("model.safetensors");
        TestFiles.WriteSafetensors(checkpoint, Enumerable.Range(0, 6)
            .Select(i => ($"w{i}", "F32", new long[] { 3000 + i }, TestFiles.RandomBytes((3000 + i) * 4, i))));
        string output = _files.PathOf("model.thaw");
        using var engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 4096, StagingBytes = 4096 * 8, IoThreads = 2 });
        int injected = 0;
        foreach (int kind in new[] { Core.FaultWriteEnospc, Core.FaultWriteEio })
        {
            for (long after = 0; ; after++)
            {
                File.WriteAllText(output, "previous snapshot");
                Core.FaultInject(kind, after);
                Exception? error = null;
                try
                {
                    CheckpointConverter.Convert(checkpoint, output, engine);
                }
                catch (Exception e)
                {
                    error = e;
                }
                if (Core.FaultInject(Core.FaultNone, -1) == 0)
                {
                    Assert.That(error, Is.Null);
                    break;
                }
                injected++;
                Assert.That(error, Is.InstanceOf<IOException>());
                Assert.That(error!.Message, Does.Contain(output).And.Contain("region"));
                Assert.That(File.ReadAllText(output), Is.EqualTo("previous snapshot"), "the final name keeps the old file");
                Assert.That(Directory.GetFiles(_files.Directory).Select(Path.GetFileName), Is.EquivalentTo(new[] { "model.safetensors", "model.thaw" }));
            }
        }
        Assert.That(SnapshotReader.Read(output).Tensors, Has.Count.EqualTo(6), "the last, unfaulted convert replaced it");
        TestContext.Out.WriteLine($"write faults injected: {injected}");
        Assert.That(injected, Is.GreaterThan(10));
    }

    [Test]
    public void KilledConvertNeverLeavesATornSnapshotUnderTheFinalName()
    {
        ThawCli.RequireBuilt();
        string thaw = ThawCli.Path;
        string checkpoint = _files.PathOf("ckpt");
        Run($"generate {checkpoint} --size-mib 96 --shards 1 --quiet");
        string output = _files.PathOf("model.thaw");
        for (int round = 0; round < 3; round++)
        {
            File.WriteAllText(output, "previous snapshot");
            var start = new ProcessStartInfo(thaw, $"convert {checkpoint} {output}") { RedirectStandardError = true, RedirectStandardOutput = true };
            using var process = Process.Start(start)!;
            // Kill it once it reports progress (redirected stderr gets a line every 10%), at a different point each round.
            for (int lines = 0; lines <= round && process.StandardError.ReadLine() is { } line; lines++) { }
            process.Kill();
            process.WaitForExit();
            string text = File.ReadAllText(output);
            if (text != "previous snapshot")
                Assert.DoesNotThrow(() => SnapshotReader.Read(output), "a replaced file must be a whole snapshot");
        }
        // The next writer of the same file removes what the killed ones left behind.
        Run($"convert {checkpoint} {output} --quiet");
        Assert.DoesNotThrow(() => SnapshotReader.Read(output));
        Assert.That(Directory.GetFiles(_files.Directory, ".model.thaw.tmp-*"), Is.Empty);
    }

    [Test]
    public void ConvertOfAShardThatShrinksMidwayFailsNamingTheShard()
    {
        // 4 KiB engine chunks: the converter reads 8 chunks ahead at most, so when the first bytes
        // are written almost all of this 1 MiB shard is still to be read.
        string checkpoint = _files.PathOf("model.safetensors");
        TestFiles.WriteSafetensors(checkpoint, Enumerable.Range(0, 4)
            .Select(i => ($"w{i}", "U8", new long[] { 256 << 10 }, TestFiles.RandomBytes(256 << 10, i))));
        byte[] original = File.ReadAllBytes(checkpoint);
        string output = _files.PathOf("model.thaw");
        using var engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 4096, StagingBytes = 4096 * 8, IoThreads = 2 });
        int truncations = 0;
        void TruncateOnce(long done, long total)
        {
            if (Interlocked.Exchange(ref truncations, 1) == 0)
                using (var file = File.OpenHandle(checkpoint, FileMode.Open, FileAccess.Write))
                    RandomAccess.SetLength(file, 512 << 10);
        }
        var e = Assert.Throws<ThawFormatException>(() => CheckpointConverter.Convert(checkpoint, output, engine, TruncateOnce))!;
        Assert.That(e.Message, Does.StartWith(checkpoint + ": file shrank while it was converted"));
        Assert.That(e.Message, Does.Contain("the file now ends at 524288"));
        Assert.That(Directory.GetFiles(_files.Directory).Select(Path.GetFileName), Is.EquivalentTo(new[] { "model.safetensors" }), "no output, no temporary");

        File.WriteAllBytes(checkpoint, original);
        Snapshot s = CheckpointConverter.Convert(checkpoint, output, engine);
        engine.Verify(s);
        Assert.That(s.Tensors.Select(t => t.Crc32C), Is.EqualTo(Enumerable.Range(0, 4)
            .Select(i => Thaw.Interop.Native.Crc32C.Compute(TestFiles.RandomBytes(256 << 10, i)))), "pieces' checksums combine into the region's");
    }

    [Test]
    public void ThawConvertOfAShardTruncatedWhileItRunsExitsOneWithTheShardsName()
    {
        ThawCli.RequireBuilt();
        string checkpoint = _files.PathOf("ckpt");
        Run($"generate {checkpoint} --size-mib 96 --shards 1 --quiet");
        string shard = Directory.GetFiles(checkpoint, "*.safetensors").Single();
        // 1 MiB chunks: the converter is at most 16 MiB ahead of what it has written when it first reports progress.
        var start = new ProcessStartInfo(ThawCli.Path, $"convert {checkpoint} {_files.PathOf("model.thaw")} --chunk-mib 1")
            { RedirectStandardError = true, RedirectStandardOutput = true };
        using var process = Process.Start(start)!;
        string first = process.StandardError.ReadLine() ?? "";
        using (var file = File.OpenHandle(shard, FileMode.Open, FileAccess.Write))
            RandomAccess.SetLength(file, 1 << 20);
        string[] rest = process.StandardError.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        process.WaitForExit();
        if (process.ExitCode == 0)
            Assert.Inconclusive("the conversion finished before the shard was truncated");
        Assert.That(first, Does.StartWith("convert:"));
        Assert.That(process.ExitCode, Is.EqualTo(1), string.Join("\n", rest));
        Assert.That(rest.Where(l => !l.StartsWith("convert:")), Has.Exactly(1).StartsWith($"thaw: error: {shard}: file shrank while it was converted"));
        Assert.That(rest, Has.All.StartsWith("convert:").Or.StartsWith("thaw: error:"), "no stack trace");
    }

    [Test]
    public void OnlyTemporariesOfDeadWritersAreRemoved()
    {
        string dead = _files.PathOf($".x.thaw.tmp-{int.MaxValue}-abc");
        string alive = _files.PathOf($".x.thaw.tmp-{Environment.ProcessId}-def");
        string other = _files.PathOf($".y.thaw.tmp-{int.MaxValue}-abc");
        foreach (string f in new[] { dead, alive, other })
            File.WriteAllText(f, "partial");
        Thaw.Interop.Freeze.AtomicFile.RemoveStaleTemporaries(_files.Directory, "x.thaw");
        Assert.That(File.Exists(dead), Is.False);
        Assert.That(File.Exists(alive), Is.True);
        Assert.That(File.Exists(other), Is.True, "another target's temporaries are not touched");
    }

    [Test]
    public void RestoreFaultsFailWithTheFileAndRegionAndTheEngineStaysUsable()
    {
        var tensors = Enumerable.Range(0, 5).Select(i => new TestFiles.HostTensor($"t{i}", DType.U8, [9000 + 100 * i], i)).ToList();
        using var engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 4096, StagingBytes = 4096 * 6, IoThreads = 3 });
        string path = _files.PathOf("r.thaw");
        Snapshot s = TestFiles.Freeze(engine, path, tensors);
        ulong arena = engine.Allocate(s.DataLength);
        int injected = 0;
        try
        {
            RestorePlan plan = RestorePlan.IntoArena(s, arena);
            foreach (int kind in new[] { Core.FaultReadEio, Core.FaultShortRead, Core.FaultCopy, Core.FaultEvent })
            {
                for (long after = 0; ; after++)
                {
                    Core.FaultInject(kind, after);
                    Exception? error = null;
                    try
                    {
                        engine.Restore(plan);
                    }
                    catch (Exception e)
                    {
                        error = e;
                    }
                    if (Core.FaultInject(Core.FaultNone, -1) == 0)
                        break;
                    injected++;
                    Assert.That(error, Is.InstanceOf<ThawException>().Or.InstanceOf<IOException>(), $"fault {kind} at {after}");
                    Assert.That(error!.Message, Does.Contain(path));
                    Assert.DoesNotThrow(() => engine.Restore(plan, new RestoreOptions { Verify = true }));
                }
            }
        }
        finally
        {
            engine.Free(arena);
            tensors.ForEach(t => t.Dispose());
        }
        TestContext.Out.WriteLine($"restore faults injected: {injected}");
        Assert.That(injected, Is.GreaterThan(20));
    }

    private static void Run(string arguments)
    {
        ThawCli.Result r = ThawCli.Run(arguments);
        Assert.That(r.ExitCode, Is.Zero, r.Stderr);
    }
}
