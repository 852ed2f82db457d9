using System.Net.Sockets;
using Thaw.Interop.Native;

namespace Thaw.Interop.Pool;

/// <summary>The share op (docs/POOL.md, "Shared host copies"): the answer line carries the
/// descriptors of the snapshot's shared host copy, and the connection holds the snapshot until
/// it says unshare or closes.</summary>
public sealed partial class PoolServer
{
    /// <summary>Most snapshots one connection may hold shared at once.</summary>
    public const int MaxSharesPerConnection = 64;

    private (string, PoolShareGrant?) Share(PoolRequest request, PoolPeer peer, ConnectionShares shares)
    {
        if (shares.Count >= MaxSharesPerConnection)
            throw new ThawException(ThawErrorKind.InvalidArgument,
                $"a connection may hold at most {MaxSharesPerConnection} shared snapshots; unshare one first");
        if (_peers.Offers(request.SnapshotPath(), peer.Uid))
            throw new PoolUnavailableException($"a live peer publishes {request.SnapshotPath()}: restore, and it serves device to device");
        // Not held: no miss counted here; the client's restore that follows counts it (and fills).
        PoolShareGrant grant = _pool.Share(request.SnapshotPath(), peer, request.Device, request.FileIdentity);
        Interlocked.Increment(ref _hits);
        string response = PoolProtocol.Write(w =>
        {
            w.WriteBoolean("ok", true);
            w.WriteString("served", "share");
            w.WriteString("snapshot", grant.Snapshot);
            w.WriteNumber("bytes", grant.Bytes);
            w.WriteString("device", grant.Device);
            w.WriteStartArray("chunks");
            foreach (long length in grant.Lengths)
                w.WriteNumberValue(length);
            w.WriteEndArray();
        });
        return (response, grant);
    }

    /// <summary>Sends the answer with the grant's descriptors and keeps the hold for the connection;
    /// a client that is gone by then holds nothing. The send blocks while a client that does not read
    /// leaves no room (up to the request deadline), so it runs on a thread of its own: on the thread
    /// pool, a few such clients starved every other connection (pings took 0.5 to 1.5 s with 16).</summary>
    private async Task SendShare(Socket client, string response, PoolShareGrant grant, ConnectionShares shares)
    {
        try
        {
            await Task.Factory.StartNew(() => PosixDescriptors.SendLine(client, response, grant.Descriptors, Limits.RequestTimeout),
                CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        }
        catch
        {
            grant.Dispose();
            throw;
        }
        grant.ForgetDescriptors();
        shares.Add(grant);
    }
}

/// <summary>The shared snapshots one connection holds, let go when it says unshare or closes.</summary>
internal sealed class ConnectionShares : IDisposable
{
    private readonly List<PoolShareGrant> _held = [];

    public int Count => _held.Count;

    public void Add(PoolShareGrant grant) => _held.Add(grant);

    /// <summary>Lets go of every hold on <paramref name="snapshot"/>; returns how many.</summary>
    public int Release(string snapshot)
    {
        string key = Path.GetFullPath(snapshot);
        var gone = _held.Where(g => g.Snapshot == key).ToList();
        foreach (PoolShareGrant g in gone)
        {
            _held.Remove(g);
            g.Dispose();
        }
        return gone.Count;
    }

    public void Dispose()
    {
        foreach (PoolShareGrant g in _held)
            g.Dispose();
        _held.Clear();
    }
}
