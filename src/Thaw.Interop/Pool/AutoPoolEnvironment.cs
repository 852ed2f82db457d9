namespace Thaw.Interop.Pool;

/// <summary>What the automatic pool does not inherit from the process that happens to start it
/// (docs/POOL.md, "Automatic mode"): it outlives that process and serves every process and GPU of
/// the user on the node, so nothing that narrows or slows one job's view of the GPUs may follow it.
/// Everything else is inherited: THAW_* and THAWCORE_* (its budget, its copy order), XDG_RUNTIME_DIR
/// (where it lives), PATH, LD_LIBRARY_PATH (where libcuda is found), DOTNET_* (its runtime's settings).</summary>
public static class AutoPoolEnvironment
{
    /// <summary>The variables withheld, each for its reason.</summary>
    public static IReadOnlyList<string> Withheld { get; } =
    [
        // One job's GPUs: the pool serves every GPU, and clients name theirs by UUID.
        "CUDA_VISIBLE_DEVICES",
        // Renumbers the pool's ordinals (its default device and status) after whoever started it.
        "CUDA_DEVICE_ORDER",
        // Set to 1 by training jobs for their own stream order; in the pool it funnels every
        // lane's copies into one hardware queue.
        "CUDA_DEVICE_MAX_CONNECTIONS",
        // A debugging switch: every asynchronous copy would wait, for the pool's whole life.
        "CUDA_LAUNCH_BLOCKING",
        // A profiler's or sanitizer's injection (Nsight, compute-sanitizer, CUPTI tools) would
        // run in a daemon that outlives the profiled job.
        "LD_PRELOAD",
        "CUDA_INJECTION64_PATH",
    ];
}
