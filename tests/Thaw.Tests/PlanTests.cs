using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

public class PlanTests
{
    private static Snapshot MakeSnapshot(params long[] lengths)
    {
        var specs = lengths.Select((n, i) => new TensorSpec($"t{i}", DType.U8, [n])).ToList();
        SnapshotLayout layout = SnapshotLayout.Create(specs);
        byte[] header = layout.EncodeHeader(new uint[specs.Count]);
        return SnapshotReader.Parse("/virtual/plan.thaw", header, layout.FileLength);
    }

    private static List<RestoreTarget> IntoOneBuffer(Snapshot s, ulong address) =>
        s.Tensors.Select(t => new RestoreTarget(t.Name, address + (ulong)t.Offset, t.Length)).ToList();

    [Test]
    public void AdjacentRegionsShareOneExtentAndMergeIntoOneSegmentWhenDestinationsAreContiguous()
    {
        Snapshot s = MakeSnapshot(4096, 8192, 4096);
        RestorePlan plan = RestorePlan.Create(s, IntoOneBuffer(s, 0x10000));
        Assert.That(plan.ExtentCount, Is.EqualTo(1));
        Assert.That(plan.SegmentCount, Is.EqualTo(1));
        Assert.That(plan.Segments[0].Length, Is.EqualTo(16384UL));
        Assert.That(plan.Extents[0].FileOffset, Is.EqualTo((ulong)s.DataOffset));
        Assert.That(plan.Bytes, Is.EqualTo(16384));
    }

    [Test]
    public void PaddingOrScatteredDestinationsKeepSegmentsApart()
    {
        Snapshot s = MakeSnapshot(100, 100);  // region 1 starts at 4096: padding between them
        RestorePlan padded = RestorePlan.Create(s, IntoOneBuffer(s, 0x10000));
        Assert.That(padded.ExtentCount, Is.EqualTo(1));
        Assert.That(padded.SegmentCount, Is.EqualTo(2));

        Snapshot dense = MakeSnapshot(4096, 4096);
        RestorePlan scattered = RestorePlan.Create(dense, [new RestoreTarget("t1", 0x90000, 4096), new RestoreTarget("t0", 0x10000, 4096)]);
        Assert.That(scattered.SegmentCount, Is.EqualTo(2));
        Assert.That(scattered.Segments[0].Region, Is.EqualTo(0u), "segments follow file order");
        RestorePlan verified = RestorePlan.Create(dense, IntoOneBuffer(dense, 0x10000), mergeSegments: false);
        Assert.That(verified.SegmentCount, Is.EqualTo(2));
    }

    [Test]
    public void AdjacentDestinationsInDifferentAllocationsAreNotMerged()
    {
        Snapshot s = MakeSnapshot(4096, 4096);
        List<RestoreTarget> targets = IntoOneBuffer(s, 0x10000);
        Assert.That(RestorePlan.Create(s, targets, allocations: [0x10000, 0x11000]).SegmentCount, Is.EqualTo(2));
        Assert.That(RestorePlan.Create(s, targets, allocations: [0x10000, 0x10000]).SegmentCount, Is.EqualTo(1));
    }

    [Test]
    public void DistantRegionsGetSeparateExtents()
    {
        Snapshot s = MakeSnapshot(4096, RestorePlan.MaxExtentGap + 8192, 4096);
        RestorePlan plan = RestorePlan.Create(s, [new RestoreTarget("t0", 0x1000, 4096), new RestoreTarget("t2", 0x2000, 4096)]);
        Assert.That(plan.ExtentCount, Is.EqualTo(2));
        Assert.That(plan.Bytes, Is.EqualTo(8192));
    }

    [Test]
    public void MismatchesNameTheTensorAndWhatDiffers()
    {
        Snapshot s = MakeSnapshot(64);
        Assert.That(() => RestorePlan.Create(s, [new RestoreTarget("nope", 1, 64)]),
            Throws.TypeOf<ThawMismatchException>().With.Message.Contains("no tensor 'nope'"));
        Assert.That(() => RestorePlan.Create(s, [new RestoreTarget("t0", 1, 63)]),
            Throws.TypeOf<ThawMismatchException>().With.Message.Contains("holds 63 bytes"));
        Assert.That(() => RestorePlan.Create(s, [new RestoreTarget("t0", 1, 64, DType.F16)]),
            Throws.TypeOf<ThawMismatchException>().With.Message.Contains("U8 in the snapshot"));
        Assert.That(() => RestorePlan.Create(s, [new RestoreTarget("t0", 1, 64, Shape: [8, 8])]),
            Throws.TypeOf<ThawMismatchException>().With.Message.Contains("shape [64]"));
        Assert.That(() => RestorePlan.Create(s, [new RestoreTarget("t0", 1, 64), new RestoreTarget("t0", 2, 64)]),
            Throws.TypeOf<ThawMismatchException>().With.Message.Contains("twice"));
    }
}
