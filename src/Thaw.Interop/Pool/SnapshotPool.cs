using System.Diagnostics;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>A tensor a client wants: its name, the IPC handle of the allocation it lies
/// in, its byte offset inside that allocation, and the bytes available there.</summary>
public sealed record PoolTarget(string Name, byte[] Handle, long Offset, long Capacity);

/// <summary>Who asks for a restore (uid from SO_PEERCRED), and the directory its mock
/// handles must name files in: the pool opens only memory that peer owns.</summary>
public sealed record PoolPeer(uint Uid, string SharedMemoryDirectory);

/// <summary>A snapshot the pool holds: its path, bytes, tensors, and use since the pool started:
/// restores served from memory (hits), restores that found it not held (misses, a stale copy
/// included), misses it was filled on (fills), and bytes read from its file.</summary>
public sealed record PoolEntryInfo(string Path, long Bytes, int Tensors, long Hits, long BytesServed, DateTime LastUsed,
    long Fills = 0, long Misses = 0, long BytesRead = 0);

/// <summary>What a restore asks beyond its targets: to be filled on a miss, and the identity of
/// the file the client parsed (null: an older client; only the file on disk is compared).</summary>
public sealed record PoolAsk(bool Fill = false, SnapshotIdentity? Identity = null);

/// <summary>Snapshots held once in pinned host memory, up to a budget, least recently
/// used evicted first, restored into any process's device memory through IPC handles.
/// A held snapshot is served only while its file is unchanged on disk (<see cref="SnapshotIdentity"/>).</summary>
public sealed unsafe class SnapshotPool : IDisposable
{
    private sealed class Entry(Snapshot snapshot, PoolMemory memory, SnapshotIdentity identity, Counters counters)
    {
        public Snapshot Snapshot { get; } = snapshot;
        public PoolMemory Memory { get; } = memory;
        public byte* Buffer => Memory.Start;
        public SnapshotIdentity Identity { get; } = identity;
        public Counters Counters { get; } = counters;
        public DateTime LastUsed = DateTime.UtcNow;
        public int InUse;
        public bool Retired; // no longer served; its memory goes when the last restore using it ends
    }

    private sealed class Counters
    {
        public long Hits, Fills, Misses, BytesServed, BytesRead;
    }

    /// <summary>Snapshots whose counters are kept; past it, those of snapshots not held are forgotten.</summary>
    private const int MaxCountedSnapshots = 4096;

    private readonly ThawEngine _device;
    private readonly DeviceEngines _devices;
    private readonly bool _ownsDevices;
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Task<Entry>> _loading = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Counters> _counters = new(StringComparer.Ordinal);
    private readonly HashSet<Entry> _retired = [];
    private readonly Lock _lock = new();
    private long _reserved; // bytes of fills under way

    /// <summary>A pool pinning at most <paramref name="budgetBytes"/> through <paramref name="device"/>'s engine,
    /// which serves clients that name no device; other devices of its kind get engines of their own.</summary>
    public SnapshotPool(ThawEngine device, long budgetBytes) : this(DeviceEngines.Around(device), budgetBytes, ownsDevices: true)
    {
    }

    /// <summary>A pool serving every device of <paramref name="devices"/>, pinning through its default engine.</summary>
    public SnapshotPool(DeviceEngines devices, long budgetBytes) : this(devices, budgetBytes, ownsDevices: false)
    {
    }

    private SnapshotPool(DeviceEngines devices, long budgetBytes, bool ownsDevices)
    {
        // Pinned with CU_MEMHOSTREGISTER_PORTABLE (device_cuda.c): every device's context copies from it.
        _device = devices.Default;
        _devices = devices;
        _ownsDevices = ownsDevices;
        BudgetBytes = budgetBytes;
    }

    /// <summary>The devices served so far, with their restores and bytes.</summary>
    public IReadOnlyList<PoolDeviceInfo> Devices => _devices.List();

    /// <summary>The engines the pool copies with (device-to-device copies from live publishers too).</summary>
    internal DeviceEngines Engines => _devices;

    /// <summary>Most pinned bytes the pool holds.</summary>
    public long BudgetBytes { get; }
    /// <summary>Pinned bytes held now (stale copies still in use included).</summary>
    public long UsedBytes { get { lock (_lock) return HeldBytes(); } }
    /// <summary>Bytes of whole regions a fill reads and copies at a time.</summary>
    public long FillBatchBytes { get; init; } = FillThrough.DefaultBatchBytes;
    /// <summary>Hold snapshots in shared host copies that clients of the pool's own user map and copy from
    /// themselves (docs/POOL.md, "Shared host copies"); where the device cannot, pinned memory. Default on.</summary>
    public bool SharedCopies { get; init; } = true;
    private int _sharingRefusalTold;
    /// <summary>Receives one line per fill and per stale copy dropped.</summary>
    public Action<string>? Log { get; init; }

    private long HeldBytes() => _entries.Values.Sum(e => e.Snapshot.DataLength) + _retired.Sum(e => e.Snapshot.DataLength);

    private static string Key(string path) => Path.GetFullPath(path);

    /// <summary>Reads a snapshot into pinned memory (checking every region's CRC32C), evicting
    /// least recently used snapshots to stay inside the budget. Loading one already held (and
    /// unchanged on disk) only touches it; loads and fills of one snapshot at once share a single
    /// read (the others wait for it).</summary>
    /// <exception cref="ThawException">The snapshot alone is larger than the budget.</exception>
    public PoolEntryInfo Load(string path)
    {
        string key = Key(path);
        (Entry entry, _) = Obtain(key, new PoolAsk(Fill: true), null);
        lock (_lock)
        {
            entry.LastUsed = DateTime.UtcNow;
            Leave(entry);
            return Info(key, entry);
        }
    }

    /// <summary>The held entry for <paramref name="key"/>, in use (InUse counted) by the caller: held
    /// and current, or read now (filled: true) when <paramref name="ask"/> allows, running the copies of
    /// each batch <paramref name="serve"/> returns for the buffer as the batch is read, or the one another caller is reading.</summary>
    /// <exception cref="FileNotFoundException">Not held (and not to be filled), or the file changed since the client read it.</exception>
    private (Entry Entry, bool Filled) Obtain(string key, PoolAsk ask, Func<Snapshot, nint, Action<FillThrough.Batch>>? serve)
    {
        bool missed = false;
        while (true)
        {
            SnapshotIdentity? onDisk = Stat(key);
            if (onDisk is null || (ask.Identity is { } client && !client.SameFile(onDisk)))
            {
                lock (_lock)
                    if (_entries.TryGetValue(key, out Entry? gone) && (onDisk is null || !gone.Identity.SameFile(onDisk)))
                        Retire(key, gone, onDisk is null ? "the file is gone" : gone.Identity.Difference(onDisk with { HeaderCrc32C = gone.Identity.HeaderCrc32C }));
                throw new FileNotFoundException(onDisk is null ? $"{key}: no such file"
                    : $"{key} changed on disk after the client read it ({ask.Identity!.Difference(onDisk with { HeaderCrc32C = ask.Identity.HeaderCrc32C })})", key);
            }
            TaskCompletionSource<Entry>? mine = null;
            Task<Entry>? loading;
            lock (_lock)
            {
                if (_entries.TryGetValue(key, out Entry? held))
                {
                    if (held.Identity.SameFile(onDisk))
                    {
                        // The file is the one the pool read; a client that parsed another header read an older file.
                        if (ask.Identity is { } parsed && parsed.HeaderCrc32C != held.Identity.HeaderCrc32C)
                            throw new FileNotFoundException($"{key} changed on disk after the client read it " +
                                $"({parsed.Difference(held.Identity)})", key);
                        held.InUse++;
                        return (held, false);
                    }
                    Retire(key, held, held.Identity.Difference(onDisk with { HeaderCrc32C = held.Identity.HeaderCrc32C }));
                }
                if (!missed && serve is not null)
                    CountersOf(key).Misses++;
                missed = true;
                if (!_loading.TryGetValue(key, out loading))
                {
                    if (!ask.Fill)
                        throw new FileNotFoundException($"the pool does not hold {key}", key);
                    mine = new TaskCompletionSource<Entry>(TaskCreationOptions.RunContinuationsAsynchronously);
                    _loading[key] = loading = mine.Task;
                }
            }
            if (mine is null)
            {
                loading.GetAwaiter().GetResult(); // the first reader's error, if it failed
                continue; // then served as a hit (after checking it again)
            }
            try
            {
                Entry entry = ReadAndInsert(key, ask.Identity, serve);
                mine.SetResult(entry);
                return (entry, true);
            }
            catch (Exception e)
            {
                mine.SetException(e);
                _ = mine.Task.Exception; // observed: a failed fill nobody waited for is no unobserved-task event
                throw;
            }
            finally
            {
                lock (_lock)
                    _loading.Remove(key);
            }
        }
    }

    private static SnapshotIdentity? Stat(string key)
    {
        try
        {
            return SnapshotIdentity.Of(key, 0);
        }
        catch (FileNotFoundException)
        {
            return null;
        }
    }

    /// <summary>Reads the snapshot into newly pinned memory batch by batch, running the copies
    /// <paramref name="serve"/> makes for the buffer as their batches land, and holds it (in use
    /// by the caller) when every region checked out and the file did not change meanwhile.
    /// On any failure nothing is held. A client's bad target fails that client only: the
    /// snapshot is still read and held for the others waiting on it.</summary>
    private Entry ReadAndInsert(string key, SnapshotIdentity? client, Func<Snapshot, nint, Action<FillThrough.Batch>>? serve)
    {
        SnapshotIdentity before = Stat(key) ?? throw new FileNotFoundException($"{key}: no such file", key);
        Snapshot snapshot = SnapshotReader.Read(key);
        if (client is not null && client.HeaderCrc32C != snapshot.HeaderCrc32C)
            throw new FileNotFoundException($"{key} changed on disk after the client read it (header_crc32c " +
                $"0x{client.HeaderCrc32C:x8} -> 0x{snapshot.HeaderCrc32C:x8})", key);
        long bytes = Math.Max(snapshot.DataLength, 4096);
        Reserve(key, bytes);
        PoolMemory? memory = null;
        try
        {
            memory = PoolMemory.Create(_device, bytes, SharedCopies, out string? refused);
            if (refused is not null && Interlocked.Exchange(ref _sharingRefusalTold, 1) == 0)
                Log?.Invoke($"holding snapshots in pinned memory, not shared host copies: {refused}");
            byte* buffer = memory.Start;
            Action<FillThrough.Batch>? copyBatch = null;
            Exception? targetError = null;
            if (serve is not null)
            {
                try
                {
                    Action<FillThrough.Batch> copy = serve(snapshot, (nint)buffer);
                    copyBatch = batch =>
                    {
                        if (targetError is not null)
                            return; // this client's targets failed; the read goes on for the others
                        try
                        {
                            copy(batch);
                        }
                        catch (ThawMismatchException e)
                        {
                            targetError = e;
                        }
                    };
                }
                catch (Exception e) when (e is ThawMismatchException or FormatException or ArgumentException)
                {
                    targetError = e;
                }
            }
            var started = Stopwatch.StartNew();
            long read = FillThrough.Run(snapshot, memory, copyBatch, FillBatchBytes);
            // Exported once, here: the driver's first export of a process cost 59 ms on the H200, and
            // the descriptors then serve every share of this copy.
            memory.Exported();
            SnapshotIdentity after = Stat(key) ?? throw new FileNotFoundException($"{key} was removed while the pool read it", key);
            if (!before.SameFile(after))
                throw new IOException($"{key} changed while the pool read it ({before.Difference(after)}); not holding it");
            Log?.Invoke($"read {key} ({snapshot.DataLength} bytes) in {started.Elapsed.TotalSeconds:F3} s" +
                (serve is null ? "" : ", copying it to a client as it came in"));
            Entry entry;
            lock (_lock)
            {
                _reserved -= bytes;
                Counters counters = CountersOf(key);
                counters.BytesRead += read;
                if (serve is not null)
                    counters.Fills++;
                entry = new Entry(snapshot, memory, before with { HeaderCrc32C = snapshot.HeaderCrc32C }, counters) { InUse = 1 };
                _entries.Add(key, entry); // one reader per key: nothing is replaced, nothing leaks
            }
            if (targetError is not null)
            {
                lock (_lock)
                    Leave(entry);
                ExceptionDispatchInfo.Throw(targetError);
            }
            return entry;
        }
        catch
        {
            lock (_lock)
                _reserved -= bytes;
            memory?.Dispose();
            throw;
        }
    }

    /// <summary>Makes room for <paramref name="bytes"/> more, evicting the least recently used snapshots no restore uses.</summary>
    private void Reserve(string key, long bytes)
    {
        if (bytes > BudgetBytes)
            throw new ThawException(ThawErrorKind.OutOfHostMemory,
                $"{key}: {bytes} bytes do not fit the pool's budget of {BudgetBytes}");
        lock (_lock)
        {
            while (HeldBytes() + _reserved + bytes > BudgetBytes)
            {
                var victim = _entries.Where(kv => kv.Value.InUse == 0).OrderBy(kv => kv.Value.LastUsed).FirstOrDefault();
                if (victim.Value is null)
                    break; // everything else is being served; go over budget briefly rather than fail
                _entries.Remove(victim.Key);
                Release(victim.Value);
            }
            _reserved += bytes;
        }
    }

    /// <summary>Stops serving a stale copy (caller holds the lock); its memory goes once no restore uses it.</summary>
    private void Retire(string key, Entry entry, string why)
    {
        _entries.Remove(key);
        Log?.Invoke($"{key} changed on disk since the pool read it ({why}); dropping the held copy");
        if (entry.InUse == 0)
        {
            Release(entry);
            return;
        }
        entry.Retired = true;
        _retired.Add(entry);
    }

    /// <summary>The caller is done with the entry (caller holds the lock).</summary>
    private void Leave(Entry entry)
    {
        entry.InUse--;
        if (entry.InUse == 0 && entry.Retired && _retired.Remove(entry))
            Release(entry);
    }

    private Counters CountersOf(string key)
    {
        if (_counters.TryGetValue(key, out Counters? counters))
            return counters;
        if (_counters.Count >= MaxCountedSnapshots)
            foreach (string forgotten in _counters.Keys.Where(k => !_entries.ContainsKey(k)).ToList())
                _counters.Remove(forgotten);
        return _counters[key] = new Counters();
    }

    /// <summary>Releases a snapshot unless a restore is using it; false when not held or in use.</summary>
    public bool Evict(string path)
    {
        lock (_lock)
        {
            if (!_entries.TryGetValue(Key(path), out Entry? entry) || entry.InUse > 0)
                return false;
            _entries.Remove(Key(path));
            Release(entry);
            return true;
        }
    }

    /// <summary>The snapshots held now.</summary>
    public IReadOnlyList<PoolEntryInfo> List()
    {
        lock (_lock)
            return _entries.Select(kv => Info(kv.Key, kv.Value)).OrderBy(i => i.Path, StringComparer.Ordinal).ToList();
    }

    /// <summary>Most distinct allocations one restore may open. torch gives every large tensor an
    /// allocation of its own: 1024 refused the 16 GB `thaw generate` model on the H200 (and would
    /// refuse a large MoE model's parameters); each handle costs the pool about 0.1 ms.</summary>
    public const int MaxHandlesPerRestore = 16384;

    /// <summary>Copies the named tensors from pinned memory into the peer's allocations, on the engine of
    /// the device the client named (<paramref name="device"/>; null: the default device). Every target
    /// is bounded by the real size of the allocation its handle opens before any copy into it; the
    /// handles are opened in parallel and closed before this returns (<see cref="ThawEngine.CopyToPeer"/>).
    /// A snapshot not held, or held but changed on disk (the stale copy is dropped), is a miss: with
    /// <see cref="PoolAsk.Fill"/> it is read into the pool while each batch read is copied to the peer.</summary>
    /// <exception cref="FileNotFoundException">The pool does not hold the snapshot (and was not asked to fill),
    /// or the file changed after the client read it.</exception>
    /// <exception cref="ThawMismatchException">An unknown device, a name the snapshot lacks, a destination too
    /// small or past the end of its allocation, or a handle that cannot be opened or is not the peer's.</exception>
    /// <exception cref="ThawException">A fill failed: the budget, a corrupt region, the file changing meanwhile; nothing is held.</exception>
    public PoolServedRestore Restore(string path, IReadOnlyList<PoolTarget> targets, PoolPeer peer, string? device = null, PoolAsk? ask = null)
    {
        var started = Stopwatch.StartNew();
        string key = Key(path);
        ThawEngine engine = _devices.For(device); // an unknown device is refused before anything is opened
        var fillTimings = new List<PeerCopyTimings>();
        long fillBytes = 0;
        int allocations = 0;
        Entry? entry = null;
        try
        {
            (entry, bool filled) = Obtain(key, ask ?? new PoolAsk(), (snapshot, buffer) =>
            {
                var whole = PeerCopyPlan.Create(key, snapshot, (ulong)buffer, targets, MaxHandlesPerRestore); // every target checked first
                (fillBytes, allocations) = (whole.Bytes, whole.Allocations);
                List<PoolTarget>[] byRegion = TargetsByRegion(snapshot, targets);
                return batch =>
                {
                    var inBatch = byRegion.Skip(batch.First).Take(batch.Count).SelectMany(t => t).ToList();
                    if (inBatch.Count > 0)
                        fillTimings.Add(PeerCopyPlan.Create(key, snapshot, (ulong)buffer, inBatch, MaxHandlesPerRestore).Run(engine, peer));
                };
            });
            long bytes;
            PeerCopyTimings timings;
            if (filled)
            {
                bytes = fillBytes;
                timings = Sum(fillTimings);
            }
            else
            {
                var plan = PeerCopyPlan.Create(key, entry.Snapshot, (ulong)entry.Buffer, targets, MaxHandlesPerRestore);
                timings = plan.Run(engine, peer);
                (bytes, allocations) = (plan.Bytes, plan.Allocations);
            }
            CountServed(entry, device, bytes, hit: !filled);
            return new PoolServedRestore(bytes, started.Elapsed.TotalSeconds, engine.Identity, timings) { Filled = filled, Allocations = allocations };
        }
        finally
        {
            if (entry is not null)
                lock (_lock)
                    Leave(entry);
        }
    }

    /// <summary>Hands a client of the pool's own user the shared host copy of a snapshot held and
    /// current, for it to map and copy from itself: new descriptors of its chunks, and a hold that
    /// keeps the snapshot from being evicted (its memory would outlive the eviction in the client's
    /// mapping, past the budget) until disposed. Other users are refused: a client that maps the copy
    /// could map it writable (CUDA), and the copy serves every client. Never fills: on a miss the
    /// client restores through <see cref="Restore"/>, which fills while it serves.</summary>
    /// <exception cref="FileNotFoundException">Not held, or the file changed since the client read it.</exception>
    /// <exception cref="PoolUnavailableException">Another user, or a snapshot held in pinned memory only.</exception>
    /// <exception cref="ThawMismatchException">An unknown device.</exception>
    public PoolShareGrant Share(string path, PoolPeer peer, string? device = null, SnapshotIdentity? identity = null)
    {
        uint self = PeerCredentials.CurrentUid();
        if (peer.Uid != self)
            throw new PoolUnavailableException($"shared host copies are served to the pool's own user (uid {self}) only, not uid {peer.Uid}: restore through the pool's copies");
        string key = Key(path);
        ThawEngine engine = _devices.For(device);
        (Entry entry, _) = Obtain(key, new PoolAsk(Fill: false, identity), null);
        try
        {
            (int[] fds, long[] lengths) = entry.Memory.Exported()
                ?? throw new PoolUnavailableException($"the pool holds {key} in pinned memory, not a shared host copy");
            long bytes = entry.Snapshot.DataLength;
            long tensorBytes = entry.Snapshot.Tensors.Sum(t => t.Length); // what the client may copy: all of it
            CountServed(entry, device, tensorBytes, hit: true);
            return new PoolShareGrant(key, fds, lengths, bytes, engine.Identity, () => { lock (_lock) Leave(entry); });
        }
        catch
        {
            lock (_lock)
                Leave(entry);
            throw;
        }
    }

    /// <summary>A restore or share of the entry served <paramref name="bytes"/> to <paramref name="device"/>.</summary>
    private void CountServed(Entry entry, string? device, long bytes, bool hit)
    {
        lock (_lock)
        {
            if (hit)
                entry.Counters.Hits++;
            entry.Counters.BytesServed += bytes;
            entry.LastUsed = DateTime.UtcNow;
        }
        _devices.Served(device, bytes);
    }

        private static List<PoolTarget>[] TargetsByRegion(Snapshot snapshot, IReadOnlyList<PoolTarget> targets)
    {
        var byRegion = Enumerable.Range(0, snapshot.Tensors.Count).Select(_ => new List<PoolTarget>()).ToArray();
        foreach (PoolTarget t in targets)
            byRegion[snapshot.IndexOf(t.Name)].Add(t); // names checked by the whole plan first
        return byRegion;
    }

    /// <summary>A fill's copies, batch by batch, as one breakdown.</summary>
    private static PeerCopyTimings Sum(List<PeerCopyTimings> parts) =>
        new(parts.Sum(p => p.OpenSeconds), parts.Sum(p => p.WaitSeconds), parts.Sum(p => p.CopySeconds), parts.Sum(p => p.CloseSeconds),
            parts.Sum(p => p.Seconds), parts.Count == 0 ? 0 : parts.Max(p => p.Lanes),
            parts.Count == 0 ? PeerCopyTimings.OpenOrders[0] : parts[0].Opens);

    private static void Release(Entry entry) => entry.Memory.Dispose();

    private static PoolEntryInfo Info(string key, Entry e) =>
        new(key, e.Snapshot.DataLength, e.Snapshot.Tensors.Count, e.Counters.Hits, e.Counters.BytesServed, e.LastUsed,
            e.Counters.Fills, e.Counters.Misses, e.Counters.BytesRead);

    /// <summary>Releases every snapshot's pinned memory (and the engines it opened for other devices).</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            foreach (Entry entry in _entries.Values.Concat(_retired).ToList())
                Release(entry);
            _entries.Clear();
            _retired.Clear();
        }
        if (_ownsDevices)
            _devices.Dispose();
    }
}
