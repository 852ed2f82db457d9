namespace Thaw.Interop.Pool;

/// <summary>The pool's ops for live peers (docs/POOL.md, "Restoring from a live peer"): publish,
/// unpublish, and restores served device to device from a publication.</summary>
public sealed partial class PoolServer
{
    private readonly PeerPublications _peers;
    private long _nextConnection;

    /// <summary>Test support: runs after a peer's copy, before the check that its publication did not change.</summary>
    internal Action? AfterPeerCopy { get => _peers.AfterPeerCopy; set => _peers.AfterPeerCopy = value; }

    /// <summary>Publications live now.</summary>
    public int Publications => _peers.Count;

    /// <summary>status's <c>publications</c>: [{snapshot, generation, uid, tensors, bytes, served}].</summary>
    private void WritePublications(System.Text.Json.Utf8JsonWriter w)
    {
        w.WriteStartArray("publications");
        foreach (var p in _peers.List())
        {
            w.WriteStartObject();
            w.WriteString("snapshot", p.Snapshot);
            w.WriteNumber("generation", p.Generation);
            w.WriteNumber("uid", p.Uid);
            w.WriteNumber("tensors", p.Tensors);
            w.WriteNumber("bytes", p.Bytes);
            w.WriteNumber("served", p.Served);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    /// <summary>The response to a peer op, or to a restore a publication served; null for the other
    /// ops, and for a restore no publication served (the pool's host copy serves it, or the file).</summary>
    private string? HandlePeerOp(PoolRequest request, ReadOnlySpan<byte> line, PoolPeer peer, long connection)
    {
        switch (request.Op)
        {
            case "publish":
            {
                PublishResult r = _peers.Publish(request, PublishFields.Parse(line), peer, connection);
                Log?.Invoke($"uid {peer.Uid} publishes {request.Snapshot} (generation {r.Generation}, {r.Tensors} tensors, {r.Bytes} bytes)");
                return PoolProtocol.Write(w =>
                {
                    w.WriteBoolean("ok", true);
                    w.WriteNumber("generation", r.Generation);
                    w.WriteNumber("tensors", r.Tensors);
                    w.WriteNumber("bytes", r.Bytes);
                });
            }
            case "unpublish":
            {
                bool withdrawn = _peers.Unpublish(request.SnapshotPath(), connection);
                return PoolProtocol.Write(w => { w.WriteBoolean("ok", true); w.WriteBoolean("unpublished", withdrawn); });
            }
            case "restore":
            {
                var served = _peers.TryRestore(request.SnapshotPath(), request.RestoreTargets(), peer, request.Device, request.FileIdentity, out string? declined);
                if (served is null)
                {
                    if (declined is not null)
                        Log?.Invoke($"not served by a peer: {declined}");
                    return null;
                }
                return PoolProtocol.Write(w =>
                {
                    w.WriteBoolean("ok", true);
                    w.WriteNumber("bytes", served.Bytes);
                    w.WriteNumber("seconds", served.Seconds);
                    w.WriteString("served", "peer");
                    w.WriteString("device", string.IsNullOrEmpty(request.Device) ? _pool.Engines.Default.Identity : request.Device);
                });
            }
            default:
                return null;
        }
    }
}
