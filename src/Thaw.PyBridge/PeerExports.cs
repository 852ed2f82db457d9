using System.Runtime.InteropServices;
using Thaw.Interop.Format;
using Thaw.Interop.Pool;

namespace Thaw.PyBridge;

/// <summary>Publishing this process's weights to a pool for new processes to restore from
/// (python/thaw_vllm/peer.py; docs/POOL.md, "Restoring from a live peer"). A publication is a
/// handle the caller holds: its connection to the pool stays open until thaw_pool_unpublish.</summary>
public static unsafe partial class Exports
{
    /// <summary>The identity of a snapshot file now, as JSON {dev, ino, size, mtime_ns, ctime_ns,
    /// header_crc32c} released with thaw_free: take it before restoring the bytes a publication will
    /// offer, so that a file replaced meanwhile is never published.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_snapshot_identity")]
    public static int SnapshotIdentityOf(byte* path, byte** jsonOut) => Guard(() =>
    {
        Thaw.Interop.Pool.SnapshotIdentity identity = Thaw.Interop.Pool.SnapshotIdentity.Of(SnapshotReader.Read(Text(path, "path")));
        *jsonOut = ToNative(PoolProtocol.Write(w => PoolProtocol.WriteIdentityFields(w, identity)));
        return 0;
    });

    /// <summary>Publishes tensors of a snapshot held in caller memory (device pointers, as for
    /// thaw_pool_restore) under its identity (thaw_snapshot_identity's JSON); *handleOut is the publication, to release with
    /// thaw_pool_unpublish. allowUids (allowCount entries, may be null) are the uids besides the
    /// caller's own that the pool may serve from this memory.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_pool_publish")]
    public static int PoolPublish(byte* socket, byte* path, EngineRequest* request, TensorArray* tensors, byte* identityJson,
        uint* allowUids, int allowCount, long* generationOut, nint* handleOut) => Guard(() =>
    {
        if (allowCount < 0 || allowCount > PoolPublisher.MaxAllowUids || (allowCount > 0 && allowUids == null))
            throw new ArgumentException($"allow_uids: expected at most {PoolPublisher.MaxAllowUids} uids, not {allowCount}");
        Snapshot snapshot = SnapshotReader.Read(Text(path, "path"));
        string socketPath = socket == null ? PoolProtocol.DefaultSocketPath() : Text(socket, "socket");
        PoolPublisher publisher = PoolPublisher.Publish(socketPath, Engines.Get(*request), snapshot, PoolProtocol.ParseIdentity(Text(identityJson, "identity")),
            Targets(tensors), new ReadOnlySpan<uint>(allowUids, allowCount).ToArray());
        *generationOut = publisher.Generation;
        *handleOut = GCHandle.ToIntPtr(GCHandle.Alloc(publisher));
        return 0;
    });

    /// <summary>Publishes the next generation of a publication (after its memory changed, and holds the
    /// snapshot's bytes again); tensors may be the same or new addresses.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_pool_republish")]
    public static int PoolRepublish(nint handle, TensorArray* tensors, long* generationOut) => Guard(() =>
    {
        PoolPublisher publisher = Publisher(handle);
        publisher.Republish(Targets(tensors));
        *generationOut = publisher.Generation;
        return 0;
    });

    /// <summary>Withdraws a publication before its memory changes; returns once the pool has.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_pool_withdraw")]
    public static int PoolWithdraw(nint handle) => Guard(() =>
    {
        Publisher(handle).Withdraw();
        return 0;
    });

    /// <summary>Ends a publication: closes its connection (the pool forgets it) and frees the handle.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_pool_unpublish")]
    public static int PoolUnpublish(nint handle) => Guard(() =>
    {
        PoolPublisher publisher = Publisher(handle);
        GCHandle.FromIntPtr(handle).Free();
        publisher.Dispose();
        return 0;
    });

    private static PoolPublisher Publisher(nint handle) =>
        handle != 0 && GCHandle.FromIntPtr(handle).Target is PoolPublisher p ? p : throw new ArgumentException("not a publication handle");
}
