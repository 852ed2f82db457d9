using Thaw.Interop.Format;
using Thaw.Interop.Native;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Pool;

/// <summary>Which file a snapshot was read from and which bytes it held: stat(2)'s device, inode,
/// size and times (ns), and the header's CRC32C (which covers every region's). The pool serves a
/// held snapshot only while the file on disk, and the one the client parsed, still match it.</summary>
public sealed record SnapshotIdentity(ulong Device, ulong Inode, long Size, long ModifiedNs, long ChangedNs, uint HeaderCrc32C)
{
    /// <summary>The identity of the file at <paramref name="path"/> now, with the header CRC the caller parsed.</summary>
    /// <exception cref="FileNotFoundException">No file there.</exception>
    /// <exception cref="ThawException">It cannot be examined.</exception>
    public static SnapshotIdentity Of(string path, uint headerCrc32C)
    {
        int rc = Core.FileIdentityOf(path, out Core.FileIdentity id);
        if (rc < 0)
            throw NativeErrors.FromCode(rc, NativeErrors.LastMessage());
        return new SnapshotIdentity(id.Device, id.Inode, id.Size, id.ModifiedNs, id.ChangedNs, headerCrc32C);
    }

    /// <summary>The identity of <paramref name="snapshot"/>'s file now.</summary>
    public static SnapshotIdentity Of(Snapshot snapshot) => Of(snapshot.Path, snapshot.HeaderCrc32C);

    /// <summary>The same file as <paramref name="other"/>, unchanged (the header CRC aside).</summary>
    public bool SameFile(SnapshotIdentity other) =>
        Device == other.Device && Inode == other.Inode && Size == other.Size && ModifiedNs == other.ModifiedNs && ChangedNs == other.ChangedNs;

    /// <summary>What differs from <paramref name="other"/>, for one log line.</summary>
    public string Difference(SnapshotIdentity other)
    {
        var parts = new List<string>();
        if (Device != other.Device || Inode != other.Inode)
            parts.Add($"file {Device}:{Inode} -> {other.Device}:{other.Inode}");
        if (Size != other.Size)
            parts.Add($"size {Size} -> {other.Size}");
        if (ModifiedNs != other.ModifiedNs)
            parts.Add($"mtime_ns {ModifiedNs} -> {other.ModifiedNs}");
        if (ChangedNs != other.ChangedNs)
            parts.Add($"ctime_ns {ChangedNs} -> {other.ChangedNs}");
        if (HeaderCrc32C != other.HeaderCrc32C)
            parts.Add($"header_crc32c 0x{HeaderCrc32C:x8} -> 0x{other.HeaderCrc32C:x8}");
        return parts.Count == 0 ? "nothing" : string.Join(", ", parts);
    }
}
