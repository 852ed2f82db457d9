namespace Thaw.Interop.Pool;

/// <summary>A shared host copy handed to one client (<see cref="SnapshotPool.Share"/>): the descriptors
/// of its chunks to send (the pool's memory owns them; the hold keeps that memory, and so them,
/// from being released), and the hold on the snapshot until the client lets go (unshare, or its
/// connection closes).</summary>
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

    /// <summary>The descriptors to send, until sent.</summary>
    public int[] Descriptors => _fds ?? [];

    /// <summary>Forgets the descriptors once sent (the receiver has its own; they stay the pool's).</summary>
    public void ForgetDescriptors() => _fds = null;

    /// <summary>Lets go of the snapshot.</summary>
    public void Dispose()
    {
        _fds = null;
        Interlocked.Exchange(ref _release, null)?.Invoke();
    }
}
