using System.Text.Json;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>Where a restore through the pool spent its time, as its client sees it: resolving the
/// IPC handles of its tensors (<see cref="ResolveSeconds"/>: a range check and a cuIpcGetMemHandle
/// per allocation), the request and its answer over the socket (<see cref="RequestSeconds"/>: the
/// round trip less the pool's own time), and the pool's restore (<see cref="PoolSeconds"/>), of which
/// the lanes spent on average <see cref="OpenSeconds"/> opening handles, <see cref="WaitSeconds"/>
/// waiting for one another's opens, <see cref="CopySeconds"/> copying and <see cref="CloseSeconds"/>
/// closing. Resolve + request + pool = the restore's seconds; open + wait + copy + close &lt;= pool.</summary>
public sealed record PoolRestoreTimings(double ResolveSeconds, double RequestSeconds, double PoolSeconds,
    double OpenSeconds, double WaitSeconds, double CopySeconds, double CloseSeconds)
{
    /// <summary>The order of the pool's opens, copies and closes (<see cref="PeerCopyTimings.OpenOrders"/>), or "unknown".</summary>
    public string Opens { get; init; } = "unknown";
    /// <summary>Distinct allocations (IPC handles) the pool opened for the restore.</summary>
    public int Allocations { get; init; }

    /// <summary>No breakdown (a pool that sends none).</summary>
    public static readonly PoolRestoreTimings None = new(0, 0, 0, 0, 0, 0, 0);

    /// <summary>A restore from the pool's shared host copy, which this process copied itself: the
    /// share's round trip as the request, the copy as the pool's part (open: mapping the chunks).</summary>
    internal static PoolRestoreTimings FromShare(ShareCopyTimings copy, double resolveSeconds, double requestSeconds, double totalSeconds)
    {
        // The mapping runs under the copies (the lanes wait while the first chunk maps, later chunks map
        // while earlier ones copy), so the parts are cut out of the copy's seconds to stay disjoint:
        // mapped, then waited beyond that, then copying.
        double copying = copy.CopySeconds;
        double mapping = Math.Min(copy.MapSeconds, copying);
        double waiting = Math.Min(Math.Max(copy.WaitSeconds, mapping), copying);
        return new(resolveSeconds, requestSeconds, Math.Max(0, totalSeconds - resolveSeconds - requestSeconds),
            mapping, waiting - mapping, copying - waiting, 0);
    }

    /// <summary>From a restore's response, the client's time resolving and its total.</summary>
    internal static PoolRestoreTimings From(JsonElement response, double resolveSeconds, double totalSeconds)
    {
        double Field(string name) => response.TryGetProperty(name, out JsonElement v) && v.TryGetDouble(out double x) && x >= 0 ? x : 0;
        double pool = Math.Min(Field("seconds"), Math.Max(0, totalSeconds - resolveSeconds));
        return new PoolRestoreTimings(resolveSeconds, Math.Max(0, totalSeconds - resolveSeconds - pool), pool,
            Field("open_s"), Field("wait_s"), Field("copy_s"), Field("close_s"))
        {
            Opens = response.TryGetProperty("opens", out JsonElement opens) && opens.ValueKind == JsonValueKind.String
                && PeerCopyTimings.OpenOrders.Contains(opens.GetString()) ? opens.GetString()! : "unknown",
            Allocations = response.TryGetProperty("allocations", out JsonElement a) && a.TryGetInt32(out int n) && n >= 0 ? n : 0,
        };
    }
}
