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

    public string Path { get; }
    public long FileLength { get; }
    public long DataOffset { get; }
    public long DataLength { get; }
    public int TpRank { get; }
    public int TpWorldSize { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>The regions in file order; a region's index here is its region number.</summary>
    public IReadOnlyList<TensorEntry> Tensors { get; }
    /// <summary>Bytes of tensor data, without padding.</summary>
    public long TensorBytes { get; }

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

    public int IndexOf(string name) => _indexByName.TryGetValue(name, out int index) ? index : -1;

    public long FileOffsetOf(TensorEntry entry) => DataOffset + entry.Offset;
}
