using System.Buffers.Binary;
using System.Text;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Freeze;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;

namespace Thaw.Tests;

/// <summary>One file built from bytes per refusal: each must fail with a ThawFormatException (or,
/// for a caller's own input, an ArgumentException) naming the file and the field, with no runtime
/// text; and the `thaw` CLI must print it as one `thaw: error:` line and exit 1 (issue 11, items 6 and 8).</summary>
public class RefusalTests
{
    private TestFiles _files = null!;

    [SetUp]
    public void SetUp() => _files = new TestFiles();

    [TearDown]
    public void TearDown() => _files.Dispose();

    private const string Tensor = "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";

    /// <summary>Safetensors headers (JSON text, escapes as written in the file) and what the refusal must mention.</summary>
    private static readonly (string Json, string[] Mentions)[] SafetensorsHeaders =
    [
        ("{\"a\\ud800\":" + Tensor + "}", ["a\\ud800", "lone surrogate", "top level"]),
        ("{\"a\":{\"dtype\":\"F3\\ud800\",\"shape\":[1],\"data_offsets\":[0,4]}}", ["'/a/dtype'", "lone surrogate"]),
        ("{\"__metadata__\":{\"k\":\"\\ud800\"},\"a\":" + Tensor + "}", ["'/__metadata__/k'", "lone surrogate"]),
        ("{\"__metadata__\":{\"\\udc00\":\"v\"},\"a\":" + Tensor + "}", ["'/__metadata__'", "\\udc00"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"\\udc00x\"],\"data_offsets\":[0,4]}}", ["'/a/shape/0'"]),
        ("{\"a\\ud800\\ud800\":" + Tensor + "}", ["lone surrogate"]),
        ("{\"a\":", ["not valid JSON", "line 1"]),
        ("{\"a\":" + Tensor + "} x", ["not valid JSON"]),
        ("{\"a\":" + Tensor + ",}", ["not valid JSON"]),
        ("{\"a\":{\"dtype\":'F32'}}", ["not valid JSON"]),
        ("", ["not valid JSON"]),
        ("{\"__metadata__\":{\"k\":[[[[[[[[[1]]]]]]]]]}}", ["nests deeper than 8", "/__metadata__/k"]),
        ("{\"a\":" + Tensor + ",\"a\":" + Tensor + "}", ["repeats the key '/a'"]),
        ("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}", ["repeats the key '/a/dtype'"]),
        ("{\"a\\u0000\":" + Tensor + "}", ["tensor name 'a\\u0000'", "control character U+0000"]),
        ("{\"a\\nb\":" + Tensor + "}", ["tensor name 'a\\u000ab'", "U+000A"]),
        ("{\"a\\u0085\":" + Tensor + "}", ["U+0085"]),
        ("{\"\":" + Tensor + "}", ["tensor name ''", "is empty"]),
        ("{\"" + new string('n', 5000) + "\":" + Tensor + "}", ["5000 bytes long"]),
        ("{\"__metadata__\":{\"k\\u001b[31m\":\"v\"},\"a\":" + Tensor + "}", ["__metadata__ key 'k\\u001b[31m'", "U+001B"]),
        ("{\"__metadata__\":{\"k\":1},\"a\":" + Tensor + "}", ["__metadata__ value 'k' is not a string"]),
        ("{\"__metadata__\":[],\"a\":" + Tensor + "}", ["__metadata__ is not an object"]),
        ("[]", ["not a JSON object"]),
        ("{\"a\":1}", ["tensor 'a' is not an object"]),
        ("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", ["tensor 'a' has no dtype"]),
        ("{\"a\":{\"dtype\":1,\"shape\":[1],\"data_offsets\":[0,4]}}", ["tensor 'a' has no dtype"]),
        ("{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", ["unknown dtype 'F33'"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", ["tensor 'a'", "shape entry"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", ["tensor 'a'", "shape entry"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", ["tensor 'a'", "shape entry"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[1e30],\"data_offsets\":[0,4]}}", ["tensor 'a'", "shape entry"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", ["tensor 'a' has no shape"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", ["tensor 'a'", "data offset"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551616]}}", ["tensor 'a'", "data offset"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", ["tensor 'a'", "data_offsets"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", ["tensor 'a'", "outside"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", ["tensor 'a'", "span 4"]),
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[17],\"data_offsets\":[0,68]}}", ["tensor 'a'", "outside"]),
    ];

    private static IEnumerable<TestCaseData> SafetensorsCases() =>
        SafetensorsHeaders.Select((c, i) => new TestCaseData(i, c.Json, c.Mentions).SetName($"SafetensorsHeaderRefusal({i})"));

    private string WriteSafetensors(int index, string json)
    {
        string path = _files.PathOf($"case{index}.safetensors");
        TestFiles.WriteSafetensors(path, [("a", "F32", [1], new byte[4])], headerOverride: json);
        return path;
    }

    [TestCaseSource(nameof(SafetensorsCases))]
    public void SafetensorsHeaderRefusal(int index, string json, string[] mentions)
    {
        string path = WriteSafetensors(index, json);
        var e = Assert.Throws<ThawFormatException>(() => SafetensorsFile.Read(path))!;
        AssertNames(e.Message, path, mentions);
        ThawCli.AssertRefused(ThawCli.Run($"convert {path} {_files.PathOf("out.thaw")} --quiet"), path, mentions);
        Assert.That(File.Exists(_files.PathOf("out.thaw")), Is.False);
    }

    [Test]
    public void SafetensorsHeaderOfInvalidUtf8IsRefusedWithItsPosition()
    {
        byte[] json = [.. "{\"a"u8, 0xed, 0xa0, 0x80, .. "\":1}"u8];  // a surrogate encoded in UTF-8: not UTF-8
        string path = _files.PathOf("utf8.safetensors");
        byte[] prefix = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)json.Length);
        File.WriteAllBytes(path, [.. prefix, .. json]);
        var e = Assert.Throws<ThawFormatException>(() => SafetensorsFile.Read(path))!;
        AssertNames(e.Message, path, ["not valid UTF-8", "byte 3"]);
        ThawCli.AssertRefused(ThawCli.Run($"convert {path} {_files.PathOf("out.thaw")}"), path, "not valid UTF-8");
    }

    /// <summary>model.safetensors.index.json contents and what the refusal must mention.</summary>
    private static readonly (string Json, string[] Mentions)[] IndexFiles =
    [
        ("{\"weight_map\":{\"a\\ud800\":\"model.safetensors\"}}", ["'/weight_map'", "lone surrogate"]),
        ("{\"weight_map\":{\"a\":\"model\\udc00.safetensors\"}}", ["'/weight_map/a'", "lone surrogate"]),
        ("{\"weight_map\":", ["the index is not valid JSON"]),
        ("{\"metadata\":{}}", ["no weight_map object"]),
        ("{\"weight_map\":{\"a\":1}}", ["weight_map entry 'a'"]),
        ("{\"weight_map\":{\"a\":\"../model.safetensors\"}}", ["weight_map entry 'a'", "not a file name"]),
        ("{\"weight_map\":{\"a\":\"model\\u0000.safetensors\"}}", ["weight_map entry 'a'", "'model\\u0000.safetensors'"]),
        ("{\"weight_map\":{\"a\":\"model.safetensors\",\"b\":\"model.safetensors\"}}", ["weight_map puts 'b'", "no shard has it"]),
        ("{\"weight_map\":{\"a\":\"model.safetensors\",\"a\":\"other.safetensors\"}}", ["repeats the key '/weight_map/a'"]),
    ];

    private static IEnumerable<TestCaseData> IndexCases() =>
        IndexFiles.Select((c, i) => new TestCaseData(i, c.Json, c.Mentions).SetName($"IndexRefusal({i})"));

    [TestCaseSource(nameof(IndexCases))]
    public void IndexRefusal(int index, string json, string[] mentions)
    {
        string dir = _files.PathOf($"ckpt{index}");
        Directory.CreateDirectory(dir);
        TestFiles.WriteSafetensors(Path.Combine(dir, "model.safetensors"), [("a", "F32", [1], new byte[4])]);
        string indexPath = Path.Combine(dir, HuggingFaceCheckpoint.IndexFileName);
        File.WriteAllText(indexPath, json);
        var e = Assert.Throws<ThawFormatException>(() => HuggingFaceCheckpoint.Open(dir))!;
        AssertNames(e.Message, indexPath, mentions);
        ThawCli.AssertRefused(ThawCli.Run($"convert {dir} {_files.PathOf("out.thaw")} --quiet"), indexPath, mentions);
    }

    /// <summary>A valid snapshot, a tensor name or metadata key rewritten in place, the header CRC resealed.</summary>
    private static readonly (string Field, byte[] Replacement, string[] Mentions)[] SnapshotNames =
    [
        ("x", [0x00], ["tensor 0: name '\\u0000'", "control character U+0000"]),
        ("x", [0x0a], ["tensor 0: name '\\u000a'", "U+000A"]),
        ("x", [0x1b], ["U+001B"]),
        ("x", [0x7f], ["U+007F"]),
        ("yz", [0xc2, 0x85], ["tensor 1: name", "U+0085"]),
        ("yz", [0xed, 0xa0], ["tensor 1 name is not valid UTF-8"]),
        ("yz", "xq"u8.ToArray(), []),  // still valid: the control case that the rewrite itself is accepted
        ("k", [0x00], ["metadata key 0 '\\u0000'", "U+0000"]),
        ("k", [0x09], ["metadata key 0 '\\u0009'", "U+0009"]),
    ];

    private static IEnumerable<TestCaseData> SnapshotNameCases() =>
        SnapshotNames.Select((c, i) => new TestCaseData(i, c.Field, c.Replacement, c.Mentions).SetName($"SnapshotNameRefusal({i})"));

    [TestCaseSource(nameof(SnapshotNameCases))]
    public void SnapshotNameRefusal(int index, string field, byte[] replacement, string[] mentions)
    {
        string path = Resealed($"names{index}.thaw", field, replacement);
        if (mentions.Length == 0)
        {
            Assert.That(SnapshotReader.Read(path).Tensors[1].Name, Is.EqualTo("xq"));
            return;
        }
        var e = Assert.Throws<ThawFormatException>(() => SnapshotReader.Read(path))!;
        AssertNames(e.Message, path, mentions);
        ThawCli.AssertRefused(ThawCli.Run($"info {path}"), path, mentions);
    }

    /// <summary>Found by HeaderFuzzTests: a bad key followed by a bad value length was quoted raw in the value's error.</summary>
    [Test]
    public void ABadMetadataKeyIsRefusedBeforeItsValueIsRead()
    {
        string path = Resealed("key.thaw", "k", [0x00], valueLength: uint.MaxValue);
        var e = Assert.Throws<ThawFormatException>(() => SnapshotReader.Read(path))!;
        AssertNames(e.Message, path, ["metadata key 0 '\\u0000'"]);
    }

    /// <summary>A snapshot (tensors "x", "yz", metadata "k") with one field's bytes replaced in place,
    /// and optionally the metadata value's length, the header CRC resealed.</summary>
    private string Resealed(string name, string field, byte[] replacement, uint? valueLength = null)
    {
        string path = _files.PathOf(name);
        using (var engine = ThawEngine.Create(DeviceKind.Mock))
        {
            var tensors = new[] { new TestFiles.HostTensor("x", DType.U8, [8], 1), new TestFiles.HostTensor("yz", DType.U8, [8], 2) };
            TestFiles.Freeze(engine, path, tensors, new Dictionary<string, string> { ["k"] = "value" });
            foreach (var t in tensors)
                t.Dispose();
        }
        byte[] bytes = File.ReadAllBytes(path);
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16));
        // The field's bytes follow their own length prefix (2 bytes) in the table.
        byte[] needle = [(byte)field.Length, 0, .. Encoding.UTF8.GetBytes(field)];
        int at = bytes.AsSpan(64, headerLength - 64).IndexOf(needle) + 64 + 2;
        Assert.That(at, Is.GreaterThan(64 + 1));
        replacement.CopyTo(bytes, at);
        if (valueLength is uint length)
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(at + field.Length), length);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), Thaw.Interop.Native.Crc32C.Compute(bytes.AsSpan(0, headerLength)));
        File.WriteAllBytes(path, bytes);
        return path;
    }

    // Built in code: an attribute cannot hold a lone surrogate (the compiler stores U+FFFD instead).
    private static IEnumerable<TestCaseData> BadNames() =>
    [
        new TestCaseData("\0", "control character U+0000").SetName("WriterRefuses(NUL)"),
        new TestCaseData("a\nb", "control character U+000A").SetName("WriterRefuses(newline)"),
        new TestCaseData("a\u0085", "control character U+0085").SetName("WriterRefuses(C1 control)"),
        new TestCaseData("a" + (char)0xD800, "lone surrogate").SetName("WriterRefuses(lone surrogate)"),
        new TestCaseData("", "is empty").SetName("WriterRefuses(empty)"),
    ];

    [TestCaseSource(nameof(BadNames))]
    public void WriterRefusesWhatTheReaderWouldRefuse(string name, string problem)
    {
        string path = _files.PathOf("refused.thaw");
        using var engine = ThawEngine.Create(DeviceKind.Mock);
        using var tensor = new TestFiles.HostTensor(name, DType.U8, [4], 1);
        var e = Assert.Throws<ArgumentException>(() => TestFiles.Freeze(engine, path, [tensor]))!;
        Assert.That(e.Message, Does.Contain(problem));
        Assert.That(e.Message, Does.Not.Contain("\0").And.Not.Contain("\n"), "the name is quoted printably");
        using var named = new TestFiles.HostTensor("ok", DType.U8, [4], 1);
        e = Assert.Throws<ArgumentException>(() => TestFiles.Freeze(engine, path, [named], new Dictionary<string, string> { [name] = "v" }))!;
        Assert.That(e.Message, Does.Contain("metadata key").And.Contain(problem));
        Assert.That(File.Exists(path), Is.False);
        Assert.That(Directory.GetFiles(_files.Directory), Is.Empty, "no temporary left behind");
    }

    [Test]
    public void WriterRefusesAMetadataValueWithALoneSurrogateAndTooLongANameAtTheSpecsBound()
    {
        Assert.That(() => SnapshotLayout.Create([], new Dictionary<string, string> { ["k"] = ((char)0xDC00).ToString() }),
            Throws.ArgumentException.With.Message.Contains("not valid Unicode"));
        Assert.That(() => SnapshotLayout.Create([new TensorSpec(new string('n', 4097), DType.U8, [1])]),
            Throws.ArgumentException.With.Message.Contains("4097 bytes long"));
        Assert.That(SnapshotLayout.Create([new TensorSpec(new string('n', 4096), DType.U8, [1])]).Tensors, Has.Count.EqualTo(1));
        Assert.That(() => SnapshotLayout.Create([new TensorSpec("a", DType.U8, [1]), new TensorSpec("a", DType.U8, [1])]),
            Throws.ArgumentException.With.Message.Contains("repeated"));
    }

    [TestCase("{\"k\":\"\\ud800\"}", "'/k'")]
    [TestCase("{\"k\":", "not valid JSON")]
    [TestCase("{\"k\":1}", "metadata value 'k' is not a string")]
    [TestCase("[\"k\"]", "JSON object of strings")]
    [TestCase("{\"k\":\"v\",\"k\":\"w\"}", "repeats the key '/k'")]
    public void CallerMetadataJsonIsRefusedAsAnArgument(string json, string mention)
    {
        var e = Assert.Throws<ArgumentException>(() => SnapshotJson.ParseMetadata(json))!;
        Assert.That(e.Message, Does.Contain(mention));
        RuntimeText.AssertAbsent(e.Message);
    }

    private static void AssertNames(string message, string path, string[] mentions)
    {
        Assert.That(message, Does.StartWith(path + ": "));
        foreach (string m in mentions)
            Assert.That(message, Does.Contain(m));
        Assert.That(message, Does.Not.Contain("\n").And.Not.Contain("\0"), "one printable line");
        RuntimeText.AssertAbsent(message);
    }
}
