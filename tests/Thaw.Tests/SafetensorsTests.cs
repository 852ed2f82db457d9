using System.Runtime.InteropServices;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;

namespace Thaw.Tests;

public class SafetensorsTests
{
    private TestFiles _files = null!;
    private ThawEngine _engine = null!;

    [SetUp]
    public void SetUp()
    {
        _files = new TestFiles();
        _engine = ThawEngine.Create(DeviceKind.Mock);
    }

    [TearDown]
    public void TearDown()
    {
        _engine.Dispose();
        _files.Dispose();
    }

    private static (string, string, long[], byte[]) T(string name, string dtype, long[] shape, int seed)
    {
        long bytes = shape.Aggregate(1L, (a, b) => a * b) * (dtype switch { "F32" or "I32" => 4, "F16" or "BF16" => 2, "I64" => 8, _ => 1 });
        return (name, dtype, shape, TestFiles.RandomBytes(bytes, seed));
    }

    private byte[] Restored(Snapshot s, string name)
    {
        TensorEntry entry = s.Tensors[s.IndexOf(name)];
        byte[] back = new byte[entry.Length];
        GCHandle pin = GCHandle.Alloc(back, GCHandleType.Pinned);
        try
        {
            _engine.RestoreInto(s, [new RestoreTarget(name, (ulong)pin.AddrOfPinnedObject(), back.Length)], new RestoreOptions { Verify = true });
        }
        finally
        {
            pin.Free();
        }
        return back;
    }

    [Test]
    public void ShardedCheckpointWithIndexConvertsBitExactly()
    {
        string dir = _files.PathOf("ckpt");
        Directory.CreateDirectory(dir);
        var shard1 = new[] { T("embed.weight", "F16", [50, 64], 1), T("layers.0.w", "BF16", [64, 64], 2) };
        var shard2 = new[] { T("layers.1.w", "F32", [64, 3], 3), T("step", "I64", [], 4), T("mask", "BOOL", [5], 5) };
        TestFiles.WriteSafetensors(Path.Combine(dir, "model-00001-of-00002.safetensors"), shard1);
        TestFiles.WriteSafetensors(Path.Combine(dir, "model-00002-of-00002.safetensors"), shard2);
        string map = string.Join(",", shard1.Select(t => $"\"{t.Item1}\":\"model-00001-of-00002.safetensors\"")
            .Concat(shard2.Select(t => $"\"{t.Item1}\":\"model-00002-of-00002.safetensors\"")));
        File.WriteAllText(Path.Combine(dir, HuggingFaceCheckpoint.IndexFileName), $"{{\"metadata\":{{}},\"weight_map\":{{{map}}}}}");

        Snapshot s = CheckpointConverter.Convert(dir, _files.PathOf("out.thaw"), _engine);
        Assert.That(s.Tensors, Has.Count.EqualTo(5));
        Assert.That(s.Metadata["safetensors.format"], Is.EqualTo("pt"));
        foreach (var (name, dtype, shape, data) in shard1.Concat(shard2))
        {
            TensorEntry entry = s.Tensors[s.IndexOf(name)];
            Assert.That(entry.DType.Name(), Is.EqualTo(dtype));
            Assert.That(entry.Shape, Is.EqualTo(shape));
            Assert.That(Restored(s, name), Is.EqualTo(data), name);
        }
    }

    [Test]
    public void SingleFileCheckpointConverts()
    {
        string file = _files.PathOf("model.safetensors");
        var tensors = new[] { T("a", "F16", [3, 3], 1), T("b", "U8", [0], 2) };
        TestFiles.WriteSafetensors(file, tensors);
        Snapshot s = CheckpointConverter.Convert(file, _files.PathOf("one.thaw"), _engine);
        Assert.That(Restored(s, "a"), Is.EqualTo(tensors[0].Item4));
        Assert.That(s.Tensors[s.IndexOf("b")].Length, Is.Zero);
    }

    [TestCase("{\"x\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,9999]}}", "outside")]
    [TestCase("{\"x\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,6]}}", "data_offsets span 6")]
    [TestCase("{\"x\":{\"dtype\":\"Q7\",\"shape\":[4],\"data_offsets\":[0,8]}}", "unknown dtype")]
    [TestCase("{\"x\":{\"dtype\":\"F16\",\"shape\":[-4],\"data_offsets\":[0,8]}}", "non-negative")]
    [TestCase("{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\"y\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}", "overlap")]
    [TestCase("[1,2,3]", "not a JSON object")]
    [TestCase("{\"x\":", "not valid JSON")]
    public void LyingSafetensorsHeadersAreRefusedNamingTheFile(string header, string problem)
    {
        string file = _files.PathOf("bad.safetensors");
        TestFiles.WriteSafetensors(file, [("x", "U8", new long[] { 8 }, new byte[8])], headerOverride: header);
        var e = Assert.Throws<ThawFormatException>(() => CheckpointConverter.Convert(file, _files.PathOf("never.thaw"), _engine))!;
        Assert.That(e.Message, Does.Contain(file).And.Contain(problem));
        Assert.That(File.Exists(_files.PathOf("never.thaw")), Is.False);
    }

    [Test]
    public void HeaderLengthBeyondTheFileIsTruncation()
    {
        string file = _files.PathOf("short.safetensors");
        File.WriteAllBytes(file, [0xff, 0xff, 0, 0, 0, 0, 0, 0, (byte)'{']);
        Assert.That(() => SafetensorsFile.Read(file), Throws.TypeOf<ThawFormatException>().With.Message.Contains("truncated"));
    }

    [Test]
    public void PlainSafetensorsRestoreUnverifiedByDefaultAndRefuseARequiredCheck()
    {
        string file = _files.PathOf("plain.safetensors");
        var t = T("w", "F16", [33, 7], 9);
        TestFiles.WriteSafetensors(file, [t]);
        Snapshot s = Snapshot.FromSafetensors(SafetensorsFile.Read(file));
        byte[] back = new byte[t.Item4.Length];
        GCHandle pin = GCHandle.Alloc(back, GCHandleType.Pinned);
        try
        {
            var target = new RestoreTarget("w", (ulong)pin.AddrOfPinnedObject(), back.Length);
            Assert.That(_engine.RestoreInto(s, [target]).Verified, Is.False);
            Assert.That(back, Is.EqualTo(t.Item4));
            Assert.That(() => _engine.RestoreInto(s, [target], new RestoreOptions { Verify = true }),
                Throws.ArgumentException.With.Message.Contains("no checksums"));
        }
        finally
        {
            pin.Free();
        }
    }

    [Test]
    public void IndexNamingAPathOutsideTheCheckpointIsRefused()
    {
        string dir = _files.PathOf("evil");
        Directory.CreateDirectory(dir);
        TestFiles.WriteSafetensors(Path.Combine(dir, "a.safetensors"), [T("x", "U8", [4], 1)]);
        File.WriteAllText(Path.Combine(dir, HuggingFaceCheckpoint.IndexFileName), "{\"weight_map\":{\"x\":\"../a.safetensors\"}}");
        Assert.That(() => HuggingFaceCheckpoint.Open(dir), Throws.TypeOf<ThawFormatException>().With.Message.Contains("not a file name"));
    }

    [Test]
    public void IndexThatMisplacesATensorIsRefused()
    {
        string dir = _files.PathOf("wrong");
        Directory.CreateDirectory(dir);
        TestFiles.WriteSafetensors(Path.Combine(dir, "a.safetensors"), [T("x", "U8", [4], 1)]);
        TestFiles.WriteSafetensors(Path.Combine(dir, "b.safetensors"), [T("y", "U8", [4], 2)]);
        File.WriteAllText(Path.Combine(dir, HuggingFaceCheckpoint.IndexFileName), "{\"weight_map\":{\"x\":\"b.safetensors\",\"y\":\"b.safetensors\"}}");
        Assert.That(() => HuggingFaceCheckpoint.Open(dir), Throws.TypeOf<ThawFormatException>().With.Message.Contains("puts 'x' in b.safetensors"));
    }

    [Test]
    public void EmptyDirectoryIsNotACheckpoint()
    {
        Assert.Throws<FileNotFoundException>(() => HuggingFaceCheckpoint.Open(_files.Directory));
    }
}
