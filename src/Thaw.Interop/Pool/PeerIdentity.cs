using System.Buffers.Binary;
using Thaw.Interop.Format;

namespace Thaw.Interop.Pool;

/// <summary>Which version of a snapshot file a live peer holds: the header's recorded CRC32C
/// (the header lists every region's CRC32C, so it fingerprints the bytes) and the file's size.
/// A publication is served only while the file on disk still has the identity it was published with.</summary>
public sealed record PeerIdentity(uint HeaderCrc32C, long FileBytes)
{
    /// <summary>The identity of the snapshot at <paramref name="path"/> now, with its parsed header.</summary>
    /// <exception cref="FileNotFoundException">No file there.</exception>
    /// <exception cref="ThawFormatException">Not a valid snapshot.</exception>
    public static PeerIdentity Of(string path, out Snapshot snapshot)
    {
        snapshot = SnapshotReader.Read(path);
        Span<byte> crc = stackalloc byte[4];
        using (var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read))
            if (RandomAccess.Read(file, crc, SnapshotFormat.HeaderCrcOffset) != crc.Length)
                throw new ThawFormatException(path, "truncated while its identity was read");
        return new PeerIdentity(BinaryPrimitives.ReadUInt32LittleEndian(crc), snapshot.FileLength);
    }

    /// <inheritdoc cref="Of(string, out Snapshot)"/>
    public static PeerIdentity Of(string path) => Of(path, out _);

    /// <summary>How this identity differs from <paramref name="now"/>, for a log line.</summary>
    public string Difference(PeerIdentity now) =>
        $"header CRC32C 0x{HeaderCrc32C:x8} and {FileBytes} bytes when published, 0x{now.HeaderCrc32C:x8} and {now.FileBytes} bytes now";
}
