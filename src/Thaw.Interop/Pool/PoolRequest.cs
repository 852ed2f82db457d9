using System.Text;
using System.Text.Json;

namespace Thaw.Interop.Pool;

/// <summary>One request line (docs/POOL.md), read in a single pass with <see cref="Utf8JsonReader"/>:
/// no document is built, so a request costs its line and its targets, nothing more. Every field
/// is bounded before use and a refusal names it (<c>targets[3].offset</c>). Unknown fields are skipped.</summary>
internal sealed record PoolRequest(string Op, string? Snapshot, IReadOnlyList<PoolTarget>? Targets)
{
    /// <summary>On a miss, read the snapshot into the pool while serving (fill-through).</summary>
    public bool Fill { get; init; }

    /// <summary>The file the client parsed; null: an older client (only the file on disk is compared).</summary>
    public SnapshotIdentity? FileIdentity { get; init; }

    /// <summary>The device the client's memory is on (its identity, <see cref="DeviceEngines"/>); null: the pool's default.</summary>
    public string? Device { get; init; }

    /// <summary>Longest snapshot path, tensor name or op (Linux's PATH_MAX).</summary>
    public const int MaxStringBytes = 4096;

    /// <summary>Largest decoded IPC handle: CUDA's is 64 bytes, a mock file's path at most PATH_MAX.</summary>
    public const int MaxHandleBytes = 4096;

    /// <summary>Most targets one restore may name.</summary>
    public const int MaxTargets = 1 << 20;

    /// <summary>Deepest nesting of objects and arrays.</summary>
    public const int MaxDepth = 8;

    /// <exception cref="FormatException">Not one JSON object, or a field missing, repeated, of the wrong
    /// type or out of range; the message names the field.</exception>
    public static PoolRequest Parse(ReadOnlySpan<byte> line)
    {
        var reader = new Utf8JsonReader(line, new JsonReaderOptions { MaxDepth = MaxDepth });
        try
        {
            Next(ref reader);
            if (reader.TokenType != JsonTokenType.StartObject)
                throw new FormatException($"a request is a JSON object, not {Describe(ref reader)}");
            string? op = null, snapshot = null, device = null;
            List<PoolTarget>? targets = null;
            bool? fill = null;
            SnapshotIdentity? identity = null;
            while (Next(ref reader) == JsonTokenType.PropertyName)
            {
                string field = reader.ValueTextEquals("op") ? "op" : reader.ValueTextEquals("snapshot") ? "snapshot"
                    : reader.ValueTextEquals("targets") ? "targets" : reader.ValueTextEquals("device") ? "device"
                    : reader.ValueTextEquals("fill") ? "fill" : reader.ValueTextEquals("identity") ? "identity" : "";
                Next(ref reader);
                switch (field)
                {
                    case "fill":
                        fill = fill is null ? Boolean(ref reader, "fill") : throw new FormatException("fill: given twice");
                        break;
                    case "identity":
                        identity = Once(identity, ReadIdentity(ref reader), "identity");
                        break;
                    case "op":
                        op = Once(op, String(ref reader, "op", MaxStringBytes), "op");
                        break;
                    case "snapshot":
                        snapshot = Once(snapshot, String(ref reader, "snapshot", MaxStringBytes), "snapshot");
                        break;
                    case "targets":
                        targets = Once(targets, ReadTargets(ref reader), "targets");
                        break;
                    case "device":
                        device = Once(device, Identity(ref reader, "device"), "device");
                        break;
                    default:
                        reader.Skip();
                        break;
                }
            }
            if (reader.Read())
                throw new FormatException("the request has more after its closing brace");
            return new PoolRequest(op ?? throw new FormatException("no field 'op'"), snapshot, targets)
                { Device = device, Fill = fill ?? false, FileIdentity = identity };
        }
        catch (JsonException e)
        {
            // The runtime's own wording is no message for a client: say where, in our words.
            throw new FormatException($"the request is not valid JSON (near byte {reader.BytesConsumed}{(e.Message.Contains("depth", StringComparison.OrdinalIgnoreCase) ? $", or nested deeper than {MaxDepth}" : "")})");
        }
    }

    /// <summary>The absolute snapshot path a load, evict or restore needs.</summary>
    /// <exception cref="FormatException">None given, or not absolute.</exception>
    public string SnapshotPath()
    {
        string path = Snapshot ?? throw new FormatException($"no field 'snapshot' (op '{Op}' needs one)");
        if (!Path.IsPathRooted(path))
            throw new FormatException($"snapshot: '{path}' is not an absolute path");
        return path;
    }

    /// <exception cref="FormatException">A restore without targets.</exception>
    public IReadOnlyList<PoolTarget> RestoreTargets() =>
        Targets ?? throw new FormatException("targets: expected an array of {name, handle, offset, capacity}");

    internal static List<PoolTarget> ReadTargets(ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
            throw new FormatException($"targets: expected an array of {{name, handle, offset, capacity}}, not {Describe(ref reader)}");
        var targets = new List<PoolTarget>();
        while (Next(ref reader) != JsonTokenType.EndArray)
        {
            string where = $"targets[{targets.Count}]";
            if (targets.Count == MaxTargets)
                throw new FormatException($"targets: more than the {MaxTargets} a request may carry");
            if (reader.TokenType != JsonTokenType.StartObject)
                throw new FormatException($"{where}: expected an object, not {Describe(ref reader)}");
            string? name = null;
            byte[]? handle = null;
            long? offset = null, capacity = null;
            while (Next(ref reader) == JsonTokenType.PropertyName)
            {
                string field = reader.ValueTextEquals("name") ? "name" : reader.ValueTextEquals("handle") ? "handle"
                    : reader.ValueTextEquals("offset") ? "offset" : reader.ValueTextEquals("capacity") ? "capacity" : "";
                Next(ref reader);
                switch (field)
                {
                    case "name":
                        name = Once(name, String(ref reader, $"{where}.name", MaxStringBytes), $"{where}.name");
                        break;
                    case "handle":
                        handle = Once(handle, Handle(ref reader, $"{where}.handle"), $"{where}.handle");
                        break;
                    case "offset":
                        offset = Once(offset, Integer(ref reader, $"{where}.offset"), $"{where}.offset");
                        break;
                    case "capacity":
                        capacity = Once(capacity, Integer(ref reader, $"{where}.capacity"), $"{where}.capacity");
                        break;
                    default:
                        reader.Skip();
                        break;
                }
            }
            targets.Add(new PoolTarget(
                name ?? throw new FormatException($"{where}: no field 'name'"),
                handle ?? throw new FormatException($"{where}: no field 'handle'"),
                offset ?? throw new FormatException($"{where}: no field 'offset'"),
                capacity ?? throw new FormatException($"{where}: no field 'capacity'")));
        }
        return targets;
    }

    /// <summary>{dev, ino, size, mtime_ns, ctime_ns, header_crc32c}: all of them, each once.</summary>
    internal static SnapshotIdentity ReadIdentity(ref Utf8JsonReader reader)
    {
        const string fields = "{dev, ino, size, mtime_ns, ctime_ns, header_crc32c}";
        if (reader.TokenType != JsonTokenType.StartObject)
            throw new FormatException($"identity: expected an object {fields}, not {Describe(ref reader)}");
        ulong? dev = null, ino = null;
        long? size = null, mtime = null, ctime = null;
        ulong? crc = null;
        while (Next(ref reader) == JsonTokenType.PropertyName)
        {
            string field = reader.ValueTextEquals("dev") ? "dev" : reader.ValueTextEquals("ino") ? "ino"
                : reader.ValueTextEquals("size") ? "size" : reader.ValueTextEquals("mtime_ns") ? "mtime_ns"
                : reader.ValueTextEquals("ctime_ns") ? "ctime_ns" : reader.ValueTextEquals("header_crc32c") ? "header_crc32c" : "";
            Next(ref reader);
            string where = $"identity.{field}";
            switch (field)
            {
                case "dev":
                    dev = dev is null ? Unsigned(ref reader, where, ulong.MaxValue) : throw new FormatException($"{where}: given twice");
                    break;
                case "ino":
                    ino = ino is null ? Unsigned(ref reader, where, ulong.MaxValue) : throw new FormatException($"{where}: given twice");
                    break;
                case "size":
                    size = Once(size, Integer(ref reader, where), where);
                    break;
                case "mtime_ns":
                    mtime = Once(mtime, Signed(ref reader, where), where);
                    break;
                case "ctime_ns":
                    ctime = Once(ctime, Signed(ref reader, where), where);
                    break;
                case "header_crc32c":
                    crc = crc is null ? Unsigned(ref reader, where, uint.MaxValue) : throw new FormatException($"{where}: given twice");
                    break;
                default:
                    reader.Skip();
                    break;
            }
        }
        if (dev is null || ino is null || size is null || mtime is null || ctime is null || crc is null)
            throw new FormatException($"identity: expected every field of {fields}");
        return new SnapshotIdentity(dev.Value, ino.Value, size.Value, mtime.Value, ctime.Value, (uint)crc.Value);
    }

    private static bool Boolean(ref Utf8JsonReader reader, string field) => reader.TokenType switch
    {
        JsonTokenType.True => true,
        JsonTokenType.False => false,
        _ => throw new FormatException($"{field}: expected true or false, not {Describe(ref reader)}"),
    };

    /// <summary>A JSON integer from 0 to <paramref name="max"/>, written without fraction or exponent.</summary>
    private static ulong Unsigned(ref Utf8JsonReader reader, string field, ulong max)
    {
        if (reader.TokenType != JsonTokenType.Number || reader.ValueSpan.IndexOfAny(".eE"u8) >= 0 ||
            !reader.TryGetUInt64(out ulong number) || number > max)
            throw new FormatException($"{field}: expected an integer from 0 to {max}, not {Describe(ref reader)}");
        return number;
    }

    /// <summary>A JSON integer from long.MinValue to long.MaxValue, written without fraction or exponent.</summary>
    private static long Signed(ref Utf8JsonReader reader, string field)
    {
        if (reader.TokenType != JsonTokenType.Number || reader.ValueSpan.IndexOfAny(".eE"u8) >= 0 || !reader.TryGetInt64(out long number))
            throw new FormatException($"{field}: expected an integer from {long.MinValue} to {long.MaxValue}, not {Describe(ref reader)}");
        return number;
    }

    internal static T Once<T>(T? previous, T value, string field) where T : class =>
        previous is null ? value : throw new FormatException($"{field}: given twice");

    internal static long Once(long? previous, long value, string field) =>
        previous is null ? value : throw new FormatException($"{field}: given twice");

    internal static JsonTokenType Next(ref Utf8JsonReader reader) =>
        reader.Read() ? reader.TokenType : throw new FormatException("the request ends before its closing brace");

    internal static string String(ref Utf8JsonReader reader, string field, int maxBytes)
    {
        if (reader.TokenType != JsonTokenType.String)
            throw new FormatException($"{field}: expected a string, not {Describe(ref reader)}");
        string? text = null;
        if (reader.ValueSpan.Length <= 6 * maxBytes) // the longest escaped form of maxBytes of text
        {
            try
            {
                text = reader.GetString();
            }
            catch (InvalidOperationException)
            {
                throw new FormatException($"{field}: not valid Unicode text (a lone surrogate escape?)");
            }
        }
        if (string.IsNullOrEmpty(text) || Encoding.UTF8.GetByteCount(text) > maxBytes || text.Contains('\0'))
            throw new FormatException($"{field}: expected 1 to {maxBytes} bytes of text without NUL");
        return text;
    }

    /// <summary>A device identity: 1 to <see cref="DeviceEngines.MaxIdentityBytes"/> printable ASCII characters.</summary>
    private static string Identity(ref Utf8JsonReader reader, string field)
    {
        string text = String(ref reader, field, DeviceEngines.MaxIdentityBytes);
        if (!text.All(c => c is > ' ' and < (char)127))
            throw new FormatException($"{field}: expected a device identity of printable ASCII (a GPU's UUID, or mock-N)");
        return text;
    }

    private static byte[] Handle(ref Utf8JsonReader reader, string field)
    {
        string encoded = String(ref reader, field, (MaxHandleBytes + 2) / 3 * 4);
        byte[] handle = new byte[MaxHandleBytes];
        if (!Convert.TryFromBase64String(encoded, handle, out int length) || length == 0)
            throw new FormatException($"{field}: expected base64 of 1 to {MaxHandleBytes} bytes");
        return handle[..length];
    }

    /// <summary>A JSON integer from 0 to long.MaxValue: no fraction, no exponent, no string.</summary>
    internal static long Integer(ref Utf8JsonReader reader, string field)
    {
        if (reader.TokenType != JsonTokenType.Number || reader.ValueSpan.IndexOfAny(".eE"u8) >= 0 ||
            !reader.TryGetInt64(out long number) || number < 0)
            throw new FormatException($"{field}: expected an integer from 0 to {long.MaxValue}, not {Describe(ref reader)}");
        return number;
    }

    internal static string Describe(ref Utf8JsonReader reader)
    {
        string kind = reader.TokenType switch
        {
            JsonTokenType.StartObject => "an object",
            JsonTokenType.StartArray => "an array",
            JsonTokenType.String => "a string",
            JsonTokenType.Number => "the number",
            JsonTokenType.True or JsonTokenType.False => "a boolean",
            JsonTokenType.Null => "null",
            _ => reader.TokenType.ToString(),
        };
        if (reader.TokenType is not (JsonTokenType.Number or JsonTokenType.String))
            return kind;
        ReadOnlySpan<byte> raw = reader.ValueSpan;
        string text = Encoding.UTF8.GetString(raw[..Math.Min(raw.Length, 40)]) + (raw.Length > 40 ? "..." : "");
        return reader.TokenType == JsonTokenType.String ? $"{kind} \"{text}\"" : $"{kind} {text}";
    }
}
