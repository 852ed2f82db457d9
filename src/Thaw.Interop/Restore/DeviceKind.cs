namespace Thaw.Interop.Restore;

public enum DeviceKind
{
    /// <summary>Host memory standing in for device memory: the whole pipeline without a GPU.</summary>
    Mock = 0,
    Cuda = 1,
}

/// <summary>Engine sizing; zeros take the core's defaults (a thread a core up to 16, 8 MiB chunks, 512 MiB staging).</summary>
public sealed record EngineSettings
{
    public int IoThreads { get; init; }
    public long ChunkBytes { get; init; }
    public long StagingBytes { get; init; }
}
