using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;

namespace Thaw.Tests;

/// <summary>A time-bounded mutation loop over the C# header parsers, from the seeds in
/// tests/fuzz/corpus/{snapshot,safetensors}. Coverage-free (SharpFuzz needs a libFuzzer driver
/// that no registry here serves), so the mutations know the formats: the snapshot header CRC is
/// resealed after most mutations and JSON is mutated token by token. Each case is reproducible from
/// its seed (printed; THAW_FUZZ_SEED sets the base, THAW_FUZZ_SECONDS the time, default 15 s).
/// Oracle: a refusal is a ThawFormatException naming the file; an acceptance must satisfy the spec
/// (checked here independently of the reader) and, when its layout is the writer's, re-encode to
/// the same header bytes; no case may take longer than <see cref="HangSeconds"/>.</summary>
[NonParallelizable]
public class HeaderFuzzTests
{
    private const double HangSeconds = 2;
    private TestFiles _files = null!;

    [SetUp]
    public void SetUp() => _files = new TestFiles();

    [TearDown]
    public void TearDown() => _files.Dispose();

    private static double Seconds => double.TryParse(Environment.GetEnvironmentVariable("THAW_FUZZ_SECONDS"), out double s) ? s : 15;

    private static int BaseSeed => int.TryParse(Environment.GetEnvironmentVariable("THAW_FUZZ_SEED"), out int s) ? s : Environment.TickCount & 0xfffffff;

    private static string CorpusDirectory(string kind) =>
        Path.GetFullPath(Path.Combine(TestContext.CurrentContext.TestDirectory, "../../../../fuzz/corpus", kind));

    private sealed class Tally
    {
        public int Cases, Accepted, Refused, Crashes, Hangs, WrongAcceptances;
        public readonly List<string> Failures = [];

        public override string ToString() =>
            $"{Cases} cases: {Accepted} accepted, {Refused} refused; {Crashes} crashes, {Hangs} hangs, {WrongAcceptances} wrong acceptances";
    }

    /// <summary>Runs cases until the time is up; a failing case's bytes are kept in build/fuzz/artifacts.</summary>
    private void Loop(string kind, Func<Random, byte[]> mutate, Action<string, byte[]> check, string extension)
    {
        int baseSeed = BaseSeed;
        var tally = new Tally();
        string path = _files.PathOf("case" + extension);
        var clock = Stopwatch.StartNew();
        for (int i = 0; clock.Elapsed.TotalSeconds < Seconds; i++)
        {
            int seed = baseSeed + i;
            byte[] bytes = mutate(new Random(seed));
            File.WriteAllBytes(path, bytes);
            var one = Stopwatch.StartNew();
            string? failure = null;
            try
            {
                check(path, bytes);
                tally.Accepted++;
            }
            catch (ThawFormatException e) when (e.Message.StartsWith(path + ": "))
            {
                tally.Refused++;
                if (e.Message.Contains('\n') || e.Message.Contains('\0'))
                    failure = $"refusal is not one printable line: {e.Message}";
            }
            catch (WrongAcceptance e)
            {
                tally.WrongAcceptances++;
                failure = "wrong acceptance: " + e.Message;
            }
            catch (Exception e)
            {
                tally.Crashes++;
                failure = $"{e.GetType().Name}: {e.Message}";
            }
            if (one.Elapsed.TotalSeconds > HangSeconds)
            {
                tally.Hangs++;
                failure ??= $"took {one.Elapsed.TotalSeconds:F1} s";
            }
            tally.Cases++;
            if (failure is not null && tally.Failures.Count < 5)
            {
                string artifacts = Path.GetFullPath(Path.Combine(TestContext.CurrentContext.TestDirectory, "../../../../../build/fuzz/artifacts"));
                Directory.CreateDirectory(artifacts);
                string kept = Path.Combine(artifacts, $"csharp-{kind}-{seed}{extension}");
                File.WriteAllBytes(kept, bytes);
                tally.Failures.Add($"seed {seed} ({kept}): {failure}");
            }
        }
        TestContext.Out.WriteLine($"fuzz {kind}: base seed {baseSeed}, {Seconds} s: {tally}");
        Console.WriteLine($"fuzz {kind}: base seed {baseSeed}, {Seconds} s: {tally}");
        Assert.That(tally.Failures, Is.Empty);
        Assert.That(tally.Refused, Is.GreaterThan(0), "the mutations reach the refusals");
        Assert.That(tally.Accepted, Is.GreaterThan(0), "and some inputs stay valid, so acceptance is checked too");
    }

    private sealed class WrongAcceptance(string message) : Exception(message);

    private static void Require(bool condition, string what)
    {
        if (!condition)
            throw new WrongAcceptance(what);
    }

    // ---- snapshots ----

    [Test]
    public void SnapshotHeaderMutationLoop()
    {
        byte[][] seeds = Directory.GetFiles(CorpusDirectory("snapshot"), "*.thaw").Order().Select(File.ReadAllBytes).ToArray();
        Assert.That(seeds, Is.Not.Empty);
        using var engine = ThawEngine.Create(DeviceKind.Mock, settings: new EngineSettings { ChunkBytes = 4096, StagingBytes = 4096 * 8, IoThreads = 2 });
        Loop("snapshot", random => MutateSnapshot(seeds, random), (path, bytes) => CheckSnapshot(engine, path, bytes), ".thaw");
    }

    private static readonly ulong[] Interesting =
        [0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 4095, 4096, 4097, 0x7fffffff, 0x80000000, 0xffffffff,
         0x100000000, long.MaxValue, 1UL << 63, ulong.MaxValue, 64, 256UL << 20];

    private static byte[] MutateSnapshot(byte[][] seeds, Random random)
    {
        byte[] bytes = (byte[])seeds[random.Next(seeds.Length)].Clone();
        int headerLength = (int)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16)), (ulong)bytes.Length);
        int rounds = 1 + random.Next(4);
        for (int r = 0; r < rounds && bytes.Length > 0; r++)
        {
            int span = Math.Max(1, random.Next(4) == 0 ? bytes.Length : headerLength);
            switch (random.Next(9))
            {
                case 0:
                    bytes[random.Next(Math.Min(span, bytes.Length))] ^= (byte)(1 << random.Next(8));
                    break;
                case 1:
                    bytes[random.Next(Math.Min(span, bytes.Length))] = (byte)random.Next(256);
                    break;
                case 2:
                case 3:
                {
                    int width = new[] { 1, 2, 4, 8 }[random.Next(4)];
                    if (headerLength < width)
                        break;
                    int at = random.Next(headerLength - width + 1);
                    ulong value = Interesting[random.Next(Interesting.Length)] + (ulong)(random.Next(3) - 1);
                    Span<byte> field = bytes.AsSpan(at, width);
                    switch (width)
                    {
                        case 1: field[0] = (byte)value; break;
                        case 2: BinaryPrimitives.WriteUInt16LittleEndian(field, (ushort)value); break;
                        case 4: BinaryPrimitives.WriteUInt32LittleEndian(field, (uint)value); break;
                        default: BinaryPrimitives.WriteUInt64LittleEndian(field, value); break;
                    }
                    break;
                }
                case 4:
                    bytes = bytes[..random.Next(bytes.Length + 1)];
                    break;
                case 5:
                    bytes = [.. bytes, .. new byte[random.Next(2) == 0 ? 4096 : random.Next(1, 5000)]];
                    break;
                case 6:
                {
                    // A name or key byte turned into something a name may not hold.
                    if (headerLength <= 64)
                        break;
                    byte[] bad = [0x00, 0x0a, 0x1b, 0x7f, 0xc2, 0x85, 0xed, 0xa0, 0x80, 0xff, 0xc0, 0xaf];
                    bytes[64 + random.Next(headerLength - 64)] = bad[random.Next(bad.Length)];
                    break;
                }
                case 7:
                {
                    // Splice: a piece of another seed's header over this one's.
                    byte[] other = seeds[random.Next(seeds.Length)];
                    int from = random.Next(Math.Min(other.Length, 4096)), to = random.Next(Math.Max(1, headerLength));
                    int n = Math.Min(random.Next(1, 64), Math.Min(other.Length - from, bytes.Length - to));
                    if (n > 0)
                        Array.Copy(other, from, bytes, to, n);
                    break;
                }
                default:
                {
                    // Insert or delete bytes inside the table, shifting everything after.
                    if (headerLength <= 65 || bytes.Length <= 65)
                        break;
                    int at = 64 + random.Next(Math.Min(headerLength, bytes.Length) - 64);
                    int n = random.Next(1, 9);
                    bytes = random.Next(2) == 0
                        ? [.. bytes[..at], .. new byte[n].Select(_ => (byte)random.Next(256)), .. bytes[at..]]
                        : [.. bytes[..at], .. bytes[Math.Min(bytes.Length, at + n)..]];
                    break;
                }
            }
            headerLength = bytes.Length < 24 ? 0 : (int)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16)), (ulong)bytes.Length);
        }
        if (random.Next(10) != 0 && headerLength >= 64)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), 0);
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), Thaw.Interop.Native.Crc32C.Compute(bytes.AsSpan(0, headerLength)));
        }
        return bytes;
    }

    /// <summary>Reads the case; when accepted, checks the spec's rules on what was read, re-encodes
    /// writer-canonical layouts, and streams the regions (a checksum mismatch is a proper refusal).</summary>
    private static unsafe void CheckSnapshot(ThawEngine engine, string path, byte[] bytes)
    {
        Snapshot s = SnapshotReader.Read(path);
        Require(s.DataOffset % 4096 == 0 && s.DataLength % 4096 == 0 && s.DataOffset + s.DataLength == bytes.Length, "data section");
        Require(s.TpWorldSize >= 1 && s.TpRank < s.TpWorldSize, "rank");
        var names = new HashSet<string>(StringComparer.Ordinal);
        long end = 0;
        foreach (TensorEntry t in s.Tensors)
        {
            Require(NameRules.Problem(t.Name) is null && names.Add(t.Name), $"name {NameRules.Quote(t.Name)}");
            Require(t.Offset % 4096 == 0 && t.Offset >= end && t.Offset + t.Length <= s.DataLength, $"region of '{t.Name}'");
            Require(t.DType.ByteLength(t.Shape) == t.Length, $"length of '{t.Name}'");
            end = t.Offset + t.Length;
        }
        foreach (string key in s.Metadata.Keys)
            Require(NameRules.Problem(key) is null, $"metadata key {NameRules.Quote(key)}");
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16));
        SnapshotLayout layout = SnapshotLayout.Create(s.Tensors.Select(t => new TensorSpec(t.Name, t.DType, t.Shape)).ToList(),
            s.Metadata, s.TpRank, s.TpWorldSize);
        bool canonical = layout.Offsets.SequenceEqual(s.Tensors.Select(t => t.Offset)) && layout.DataOffset == s.DataOffset &&
                         layout.HeaderLength == headerLength && s.Metadata.Keys.SequenceEqual(s.Metadata.Keys.Order(StringComparer.Ordinal));
        if (canonical)
            Require(layout.EncodeHeader(s.Tensors.Select(t => t.Crc32C).ToArray()).AsSpan().SequenceEqual(bytes.AsSpan(0, headerLength)),
                "the header does not re-encode to its own bytes");
        try
        {
            engine.Verify(s);
        }
        catch (ThawChecksumException e)
        {
            Require(e.Message.Contains(path), "a checksum error names the file");
            throw new ThawFormatException(path, "region checksum");
        }
    }

    // ---- safetensors ----

    [Test]
    public void SafetensorsHeaderMutationLoop()
    {
        var seeds = Directory.GetFiles(CorpusDirectory("safetensors"), "*.safetensors").Order().Select(File.ReadAllBytes)
            .Select(b => (Json: Encoding.UTF8.GetString(b, 8, (int)BinaryPrimitives.ReadUInt64LittleEndian(b)), Data: b[(8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(b))..]))
            .ToArray();
        Assert.That(seeds, Is.Not.Empty);
        Loop("safetensors", random => MutateSafetensors(seeds, random), CheckSafetensors, ".safetensors");
    }

    private static readonly string[] HostileStrings =
    [
        "\\ud800", "\\udfff", "a\\ud800b", "\\ud800\\ud800", "\\udc00\\ud800", "\\u0000", "\\n", "\\u001b[2J", "\\u0085", "\\u007f",
        "", "__metadata__", "\\\"", "\\\\", "\\/", "ü", "\\u00fc", new string('x', 5000), "F16", "BF16", "F4", "I64", "BOOL",
    ];

    private static readonly string[] HostileNumbers =
    [
        "-1", "0", "1", "4", "1e30", "1.5", "-0", "18446744073709551615", "18446744073709551616", "9223372036854775807",
        "9223372036854775808", "4294967296", "1E2", "0x10", "01", "[]", "{}", "null", "true", "\"1\"",
    ];

    private static readonly Regex Tokens = new("\"(?:[^\"\\\\]|\\\\.)*\"|-?[0-9][0-9.eE+-]*|[\\[\\]{},:]", RegexOptions.Compiled);

    private static byte[] MutateSafetensors((string Json, byte[] Data)[] seeds, Random random)
    {
        var (json, data) = seeds[random.Next(seeds.Length)];
        int rounds = 1 + random.Next(3);
        for (int r = 0; r < rounds; r++)
        {
            MatchCollection tokens = Tokens.Matches(json);
            if (tokens.Count == 0)
            {
                json = "{}";
                continue;
            }
            Match m = tokens[random.Next(tokens.Count)];
            string replacement = random.Next(8) switch
            {
                0 or 1 => m.Value.StartsWith('"') ? $"\"{HostileStrings[random.Next(HostileStrings.Length)]}\"" : HostileNumbers[random.Next(HostileNumbers.Length)],
                2 => HostileNumbers[random.Next(HostileNumbers.Length)],
                3 => "",                                                   // delete a token
                4 => m.Value + "," + m.Value,                              // repeat it (repeated keys, extra items)
                5 => new string('[', random.Next(1, 12)) + m.Value + new string(']', random.Next(1, 12)),
                6 => m.Value + tokens[random.Next(tokens.Count)].Value,    // juxtapose two tokens
                _ => m.Value.Length > 1 ? m.Value.Remove(random.Next(m.Value.Length), 1) : m.Value,
            };
            json = json[..m.Index] + replacement + json[(m.Index + m.Length)..];
        }
        byte[] header = Encoding.UTF8.GetBytes(json);
        byte[] prefix = new byte[8];
        ulong length = (ulong)header.Length;
        if (random.Next(12) == 0)
            length = Interesting[random.Next(Interesting.Length)];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, length);
        byte[] bytes = [.. prefix, .. header, .. data];
        if (random.Next(6) == 0)
            bytes[random.Next(bytes.Length)] ^= (byte)(1 << random.Next(8));
        if (random.Next(10) == 0)
            bytes = bytes[..random.Next(bytes.Length + 1)];
        return bytes;
    }

    private static void CheckSafetensors(string path, byte[] bytes)
    {
        SafetensorsFile f = SafetensorsFile.Read(path);
        long dataStart = 8 + (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var names = new HashSet<string>(StringComparer.Ordinal);
        long end = dataStart;
        foreach (SafetensorsTensor t in f.Tensors)
        {
            Require(NameRules.Problem(t.Name) is null && names.Add(t.Name), $"name {NameRules.Quote(t.Name)}");
            Require(t.FileOffset >= end && t.FileOffset + t.Length <= bytes.Length, $"bytes of '{t.Name}'");
            Require(t.DType.ByteLength(t.Shape) == t.Length, $"length of '{t.Name}'");
            end = t.FileOffset + t.Length;
        }
        foreach (string key in f.Metadata.Keys)
            Require(NameRules.Problem(key) is null, $"metadata key {NameRules.Quote(key)}");
        // What was accepted must describe JSON that a strict outside parser (Python's json) would read the same way
        // in the parts that matter: every tensor name appears in the header text.
        string text = Encoding.UTF8.GetString(bytes, 8, (int)(dataStart - 8));
        foreach (string name in names.Where(n => n.All(c => c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '/')))
            Require(text.Contains($"\"{name}\""), $"'{name}' is not in the header text");
    }
}
