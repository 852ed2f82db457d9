namespace Thaw.Interop.Format;

/// <summary>A parsed, validated snapshot header and the file it came from.</summary>
public sealed class Snapshot
{
    private readonly Dictionary<string, int> _indexByName;

    internal Snapshot(string path, long fileLength, long dataOffset, long dataLength, int tpRank, int tpWorldSize,
        IReadOnlyDictionary<string, string> metadata, IReadOnlyList<TensorEntry> tensors)
    {
        Path = path;
        FileLength = fileLength;
        DataOffset = dataOffset;
        DataLength = dataLength;
        TpRank = tpRank;
        TpWorldSize = tpWorldSize;
        Metadata = metadata;
        Tensors = tensors;
        _indexByName = new Dictionary<string, int>(tensors.Count, StringComparer.Ordinal);
        for (int i = 0; i < tensors.Count; i++)
            _indexByName.Add(tensors[i].Name, i);
        TensorBytes = tensors.Sum(t => t.Length);
    }

    /// <summary>The snapshot file.</summary>
    public string Path { get; }
    /// <summary>The file's length in bytes.</summary>
    public long FileLength { get; }
    /// <summary>Byte offset of the data section (aligned to <see cref="SnapshotFormat.Alignment"/>).</summary>
    public long DataOffset { get; }
    /// <summary>Bytes of the data section, padding included.</summary>
    public long DataLength { get; }
    /// <summary>The tensor-parallel rank whose shard of the weights this is.</summary>
    public int TpRank { get; }
    /// <summary>The tensor-parallel world size the snapshot was frozen for.</summary>
    public int TpWorldSize { get; }
    /// <summary>Free-form string metadata (model identity, vLLM configuration, source).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>The regions in file order; a region's index here is its region number.</summary>
    public IReadOnlyList<TensorEntry> Tensors { get; }
    /// <summary>Bytes of tensor data, without padding.</summary>
    public long TensorBytes { get; }

    /// <summary>The header's recorded CRC32C: it covers every region's CRC32C, so two snapshots
    /// with the same one hold the same bytes (0 for a safetensors file).</summary>
    public uint HeaderCrc32C { get; internal init; }

    /// <summary>False for a safetensors file viewed as a source (<see cref="FromSafetensors"/>):
    /// it records no checksums and its regions are not aligned.</summary>
    public bool HasChecksums { get; private init; } = true;

    /// <summary>A safetensors file as a restore source: regions at their file offsets
    /// (data offset 0), no checksums. Lets the engine stream plain checkpoints.</summary>
    public static Snapshot FromSafetensors(Safetensors.SafetensorsFile file) =>
        new(file.Path, file.FileLength, 0, file.FileLength, 0, 1,
            file.Metadata.ToDictionary(kv => "safetensors." + kv.Key, kv => kv.Value),
            file.Tensors.Select(t => new TensorEntry(t.Name, t.DType, t.Shape, t.FileOffset, t.Length, 0)).ToList())
        { HasChecksums = false };

    /// <summary>The region index of tensor <paramref name="name"/>, or -1.</summary>
    public int IndexOf(string name) => _indexByName.TryGetValue(name, out int index) ? index : -1;

    /// <summary>The absolute file offset of <paramref name="entry"/>'s bytes.</summary>
    public long FileOffsetOf(TensorEntry entry) => DataOffset + entry.Offset;
}
