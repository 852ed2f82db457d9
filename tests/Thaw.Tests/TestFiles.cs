using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Thaw.Interop.Format;
using Thaw.Interop.Freeze;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>A temporary directory per test, and generated tensors and files in it.</summary>
internal sealed class TestFiles : IDisposable
{
    public TestFiles()
    {
        Directory = Path.Combine(Path.GetTempPath(), "thaw-tests-" + Guid.NewGuid().ToString("N"));
        System.IO.Directory.CreateDirectory(Directory);
    }

    public string Directory { get; }

    public string PathOf(string name) => Path.Combine(Directory, name);

    public void Dispose() => System.IO.Directory.Delete(Directory, recursive: true);

    public static byte[] RandomBytes(long length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>A tensor with random bytes, held in pinned host memory so the core can read it.</summary>
    internal sealed class HostTensor(string name, DType dtype, long[] shape, int seed) : IDisposable
    {
        public string Name { get; } = name;
        public DType DType { get; } = dtype;
        public long[] Shape { get; } = shape;
        public byte[] Bytes { get; } = RandomBytes(dtype.ByteLength(shape)!.Value, seed);
        private GCHandle _pin;

        public ulong Address
        {
            get
            {
                if (!_pin.IsAllocated)
                    _pin = GCHandle.Alloc(Bytes, GCHandleType.Pinned);
                return (ulong)_pin.AddrOfPinnedObject();
            }
        }

        public TensorSource Source => new(Name, DType, Shape, Bytes.Length == 0 ? 1 : Address);

        public void Dispose()
        {
            if (_pin.IsAllocated)
                _pin.Free();
        }
    }

    /// <summary>Writes a snapshot of the tensors through the mock engine (host sources).</summary>
    public static Snapshot Freeze(ThawEngine engine, string path, IEnumerable<HostTensor> tensors,
        Dictionary<string, string>? metadata = null) =>
        SnapshotWriter.Write(engine, path, tensors.Select(t => t.Source).ToList(), metadata, sourceIsHost: true);

    /// <summary>A safetensors file written by hand, independently of Thaw's reader:
    /// 8-byte length, JSON header padded with spaces, then the data in the given order.</summary>
    public static void WriteSafetensors(string path, IEnumerable<(string Name, string DType, long[] Shape, byte[] Data)> tensors,
        string? headerOverride = null)
    {
        var json = new StringBuilder("{\"__metadata__\":{\"format\":\"pt\"}");
        var data = new MemoryStream();
        foreach (var (name, dtype, shape, bytes) in tensors)
        {
            long begin = data.Length;
            data.Write(bytes);
            json.Append($",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{string.Join(",", shape)}],\"data_offsets\":[{begin},{data.Length}]}}");
        }
        json.Append('}');
        byte[] header = Encoding.UTF8.GetBytes(headerOverride ?? json.ToString());
        int padded = (header.Length + 7) / 8 * 8;
        using var file = File.Create(path);
        var prefix = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)padded);
        file.Write(prefix);
        file.Write(header);
        for (int i = header.Length; i < padded; i++)
            file.WriteByte((byte)' ');
        data.Position = 0;
        data.CopyTo(file);
    }
}
