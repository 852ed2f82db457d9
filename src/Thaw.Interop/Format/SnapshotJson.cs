using System.Text;
using System.Text.Json;

namespace Thaw.Interop.Format;

/// <summary>A snapshot header as JSON (for `thaw_snapshot_info` and tools), and
/// metadata from JSON. Only strings and numbers: nothing in it is executed.</summary>
public static class SnapshotJson
{
    /// <summary>The header as one JSON object: path, format, sizes, parallel rank, metadata and every tensor (what <c>thaw info --json</c> prints).</summary>
    public static string Describe(Snapshot s)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("path", s.Path);
            json.WriteNumber("format_version", SnapshotFormat.Version);
            json.WriteNumber("file_length", s.FileLength);
            json.WriteNumber("data_offset", s.DataOffset);
            json.WriteNumber("tensor_bytes", s.TensorBytes);
            json.WriteNumber("tp_rank", s.TpRank);
            json.WriteNumber("tp_world_size", s.TpWorldSize);
            json.WriteStartObject("metadata");
            foreach (var (key, value) in s.Metadata)
                json.WriteString(key, value);
            json.WriteEndObject();
            json.WriteStartArray("tensors");
            foreach (TensorEntry t in s.Tensors)
            {
                json.WriteStartObject();
                json.WriteString("name", t.Name);
                json.WriteString("dtype", t.DType.Name());
                json.WriteStartArray("shape");
                foreach (long d in t.Shape)
                    json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteNumber("offset", t.Offset);
                json.WriteNumber("length", t.Length);
                json.WriteNumber("crc32c", t.Crc32C);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <exception cref="ArgumentException">Not a JSON object of strings, or a key that is not a valid name.</exception>
    public static Dictionary<string, string> ParseMetadata(string text)
    {
        int length = NameRules.StrictByteCount(text);
        if (length < 0)
            throw new ArgumentException("metadata is not valid Unicode (it holds a lone surrogate)");
        using JsonDocument document = StrictJson.TryParse(Encoding.UTF8.GetBytes(text), 4, out string problem)
            ?? throw new ArgumentException($"metadata {problem}");
        if (document.RootElement.ValueKind != JsonValueKind.Object)
            throw new ArgumentException("metadata must be a JSON object of strings");
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (JsonProperty p in document.RootElement.EnumerateObject())
            result[p.Name] = p.Value.ValueKind == JsonValueKind.String
                ? p.Value.GetString()!
                : throw new ArgumentException($"metadata value {NameRules.Quote(p.Name)} is not a string");
        return result;
    }
}
