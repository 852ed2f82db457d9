using System.IO.MemoryMappedFiles;
using Thaw.Interop.Format;
using Thaw.Interop.Freeze;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Safetensors;

/// <summary>Converts a Hugging Face safetensors checkpoint into a snapshot with no GPU:
/// the shards are mapped read-only and their tensors written through the engine as
/// host sources, in shard and file order, so both files are read and written sequentially.</summary>
public static class CheckpointConverter
{
    /// <exception cref="FileNotFoundException">The checkpoint does not exist.</exception>
    /// <exception cref="ThawFormatException">A shard or index is malformed.</exception>
    public static unsafe Snapshot Convert(string checkpointPath, string outputPath, ThawEngine engine,
        Action<long, long>? progress = null, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(checkpointPath);
        var maps = new List<(MemoryMappedFile File, MemoryMappedViewAccessor View)>();
        try
        {
            var sources = new List<TensorSource>(checkpoint.TensorCount);
            foreach (SafetensorsFile shard in checkpoint.Shards)
            {
                var map = MemoryMappedFile.CreateFromFile(shard.Path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
                var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
                maps.Add((map, view));
                if (view.Capacity < shard.FileLength)
                    throw new ThawFormatException(shard.Path, "file changed size while it was converted");
                byte* basePointer = null;
                view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePointer);
                ulong baseAddress = (ulong)(basePointer + view.PointerOffset);
                foreach (SafetensorsTensor tensor in shard.Tensors)
                    sources.Add(new TensorSource(tensor.Name, tensor.DType, tensor.Shape, baseAddress + (ulong)tensor.FileOffset));
            }
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal)
            {
                ["thaw.source"] = "safetensors",
                ["thaw.source_name"] = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(checkpointPath))),
            };
            foreach (var (key, value) in checkpoint.Shards[0].Metadata)
                metadata[$"safetensors.{key}"] = value;
            foreach (var (key, value) in extraMetadata ?? new Dictionary<string, string>())
                metadata[key] = value;
            return SnapshotWriter.Write(engine, outputPath, sources, metadata, sourceIsHost: true, progress: progress);
        }
        finally
        {
            foreach (var (map, view) in maps)
            {
                view.SafeMemoryMappedViewHandle.ReleasePointer();
                view.Dispose();
                map.Dispose();
            }
        }
    }
}
