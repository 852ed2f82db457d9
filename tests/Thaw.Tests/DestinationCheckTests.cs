using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>DestinationCheck: the one place a restore is checked against its destination as a whole.</summary>
public class DestinationCheckTests
{
    private TestFiles _files = null!;
    private Snapshot _snapshot = null!;

    [SetUp]
    public void SetUp()
    {
        _files = new TestFiles();
        using var engine = ThawEngine.Create(DeviceKind.Mock);
        using var a = new TestFiles.HostTensor("embed.weight", DType.F32, [4, 2], 1);
        using var b = new TestFiles.HostTensor("norm.weight", DType.F32, [2], 2);
        _snapshot = TestFiles.Freeze(engine, _files.PathOf("m.thaw"), [a, b], new Dictionary<string, string>
        {
            ["thaw.aliases"] = "{\"lm_head.weight\": \"embed.weight\"}",
            ["thaw.vllm.dtype"] = "torch.float32",
        });
    }

    [TearDown]
    public void TearDown() => _files.Dispose();

    private static RestoreTarget Target(string name, ulong address) => new(name, address, 32);

    [Test]
    public void AliasesResolveToTheirRegionAndEachRegionIsPlannedOnce()
    {
        List<RestoreTarget> plan = DestinationCheck.Resolve(_snapshot,
            [Target("lm_head.weight", 0x2000), Target("embed.weight", 0x1000), Target("norm.weight", 0x3000)],
            new DestinationRequirements(Strict: true));
        Assert.That(plan.Select(t => (t.Name, t.Address)),
            Is.EquivalentTo(new[] { ("embed.weight", 0x1000UL), ("norm.weight", 0x3000UL) }));
        List<RestoreTarget> onlyAlias = DestinationCheck.Resolve(_snapshot, [Target("lm_head.weight", 0x2000)], new DestinationRequirements());
        Assert.That(onlyAlias.Single(), Is.EqualTo(Target("embed.weight", 0x2000)));
    }

    [Test]
    public void StrictNamesWhatEachSideLacks()
    {
        var e = Assert.Throws<ThawMismatchException>(() => DestinationCheck.Resolve(_snapshot,
            [Target("embed.weight", 0x1000), Target("extra", 0x4000)], new DestinationRequirements(Strict: true)));
        Assert.That(e!.Message, Does.Contain("m.thaw").And.Contain("missing from the destination 'lm_head.weight', 'norm.weight'")
            .And.Contain("missing from the snapshot 'extra'"));
        // Without strict, names the snapshot lacks are left alone.
        Assert.That(DestinationCheck.Resolve(_snapshot, [Target("extra", 0x4000)], new DestinationRequirements()), Is.Empty);
    }

    [Test]
    public void RequiredMetadataIsComparedBeforeAnythingElse()
    {
        var differs = Assert.Throws<ThawMismatchException>(() => DestinationCheck.Resolve(_snapshot, [],
            DestinationRequirements.Parse("{\"metadata\": {\"thaw.vllm.dtype\": \"torch.float64\"}}")));
        Assert.That(differs!.Message, Does.Contain("frozen with thaw.vllm.dtype='torch.float32', the destination has thaw.vllm.dtype='torch.float64'"));
        var missing = Assert.Throws<ThawMismatchException>(() => DestinationCheck.Resolve(_snapshot, [],
            DestinationRequirements.Parse("{\"metadata\": {\"thaw.vllm.gpu\": \"H100\"}, \"missing_hint\": \"freeze it again\"}")));
        Assert.That(missing!.Message, Does.Contain("has no metadata 'thaw.vllm.gpu' (freeze it again)"));
        Assert.Throws<ThawMismatchException>(() => DestinationCheck.Resolve(_snapshot, [],
            DestinationRequirements.Parse("{\"metadata\": {\"thaw.vllm.dtype\": null}}")));
    }

    [TestCase("[]")]
    [TestCase("{\"strict\": 1}")]
    [TestCase("{\"metadata\": {\"k\": 3}}")]
    [TestCase("{\"other\": true}")]
    [TestCase("{\"strict\": true, \"strict\": false}")]
    public void MalformedRequirementsAreArgumentErrors(string json) =>
        Assert.Throws<ArgumentException>(() => DestinationRequirements.Parse(json));

    [Test]
    public void AnAliasThatNamesNoRegionIsAFormatError()
    {
        using var engine = ThawEngine.Create(DeviceKind.Mock);
        using var a = new TestFiles.HostTensor("w", DType.F32, [2], 3);
        Snapshot s = TestFiles.Freeze(engine, _files.PathOf("bad.thaw"), [a],
            new Dictionary<string, string> { ["thaw.aliases"] = "{\"v\": \"absent\"}" });
        var e = Assert.Throws<ThawFormatException>(() => DestinationCheck.Resolve(s, [Target("w", 0x1000)], new DestinationRequirements()));
        Assert.That(e!.Message, Does.Contain("bad.thaw").And.Contain("alias 'v'"));
    }
}
