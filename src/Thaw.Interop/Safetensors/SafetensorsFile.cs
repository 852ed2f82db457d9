using System.Buffers.Binary;
using System.Text.Json;
using Thaw.Interop.Format;

namespace Thaw.Interop.Safetensors;

/// <summary>One tensor of a safetensors file; offsets are from the start of the file.</summary>
public sealed record SafetensorsTensor(string Name, DType DType, long[] Shape, long FileOffset, long Length);

/// <summary>A validated safetensors header: an 8-byte little-endian length, a JSON
/// object, then the data. Every offset is checked against the file before use.</summary>
public sealed class SafetensorsFile
{
    /// <summary>The same cap the safetensors library applies to its JSON header.</summary>
    public const long MaxHeaderBytes = 100_000_000;
    private const int MaxJsonDepth = 8;

    private SafetensorsFile(string path, long fileLength, IReadOnlyList<SafetensorsTensor> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        Path = path;
        FileLength = fileLength;
        Tensors = tensors;
        Metadata = metadata;
    }

    /// <summary>The file this header was read from.</summary>
    public string Path { get; }
    /// <summary>The file's length in bytes.</summary>
    public long FileLength { get; }
    /// <summary>Tensors in file order.</summary>
    public IReadOnlyList<SafetensorsTensor> Tensors { get; }
    /// <summary>The header's <c>__metadata__</c> strings.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <exception cref="ThawFormatException">The header is malformed or lies about offsets.</exception>
    public static SafetensorsFile Read(string path)
    {
        using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long fileLength = RandomAccess.GetLength(file);
        Span<byte> prefix = stackalloc byte[8];
        if (fileLength < 8 || RandomAccess.Read(file, prefix, 0) != 8)
            throw new ThawFormatException(path, $"not a safetensors file: {fileLength} bytes, shorter than the 8-byte header length");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (headerLength > MaxHeaderBytes)
            throw new ThawFormatException(path, $"safetensors header length {headerLength} exceeds {MaxHeaderBytes}");
        if (headerLength > (ulong)(fileLength - 8))
            throw new ThawFormatException(path, $"truncated: the safetensors header needs {headerLength} bytes, the file has {fileLength - 8} after the length");
        byte[] json = new byte[headerLength];
        int done = 0;
        while (done < json.Length)
        {
            int n = RandomAccess.Read(file, json.AsSpan(done), 8 + done);
            if (n == 0)
                throw new ThawFormatException(path, "file shrank while its header was read");
            done += n;
        }
        return Parse(path, json, fileLength);
    }

    internal static SafetensorsFile Parse(string path, byte[] json, long fileLength)
    {
        long dataStart = 8 + json.Length;
        long dataLength = fileLength - dataStart;
        JsonDocument document = ParseJson(path, json, "safetensors header");
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw new ThawFormatException(path, "safetensors header is not a JSON object");
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var tensors = new List<SafetensorsTensor>();
            foreach (JsonProperty property in document.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    if (property.Value.ValueKind != JsonValueKind.Object)
                        throw new ThawFormatException(path, "__metadata__ is not an object");
                    foreach (JsonProperty item in property.Value.EnumerateObject())
                    {
                        if (NameRules.Problem(item.Name) is string problem)
                            throw new ThawFormatException(path, $"__metadata__ key {NameRules.Quote(item.Name)} {problem}");
                        if (item.Value.ValueKind != JsonValueKind.String)
                            throw new ThawFormatException(path, $"__metadata__ value '{item.Name}' is not a string");
                        metadata[item.Name] = item.Value.GetString()!;
                    }
                    continue;
                }
                tensors.Add(ParseTensor(path, property, dataStart, dataLength));
            }
            tensors.Sort((a, b) => a.FileOffset.CompareTo(b.FileOffset));
            var names = new HashSet<string>(StringComparer.Ordinal);
            for (int i = 0; i < tensors.Count; i++)
            {
                if (!names.Add(tensors[i].Name))
                    throw new ThawFormatException(path, $"tensor '{tensors[i].Name}' appears twice");
                if (i > 0 && tensors[i].FileOffset < tensors[i - 1].FileOffset + tensors[i - 1].Length)
                    throw new ThawFormatException(path, $"tensors '{tensors[i - 1].Name}' and '{tensors[i].Name}' overlap");
            }
            return new SafetensorsFile(path, fileLength, tensors, metadata);
        }
    }

    /// <summary>Parses JSON from a file with <see cref="StrictJson"/>: every refusal names the file and the field.</summary>
    internal static JsonDocument ParseJson(string path, byte[] json, string what) =>
        StrictJson.TryParse(json, MaxJsonDepth, out string problem) ?? throw new ThawFormatException(path, $"{what} {problem}");

    private static SafetensorsTensor ParseTensor(string path, JsonProperty property, long dataStart, long dataLength)
    {
        string name = property.Name;
        if (NameRules.Problem(name) is string problem)
            throw new ThawFormatException(path, $"tensor name {NameRules.Quote(name)} {problem}");
        JsonElement value = property.Value;
        if (value.ValueKind != JsonValueKind.Object)
            throw new ThawFormatException(path, $"tensor '{name}' is not an object");
        if (!value.TryGetProperty("dtype", out JsonElement dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw new ThawFormatException(path, $"tensor '{name}' has no dtype");
        string dtypeName = dtypeElement.GetString()!;
        if (!DTypes.TryParse(dtypeName, out DType dtype))
            throw new ThawFormatException(path, $"tensor '{name}' has unknown dtype {NameRules.Quote(dtypeName)}");
        if (!value.TryGetProperty("shape", out JsonElement shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw new ThawFormatException(path, $"tensor '{name}' has no shape");
        if (shapeElement.GetArrayLength() > SnapshotFormat.MaxDimensions)
            throw new ThawFormatException(path, $"tensor '{name}' has {shapeElement.GetArrayLength()} dimensions (at most {SnapshotFormat.MaxDimensions})");
        var shape = new long[shapeElement.GetArrayLength()];
        int d = 0;
        foreach (JsonElement dim in shapeElement.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out long n) || n < 0)
                throw new ThawFormatException(path, $"tensor '{name}' has a shape entry that is not a non-negative integer");
            shape[d++] = n;
        }
        if (!value.TryGetProperty("data_offsets", out JsonElement offsets) || offsets.ValueKind != JsonValueKind.Array ||
            offsets.GetArrayLength() != 2)
            throw new ThawFormatException(path, $"tensor '{name}' has no [begin, end] data_offsets");
        long[] pair = new long[2];
        int k = 0;
        foreach (JsonElement item in offsets.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out pair[k]) || pair[k] < 0)
                throw new ThawFormatException(path, $"tensor '{name}' has a data offset that is not a non-negative integer");
            k++;
        }
        long begin = pair[0], end = pair[1];
        if (end < begin || end > dataLength)
            throw new ThawFormatException(path, $"tensor '{name}' data_offsets [{begin}, {end}] lie outside the {dataLength}-byte data section");
        long? expected = dtype.ByteLength(shape);
        if (expected != end - begin)
            throw new ThawFormatException(path, $"tensor '{name}' is {dtype} [{string.Join(", ", shape)}] ({expected?.ToString() ?? "no whole"} bytes) but data_offsets span {end - begin}");
        return new SafetensorsTensor(name, dtype, shape, dataStart + begin, end - begin);
    }
}
