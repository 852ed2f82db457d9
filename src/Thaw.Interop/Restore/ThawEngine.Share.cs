using Thaw.Interop.Native;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Restore;

/// <summary>Host memory another process can map (thaw_core.h, "Shared host copies"): reserved whole,
/// backed chunk by chunk, exported as descriptors. The pool's copy of a snapshot when clients copy
/// from it themselves (docs/POOL.md, "Shared host copies").</summary>
public sealed unsafe class SharedHostCopy : IDisposable
{
    private nint _share;

    internal SharedHostCopy(nint share, long length)
    {
        _share = share;
        Length = length;
    }

    /// <summary>Where the copy lies in this process: readable and writable once backed.</summary>
    public byte* Start => (byte*)Core.ShareAddress(_share);

    /// <summary>Bytes asked for.</summary>
    public long Length { get; }

    /// <summary>Chunks the copy is cut into (one descriptor each).</summary>
    public int Chunks => (int)Core.ShareChunks(_share);

    /// <summary>Backs every chunk [start, start + length) touches (thread-safe).</summary>
    public void Back(long start, long length) => NativeErrors.Check(Core.ShareBack(_share, (ulong)start, (ulong)length));

    /// <summary>New descriptors of every chunk (the caller closes them) and the chunks' lengths.</summary>
    public (int[] Fds, long[] Lengths) Export()
    {
        int count = Chunks;
        var fds = new int[count];
        var lengths = new ulong[count];
        fixed (int* f = fds)
        fixed (ulong* l = lengths)
            NativeErrors.Check(Core.ShareExport(_share, f, l, (uint)count));
        return (fds, lengths.Select(n => (long)n).ToArray());
    }

    /// <summary>Unmaps the copy here; processes that mapped it keep their mappings until they release them.</summary>
    public void Dispose()
    {
        nint share = Interlocked.Exchange(ref _share, 0);
        if (share != 0)
            Core.ShareDestroy(share);
    }
}

/// <summary>Bytes of a shared host copy, from <paramref name="Offset"/> in it, to device memory of this process.</summary>
public readonly record struct ShareCopy(long Offset, ulong DeviceAddress, long Length);

/// <summary>Where a copy from a shared host copy spent its time (thaw_core.h, thawcore_share_copy_stats).</summary>
public sealed record ShareCopyTimings(double MapSeconds, double GrantSeconds, double WaitSeconds, double CopySeconds,
    double Seconds, int Chunks, int Lanes);

public sealed partial class ThawEngine
{
    /// <summary>Reserves a shared host copy of <paramref name="length"/> bytes, backed by nothing yet.</summary>
    /// <exception cref="ThawException">The backend cannot share host memory (a driver before CUDA 12.2).</exception>
    public SharedHostCopy CreateSharedHostCopy(long length)
    {
        NativeErrors.Check(Core.ShareCreate(_handle, (ulong)length, out nint share));
        return new SharedHostCopy(share, length);
    }

    /// <summary>Maps the chunks another process exported (<paramref name="fds"/>, taken: every one is
    /// closed, also on failure), grants this device read access chunk by chunk while the lanes copy,
    /// and releases the mapping behind the copies.</summary>
    /// <exception cref="ThawException">The announcement is inconsistent (checked before anything is
    /// mapped), a chunk does not map, or a copy fails.</exception>
    public unsafe ShareCopyTimings CopyFromShare(int[] fds, long[] lengths, IReadOnlyList<ShareCopy> copies)
    {
        if (fds.Length != lengths.Length)
        {
            foreach (int fd in fds)
                PosixDescriptors.Close(fd);
            throw new ArgumentException($"{fds.Length} descriptors for {lengths.Length} chunks");
        }
        var natives = new Core.Copy[copies.Count];
        for (int i = 0; i < copies.Count; i++)
            natives[i] = new Core.Copy { HostAddress = (ulong)copies[i].Offset, DeviceAddress = copies[i].DeviceAddress, Length = (ulong)copies[i].Length };
        ulong[] sizes = lengths.Select(n => (ulong)n).ToArray();
        Core.ShareCopyStats stats;
        fixed (int* f = fds)
        fixed (ulong* l = sizes)
        fixed (Core.Copy* c = natives)
            NativeErrors.Check(Core.EngineCopyFromShare(_handle, f, l, (uint)fds.Length, c, (uint)natives.Length, &stats));
        return new ShareCopyTimings(stats.MapSeconds, stats.GrantSeconds, stats.WaitSeconds, stats.CopySeconds,
            stats.Seconds, (int)stats.Chunks, (int)stats.Lanes);
    }
}
