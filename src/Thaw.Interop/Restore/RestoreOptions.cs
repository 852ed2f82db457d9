namespace Thaw.Interop.Restore;

/// <summary>How the file is read.</summary>
public enum IoMode
{
    /// <summary>Buffered when the snapshot is mostly in page cache, O_DIRECT otherwise.</summary>
    Auto = 0,
    Buffered = 1,
    Direct = 2,
}

public sealed record RestoreOptions
{
    public IoMode IoMode { get; init; } = IoMode.Auto;
    /// <summary>Check every region's CRC32C as it streams (costs CPU time; see docs/BENCHMARKS.md).</summary>
    public bool Verify { get; init; }
    /// <summary>Called with (bytes done, bytes total) from worker threads, about ten times a second.</summary>
    public Action<long, long>? Progress { get; init; }
    public CancellationToken CancellationToken { get; init; }
}

/// <param name="Bytes">Tensor bytes restored.</param>
/// <param name="BytesRead">Bytes read from the file (includes alignment padding).</param>
public sealed record RestoreResult(long Bytes, long BytesRead, double Seconds, IoMode IoModeUsed, int Threads)
{
    public double GigabytesPerSecond => Seconds > 0 ? Bytes / Seconds / 1e9 : 0;
}
