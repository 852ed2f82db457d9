using System.Buffers.Binary;
using System.Text;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;

namespace Thaw.Tests;

/// <summary>Thousands of seeded, reproducible mutations of valid snapshots and safetensors
/// files. Every case must end in success or a typed error with a message; never another
/// exception, a crash, an out-of-range read, or an allocation a lying header asked for.</summary>
public class HostileFileTests
{
    private const int SnapshotCases = 3000;
    private const int SafetensorsCases = 2000;
    private TestFiles _files = null!;

    [SetUp]
    public void SetUp() => _files = new TestFiles();

    [TearDown]
    public void TearDown() => _files.Dispose();

    private static bool IsTyped(Exception e) =>
        e is ThawFormatException or ThawChecksumException or ThawMismatchException ||
        (e is ThawException t && t.Kind == ThawErrorKind.Format);

    [Test]
    public void MutatedSnapshotsFailCleanly()
    {
        var tensors = Enumerable.Range(0, 6).Select(i => new TestFiles.HostTensor($"layer.{i}.weight", (DType)(1 + i * 3 % 20), [3, 10 + i * 5], i)).ToList();
        using var engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 4096, StagingBytes = 4096 * 8, IoThreads = 2 });
        byte[] valid = File.ReadAllBytes(TestFiles.Freeze(engine, _files.PathOf("valid.thaw"), tensors).Path);
        tensors.ForEach(t => t.Dispose());
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(valid.AsSpan(16));
        var outcomes = new Dictionary<string, int>();
        string path = _files.PathOf("case.thaw");
        byte[] arena = new byte[1 << 20];
        unsafe
        {
            fixed (byte* arenaPointer = arena)
            {
                for (int seed = 0; seed < SnapshotCases; seed++)
                {
                    var random = new Random(seed);
                    byte[] bytes = Mutate(valid, headerLength, random, out string mutation);
                    File.WriteAllBytes(path, bytes);
                    string outcome;
                    long before = GC.GetAllocatedBytesForCurrentThread();
                    try
                    {
                        Snapshot s = SnapshotReader.Read(path);
                        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.LessThan(16 * bytes.Length + (1 << 20)),
                            $"seed {seed} ({mutation}): allocation out of proportion to the file");
                        engine.Verify(s);
                        if (s.DataLength <= arena.Length)
                            engine.Restore(RestorePlan.IntoArena(s, (ulong)arenaPointer));
                        outcome = "accepted (mutation hit padding or was a no-op)";
                    }
                    catch (Exception e) when (IsTyped(e))
                    {
                        Assert.That(e.Message, Does.Contain(path), $"seed {seed} ({mutation}): the error names the file");
                        outcome = e.GetType().Name;
                    }
                    catch (Exception e)
                    {
                        Assert.Fail($"seed {seed} ({mutation}): untyped {e.GetType().Name}: {e.Message}");
                        return;
                    }
                    outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
                }
            }
        }
        TestContext.Out.WriteLine($"hostile snapshots: {SnapshotCases} cases: " +
            string.Join(", ", outcomes.OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Value} {kv.Key}")));
        Assert.That(outcomes.Where(kv => kv.Key.StartsWith("Thaw")).Sum(kv => kv.Value), Is.GreaterThan(SnapshotCases / 2));
    }

    /// <summary>One mutation: flip, truncate, extend, or rewrite a header field (re-sealing
    /// the header CRC, so the semantic checks behind the CRC are exercised too).</summary>
    private static byte[] Mutate(byte[] valid, long headerLength, Random random, out string mutation)
    {
        byte[] bytes = (byte[])valid.Clone();
        switch (random.Next(6))
        {
            case 0:
                int at = random.Next(bytes.Length);
                bytes[at] ^= (byte)(1 << random.Next(8));
                mutation = $"flip byte {at}";
                return bytes;
            case 1:
                int length = random.Next(bytes.Length);
                mutation = $"truncate to {length}";
                return bytes[..length];
            case 2:
                int extra = random.Next(1, 9000);
                mutation = $"extend by {extra}";
                return bytes.Concat(TestFiles.RandomBytes(extra, random.Next())).ToArray();
            default:
                // A field-sized write at a random header position, with an edge or random value.
                int width = new[] { 1, 2, 4, 8 }[random.Next(4)];
                int position = random.Next((int)headerLength - width + 1);
                ulong value = random.Next(5) switch
                {
                    0 => 0,
                    1 => ulong.MaxValue,
                    2 => (ulong)random.NextInt64(),
                    3 => 4096UL * (ulong)random.Next(1, 64),
                    _ => (ulong)random.Next(256),
                };
                Span<byte> field = bytes.AsSpan(position, width);
                switch (width)
                {
                    case 1: field[0] = (byte)value; break;
                    case 2: BinaryPrimitives.WriteUInt16LittleEndian(field, (ushort)value); break;
                    case 4: BinaryPrimitives.WriteUInt32LittleEndian(field, (uint)value); break;
                    default: BinaryPrimitives.WriteUInt64LittleEndian(field, value); break;
                }
                long sealedLength = Math.Min((long)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16)), bytes.Length);
                if (position is < 56 or >= 60 && sealedLength >= 64)
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), 0);
                    BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), Thaw.Interop.Native.Crc32C.Compute(bytes.AsSpan(0, (int)sealedLength)));
                }
                mutation = $"write {value:x} ({width} bytes) at header byte {position}, CRC re-sealed";
                return bytes;
        }
    }

    [Test]
    public void MutatedSafetensorsHeadersFailCleanly()
    {
        var tensors = new (string, string, long[], byte[])[]
        {
            ("embed", "F16", [40, 8], TestFiles.RandomBytes(640, 1)),
            ("norm", "F32", [8], TestFiles.RandomBytes(32, 2)),
            ("proj", "BF16", [8, 8], TestFiles.RandomBytes(128, 3)),
        };
        string source = _files.PathOf("valid.safetensors");
        TestFiles.WriteSafetensors(source, tensors);
        byte[] valid = File.ReadAllBytes(source);
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(valid);
        string json = Encoding.UTF8.GetString(valid, 8, headerLength);
        using var engine = ThawEngine.Create(DeviceKind.Mock);
        string path = _files.PathOf("case.safetensors");
        string output = _files.PathOf("case.thaw");
        var outcomes = new Dictionary<string, int>();
        for (int seed = 0; seed < SafetensorsCases; seed++)
        {
            var random = new Random(seed);
            byte[] bytes = MutateSafetensors(valid, json, random, out string mutation);
            File.WriteAllBytes(path, bytes);
            string outcome;
            try
            {
                CheckpointConverter.Convert(path, output, engine);
                outcome = "converted";
            }
            catch (ThawFormatException e)
            {
                Assert.That(e.Message, Does.Contain(path), $"seed {seed} ({mutation})");
                outcome = "ThawFormatException";
            }
            catch (Exception e)
            {
                Assert.Fail($"seed {seed} ({mutation}): untyped {e.GetType().Name}: {e.Message}");
                return;
            }
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
        }
        TestContext.Out.WriteLine($"hostile safetensors: {SafetensorsCases} cases: " +
            string.Join(", ", outcomes.Select(kv => $"{kv.Value} {kv.Key}")));
        Assert.That(outcomes.GetValueOrDefault("ThawFormatException"), Is.GreaterThan(SafetensorsCases / 2));
    }

    private static byte[] MutateSafetensors(byte[] valid, string json, Random random, out string mutation)
    {
        switch (random.Next(4))
        {
            case 0:
            {
                // Replace one number of the JSON with a lie.
                var numbers = System.Text.RegularExpressions.Regex.Matches(json, "[0-9]+");
                var m = numbers[random.Next(numbers.Count)];
                string lie = random.Next(4) switch { 0 => "-1", 1 => "18446744073709551615", 2 => random.Next(100000).ToString(), _ => "1e30" };
                mutation = $"number {m.Value} at {m.Index} -> {lie}";
                return Rebuild(valid, json[..m.Index] + lie + json[(m.Index + m.Length)..]);
            }
            case 1:
            {
                int cut = random.Next(json.Length);
                mutation = $"JSON cut at {cut}";
                return Rebuild(valid, json[..cut]);
            }
            case 2:
            {
                byte[] bytes = (byte[])valid.Clone();
                int at = random.Next(bytes.Length);
                bytes[at] ^= (byte)(1 << random.Next(8));
                mutation = $"flip byte {at}";
                return bytes;
            }
            default:
            {
                byte[] bytes = (byte[])valid.Clone();
                ulong length = random.Next(3) switch { 0 => ulong.MaxValue, 1 => (ulong)random.Next(1 << 20), _ => 0 };
                BinaryPrimitives.WriteUInt64LittleEndian(bytes, length);
                mutation = $"header length {length}";
                return bytes;
            }
        }
    }

    private static byte[] Rebuild(byte[] valid, string json)
    {
        int oldLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(valid);
        byte[] header = Encoding.UTF8.GetBytes(json);
        byte[] prefix = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        return prefix.Concat(header).Concat(valid.Skip(8 + oldLength)).ToArray();
    }
}
