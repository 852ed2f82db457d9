using System.Globalization;
using System.Text;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>Turns destinations in this process's device memory into pool targets: the IPC
/// handle of the allocation each lies in and its offset there. CUDA: the allocation's base
/// from the core's range check, its handle from the core's cuIpcGetMemHandle (no framework's
/// sharing protocol is involved, so the owner frees the memory as usual). Mock: device memory
/// that another process can open is a shared mapping of a file in the pool's shared-memory
/// directory, whose handle is the file's name there (docs/POOL.md).</summary>
public sealed class IpcTargets
{
    private readonly ThawEngine _engine;
    private readonly string? _sharedMemoryDirectory;
    private readonly Dictionary<ulong, byte[]> _handles = new();
    private IReadOnlyList<SharedMapping>? _mappings;

    /// <param name="sharedMemoryDirectory">Mock only: the pool's directory of shared files.</param>
    public IpcTargets(ThawEngine engine, string? sharedMemoryDirectory = null)
    {
        _engine = engine;
        _sharedMemoryDirectory = sharedMemoryDirectory is null ? null : Path.GetFullPath(sharedMemoryDirectory).TrimEnd('/');
    }

    /// <exception cref="PoolUnavailableException">The destination has no IPC handle the pool could open.</exception>
    public PoolTarget Resolve(string name, ulong address, long capacity)
    {
        try
        {
            return _engine.Kind == DeviceKind.Cuda ? ResolveCuda(name, address, capacity) : ResolveMock(name, address, capacity);
        }
        catch (ThawException e) when (e is not PoolUnavailableException)
        {
            throw new PoolUnavailableException($"tensor '{name}' has no IPC handle the pool can open: {e.Message}", e);
        }
    }

    private PoolTarget ResolveCuda(string name, ulong address, long capacity)
    {
        ulong allocation = _engine.CheckDestination(address, Math.Max(capacity, 1));
        if (!_handles.TryGetValue(allocation, out byte[]? handle))
            _handles[allocation] = handle = _engine.IpcHandle(allocation);
        return new PoolTarget(name, handle, checked((long)(address - allocation)), capacity);
    }

    private PoolTarget ResolveMock(string name, ulong address, long capacity)
    {
        _mappings ??= SharedMapping.OfThisProcess();
        foreach (SharedMapping m in _mappings)
        {
            if (address < m.Start || address >= m.End)
                continue;
            if ((ulong)capacity > m.End - address)
                throw new PoolUnavailableException($"tensor '{name}' runs past the end of its shared mapping of {m.Path}");
            if (Path.GetDirectoryName(m.Path) != _sharedMemoryDirectory)
                throw new PoolUnavailableException($"tensor '{name}' lies in {m.Path}, outside the pool's shared-memory directory {_sharedMemoryDirectory}");
            return new PoolTarget(name, Encoding.UTF8.GetBytes(Path.GetFileName(m.Path)), checked((long)(m.FileOffset + (address - m.Start))), capacity);
        }
        throw new PoolUnavailableException($"tensor '{name}' (0x{address:x}) is not in a shared file mapping, which mock device memory must be to be served by a pool");
    }

    /// <summary>A MAP_SHARED file mapping of this process, from /proc/self/maps.</summary>
    private sealed record SharedMapping(ulong Start, ulong End, ulong FileOffset, string Path)
    {
        public static IReadOnlyList<SharedMapping> OfThisProcess()
        {
            var mappings = new List<SharedMapping>();
            foreach (string line in File.ReadLines("/proc/self/maps"))
            {
                // start-end perms offset dev inode path
                string[] f = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
                if (f.Length < 6 || f[1].Length < 4 || f[1][3] != 's' || !f[5].StartsWith('/') || f[5].EndsWith(" (deleted)", StringComparison.Ordinal))
                    continue;
                string[] range = f[0].Split('-');
                mappings.Add(new SharedMapping(
                    ulong.Parse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                    ulong.Parse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                    ulong.Parse(f[2], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                    f[5].Trim()));
            }
            return mappings;
        }
    }
}
