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

    /// <summary>A restore request (what <see cref="PoolRequest"/> parses).</summary>
    public static string RestoreRequest(string snapshot, IEnumerable<PoolTarget> targets, bool fill, string? device = null,
        SnapshotIdentity? identity = null) => Write(w =>
    {
        w.WriteString("op", "restore");
        w.WriteString("snapshot", snapshot);
        if (device is not null)
            w.WriteString("device", device);
        if (fill)
            w.WriteBoolean("fill", true);
        if (identity is not null)
        {
            w.WriteStartObject("identity");
            WriteIdentityFields(w, identity);
            w.WriteEndObject();
        }
        WriteTargets(w, targets);
    });

    /// <summary>An <c>identity</c> object alone (what WriteIdentityFields writes), checked as in a request.</summary>
    /// <exception cref="FormatException">Not such an object; the message names the field.</exception>
    public static SnapshotIdentity ParseIdentity(string json)
    {
        var reader = new Utf8JsonReader(Encoding.UTF8.GetBytes(json), new JsonReaderOptions { MaxDepth = PoolRequest.MaxDepth });
        try
        {
            PoolRequest.Next(ref reader);
            return PoolRequest.ReadIdentity(ref reader);
        }
        catch (JsonException)
        {
            throw new FormatException("identity: not valid JSON");
        }
    }

    /// <summary>The fields of an <c>identity</c> object (a restore's or a publish's).</summary>
    public static void WriteIdentityFields(Utf8JsonWriter w, SnapshotIdentity identity)
    {
        w.WriteNumber("dev", identity.Device);
        w.WriteNumber("ino", identity.Inode);
        w.WriteNumber("size", identity.Size);
        w.WriteNumber("mtime_ns", identity.ModifiedNs);
        w.WriteNumber("ctime_ns", identity.ChangedNs);
        w.WriteNumber("header_crc32c", identity.HeaderCrc32C);
    }

    /// <summary>The <c>targets</c> array of a restore or publish request.</summary>
    internal static void WriteTargets(Utf8JsonWriter w, IEnumerable<PoolTarget> targets)
    {
        w.WriteStartArray("targets");
        foreach (PoolTarget t in targets)
        {
            w.WriteStartObject();
            w.WriteString("name", t.Name);
            w.WriteBase64String("handle", t.Handle);
            w.WriteNumber("offset", t.Offset);
            w.WriteNumber("capacity", t.Capacity);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

}
