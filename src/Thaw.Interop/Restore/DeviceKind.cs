namespace Thaw.Interop.Restore;

/// <summary>Where an engine's device memory lives.</summary>
public enum DeviceKind
{
    /// <summary>Host memory standing in for device memory: the whole pipeline without a GPU.</summary>
    Mock = 0,
    /// <summary>An NVIDIA GPU, through the CUDA driver API (libcuda.so.1, opened at run time).</summary>
    Cuda = 1,
}

/// <summary>Engine sizing; zeros take the core's defaults (a thread a core up to 16, 1 MiB chunks, 64 MiB staging).</summary>
public sealed record EngineSettings
{
    /// <summary>Reader threads (0: one a core, up to 16).</summary>
    public int IoThreads { get; init; }
    /// <summary>Bytes a read request moves (0: 1 MiB).</summary>
    public long ChunkBytes { get; init; }
    /// <summary>Pinned staging memory, pinned as the readers first need it and kept (0: 64 MiB).</summary>
    public long StagingBytes { get; init; }
}
