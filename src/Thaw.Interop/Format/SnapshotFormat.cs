namespace Thaw.Interop.Format;

/// <summary>The constants of snapshot format v1 (docs/FORMAT.md).</summary>
public static class SnapshotFormat
{
    /// <summary>The first 8 bytes of every snapshot.</summary>
    public static ReadOnlySpan<byte> Magic => "THAWSNAP"u8;
    /// <summary>The format version this library reads and writes.</summary>
    public const uint Version = 1;
    /// <summary>Bytes of the fixed preamble before the tensor table.</summary>
    public const int PreambleSize = 64;
    /// <summary>Alignment of the data section and of every region (O_DIRECT-friendly).</summary>
    public const long Alignment = 4096;
    /// <summary>Largest header a reader accepts.</summary>
    public const long MaxHeaderBytes = 256L << 20;
    /// <summary>Longest tensor name, in UTF-8 bytes.</summary>
    public const int MaxNameBytes = 4096;
    /// <summary>Most dimensions a tensor may have.</summary>
    public const int MaxDimensions = 16;
    /// <summary>Longest metadata key, in UTF-8 bytes.</summary>
    public const int MaxMetadataKeyBytes = 4096;
    /// <summary>Longest metadata value, in UTF-8 bytes.</summary>
    public const int MaxMetadataValueBytes = 16 << 20;

    /// <summary>Smallest encoded tensor entry: name length, one name byte, dtype, ndim, offset, length, crc.</summary>
    public const int MinTensorEntryBytes = 2 + 1 + 1 + 1 + 8 + 8 + 4;
    /// <summary>Smallest encoded metadata entry: key length and value length.</summary>
    public const int MinMetadataEntryBytes = 2 + 4;

    internal const int HeaderCrcOffset = 56;

    /// <summary><paramref name="value"/> rounded up to <see cref="Alignment"/>, overflow-checked.</summary>
    public static long AlignUp(long value) => checked((value + Alignment - 1) / Alignment * Alignment);
}
