namespace Thaw.Interop.Format;

/// <summary>The constants of snapshot format v1 (docs/FORMAT.md).</summary>
public static class SnapshotFormat
{
    public static ReadOnlySpan<byte> Magic => "THAWSNAP"u8;
    public const uint Version = 1;
    public const int PreambleSize = 64;
    public const long Alignment = 4096;
    public const long MaxHeaderBytes = 256L << 20;
    public const int MaxNameBytes = 4096;
    public const int MaxDimensions = 16;
    public const int MaxMetadataKeyBytes = 4096;
    public const int MaxMetadataValueBytes = 16 << 20;

    /// <summary>Smallest encoded tensor entry: name length, one name byte, dtype, ndim, offset, length, crc.</summary>
    public const int MinTensorEntryBytes = 2 + 1 + 1 + 1 + 8 + 8 + 4;
    public const int MinMetadataEntryBytes = 2 + 4;

    internal const int HeaderCrcOffset = 56;

    public static long AlignUp(long value) => checked((value + Alignment - 1) / Alignment * Alignment);
}
