using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace Thaw.Interop.Format;

/// <summary>Parses JSON that comes from outside the process (a safetensors header, an index,
/// a caller's metadata). Before a <see cref="JsonDocument"/> is built, one pass checks what
/// System.Text.Json would otherwise report later with its own exceptions and text: strict
/// UTF-8, a depth bound, no repeated key in an object, and every string and key decodable
/// (a lone surrogate escape such as <c>\ud800</c> is not). After it, reading any string of
/// the document cannot throw. A refusal is a short sentence naming the field by its JSON
/// Pointer (RFC 6901).</summary>
internal static class StrictJson
{
    /// <summary>The document, or null with <paramref name="problem"/> saying what is wrong and where.</summary>
    public static JsonDocument? TryParse(ReadOnlyMemory<byte> json, int maxDepth, out string problem)
    {
        if (!Utf8.IsValid(json.Span))
        {
            problem = $"is not valid UTF-8 (at byte {FirstInvalidUtf8(json.Span)})";
            return null;
        }
        problem = Check(json.Span, maxDepth) ?? "";
        if (problem.Length > 0)
            return null;
        try
        {
            return JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = maxDepth + 1 });
        }
        catch (JsonException e)
        {
            // Not reached after Check; kept so that no runtime text can ever escape.
            problem = $"is not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1})";
            return null;
        }
    }

    private sealed class Frame(bool isObject)
    {
        public readonly bool IsObject = isObject;
        public readonly HashSet<string> Keys = new(StringComparer.Ordinal);
        public string? Key; // null until the object's first key is read
        public int Index = -1;
    }

    private static string? Check(ReadOnlySpan<byte> json, int maxDepth)
    {
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { MaxDepth = maxDepth + 1 });
        var frames = new List<Frame>();
        try
        {
            while (reader.Read())
            {
                switch (reader.TokenType)
                {
                    case JsonTokenType.PropertyName:
                        Frame frame = frames[^1];
                        frame.Key = null;
                        if (!TryDecode(ref reader, out string key))
                            return $"has a key inside {Pointer(frames)} that is not a valid string ({Raw(ref reader)}: a lone surrogate escape)";
                        frame.Key = key;
                        if (!frame.Keys.Add(key))
                            return $"repeats the key {Pointer(frames)}";
                        break;
                    case JsonTokenType.String:
                        BeginValue(frames);
                        if (!TryDecode(ref reader, out _))
                            return $"has a string at {Pointer(frames)} that is not valid ({Raw(ref reader)}: a lone surrogate escape)";
                        break;
                    case JsonTokenType.StartObject:
                    case JsonTokenType.StartArray:
                        BeginValue(frames);
                        if (frames.Count >= maxDepth)
                            return $"nests deeper than {maxDepth} levels at {Pointer(frames)}";
                        frames.Add(new Frame(reader.TokenType == JsonTokenType.StartObject));
                        break;
                    case JsonTokenType.EndObject:
                    case JsonTokenType.EndArray:
                        frames.RemoveAt(frames.Count - 1);
                        break;
                    default:
                        BeginValue(frames);
                        break;
                }
            }
        }
        catch (JsonException e)
        {
            return $"is not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}, inside {Pointer(frames)})";
        }
        return null;
    }

    private static void BeginValue(List<Frame> frames)
    {
        if (frames.Count > 0 && !frames[^1].IsObject)
            frames[^1].Index++;
    }

    private static bool TryDecode(ref Utf8JsonReader reader, out string text)
    {
        try
        {
            text = reader.GetString()!;
            return true;
        }
        catch (InvalidOperationException)
        {
            // System.Text.Json's way of saying an escape decodes to a lone surrogate.
            text = "";
            return false;
        }
    }

    /// <summary>The raw (still escaped) text of the current token, shortened; valid UTF-8 by then.</summary>
    private static string Raw(ref Utf8JsonReader reader)
    {
        ReadOnlySpan<byte> raw = reader.ValueSpan;
        string text = Encoding.UTF8.GetString(raw[..Math.Min(raw.Length, 80)]);
        return NameRules.Quote(raw.Length > 80 ? text + "..." : text);
    }

    /// <summary>The JSON Pointer of the current position, printable.</summary>
    private static string Pointer(List<Frame> frames)
    {
        if (frames.Count == 0)
            return "the top level";
        var pointer = new StringBuilder();
        foreach (Frame f in frames)
        {
            if (f.IsObject && f.Key is null)
                break;
            pointer.Append('/').Append(f.IsObject ? f.Key!.Replace("~", "~0").Replace("/", "~1") : Math.Max(f.Index, 0).ToString());
        }
        return pointer.Length == 0 ? "the top level" : NameRules.Quote(pointer.ToString());
    }

    private static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        int at = 0;
        while (at < bytes.Length)
        {
            if (System.Buffers.OperationStatus.Done != Rune.DecodeFromUtf8(bytes[at..], out _, out int consumed))
                return at;
            at += consumed;
        }
        return -1;
    }
}
