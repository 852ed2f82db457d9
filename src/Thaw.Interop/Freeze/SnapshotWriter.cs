using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using static Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Freeze;

/// <summary>A tensor to freeze: its spec and where its bytes are now.</summary>
/// <param name="Address">A device address of the engine's device, or a host address when writing from host memory.</param>
public sealed record TensorSource(string Name, DType DType, long[] Shape, ulong Address);

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
        SnapshotLayout layout = SnapshotLayout.Create(
            sources.Select(s => new TensorSpec(s.Name, s.DType, s.Shape)).ToList(), metadata, tpRank, tpWorldSize);
        for (int i = 0; i < sources.Count; i++)
            if (sources[i].Address == 0 && layout.Lengths[i] > 0)
                throw new ArgumentException($"tensor '{sources[i].Name}' has no source address");
        var segments = new Segment[sources.Count];
        for (int i = 0; i < sources.Count; i++)
        {
            segments[i] = new Segment
            {
                FileOffset = (ulong)(layout.DataOffset + layout.Offsets[i]),
                Length = (ulong)layout.Lengths[i],
                DeviceAddress = sources[i].Address,
                Region = (uint)i,
            };
        }
        using var file = new AtomicFile(path);
        RandomAccess.SetLength(file.Handle, layout.FileLength);
        uint[] crcs;
        try
        {
            crcs = engine.Write(file.Handle, segments, sourceIsHost, progress);
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
