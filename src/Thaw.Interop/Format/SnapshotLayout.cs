using System.Buffers.Binary;
using System.Text;

namespace Thaw.Interop.Format;

/// <summary>Where everything of a snapshot-to-be goes: the header size, the data
/// offset and each region's offset. Encodes the header once the CRCs are known.</summary>
public sealed class SnapshotLayout
{
    private SnapshotLayout(IReadOnlyList<TensorSpec> tensors, long[] offsets, long[] lengths,
        IReadOnlyDictionary<string, string> metadata, int tpRank, int tpWorldSize, long headerLength, long dataLength)
    {
        Tensors = tensors;
        Offsets = offsets;
        Lengths = lengths;
        Metadata = metadata;
        TpRank = tpRank;
        TpWorldSize = tpWorldSize;
        HeaderLength = headerLength;
        DataOffset = SnapshotFormat.AlignUp(headerLength);
        DataLength = dataLength;
    }

    /// <summary>The tensors, in region order.</summary>
    public IReadOnlyList<TensorSpec> Tensors { get; }
    /// <summary>Region offsets from the start of the data section.</summary>
    public long[] Offsets { get; }
    /// <summary>Region byte lengths.</summary>
    public long[] Lengths { get; }
    /// <summary>The metadata to be written.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>The tensor-parallel rank to be recorded.</summary>
    public int TpRank { get; }
    /// <summary>The tensor-parallel world size to be recorded.</summary>
    public int TpWorldSize { get; }
    /// <summary>Bytes of the encoded header.</summary>
    public long HeaderLength { get; }
    /// <summary>Byte offset of the data section.</summary>
    public long DataOffset { get; }
    /// <summary>Bytes of the data section, padding included.</summary>
    public long DataLength { get; }
    /// <summary>The length of the file to be written.</summary>
    public long FileLength => DataOffset + DataLength;

    /// <exception cref="ArgumentException">A name or metadata key breaks <see cref="NameRules"/> or is repeated; a value is too long
    /// or not valid Unicode; a shape has no byte length; rank/world are impossible.</exception>
    public static SnapshotLayout Create(IReadOnlyList<TensorSpec> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        int tpRank = 0, int tpWorldSize = 1)
    {
        metadata ??= new Dictionary<string, string>();
        if (tpWorldSize < 1 || tpRank < 0 || tpRank >= tpWorldSize)
            throw new ArgumentException($"tensor-parallel rank {tpRank} of world size {tpWorldSize} is impossible");
        long headerLength = SnapshotFormat.PreambleSize;
        foreach (var (key, value) in metadata)
        {
            if (NameRules.Problem(key) is string problem)
                throw new ArgumentException($"metadata key {NameRules.Quote(key)} {problem}");
            int keyBytes = Encoding.UTF8.GetByteCount(key), valueBytes = NameRules.StrictByteCount(value);
            if (valueBytes < 0 || valueBytes > SnapshotFormat.MaxMetadataValueBytes)
                throw new ArgumentException($"metadata value of '{key}' is not valid Unicode or longer than {SnapshotFormat.MaxMetadataValueBytes} bytes");
            headerLength += 2 + keyBytes + 4 + valueBytes;
        }
        var names = new HashSet<string>(StringComparer.Ordinal);
        var offsets = new long[tensors.Count];
        var lengths = new long[tensors.Count];
        long dataEnd = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            TensorSpec t = tensors[i];
            if (NameRules.Problem(t.Name) is string problem)
                throw new ArgumentException($"tensor {i}: name {NameRules.Quote(t.Name)} {problem}");
            if (!names.Add(t.Name))
                throw new ArgumentException($"tensor name '{t.Name}' is repeated");
            int nameBytes = Encoding.UTF8.GetByteCount(t.Name);
            if (t.Shape.Length > SnapshotFormat.MaxDimensions)
                throw new ArgumentException($"tensor '{t.Name}' has {t.Shape.Length} dimensions (at most {SnapshotFormat.MaxDimensions})");
            long length = t.DType.ByteLength(t.Shape)
                ?? throw new ArgumentException($"tensor '{t.Name}': {t.DType} [{string.Join(", ", t.Shape)}] has no whole byte length");
            offsets[i] = SnapshotFormat.AlignUp(dataEnd);
            lengths[i] = length;
            dataEnd = checked(offsets[i] + length);
            headerLength += 2 + nameBytes + 1 + 1 + 8L * t.Shape.Length + 8 + 8 + 4;
        }
        if (headerLength > SnapshotFormat.MaxHeaderBytes)
            throw new ArgumentException($"the header would be {headerLength} bytes (at most {SnapshotFormat.MaxHeaderBytes})");
        return new SnapshotLayout(tensors, offsets, lengths, metadata, tpRank, tpWorldSize, headerLength, SnapshotFormat.AlignUp(dataEnd));
    }

    /// <summary>The header bytes (preamble and table), with the header CRC filled in.</summary>
    public byte[] EncodeHeader(ReadOnlySpan<uint> regionCrcs)
    {
        if (regionCrcs.Length != Tensors.Count)
            throw new ArgumentException($"{regionCrcs.Length} checksums for {Tensors.Count} regions");
        byte[] header = new byte[HeaderLength];
        Span<byte> p = header;
        SnapshotFormat.Magic.CopyTo(p);
        BinaryPrimitives.WriteUInt32LittleEndian(p[8..], SnapshotFormat.Version);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], (ulong)HeaderLength);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], (ulong)DataOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], (ulong)DataLength);
        BinaryPrimitives.WriteUInt32LittleEndian(p[40..], (uint)Tensors.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(p[44..], (uint)Metadata.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(p[48..], (uint)TpRank);
        BinaryPrimitives.WriteUInt32LittleEndian(p[52..], (uint)TpWorldSize);
        int at = SnapshotFormat.PreambleSize;
        foreach (var (key, value) in Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            at += WriteString16(header.AsSpan(at), key);
            int valueBytes = Encoding.UTF8.GetBytes(value, header.AsSpan(at + 4));
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(at), (uint)valueBytes);
            at += 4 + valueBytes;
        }
        for (int i = 0; i < Tensors.Count; i++)
        {
            TensorSpec t = Tensors[i];
            at += WriteString16(header.AsSpan(at), t.Name);
            header[at++] = (byte)t.DType;
            header[at++] = (byte)t.Shape.Length;
            foreach (long dim in t.Shape)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(at), (ulong)dim);
                at += 8;
            }
            BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(at), (ulong)Offsets[i]);
            BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(at + 8), (ulong)Lengths[i]);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(at + 16), regionCrcs[i]);
            at += 20;
        }
        BinaryPrimitives.WriteUInt32LittleEndian(p[SnapshotFormat.HeaderCrcOffset..], SnapshotReader.HeaderCrc(header));
        return header;
    }

    private static int WriteString16(Span<byte> destination, string text)
    {
        int n = Encoding.UTF8.GetBytes(text, destination[2..]);
        BinaryPrimitives.WriteUInt16LittleEndian(destination, (ushort)n);
        return 2 + n;
    }
}
