using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Tests;

/// <summary>Borrowed links through ThawEngine on the mock devices: every byte lands whichever link
/// carried it, the links say how many bytes each served, a helper that cannot be set up or fails
/// mid-restore gives its share back to the destination (one line says so), and the option's policy
/// (parsing, $THAW_BORROW over the caller, the only-device case) holds. Faults are process-wide.</summary>
[NonParallelizable]
public class BorrowedLinksTests
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

    /// <summary>Restores a generated model into an arena of mock device 3 with <paramref name="borrow"/>,
    /// checks every byte, and returns the result.</summary>
    private RestoreResult RestoreChecked(BorrowedLinks borrow)
    {
        List<TestFiles.HostTensor> tensors = RestoreTests.ModelTensors(40, 8);
        using var engine = ThawEngine.Create(DeviceKind.Mock, 3, new EngineSettings { ChunkBytes = 64 << 10, StagingBytes = 1 << 20, IoThreads = 2 });
        Snapshot s = TestFiles.Freeze(engine, _files.PathOf("model.thaw"), tensors);
        ulong arena = engine.Allocate(s.DataLength);
        try
        {
            RestoreResult r = engine.Restore(RestorePlan.IntoArena(s, arena), new RestoreOptions { Verify = true, Borrow = borrow });
            Assert.That(r.Bytes, Is.EqualTo(s.TensorBytes));
            for (int i = 0; i < tensors.Count; i++)
            {
                byte[] back = new byte[tensors[i].Bytes.Length];
                engine.CopyToHost(arena + (ulong)s.Tensors[i].Offset, back);
                Assert.That(back, Is.EqualTo(tensors[i].Bytes), tensors[i].Name);
            }
            if (r.Links.Count > 0)
                Assert.That(r.Links.Sum(l => l.Bytes), Is.EqualTo(s.TensorBytes), "each byte counted on the one link that delivered it");
            return r;
        }
        finally
        {
            engine.Free(arena);
            tensors.ForEach(t => t.Dispose());
        }
    }

    [Test]
    public void HelpersCarrySharesAndTheSummaryNamesEachLink()
    {
        RestoreResult r = RestoreChecked(BorrowedLinks.Of(0, 5));
        Assert.That(r.Links.Select(l => (l.Device, l.Borrowed)), Is.EqualTo(new[] { ("mock-3", false), ("mock-0", true), ("mock-5", true) }));
        Assert.That(r.Links.All(l => l.Bytes > 0 && l.Status == 0 && l.Note == ""));
        Assert.That(r.LinksSummary, Does.Match(@"^links: mock-3 [0-9.]+ [kM]B direct, mock-0 [0-9.]+ [kM]B borrowed, mock-5 [0-9.]+ [kM]B borrowed$"));
        Assert.That(RestoreChecked(BorrowedLinks.Off).Links, Is.Empty);
    }

    [Test]
    public void AHelperThatCannotBeSetUpIsLeftOutAndOneFailingMidRestoreIsDropped()
    {
        Core.FaultInject(Core.FaultBorrowSetup, 0);
        RestoreResult left = RestoreChecked(BorrowedLinks.Of(1, 2));
        Assert.That(Core.FaultInject(Core.FaultNone, -1), Is.EqualTo(1));
        LinkShare leftOut = left.Links.Single(l => l.Status != 0);
        Assert.That(leftOut.Lanes, Is.Zero);
        Assert.That(leftOut.Note, Does.Contain("left out").And.Contain("injected fault"));
        Assert.That(left.LinksSummary, Does.Contain($"{leftOut.Device} left out"));

        Core.FaultInject(Core.FaultBorrowCopy, 4);
        RestoreResult dropped = RestoreChecked(BorrowedLinks.Of(1, 2));
        Assert.That(Core.FaultInject(Core.FaultNone, -1), Is.EqualTo(1));
        LinkShare failed = dropped.Links.Single(l => l.Status != 0);
        Assert.That(failed.Note, Does.Contain("dropped mid-restore").And.Contain("the destination's own link copied the rest"));
        Assert.That(dropped.Links[0].TakenOverBytes, Is.Positive);
        Assert.That(dropped.LinksSummary, Does.Contain("taken over").And.Contain($"{failed.Device} ").And.Contain("(dropped)"));
    }

    [Test]
    public void TheOptionIsBoundedBeforeAnyByteMoves()
    {
        Assert.That(() => RestoreChecked(BorrowedLinks.Of(3)), Throws.ArgumentException.With.Message.Contains("the destination itself"));
        Assert.That(() => RestoreChecked(BorrowedLinks.Of(9)), Throws.ArgumentException.With.Message.Contains("no mock device 9"));
        Assert.That(() => RestoreChecked(BorrowedLinks.Of(1) with { Weights = [1, double.NaN] }),
            Throws.ArgumentException.With.Message.Contains("each must lie in"));
        Assert.That(() => RestoreChecked(BorrowedLinks.Of(1) with { Weights = [1] }),
            Throws.ArgumentException.With.Message.Contains("1 weights for 2 links"));
    }

    [Test]
    public void ParsingTakesTheWordsAListOrTheJsonShapes()
    {
        Assert.That(BorrowedLinks.Parse(" auto "), Is.SameAs(BorrowedLinks.Auto));
        Assert.That(BorrowedLinks.Parse("off"), Is.SameAs(BorrowedLinks.Off));
        Assert.That(BorrowedLinks.Parse("1, 2,7").Devices, Is.EqualTo(new[] { 1, 2, 7 }));
        Assert.That(() => BorrowedLinks.Parse("1;2"), Throws.ArgumentException.With.Message.Contains("auto, off or a list"));
        Assert.That(() => BorrowedLinks.Parse(string.Join(",", Enumerable.Range(0, 16))), Throws.ArgumentException.With.Message.Contains("at most 15"));
        BorrowedLinks full = BorrowedLinks.ParseJson("""{"devices": [4, 5], "weights": [2, 1, 1], "lanes": 3}""");
        Assert.That((full.Mode, full.Devices, full.Weights, full.LanesPerHelper), Is.EqualTo((BorrowMode.Devices, new[] { 4, 5 }, new[] { 2.0, 1, 1 }, 3)));
        Assert.That(BorrowedLinks.ParseJson("\"auto\"").Mode, Is.EqualTo(BorrowMode.Auto));
        Assert.That(BorrowedLinks.ParseJson("false").Mode, Is.EqualTo(BorrowMode.Off));
        Assert.That(BorrowedLinks.ParseJson("[1]").Devices, Is.EqualTo(new[] { 1 }));
        foreach (string bad in new[] { "3", "\"fast\"", "[1.5]", "[\"1\"]", """{"lanes": 9}""", """{"devices": "auto", "weights": [1]}""", """{"x": 1}""" })
            Assert.That(() => BorrowedLinks.ParseJson(bad), Throws.ArgumentException, bad);
    }

    [Test]
    public void TheEnvironmentOverridesTheCallerAndTheOnlyDeviceBorrowsNothing()
    {
        Assert.That(BorrowedLinks.Decide(BorrowedLinks.Of(1), "off"), Is.SameAs(BorrowedLinks.Off));
        Assert.That(BorrowedLinks.Decide(BorrowedLinks.Off, "2,3").Devices, Is.EqualTo(new[] { 2, 3 }));
        Assert.That(BorrowedLinks.Decide(BorrowedLinks.Of(1), " ").Devices, Is.EqualTo(new[] { 1 }));
        Assert.That(BorrowedLinks.Decide(null, null), Is.SameAs(BorrowedLinks.Off));

        (int[] helpers, string? note) = BorrowedLinks.Auto.Resolve(DeviceKind.Cuda, 0, 1);
        Assert.That(helpers, Is.Empty);
        Assert.That(note, Is.EqualTo("borrowed links: cuda:0 is the only GPU; the restore uses its own link"));
        Assert.That(BorrowedLinks.Of(1, 2).Resolve(DeviceKind.Cuda, 0, 1).Helpers, Is.Empty);
        Assert.That(BorrowedLinks.Auto.Resolve(DeviceKind.Cuda, 2, 8), Is.EqualTo((new[] { 0, 1, 3, 4, 5, 6, 7 }, (string?)null)));
        Assert.That(BorrowedLinks.Off.Resolve(DeviceKind.Mock, 0, 8).Helpers, Is.Empty);
    }

    [Test]
    public void TheSummarySaysWhichLinksServedHowManyBytes()
    {
        LinkShare[] links =
        [
            new("cuda:0", 0, false, 5_100_000_000, 0, 1_200_000_000, 16, 0, ""),
            new("cuda:1", 1, true, 5_000_000_000, 0, 0, 2, 0, ""),
            new("cuda:2", 2, true, 3_000, 0, 0, 2, Core.ErrCuda, "dropped"),
            new("cuda:3", 3, true, 0, 0, 0, 0, Core.ErrCuda, "left out"),
        ];
        Assert.That(LinkShare.Summary(links), Is.EqualTo(
            "links: cuda:0 5.1 GB direct (1.2 GB of it taken over), cuda:1 5.0 GB borrowed, cuda:2 3.0 kB borrowed (dropped), cuda:3 left out"));
    }
}
