using System.Diagnostics;
using System.Text;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using DeviceCopy = Thaw.Interop.Native.Interop.ThawCore.DeviceCopy;

namespace Thaw.Interop.Pool;

/// <summary>What a publish did: the generation now live, and the tensors and bytes it offers.</summary>
public sealed record PublishResult(long Generation, int Tensors, long Bytes);

/// <summary>Memory of live processes that hold a snapshot's weights, offered to new processes
/// restoring that snapshot (docs/POOL.md, "Restoring from a live peer"). A publication belongs to
/// its publisher's connection and ends with it; the publisher's allocations are opened once, when
/// published (confined and bounded as a restore's targets are, for the publisher's uid), and closed
/// when the publication ends and no copy uses them. A restore served from a publication copies
/// device to device and is kept only if the publication is still the same one, unchanged, after
/// the copy: a publisher withdraws (or replaces) a publication before its memory changes.</summary>
internal sealed class PeerPublications(DeviceEngines devices) : IDisposable
{
    /// <summary>Publications held at once, over all connections.</summary>
    public const int MaxPublications = 256;
    /// <summary>Publications one connection may hold.</summary>
    public const int MaxPerConnection = 16;
    /// <summary>What the publications' tables may take, summed (names, handles and offsets).</summary>
    public const long MaxStoredBytes = 256L << 20;
    /// <summary>Publishers' allocations held open at once, over all publications (each is a mapping, or on the mock a descriptor).</summary>
    public const int MaxOpenAllocations = 4096;

    private sealed record PublishedTensor(ulong Address, long Length);

    private sealed class Publication(long connection, PoolPeer publisher, ThawEngine engine, string key, SnapshotIdentity identity, long generation, IReadOnlySet<uint> readers)
    {
        /// <summary>The engine of the publisher's device: it opened the publisher's allocations, and closes them.</summary>
        public ThawEngine Engine { get; } = engine;
        public long Connection { get; } = connection;
        public PoolPeer Publisher { get; } = publisher;
        public string Key { get; } = key;
        public SnapshotIdentity Identity { get; } = identity;
        public long Generation { get; } = generation;
        public IReadOnlySet<uint> Readers { get; } = readers;
        public Dictionary<string, PublishedTensor> Tensors { get; } = new(StringComparer.Ordinal);
        public List<ulong> Opened { get; } = [];
        public long StoredBytes;
        public int Allocations;
        public long TensorBytes;
        public bool Live = true;
        public int Users;
        public long Served;

        public bool Reads(uint uid) => uid == Publisher.Uid || Readers.Contains(uid);
    }

    private readonly List<Publication> _publications = [];
    private readonly Lock _lock = new();
    private long _storedBytes;
    private int _allocations;

    /// <summary>Test support: runs after a peer's copy, before the check that the publication did not change.</summary>
    internal Action? AfterPeerCopy { get; set; }

    /// <summary>Publications live now.</summary>
    public int Count { get { lock (_lock) return _publications.Count; } }

    /// <summary>Whether the connection holds a publication (such a connection may stay silent).</summary>
    public bool Holds(long connection)
    {
        lock (_lock)
            return _publications.Exists(p => p.Connection == connection);
    }

    /// <summary>Offers the publisher's memory for a snapshot: the file's identity now must be the one
    /// given, every target must name a tensor of it once, and every handle must open, as the
    /// publisher's, to an allocation that holds its targets. A publication of the same snapshot on the
    /// same connection is replaced, and only by a higher generation.</summary>
    /// <exception cref="ThawMismatchException">The snapshot on disk is another one, a target does not fit it or
    /// its allocation, a handle cannot be opened or is not the publisher's, or the generation does not grow.</exception>
    /// <exception cref="ThawException">Over a limit (kind OutOfHostMemory: retry later).</exception>
    public PublishResult Publish(PoolRequest request, PublishFields fields, PoolPeer publisher, long connection)
    {
        string key = Path.GetFullPath(request.SnapshotPath());
        IReadOnlyList<PoolTarget> targets = request.RestoreTargets();
        if (targets.Count == 0)
            throw new FormatException("targets: a publication offers at least one tensor");
        SnapshotIdentity claimed = request.FileIdentity
            ?? throw new FormatException("no field 'identity' (publish names the snapshot's identity as the publisher restored it)");
        Snapshot snapshot = SnapshotReader.Read(key);
        SnapshotIdentity now = SnapshotIdentity.Of(snapshot);
        if (now != claimed)
            throw new ThawMismatchException($"{key}: the file is not the one published ({claimed.Difference(now)})");
        var readers = new HashSet<uint>(fields.AllowUids ?? Enumerable.Empty<uint>()) { publisher.Uid };
        ThawEngine engine = devices.For(request.Device); // an unknown device is refused before anything is opened
        var publication = new Publication(connection, publisher, engine, key, now, fields.Generation, readers);
        foreach (PoolTarget t in targets)
            publication.StoredBytes += Encoding.UTF8.GetByteCount(t.Name) + t.Handle.Length + 64;
        publication.Allocations = targets.Select(t => Convert.ToBase64String(t.Handle)).Distinct().Count();
        lock (_lock)
        {
            Publication? previous = _publications.Find(p => p.Connection == connection && p.Key == key);
            if (previous is not null && fields.Generation <= previous.Generation)
                throw new ThawMismatchException($"generation: {fields.Generation} does not follow the published generation {previous.Generation} of {key}");
            if (previous is null && _publications.Count(p => p.Connection == connection) >= MaxPerConnection)
                throw new ThawException(ThawErrorKind.OutOfHostMemory, $"a connection may hold at most {MaxPerConnection} publications");
            if (previous is null && _publications.Count >= MaxPublications)
                throw new ThawException(ThawErrorKind.OutOfHostMemory, $"the pool holds {MaxPublications} publications already; retry later");
            // What the publication it replaces holds is given back below.
            if (_storedBytes - (previous?.StoredBytes ?? 0) + publication.StoredBytes > MaxStoredBytes)
                throw new ThawException(ThawErrorKind.OutOfHostMemory, $"the pool's publications would take more than {MaxStoredBytes} bytes; retry later");
            if (_allocations - (previous?.Allocations ?? 0) + publication.Allocations > MaxOpenAllocations)
                throw new ThawException(ThawErrorKind.OutOfHostMemory, $"the pool's publications would hold more than {MaxOpenAllocations} allocations open; retry later");
            _storedBytes += publication.StoredBytes;
            _allocations += publication.Allocations;
            // The old memory is withdrawn first: a copy from it still running is discarded.
            if (previous is not null)
                Retire(previous);
        }
        try
        {
            Open(publication, snapshot, targets);
        }
        catch
        {
            lock (_lock)
            {
                _storedBytes -= publication.StoredBytes;
                _allocations -= publication.Allocations;
            }
            CloseAll(publication);
            throw;
        }
        lock (_lock)
            _publications.Add(publication);
        return new PublishResult(publication.Generation, publication.Tensors.Count, publication.TensorBytes);
    }

    private void Open(Publication publication, Snapshot snapshot, IReadOnlyList<PoolTarget> targets)
    {
        var opened = new Dictionary<string, (ulong Address, long Length)>(StringComparer.Ordinal);
        for (int i = 0; i < targets.Count; i++)
        {
            PoolTarget target = targets[i];
            string where = $"targets[{i}]";
            int region = snapshot.IndexOf(target.Name);
            if (region < 0)
                throw new ThawMismatchException($"{where}.name: {publication.Key} has no tensor '{target.Name}'");
            if (publication.Tensors.ContainsKey(target.Name))
                throw new ThawMismatchException($"{where}.name: tensor '{target.Name}' is published twice");
            TensorEntry tensor = snapshot.Tensors[region];
            if (target.Capacity < tensor.Length)
                throw new ThawMismatchException($"{where}.capacity: tensor '{tensor.Name}' has {tensor.Length} bytes, the published memory holds {target.Capacity}");
            string handleKey = Convert.ToBase64String(target.Handle);
            if (!opened.TryGetValue(handleKey, out var allocation))
            {
                if (opened.Count == SnapshotPool.MaxHandlesPerRestore)
                    throw new ThawMismatchException($"{where}.handle: a publication may name at most {SnapshotPool.MaxHandlesPerRestore} allocations");
                try
                {
                    allocation = publication.Engine.IpcOpen(target.Handle, publication.Publisher.Uid, publication.Publisher.SharedMemoryDirectory);
                }
                catch (ThawException e)
                {
                    throw new ThawMismatchException($"{where}.handle (tensor '{tensor.Name}'): {e.Message}");
                }
                publication.Opened.Add(allocation.Address);
                opened[handleKey] = allocation;
            }
            if (target.Offset > allocation.Length || target.Capacity > allocation.Length - target.Offset)
                throw new ThawMismatchException($"{where}: tensor '{tensor.Name}' (offset {target.Offset}, capacity {target.Capacity}) " +
                    $"runs past the end of its published allocation of {allocation.Length} bytes");
            publication.Tensors[target.Name] = new PublishedTensor(allocation.Address + (ulong)target.Offset, tensor.Length);
            publication.TensorBytes += tensor.Length;
        }
    }

    /// <summary>Withdraws the connection's publication of a snapshot; false when it has none.</summary>
    public bool Unpublish(string path, long connection)
    {
        string key = Path.GetFullPath(path);
        lock (_lock)
        {
            Publication? p = _publications.Find(p => p.Connection == connection && p.Key == key);
            if (p is not null)
                Retire(p);
            return p is not null;
        }
    }

    /// <summary>Withdraws everything a connection published (it closed: its memory may be gone).</summary>
    public void Forget(long connection)
    {
        lock (_lock)
            foreach (Publication p in _publications.FindAll(p => p.Connection == connection))
                Retire(p);
    }

    /// <summary>Forgets the connection's publications when disposed (when the connection ends).</summary>
    public IDisposable ForgetOnClose(long connection) => new Forgetting(this, connection);

    private sealed class Forgetting(PeerPublications publications, long connection) : IDisposable
    {
        public void Dispose() => publications.Forget(connection);
    }

    /// <summary>Whether a live publication of the snapshot lets <paramref name="uid"/> read it: a restore
    /// from it (device to device) beats any host copy, so the pool does not share its host copy then.</summary>
    public bool Offers(string path, uint uid)
    {
        string key = Path.GetFullPath(path);
        lock (_lock)
            return _publications.Exists(p => p.Key == key && p.Reads(uid));
    }

    /// <summary>Serves a restore from a live publication of the snapshot that covers every target and
    /// that the client's uid may read; null, with the reason in <paramref name="declined"/>, when none
    /// can, or when the publication ended or changed during the copy (the copy is then discarded: the
    /// caller overwrites every target from the pool's host copy, or the client from the file).</summary>
    /// <exception cref="ThawMismatchException">A client target does not fit its tensor or its allocation.</exception>
    /// <param name="device">The identity of the device the client's memory is on (null: the pool's default);
    /// the copy runs on that device's engine, a peer copy when the publication lies on another device.</param>
    /// <param name="asked">The identity of the snapshot as the client read it, when it sent one: served only if it is the published one.</param>
    public RestoreResult? TryRestore(string path, IReadOnlyList<PoolTarget> targets, PoolPeer client, string? device, SnapshotIdentity? asked,
        out string? declined)
    {
        string key = Path.GetFullPath(path);
        ThawEngine engine = devices.For(device);
        Publication? source;
        lock (_lock)
        {
            var ofSnapshot = _publications.FindAll(p => p.Key == key);
            var readable = ofSnapshot.FindAll(p => p.Reads(client.Uid));
            source = readable.Find(p => targets.All(t => p.Tensors.ContainsKey(t.Name)));
            declined = source is not null ? null
                : ofSnapshot.Count == 0 ? null
                : readable.Count == 0 ? $"no publication of {key} lets uid {client.Uid} read it"
                : $"no publication of {key} offers every tensor asked";
            if (source is null)
                return null;
            source.Users++;
        }
        var started = Stopwatch.StartNew();
        var opened = new Dictionary<string, (ulong Address, long Length)>(StringComparer.Ordinal);
        try
        {
            SnapshotIdentity now;
            try
            {
                now = SnapshotIdentity.Of(key, source.Identity.HeaderCrc32C); // the same file unchanged has the same header
            }
            catch (Exception e) when (e is IOException or ThawException)
            {
                declined = $"{key} cannot be examined: {e.Message}";
                return null;
            }
            if (!now.SameFile(source.Identity))
            {
                declined = $"{key} changed on disk since it was published ({source.Identity.Difference(now)})";
                return null;
            }
            if (asked is not null && asked != source.Identity)
            {
                declined = $"the client read another version of {key} than the one published ({source.Identity.Difference(asked)})";
                return null;
            }
            var copies = new List<DeviceCopy>(targets.Count);
            long bytes = 0;
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (PoolTarget target in targets)
            {
                PublishedTensor from = source.Tensors[target.Name];
                if (!seen.Add(target.Name))
                    throw new ThawMismatchException($"{key}: tensor '{target.Name}' is asked twice");
                if (target.Capacity < from.Length)
                    throw new ThawMismatchException($"{key}: the destination of tensor '{target.Name}' holds {target.Capacity} bytes, the snapshot region has {from.Length}");
                var allocation = OpenClientAllocation(engine, opened, target, client);
                if (target.Offset > allocation.Length || target.Capacity > allocation.Length - target.Offset)
                    throw new ThawMismatchException($"{key}: the destination of tensor '{target.Name}' (offset {target.Offset}, " +
                        $"capacity {target.Capacity}) runs past the end of its allocation of {allocation.Length} bytes");
                if (from.Length > 0)
                    copies.Add(new DeviceCopy { SourceAddress = from.Address, DestinationAddress = allocation.Address + (ulong)target.Offset, Length = (ulong)from.Length });
                bytes += from.Length;
            }
            try
            {
                engine.CopyDeviceToDevice(copies.ToArray());
            }
            catch (ThawException e)
            {
                declined = $"the copy from the publisher's memory failed: {e.Message}";
                return null;
            }
            AfterPeerCopy?.Invoke();
            lock (_lock)
            {
                if (!source.Live)
                {
                    declined = $"the publication of {key} was withdrawn or replaced during the copy";
                    return null;
                }
                source.Served++;
            }
            return new RestoreResult(bytes, 0, started.Elapsed.TotalSeconds, IoMode.Buffered, 0);
        }
        finally
        {
            foreach (var allocation in opened.Values)
                engine.IpcClose(allocation.Address);
            lock (_lock)
            {
                source.Users--;
                if (!source.Live && source.Users == 0)
                    CloseAll(source);
            }
        }
    }

    private static (ulong Address, long Length) OpenClientAllocation(ThawEngine engine, Dictionary<string, (ulong Address, long Length)> opened,
        PoolTarget target, PoolPeer client)
    {
        string handleKey = Convert.ToBase64String(target.Handle);
        if (opened.TryGetValue(handleKey, out var allocation))
            return allocation;
        if (opened.Count == SnapshotPool.MaxHandlesPerRestore)
            throw new ThawMismatchException($"a restore may open at most {SnapshotPool.MaxHandlesPerRestore} allocations");
        try
        {
            allocation = engine.IpcOpen(target.Handle, client.Uid, client.SharedMemoryDirectory);
        }
        catch (ThawMismatchException e)
        {
            throw new ThawMismatchException($"tensor '{target.Name}': {e.Message}");
        }
        return opened[handleKey] = allocation;
    }

    /// <summary>The publications live now, for status.</summary>
    public IReadOnlyList<(string Snapshot, long Generation, uint Uid, int Tensors, long Bytes, long Served)> List()
    {
        lock (_lock)
            return _publications.Select(p => (p.Key, p.Generation, p.Publisher.Uid, p.Tensors.Count, p.TensorBytes, p.Served)).ToList();
    }

    /// <summary>Ends a publication (under the lock); its allocations close when no copy uses them.</summary>
    private void Retire(Publication p)
    {
        if (!p.Live)
            return;
        p.Live = false;
        _publications.Remove(p);
        _storedBytes -= p.StoredBytes;
        _allocations -= p.Allocations;
        if (p.Users == 0)
            CloseAll(p);
    }

    private static void CloseAll(Publication p)
    {
        foreach (ulong address in p.Opened)
            p.Engine.IpcClose(address);
        p.Opened.Clear();
    }

    public void Dispose()
    {
        lock (_lock)
            foreach (Publication p in _publications.ToList())
                Retire(p);
    }
}
