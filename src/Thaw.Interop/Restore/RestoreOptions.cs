namespace Thaw.Interop.Restore;

/// <summary>How the file is read.</summary>
public enum IoMode
{
    /// <summary>Buffered (the next restart finds the snapshot in page cache), unless the
    /// snapshot is uncached and larger than half the available memory: then O_DIRECT.</summary>
    Auto = 0,
    /// <summary>Through the page cache.</summary>
    Buffered = 1,
    /// <summary>O_DIRECT: aligned reads that bypass the page cache.</summary>
    Direct = 2,
    /// <summary>DMA straight from the page cache (mapped, registered read-only chunk by
    /// chunk); chunks not cached or not registrable go through staging.</summary>
    ZeroCopy = 3,
}

/// <summary>How one restore runs: the I/O mode, checksum verification, progress and cancellation.</summary>
public sealed record RestoreOptions
{
    /// <summary>How the file is read (default <see cref="IoMode.Auto"/>).</summary>
    public IoMode IoMode { get; init; } = IoMode.Auto;
    /// <summary>Check every region's CRC32C as it streams. Null (the default): when the
    /// snapshot records checksums (measured at 7.7% of a warm restore on the H200,
    /// docs/BENCHMARKS.md); false: never; true: always, failing on a file without them.</summary>
    public bool? Verify { get; init; }
    /// <summary>Called with (bytes done, bytes total) from worker threads, about ten times a second.</summary>
    public Action<long, long>? Progress { get; init; }
    /// <summary>Other devices whose host links carry a share of the bytes (docs/MULTI_GPU.md, "Borrowed
    /// links"); null or <see cref="BorrowedLinks.Off"/>: the destination's own link only.</summary>
    public BorrowedLinks? Borrow { get; init; }
    /// <summary>Cancels the restore at its next chunk (a <see cref="ThawException"/> of kind <see cref="ThawErrorKind.Canceled"/>).</summary>
    public CancellationToken CancellationToken { get; init; }
}

/// <param name="Bytes">Tensor bytes restored.</param>
/// <param name="BytesRead">Bytes read from the file (includes alignment padding).</param>
public sealed record RestoreResult(long Bytes, long BytesRead, double Seconds, IoMode IoModeUsed, int Threads)
{
    /// <summary>Zero-copy restores: chunks that went through staging instead.</summary>
    public int FallbackChunks { get; init; }
    /// <summary>Every region's CRC32C was checked.</summary>
    public bool Verified { get; init; }

    /// <summary>With borrowed links: what each link (the destination's own first) carried; else empty.</summary>
    public IReadOnlyList<LinkShare> Links { get; init; } = [];
    /// <summary>Why borrowed links asked for did nothing (the destination is the only device); else null.</summary>
    public string? LinksNote { get; init; }
    /// <summary>"links: mock-0 5.1 GB direct, mock-1 5.0 GB borrowed", or null without borrowed links.</summary>
    public string? LinksSummary => Links.Count > 0 ? LinkShare.Summary(Links) : null;

    /// <summary>Tensor bytes per second, in GB/s (10^9).</summary>
    public double GigabytesPerSecond => Seconds > 0 ? Bytes / Seconds / 1e9 : 0;
}
