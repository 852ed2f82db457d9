using System.Runtime.InteropServices;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>Where the pool holds one snapshot's data section: laid out as the file's, made ready
/// for copies range by range as a fill reaches it (<see cref="Back"/>), released as a whole.</summary>
internal abstract unsafe class PoolMemory : IDisposable
{
    /// <summary>The first byte.</summary>
    public abstract byte* Start { get; }

    /// <summary>Makes [start, start + length) ready for copies (pinned, or backed by shareable memory).</summary>
    public abstract void Back(long start, long length);

    /// <summary>The shareable copy clients may map themselves; null when this memory is only pinned.</summary>
    public virtual SharedHostCopy? Shared => null;

    /// <summary>The descriptors of the shareable copy's chunks and their lengths, exported once and open
    /// as long as this memory (sending one duplicates it into the receiver); null when only pinned.</summary>
    public virtual (int[] Fds, long[] Lengths)? Exported() => null;

    public abstract void Dispose();

    /// <summary>Shareable memory when <paramref name="share"/> and the device can make it
    /// (<paramref name="refused"/> says why not otherwise), else pinned process memory.</summary>
    public static PoolMemory Create(ThawEngine device, long bytes, bool share, out string? refused)
    {
        refused = null;
        if (share)
        {
            try
            {
                return new SharedPoolMemory(device.CreateSharedHostCopy(bytes));
            }
            catch (ThawException e)
            {
                refused = e.Message;
            }
        }
        return new PinnedPoolMemory(device, bytes);
    }
}

/// <summary>Process memory pinned range by range (cuMemHostRegister, portable): copies from it are
/// the pool's own, into clients' allocations it opens by IPC handle.</summary>
internal sealed unsafe class PinnedPoolMemory(ThawEngine device, long bytes) : PoolMemory
{
    private readonly byte* _start = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 4096);
    private readonly List<nint> _pinned = [];

    public override byte* Start => _start;

    public override void Back(long start, long length)
    {
        device.PinHost(_start + start, length);
        lock (_pinned)
            _pinned.Add((nint)(_start + start));
    }

    public override void Dispose()
    {
        lock (_pinned)
        {
            foreach (nint start in _pinned)
                device.UnpinHost((void*)start);
            _pinned.Clear();
        }
        NativeMemory.AlignedFree(_start);
    }
}

/// <summary>A shared host copy: the pool copies from it like pinned memory, and clients of the pool's
/// own user map it and copy from it themselves (docs/POOL.md, "Shared host copies").</summary>
internal sealed unsafe class SharedPoolMemory(SharedHostCopy copy) : PoolMemory
{
    private readonly Lock _lock = new();
    private (int[] Fds, long[] Lengths)? _exported;

    public override byte* Start => copy.Start;

    public override void Back(long start, long length) => copy.Back(start, length);

    public override SharedHostCopy Shared => copy;

    /// <summary>Exported on first use (every chunk must be backed by then): 60 exports of a 16 GB
    /// copy cost every share a millisecond or more when made per request.</summary>
    public override (int[] Fds, long[] Lengths)? Exported()
    {
        lock (_lock)
            return _exported ??= copy.Export();
    }

    public override void Dispose()
    {
        lock (_lock)
        {
            foreach (int fd in _exported?.Fds ?? [])
                Native.PosixDescriptors.Close(fd);
            _exported = null;
        }
        copy.Dispose();
    }
}
