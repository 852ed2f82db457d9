using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>What the pool has served into one device: its identity, restores and bytes.</summary>
public sealed record PoolDeviceInfo(string Device, int Ordinal, long Restores, long Bytes);

/// <summary>The pool's engines, one per device of the node, by device identity (the GPU's UUID, the
/// same in every process whatever CUDA_VISIBLE_DEVICES renumbers; on the mock "mock-N"). Each is
/// opened on first use with its own context, lanes and streams, so copies into a client's memory
/// run on that GPU's own copy engines, and copies for different devices share no lock. The
/// default device (the serve command's <c>--ordinal</c>) serves clients that name none.</summary>
public sealed class DeviceEngines : IDisposable
{
    private sealed class Device(ThawEngine engine, string identity)
    {
        public ThawEngine Engine { get; } = engine;
        public string Identity { get; } = identity;
        public long Restores;
        public long Bytes;
    }

    private readonly DeviceKind _kind;
    private readonly EngineSettings? _settings;
    private readonly bool _ownsDefault;
    // Lazy: a device's engine (a CUDA context, its lanes) is made outside the registry's lock,
    // so a client of a new device does not hold up restores into the devices already open.
    private readonly Dictionary<string, Lazy<Device>> _open = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();
    private Dictionary<string, int>? _ordinals;

    /// <summary>Longest device identity a request may name.</summary>
    public const int MaxIdentityBytes = 128;

    /// <summary>Engines for the devices of <paramref name="kind"/>; the default one opened now.</summary>
    /// <exception cref="ThawDeviceException">No such default device.</exception>
    public DeviceEngines(DeviceKind kind, int defaultOrdinal = 0, EngineSettings? settings = null)
        : this(ThawEngine.Create(kind, defaultOrdinal, settings), settings, ownsDefault: true)
    {
    }

    private DeviceEngines(ThawEngine defaultEngine, EngineSettings? settings, bool ownsDefault)
    {
        _kind = defaultEngine.Kind;
        _settings = settings;
        _ownsDefault = ownsDefault;
        Default = defaultEngine;
        var device = new Device(defaultEngine, defaultEngine.Identity);
        _open[device.Identity] = new Lazy<Device>(device);
    }

    /// <summary>A registry around an engine the caller keeps owning (it serves as the default).</summary>
    public static DeviceEngines Around(ThawEngine defaultEngine) => new(defaultEngine, null, ownsDefault: false);

    /// <summary>The engine of the default device: it pins the pool's memory (portable: usable from every context).</summary>
    public ThawEngine Default { get; }

    /// <summary>The engine of the device a client named; null or empty: the default device.</summary>
    /// <exception cref="ThawMismatchException">No device of this node has that identity.</exception>
    public ThawEngine For(string? identity) => Find(identity).Engine;

    /// <summary>Counts a restore of <paramref name="bytes"/> into the named device.</summary>
    public void Served(string? identity, long bytes)
    {
        Device device = Find(identity);
        Interlocked.Increment(ref device.Restores);
        Interlocked.Add(ref device.Bytes, bytes);
    }

    /// <summary>The devices opened so far, and what each has been served.</summary>
    public IReadOnlyList<PoolDeviceInfo> List()
    {
        lock (_lock)
            return _open.Values.Where(d => d.IsValueCreated).Select(d => d.Value).Select(d => new PoolDeviceInfo(d.Identity, d.Engine.Ordinal, Interlocked.Read(ref d.Restores), Interlocked.Read(ref d.Bytes)))
                .OrderBy(d => d.Ordinal).ToList();
    }

    private Device Find(string? identity)
    {
        if (string.IsNullOrEmpty(identity))
            identity = Default.Identity;
        Lazy<Device>? device;
        lock (_lock)
        {
            if (!_open.TryGetValue(identity, out device))
            {
                // Enumerated once: an identity is looked up without a context, and a device that
                // is not there now will not appear while the pool runs.
                _ordinals ??= Ordinals(_kind);
                if (!_ordinals.TryGetValue(identity, out int ordinal))
                    throw new ThawMismatchException($"device: '{Shorten(identity)}' is no device this pool serves " +
                        $"({_kind.ToString().ToLowerInvariant()}: {string.Join(", ", _ordinals.Keys)})");
                string name = identity;
                device = new Lazy<Device>(() => new Device(ThawEngine.Create(_kind, ordinal, _settings), name));
                _open[identity] = device;
            }
        }
        try
        {
            return device.Value;
        }
        catch
        {
            lock (_lock)
                if (_open.TryGetValue(identity, out Lazy<Device>? failed) && failed == device)
                    _open.Remove(identity); // not kept: the next client of this device tries again
            throw;
        }
    }

    /// <summary>The ordinal in this process's numbering of the device named <paramref name="identity"/>,
    /// or null when it is no device of this node.</summary>
    public static int? OrdinalOf(DeviceKind kind, string identity) =>
        Ordinals(kind).TryGetValue(identity, out int ordinal) ? ordinal : null;

    private static Dictionary<string, int> Ordinals(DeviceKind kind) =>
        Enumerable.Range(0, ThawEngine.DeviceCount(kind)).ToDictionary(o => ThawEngine.DeviceIdentity(kind, o), o => o, StringComparer.Ordinal);

    private static string Shorten(string text) => text.Length > 64 ? text[..64] + "..." : text;

    /// <summary>Releases every engine this registry opened.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            foreach (Lazy<Device> d in _open.Values.Where(d => d.IsValueCreated))
                if (d.Value.Engine != Default || _ownsDefault)
                    d.Value.Engine.Dispose();
            _open.Clear();
        }
    }
}

/// <summary>The devices part of the pool's status answer (docs/POOL.md).</summary>
internal static class PoolStatus
{
    public static void WriteDevices(System.Text.Json.Utf8JsonWriter w, IReadOnlyList<PoolDeviceInfo> devices)
    {
        w.WriteStartArray("devices");
        foreach (PoolDeviceInfo d in devices)
        {
            w.WriteStartObject();
            w.WriteString("device", d.Device);
            w.WriteNumber("ordinal", d.Ordinal);
            w.WriteNumber("restores", d.Restores);
            w.WriteNumber("bytes", d.Bytes);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }
}
