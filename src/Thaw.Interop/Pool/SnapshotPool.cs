using System.Diagnostics;
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

/// <summary>A snapshot the pool holds: its path, bytes, tensors, and use since it was loaded.</summary>
public sealed record PoolEntryInfo(string Path, long Bytes, int Tensors, long Hits, long BytesServed, DateTime LastUsed);

/// <summary>Snapshots held once in pinned host memory, up to a budget, least recently
/// used evicted first, restored into any process's device memory through IPC handles.</summary>
public sealed unsafe class SnapshotPool : IDisposable
{
    private sealed class Entry(Snapshot snapshot, byte* buffer)
    {
        public Snapshot Snapshot { get; } = snapshot;
        public byte* Buffer { get; } = buffer;
        public long Hits;
        public long BytesServed;
        public DateTime LastUsed = DateTime.UtcNow;
        public int InUse;
    }

    private readonly ThawEngine _device;
    private readonly DeviceEngines _devices;
    private readonly bool _ownsDevices;
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Task<Entry>> _loading = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();

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

    /// <summary>Most pinned bytes the pool holds.</summary>
    public long BudgetBytes { get; }
    /// <summary>Pinned bytes held now.</summary>
    public long UsedBytes { get { lock (_lock) return _entries.Values.Sum(e => e.Snapshot.DataLength); } }

    private static string Key(string path) => Path.GetFullPath(path);

    /// <summary>Reads a snapshot into pinned memory (checking every region's CRC32C), evicting
    /// least recently used snapshots to stay inside the budget. Loading one already held only
    /// touches it; loads of one snapshot at once share a single read (the others wait for it).</summary>
    /// <exception cref="ThawException">The snapshot alone is larger than the budget.</exception>
    public PoolEntryInfo Load(string path)
    {
        string key = Key(path);
        TaskCompletionSource<Entry>? mine = null;
        Task<Entry> loading;
        lock (_lock)
        {
            if (_entries.TryGetValue(key, out Entry? held))
            {
                held.LastUsed = DateTime.UtcNow;
                return Info(key, held);
            }
            if (!_loading.TryGetValue(key, out loading!))
            {
                mine = new TaskCompletionSource<Entry>(TaskCreationOptions.RunContinuationsAsynchronously);
                _loading[key] = loading = mine.Task;
            }
        }
        if (mine is null)
        {
            Entry shared = loading.GetAwaiter().GetResult(); // the first loader's error, if it failed
            lock (_lock)
                return Info(key, shared);
        }
        try
        {
            Entry entry = ReadAndInsert(key);
            mine.SetResult(entry);
            lock (_lock)
                return Info(key, entry);
        }
        catch (Exception e)
        {
            mine.SetException(e);
            throw;
        }
        finally
        {
            lock (_lock)
                _loading.Remove(key);
        }
    }

    private Entry ReadAndInsert(string key)
    {
        Snapshot snapshot = SnapshotReader.Read(key);
        if (snapshot.DataLength > BudgetBytes)
            throw new ThawException(ThawErrorKind.OutOfHostMemory,
                $"{key}: {snapshot.DataLength} bytes do not fit the pool's budget of {BudgetBytes}");
        byte* buffer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(snapshot.DataLength, 4096), 4096);
        try
        {
            using (var reader = ThawEngine.Create(DeviceKind.Mock))
                reader.Restore(RestorePlan.IntoArena(snapshot, (ulong)buffer), new RestoreOptions { Verify = true });
            _device.PinHost(buffer, Math.Max(snapshot.DataLength, 4096));
        }
        catch
        {
            NativeMemory.AlignedFree(buffer);
            throw;
        }
        lock (_lock)
        {
            while (_entries.Values.Sum(e => e.Snapshot.DataLength) + snapshot.DataLength > BudgetBytes)
            {
                var victim = _entries.Where(kv => kv.Value.InUse == 0).OrderBy(kv => kv.Value.LastUsed).FirstOrDefault();
                if (victim.Value is null)
                    break; // everything else is being served; go over budget briefly rather than fail
                Release(victim.Key, victim.Value);
            }
            var entry = new Entry(snapshot, buffer);
            _entries.Add(key, entry); // one loader per key: nothing is replaced, nothing leaks
            return entry;
        }
    }

    /// <summary>Releases a snapshot unless a restore is using it; false when not held or in use.</summary>
    public bool Evict(string path)
    {
        lock (_lock)
        {
            if (!_entries.TryGetValue(Key(path), out Entry? entry) || entry.InUse > 0)
                return false;
            Release(Key(path), entry);
            return true;
        }
    }

    /// <summary>The snapshots held now.</summary>
    public IReadOnlyList<PoolEntryInfo> List()
    {
        lock (_lock)
            return _entries.Select(kv => Info(kv.Key, kv.Value)).OrderBy(i => i.Path, StringComparer.Ordinal).ToList();
    }

    /// <summary>Most distinct allocations one restore may open.</summary>
    public const int MaxHandlesPerRestore = 1024;

    /// <summary>Copies the named tensors from pinned memory into the peer's allocations, on the engine of
    /// the device the client named (<paramref name="device"/>; null: the default device). Every target
    /// is bounded by the real size of the allocation its handle opens before any copy into it; the
    /// handles are opened in parallel and closed before this returns (<see cref="ThawEngine.CopyToPeer"/>).</summary>
    /// <exception cref="FileNotFoundException">The pool does not hold the snapshot.</exception>
    /// <exception cref="ThawMismatchException">An unknown device, a name the snapshot lacks, a destination too
    /// small or past the end of its allocation, or a handle that cannot be opened or is not the peer's.</exception>
    public PoolServedRestore Restore(string path, IReadOnlyList<PoolTarget> targets, PoolPeer peer, string? device = null)
    {
        var started = Stopwatch.StartNew();
        string key = Key(path);
        ThawEngine engine = _devices.For(device); // an unknown device is refused before anything is opened
        Entry entry;
        lock (_lock)
        {
            if (!_entries.TryGetValue(key, out entry!))
                throw new FileNotFoundException($"the pool does not hold {key}", key);
            entry.InUse++;
        }
        try
        {
            var plan = PeerCopyPlan.Create(key, entry.Snapshot, (ulong)entry.Buffer, targets, MaxHandlesPerRestore);
            PeerCopyTimings timings = plan.Run(engine, peer);
            lock (_lock)
            {
                entry.Hits++;
                entry.BytesServed += plan.Bytes;
                entry.LastUsed = DateTime.UtcNow;
            }
            _devices.Served(device, plan.Bytes);
            return new PoolServedRestore(plan.Bytes, started.Elapsed.TotalSeconds, engine.Identity, timings);
        }
        finally
        {
            lock (_lock)
                entry.InUse--;
        }
    }

    private void Release(string key, Entry entry)
    {
        _entries.Remove(key);
        _device.UnpinHost(entry.Buffer);
        NativeMemory.AlignedFree(entry.Buffer);
    }

    private static PoolEntryInfo Info(string key, Entry e) =>
        new(key, e.Snapshot.DataLength, e.Snapshot.Tensors.Count, e.Hits, e.BytesServed, e.LastUsed);

    /// <summary>Releases every snapshot's pinned memory (and the engines it opened for other devices).</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var (key, entry) in _entries.ToList())
                Release(key, entry);
        }
        if (_ownsDevices)
            _devices.Dispose();
    }
}
