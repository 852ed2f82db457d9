using System.Text;
using System.Text.Json;

namespace Thaw.Interop.Pool;

/// <summary>The pool's wire format (docs/POOL.md): one JSON object per line each way.</summary>
public static class PoolProtocol
{
    /// <summary>Longest request or response line.</summary>
    public const int MaxLineBytes = 64 << 20;

    /// <summary>The per-user socket: <c>$THAW_POOL_SOCKET</c>, else <c>$XDG_RUNTIME_DIR/thaw-pool.sock</c>, else <c>/tmp/thaw-pool-USER.sock</c>.</summary>
    public static string DefaultSocketPath()
    {
        string? configured = Environment.GetEnvironmentVariable("THAW_POOL_SOCKET");
        if (!string.IsNullOrEmpty(configured))
            return configured;
        string? runtime = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        return string.IsNullOrEmpty(runtime) || !Directory.Exists(runtime)
            ? $"/tmp/thaw-pool-{Environment.UserName}.sock"
            : Path.Combine(runtime, "thaw-pool.sock");
    }

    /// <summary>Where mock-device clients make the files that stand in for device memory.</summary>
    public static string DefaultSharedMemoryDirectory() =>
        Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath().TrimEnd('/');

    /// <summary>The error response for <paramref name="e"/>: its kind and message.</summary>
    public static string Error(Exception e)
    {
        ThawErrorKind kind = e switch
        {
            ThawException t => t.Kind,
            FileNotFoundException => ThawErrorKind.NotFound,
            ArgumentException or JsonException or FormatException or KeyNotFoundException or InvalidOperationException => ThawErrorKind.InvalidArgument,
            _ => ThawErrorKind.Unknown,
        };
        return Write(w =>
        {
            w.WriteBoolean("ok", false);
            w.WriteNumber("kind", (int)kind);
            w.WriteString("error", e.Message);
        });
    }

    /// <summary>One JSON object, written by <paramref name="body"/> between the braces.</summary>
    public static string Write(Action<Utf8JsonWriter> body)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>Longest snapshot path and tensor name a request may carry (Linux's PATH_MAX).</summary>
    public const int MaxStringBytes = 4096;

    /// <summary>Largest decoded IPC handle: CUDA's is 64 bytes, a mock file name at most 255.</summary>
    public const int MaxHandleBytes = 256;

    /// <summary>Most targets one restore may name.</summary>
    public const int MaxTargets = 1 << 20;

    /// <summary>The request's operation: a string.</summary>
    /// <exception cref="FormatException">Not a JSON object, or no string "op".</exception>
    public static string Op(JsonElement request)
    {
        if (request.ValueKind != JsonValueKind.Object)
            throw new FormatException($"a request is a JSON object, not {Describe(request)}");
        return String(request, "op", "request");
    }

    /// <summary>The absolute snapshot path of a request.</summary>
    public static string SnapshotPath(JsonElement request)
    {
        string path = String(request, "snapshot", "request");
        if (!Path.IsPathRooted(path))
            throw new FormatException($"snapshot: '{path}' is not an absolute path");
        return path;
    }

    /// <summary>The targets of a restore, each field bounded; offsets and capacities are
    /// checked against the real allocation later, when its handle is opened.</summary>
    /// <exception cref="FormatException">A field missing, of the wrong type or out of range; the message names it.</exception>
    public static IReadOnlyList<PoolTarget> ParseTargets(JsonElement request)
    {
        if (!request.TryGetProperty("targets", out JsonElement array) || array.ValueKind != JsonValueKind.Array)
            throw new FormatException("targets: expected an array of {name, handle, offset, capacity}");
        int count = array.GetArrayLength();
        if (count > MaxTargets)
            throw new FormatException($"targets: {count} targets, more than the {MaxTargets} a request may carry");
        var targets = new List<PoolTarget>(count);
        int i = 0;
        foreach (JsonElement t in array.EnumerateArray())
        {
            string where = $"targets[{i++}]";
            if (t.ValueKind != JsonValueKind.Object)
                throw new FormatException($"{where}: expected an object, not {Describe(t)}");
            string encoded = String(t, "handle", where, maxBytes: (MaxHandleBytes + 2) / 3 * 4);
            byte[] handle = new byte[MaxHandleBytes];
            if (!Convert.TryFromBase64String(encoded, handle, out int handleBytes) || handleBytes == 0)
                throw new FormatException($"{where}.handle: expected base64 of 1 to {MaxHandleBytes} bytes");
            targets.Add(new PoolTarget(String(t, "name", where), handle[..handleBytes],
                Integer(t, "offset", where), Integer(t, "capacity", where)));
        }
        return targets;
    }

    private static string String(JsonElement obj, string field, string where, int maxBytes = MaxStringBytes)
    {
        if (!obj.TryGetProperty(field, out JsonElement value))
            throw new FormatException($"{where}: no field '{field}'");
        if (value.ValueKind != JsonValueKind.String)
            throw new FormatException($"{where}.{field}: expected a string, not {Describe(value)}");
        string text = value.GetString()!;
        if (text.Length == 0 || Encoding.UTF8.GetByteCount(text) > maxBytes || text.Contains('\0'))
            throw new FormatException($"{where}.{field}: expected 1 to {maxBytes} bytes without NUL");
        return text;
    }

    /// <summary>A JSON integer from 0 to long.MaxValue: no fraction, no exponent, no string.</summary>
    private static long Integer(JsonElement obj, string field, string where)
    {
        if (!obj.TryGetProperty(field, out JsonElement value))
            throw new FormatException($"{where}: no field '{field}'");
        string raw = value.ValueKind == JsonValueKind.Number ? value.GetRawText() : "";
        if (raw.Length == 0 || raw.AsSpan().IndexOfAny(".eE") >= 0 || !value.TryGetInt64(out long number) || number < 0)
            throw new FormatException($"{where}.{field}: expected an integer from 0 to {long.MaxValue}, not {Describe(value)}");
        return number;
    }

    private static string Describe(JsonElement value)
    {
        string raw = value.GetRawText();
        return value.ValueKind.ToString().ToLowerInvariant() + " " + (raw.Length > 40 ? raw[..40] + "..." : raw);
    }
}
