using Thaw.Interop.Native;

namespace Thaw.Interop.Pool;

/// <summary>A shared host copy handed to one client (<see cref="SnapshotPool.Share"/>): the descriptors
/// of its chunks until they are sent, and the hold on the snapshot until the client lets go
/// (unshare, or its connection closes).</summary>
public sealed class PoolShareGrant(string snapshot, int[] fds, long[] lengths, long bytes, string device, Action release) : IDisposable
{
    private int[]? _fds = fds;
    private Action? _release = release;

    /// <summary>The snapshot's absolute path.</summary>
    public string Snapshot { get; } = snapshot;
    /// <summary>Each chunk's length; the chunks lie back to back, the data section from their start.</summary>
    public IReadOnlyList<long> Lengths { get; } = lengths;
    /// <summary>The snapshot's data bytes.</summary>
    public long Bytes { get; } = bytes;
    /// <summary>The identity of the device the client named.</summary>
    public string Device { get; } = device;

    /// <summary>The descriptors to send; the grant closes them once sent, or when disposed unsent.</summary>
    public int[] Descriptors => _fds ?? [];

    /// <summary>Closes this process's descriptors (the receiver has its own once sent).</summary>
    public void CloseDescriptors()
    {
        foreach (int fd in Interlocked.Exchange(ref _fds, null) ?? [])
            PosixDescriptors.Close(fd);
    }

    /// <summary>Closes the descriptors and lets go of the snapshot.</summary>
    public void Dispose()
    {
        CloseDescriptors();
        Interlocked.Exchange(ref _release, null)?.Invoke();
    }
}
