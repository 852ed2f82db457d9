namespace Thaw.Interop.Restore;

/// <summary>How the file is read.</summary>
public enum IoMode
{
    /// <summary>Buffered when the snapshot is mostly in page cache, O_DIRECT otherwise.</summary>
    Auto = 0,
    /// <summary>Through the page cache.</summary>
    Buffered = 1,
    /// <summary>O_DIRECT: aligned reads that bypass the page cache.</summary>
    Direct = 2,
}

/// <summary>How one restore runs: the I/O mode, checksum verification, progress and cancellation.</summary>
public sealed record RestoreOptions
{
    /// <summary>How the file is read (default <see cref="IoMode.Auto"/>).</summary>
    public IoMode IoMode { get; init; } = IoMode.Auto;
    /// <summary>Check every region's CRC32C as it streams (costs CPU time; see docs/BENCHMARKS.md).</summary>
    public bool Verify { get; init; }
    /// <summary>Called with (bytes done, bytes total) from worker threads, about ten times a second.</summary>
    public Action<long, long>? Progress { get; init; }
    /// <summary>Cancels the restore at its next chunk (a <see cref="ThawException"/> of kind <see cref="ThawErrorKind.Canceled"/>).</summary>
    public CancellationToken CancellationToken { get; init; }
}

/// <param name="Bytes">Tensor bytes restored.</param>
/// <param name="BytesRead">Bytes read from the file (includes alignment padding).</param>
public sealed record RestoreResult(long Bytes, long BytesRead, double Seconds, IoMode IoModeUsed, int Threads)
{
    /// <summary>Tensor bytes per second, in GB/s (10^9).</summary>
    public double GigabytesPerSecond => Seconds > 0 ? Bytes / Seconds / 1e9 : 0;
}
