using Microsoft.Win32.SafeHandles;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using static Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Freeze;

/// <summary>A tensor to freeze: its spec and where its bytes are now.</summary>
/// <param name="Address">A device address of the engine's device, or a host address when writing from host memory.</param>
public sealed record TensorSource(string Name, DType DType, long[] Shape, ulong Address);

/// <summary>Fills <paramref name="destination"/> with the bytes of tensor <paramref name="index"/>
/// that start <paramref name="offset"/> bytes into it; throws when it cannot (a source that shrank).</summary>
public delegate void TensorBytesReader(int index, long offset, Span<byte> destination);

/// <summary>Writes snapshots: lays them out, streams the regions through the engine,
/// and publishes the file atomically.</summary>
public static class SnapshotWriter
{
    /// <summary>Freezes tensors into a snapshot at <paramref name="path"/>.</summary>
    /// <param name="sourceIsHost">The addresses are host memory (conversion) rather than the engine's device.</param>
    /// <exception cref="ArgumentException">Names repeated or empty, shapes without a byte length.</exception>
    /// <exception cref="IOException">The file could not be written; no file is left under <paramref name="path"/>'s name by this call.</exception>
    public static Snapshot Write(ThawEngine engine, string path, IReadOnlyList<TensorSource> sources,
        IReadOnlyDictionary<string, string>? metadata = null, int tpRank = 0, int tpWorldSize = 1,
        bool sourceIsHost = false, Action<long, long>? progress = null)
    {
        var specs = sources.Select(s => new TensorSpec(s.Name, s.DType, s.Shape)).ToList();
        if (metadata is not null && Kv.KvSnapshot.IsKv(metadata))
            Kv.KvSnapshot.Validate(path, metadata, specs);  // a KV snapshot no reader would accept is never written
        SnapshotLayout layout = SnapshotLayout.Create(specs, metadata, tpRank, tpWorldSize);
        for (int i = 0; i < sources.Count; i++)
            if (sources[i].Address == 0 && layout.Lengths[i] > 0)
                throw new ArgumentException($"tensor '{sources[i].Name}' has no source address");
        var segments = new Segment[sources.Count];
        for (int i = 0; i < sources.Count; i++)
            segments[i] = SegmentOf(layout, i, 0, layout.Lengths[i], sources[i].Address);
        return Publish(path, layout, file => engine.Write(file, segments, sourceIsHost, progress));
    }

    /// <summary>Freezes tensors whose bytes come from <paramref name="read"/> (a file, say), through a
    /// bounded host buffer: the next batch is read while the engine writes the last one.</summary>
    /// <exception cref="ArgumentException">Names repeated or empty, shapes without a byte length.</exception>
    /// <exception cref="IOException">The file could not be written; no file is left under <paramref name="path"/>'s name by this call.</exception>
    /// <remarks>Whatever <paramref name="read"/> throws (a source that shrank) ends the write the same way.</remarks>
    public static Snapshot Write(ThawEngine engine, string path, IReadOnlyList<TensorSpec> tensors, TensorBytesReader read,
        IReadOnlyDictionary<string, string>? metadata = null, int tpRank = 0, int tpWorldSize = 1,
        Action<long, long>? progress = null)
    {
        SnapshotLayout layout = SnapshotLayout.Create(tensors, metadata, tpRank, tpWorldSize);
        return Publish(path, layout, file => StreamedWrite.Run(engine, file, layout, read, progress));
    }

    internal static Segment SegmentOf(SnapshotLayout layout, int region, long offset, long length, ulong address) => new()
    {
        FileOffset = (ulong)(layout.DataOffset + layout.Offsets[region] + offset),
        Length = (ulong)length,
        DeviceAddress = address,
        Region = (uint)region,
    };

    private static Snapshot Publish(string path, SnapshotLayout layout, Func<SafeFileHandle, uint[]> writeRegions)
    {
        using var file = new AtomicFile(path);
        RandomAccess.SetLength(file.Handle, layout.FileLength);
        uint[] crcs;
        try
        {
            crcs = writeRegions(file.Handle);
        }
        catch (IOException e)
        {
            throw new IOException($"cannot write {file.FinalPath}: {e.Message}", e);
        }
        byte[] header = layout.EncodeHeader(crcs);
        RandomAccess.Write(file.Handle, header, 0);
        file.Commit();
        return SnapshotReader.Read(file.FinalPath);
    }
}
