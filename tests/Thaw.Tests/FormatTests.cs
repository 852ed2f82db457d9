using System.Buffers.Binary;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

public class FormatTests
{
    private TestFiles _files = null!;
    private ThawEngine _engine = null!;

    [SetUp]
    public void SetUp()
    {
        _files = new TestFiles();
        _engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 64 << 10, StagingBytes = 1 << 20, IoThreads = 3 });
    }

    [TearDown]
    public void TearDown()
    {
        _engine.Dispose();
        _files.Dispose();
    }

    private static IEnumerable<DType> AllDTypes() => Enum.GetValues<DType>();

    [TestCaseSource(nameof(AllDTypes))]
    public void EveryDTypeRoundTripsBitExactly(DType dtype)
    {
        long[] shape = dtype.BitsPerElement() switch { 4 => [6, 10], 6 => [4, 12], _ => [7, 33] };
        using var tensor = new TestFiles.HostTensor("weights." + dtype, dtype, shape, seed: (int)dtype);
        using var scalar = new TestFiles.HostTensor("scalar", DType.F32, [], seed: 99);
        string path = _files.PathOf("all.thaw");
        TestFiles.Freeze(_engine, path, [tensor, scalar]);

        Snapshot s = SnapshotReader.Read(path);
        Assert.That(s.Tensors.Select(t => t.Name), Is.EqualTo(new[] { tensor.Name, "scalar" }));
        TensorEntry entry = s.Tensors[0];
        Assert.That(entry.DType, Is.EqualTo(dtype));
        Assert.That(entry.Shape, Is.EqualTo(shape));
        Assert.That(entry.Length, Is.EqualTo(tensor.Bytes.Length));
        Assert.That(entry.Offset % SnapshotFormat.Alignment, Is.Zero);
        Assert.That(s.Tensors[1].Shape, Is.Empty);

        byte[] back = new byte[tensor.Bytes.Length];
        byte[] scalarBack = new byte[4];
        unsafe
        {
            fixed (byte* p = back)
            fixed (byte* q = scalarBack)
                _engine.RestoreInto(s, [new RestoreTarget(tensor.Name, (ulong)p, back.Length, dtype, shape),
                    new RestoreTarget("scalar", (ulong)q, 4)], new RestoreOptions { Verify = true });
        }
        Assert.That(back, Is.EqualTo(tensor.Bytes));
        Assert.That(scalarBack, Is.EqualTo(scalar.Bytes));
    }

    [Test]
    public void HeaderCarriesMetadataAndParallelLayout()
    {
        using var t = new TestFiles.HostTensor("w", DType.F16, [64], 1);
        string path = _files.PathOf("meta.thaw");
        Thaw.Interop.Freeze.SnapshotWriter.Write(_engine, path, [t.Source],
            new Dictionary<string, string> { ["thaw.model_fingerprint"] = "abc123", ["name"] = "llama ü" }, tpRank: 2, tpWorldSize: 4, sourceIsHost: true);
        Snapshot s = SnapshotReader.Read(path);
        Assert.That(s.TpRank, Is.EqualTo(2));
        Assert.That(s.TpWorldSize, Is.EqualTo(4));
        Assert.That(s.Metadata["thaw.model_fingerprint"], Is.EqualTo("abc123"));
        Assert.That(s.Metadata["name"], Is.EqualTo("llama ü"));
        Assert.That(s.FileLength % SnapshotFormat.Alignment, Is.Zero);
    }

    private string ValidSnapshot()
    {
        using var a = new TestFiles.HostTensor("a", DType.F32, [1000], 1);
        using var b = new TestFiles.HostTensor("b", DType.BF16, [3, 5000], 2);
        string path = _files.PathOf("valid.thaw");
        TestFiles.Freeze(_engine, path, [a, b]);
        return path;
    }

    private string Mutated(string source, Action<byte[]> mutate, string name = "mutated.thaw")
    {
        byte[] bytes = File.ReadAllBytes(source);
        mutate(bytes);
        string path = _files.PathOf(name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Test]
    public void WrongMagicIsForeign()
    {
        string path = Mutated(ValidSnapshot(), b => b[0] = (byte)'X');
        var e = Assert.Throws<ThawFormatException>(() => SnapshotReader.Read(path))!;
        Assert.That(e.Message, Does.Contain(path).And.Contain("not a Thaw snapshot"));
    }

    [Test]
    public void UnknownVersionIsRefused()
    {
        string path = Mutated(ValidSnapshot(), b => BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), 7));
        Assert.That(() => SnapshotReader.Read(path), Throws.TypeOf<ThawFormatException>().With.Message.Contains("version 7"));
    }

    [Test]
    public void CorruptHeaderByteFailsTheHeaderChecksum()
    {
        string path = Mutated(ValidSnapshot(), b => b[70] ^= 0x10);
        Assert.That(() => SnapshotReader.Read(path), Throws.TypeOf<ThawFormatException>().With.Message.Contains("header is corrupt"));
    }

    [Test]
    public void TruncatedFileIsReportedWithBothSizes()
    {
        string valid = ValidSnapshot();
        byte[] bytes = File.ReadAllBytes(valid);
        string path = _files.PathOf("short.thaw");
        File.WriteAllBytes(path, bytes[..(bytes.Length - 4096)]);
        Assert.That(() => SnapshotReader.Read(path), Throws.TypeOf<ThawFormatException>().With.Message.Contains("truncated"));
        File.WriteAllBytes(path, bytes[..40]);
        Assert.That(() => SnapshotReader.Read(path), Throws.TypeOf<ThawFormatException>().With.Message.Contains("preamble"));
    }

    [Test]
    public void CorruptDataIsCaughtByVerifyNamingTheRegion()
    {
        string valid = ValidSnapshot();
        Snapshot s = SnapshotReader.Read(valid);
        long offsetOfB = s.FileOffsetOf(s.Tensors[1]) + 1234;
        string path = Mutated(valid, b => b[offsetOfB] ^= 1);
        Snapshot corrupt = SnapshotReader.Read(path); // the header is intact
        var e = Assert.Throws<ThawChecksumException>(() => _engine.Verify(corrupt))!;
        Assert.That(e.Message, Does.Contain(path).And.Contain("region 1"));
        Assert.DoesNotThrow(() => _engine.Verify(s));
    }

    [Test]
    public void RestoresCheckEveryRegionByDefaultAndVerifyFalseSkipsTheCheck()
    {
        string valid = ValidSnapshot();
        Snapshot s = SnapshotReader.Read(valid);
        long offsetOfB = s.FileOffsetOf(s.Tensors[1]) + 1234;
        string path = Mutated(valid, b => b[offsetOfB] ^= 1);
        Snapshot corrupt = SnapshotReader.Read(path);
        ulong arena = _engine.Allocate(s.DataLength);
        try
        {
            Assert.That(_engine.Restore(RestorePlan.IntoArena(s, arena)).Verified, Is.True);
            var e = Assert.Throws<ThawChecksumException>(() => _engine.Restore(RestorePlan.IntoArena(corrupt, arena)))!;
            Assert.That(e.Message, Does.Contain(path).And.Contain("region 1"));
            RestoreResult skipped = _engine.Restore(RestorePlan.IntoArena(corrupt, arena), new RestoreOptions { Verify = false });
            Assert.That(skipped.Verified, Is.False);
            Assert.That(skipped.Bytes, Is.EqualTo(corrupt.TensorBytes));
        }
        finally
        {
            _engine.Free(arena);
        }
    }

    [Test]
    public void HeaderThatLiesAboutARegionIsRefusedEvenWithAValidCrc()
    {
        string valid = ValidSnapshot();
        // Rewrite tensor a's length field, then re-seal the header CRC so only the semantic check can catch it.
        string path = Mutated(valid, bytes =>
        {
            long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16));
            int lengthField = SnapshotFormat.PreambleSize + 2 + 1 + 1 + 1 + 8 + 8; // entry "a": name, dtype, ndim, 1 dim, offset
            BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(lengthField), 1 << 30);
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), 0);
            uint crc = Thaw.Interop.Native.Crc32C.Compute(bytes.AsSpan(0, (int)headerLength));
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), crc);
        });
        Assert.That(() => SnapshotReader.Read(path),
            Throws.TypeOf<ThawFormatException>().With.Message.Contains("tensor 'a'").And.Message.Contains("disagrees"));
    }

    [Test]
    public void HugeCountsInAShortHeaderAreRefusedBeforeAllocating()
    {
        string path = Mutated(ValidSnapshot(), bytes =>
        {
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(40), uint.MaxValue);
            long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16));
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), 0);
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), Thaw.Interop.Native.Crc32C.Compute(bytes.AsSpan(0, (int)headerLength)));
        });
        Assert.That(() => SnapshotReader.Read(path), Throws.TypeOf<ThawFormatException>().With.Message.Contains("cannot fit"));
    }

    [Test]
    public void LayoutRefusesRepeatedNamesAndImpossibleRanks()
    {
        var spec = new TensorSpec("x", DType.F16, [2]);
        Assert.Throws<ArgumentException>(() => SnapshotLayout.Create([spec, spec]));
        Assert.Throws<ArgumentException>(() => SnapshotLayout.Create([spec], tpRank: 2, tpWorldSize: 2));
        Assert.Throws<ArgumentException>(() => SnapshotLayout.Create([new TensorSpec("odd", DType.F4, [3])]));
    }
}
