using Microsoft.Win32.SafeHandles;
using Thaw.Interop.Format;
using Thaw.Interop.Freeze;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Safetensors;

/// <summary>Converts a Hugging Face safetensors checkpoint into a snapshot with no GPU: the
/// shards' tensors are read with pread (never mapped: a shard truncated under a mapping would
/// end the process with SIGBUS) and written through the engine, in shard and file order, so
/// both files are read and written sequentially.</summary>
public static class CheckpointConverter
{
    /// <exception cref="FileNotFoundException">The checkpoint does not exist.</exception>
    /// <exception cref="ThawFormatException">A shard or index is malformed, or a shard shrank while it was read.</exception>
    public static Snapshot Convert(string checkpointPath, string outputPath, ThawEngine engine,
        Action<long, long>? progress = null, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(checkpointPath);
        var handles = new List<SafeFileHandle>();
        try
        {
            var specs = new List<TensorSpec>(checkpoint.TensorCount);
            var origins = new List<(SafetensorsFile Shard, SafeFileHandle File, SafetensorsTensor Tensor)>(checkpoint.TensorCount);
            foreach (SafetensorsFile shard in checkpoint.Shards)
            {
                SafeFileHandle file = File.OpenHandle(shard.Path, FileMode.Open, FileAccess.Read, FileShare.Read);
                handles.Add(file);
                if (RandomAccess.GetLength(file) < shard.FileLength)
                    throw new ThawFormatException(shard.Path, $"file shrank while it was converted ({shard.FileLength} bytes when its header was read, {RandomAccess.GetLength(file)} now)");
                foreach (SafetensorsTensor tensor in shard.Tensors)
                {
                    specs.Add(new TensorSpec(tensor.Name, tensor.DType, tensor.Shape));
                    origins.Add((shard, file, tensor));
                }
            }
            void Read(int index, long offset, Span<byte> destination)
            {
                var (shard, file, tensor) = origins[index];
                long at = tensor.FileOffset + offset;
                while (destination.Length > 0)
                {
                    int n = RandomAccess.Read(file, destination, at);
                    if (n == 0)
                        throw new ThawFormatException(shard.Path, $"file shrank while it was converted: tensor '{tensor.Name}' needs bytes up to " +
                            $"{tensor.FileOffset + tensor.Length}, the file now ends at {RandomAccess.GetLength(file)}");
                    destination = destination[n..];
                    at += n;
                }
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
            return SnapshotWriter.Write(engine, outputPath, specs, Read, metadata, progress: progress);
        }
        finally
        {
            foreach (SafeFileHandle file in handles)
                file.Dispose();
        }
    }
}
