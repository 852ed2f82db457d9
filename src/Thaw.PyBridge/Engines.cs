using Thaw.Interop.Restore;

namespace Thaw.PyBridge;

/// <summary>One engine per device and sizing, kept for the life of the process, so that
/// pinned staging memory is allocated once and not per restore.</summary>
internal static class Engines
{
    private static readonly Dictionary<(int Kind, int Ordinal, int Threads, long Chunk, long Staging), ThawEngine> Cache = new();
    private static readonly Lock CacheLock = new();

    public static ThawEngine Get(in Exports.EngineRequest request)
    {
        var key = (request.DeviceKind, request.DeviceOrdinal, request.IoThreads, request.ChunkBytes, request.StagingBytes);
        lock (CacheLock)
        {
            if (!Cache.TryGetValue(key, out ThawEngine? engine))
            {
                engine = ThawEngine.Create((DeviceKind)request.DeviceKind, request.DeviceOrdinal, new EngineSettings
                {
                    IoThreads = request.IoThreads,
                    ChunkBytes = request.ChunkBytes,
                    StagingBytes = request.StagingBytes,
                });
                Cache[key] = engine;
            }
            return engine;
        }
    }
}
