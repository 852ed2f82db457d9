using System.Diagnostics;
using System.Text.Json;
using Thaw.Interop.Format;
using Thaw.Interop.Native;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

public sealed partial class PoolClient
{
    /// <summary>Longest share answer: the chunk lengths as JSON and the rest.</summary>
    private const int MaxShareAnswerBytes = 64 << 10;

    /// <summary>Copy from the pool's shared host copy in this process when the pool offers one
    /// (THAW_POOL_SHARE=off turns it off: every hit then goes through the pool's own copies).</summary>
    private static bool SharingWanted() =>
        !string.Equals(Environment.GetEnvironmentVariable("THAW_POOL_SHARE"), "off", StringComparison.OrdinalIgnoreCase);

    /// <summary>Asks for the snapshot's shared host copy and copies the targets from it here. Null when
    /// the pool has none to give (not held, another user, pinned only, an older pool): the caller then
    /// restores through the pool's own copies, which fill on a miss.</summary>
    /// <exception cref="ThawException">The copies themselves failed after the pool shared its copy.</exception>
    private PoolRestoreResult? TryShare(ThawEngine engine, Snapshot snapshot, IReadOnlyList<RestoreTarget> targets,
        SnapshotIdentity identity, Stopwatch started)
    {
        var copies = new List<ShareCopy>(targets.Count);
        long bytes = 0;
        foreach (RestoreTarget t in targets)
        {
            TensorEntry tensor = snapshot.Tensors[snapshot.IndexOf(t.Name)];
            if (tensor.Length == 0)
                continue;
            copies.Add(new ShareCopy(tensor.Offset, t.Address, tensor.Length));
            bytes += tensor.Length;
        }
        double resolved = started.Elapsed.TotalSeconds;
        string request = PoolProtocol.Write(w =>
        {
            w.WriteString("op", "share");
            w.WriteString("snapshot", snapshot.Path);
            w.WriteString("device", engine.Identity);
            w.WriteStartObject("identity");
            PoolProtocol.WriteIdentityFields(w, identity);
            w.WriteEndObject();
        });
        string line;
        int[] fds;
        try
        {
            _writer.WriteLine(request);
            (line, fds) = PosixDescriptors.ReceiveLine(_socket, MaxShareAnswerBytes, Thaw.Interop.Native.Interop.ThawCore.ShareMaxChunks, TimeSpan.FromSeconds(30));
        }
        catch (IOException e)
        {
            throw new PoolUnavailableException($"the pool on {SocketPath} went away during the restore of {snapshot.Path} ({e.Message})", e);
        }
        long[] lengths;
        string device;
        try
        {
            using JsonDocument answer = JsonDocument.Parse(line);
            JsonElement root = answer.RootElement;
            if (!root.GetProperty("ok").GetBoolean())
            {
                foreach (int fd in fds)
                    PosixDescriptors.Close(fd); // an error answer carries none; a pool that sends some anyway leaks none here
                return null; // not held, another user, pinned only, or a pool without the op: its copies serve
            }
            lengths = root.GetProperty("chunks").EnumerateArray().Select(c => c.GetInt64()).ToArray();
            device = root.TryGetProperty("device", out JsonElement d) ? d.GetString() ?? "" : "";
            long announced = root.GetProperty("bytes").GetInt64();
            if (lengths.Length != fds.Length || announced != snapshot.DataLength || lengths.Any(n => n <= 0) || lengths.Sum() < announced)
                throw new FormatException($"{lengths.Length} chunks of {lengths.Sum()} bytes with {fds.Length} descriptors for {announced} bytes of data ({snapshot.DataLength} expected)");
        }
        catch (Exception e) when (e is JsonException or FormatException or KeyNotFoundException or InvalidOperationException or OverflowException)
        {
            foreach (int fd in fds)
                PosixDescriptors.Close(fd);
            throw new PoolUnavailableException($"the pool on {SocketPath} answered a share of {snapshot.Path} with nonsense ({e.Message})");
        }
        double asked = started.Elapsed.TotalSeconds;
        ShareCopyTimings timings;
        try
        {
            timings = engine.CopyFromShare(fds, lengths, copies);
        }
        catch (Exception e) when (e is ThawException and not ThawMismatchException or ArgumentException or IOException or UnauthorizedAccessException)
        {
            // What the pool announced did not map (checked, refused, or not what it said): the file serves.
            throw new PoolUnavailableException($"copying {snapshot.Path} from the pool's shared host copy failed ({e.Message})", e);
        }
        double total = started.Elapsed.TotalSeconds;
        return new PoolRestoreResult(bytes, total, Filled: false)
        {
            Shared = true,
            Device = device,
            Timings = PoolRestoreTimings.FromShare(timings, resolved, asked - resolved, total),
        };
    }
}
