using System.Text;
using System.Text.Json;

namespace Thaw.Interop.Pool;

/// <summary>The pool's wire format (docs/POOL.md): one JSON object per line each way.</summary>
public static class PoolProtocol
{
    public const int MaxLineBytes = 64 << 20;

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

    public static IReadOnlyList<PoolTarget> ParseTargets(JsonElement request)
    {
        var targets = new List<PoolTarget>();
        foreach (JsonElement t in request.GetProperty("targets").EnumerateArray())
        {
            targets.Add(new PoolTarget(
                t.GetProperty("name").GetString() ?? throw new FormatException("target without a name"),
                Convert.FromBase64String(t.GetProperty("handle").GetString() ?? ""),
                t.GetProperty("offset").GetInt64(),
                t.GetProperty("capacity").GetInt64()));
        }
        return targets;
    }
}
