using Thaw.Interop.Format;
using Thaw.Interop.Native;
using static Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Restore;

/// <summary>One tensor to restore: which region, and the device memory it goes to.</summary>
/// <param name="Address">Device address (a host address on the mock device).</param>
/// <param name="Capacity">Bytes available at <paramref name="Address"/>.</param>
/// <param name="DType">When given, must equal the snapshot's dtype.</param>
/// <param name="Shape">When given, must equal the snapshot's shape.</param>
public sealed record RestoreTarget(string Name, ulong Address, long Capacity, DType? DType = null, long[]? Shape = null);

/// <summary>The file ranges to read and where each piece lands: what the core executes.
/// Regions close together in the file share one extent (one stream of large reads);
/// regions adjacent both in the file and in device memory share one segment.</summary>
public sealed class RestorePlan
{
    /// <summary>Regions further apart than this are read as separate extents.</summary>
    public const long MaxExtentGap = 1L << 20;

    private readonly List<(int Region, ulong Address, ulong Allocation)> _chosen;

    private RestorePlan(Snapshot snapshot, Extent[] extents, Segment[] segments, long bytes,
        List<(int Region, ulong Address, ulong Allocation)> chosen)
    {
        _chosen = chosen;
        Snapshot = snapshot;
        Extents = extents;
        Segments = segments;
        Bytes = bytes;
    }

    /// <summary>The snapshot this plan reads.</summary>
    public Snapshot Snapshot { get; }
    internal Extent[] Extents { get; }
    internal Segment[] Segments { get; }
    /// <summary>Contiguous file ranges the plan reads.</summary>
    public int ExtentCount => Extents.Length;
    /// <summary>Copies into destinations (merged where adjacent in file and memory).</summary>
    public int SegmentCount => Segments.Length;
    /// <summary>Tensor bytes this plan moves.</summary>
    public long Bytes { get; }

    /// <summary>The same plan with one segment a region, as checksum verification needs.</summary>
    public RestorePlan Unmerged() =>
        Segments.Length == _chosen.Count(c => Snapshot.Tensors[c.Region].Length > 0) ? this : Build(Snapshot, _chosen, mergeSegments: false);

    /// <summary>Plans a restore of the given tensors.</summary>
    /// <param name="mergeSegments">Merge file- and device-adjacent regions into one copy (not with verification, which checks each region).</param>
    /// <param name="allocations">Per target, the start of the allocation it lies in: only targets of the same
    /// allocation merge. Null means all targets lie in one allocation.</param>
    /// <exception cref="ThawMismatchException">A name the snapshot lacks, a destination too small, or a dtype/shape that differs.</exception>
    public static RestorePlan Create(Snapshot snapshot, IReadOnlyList<RestoreTarget> targets, bool mergeSegments = true,
        IReadOnlyList<ulong>? allocations = null)
    {
        var chosen = new List<(int Region, ulong Address, ulong Allocation)>(targets.Count);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < targets.Count; i++)
        {
            RestoreTarget target = targets[i];
            if (!seen.Add(target.Name))
                throw new ThawMismatchException($"{snapshot.Path}: tensor '{target.Name}' is requested twice");
            int region = snapshot.IndexOf(target.Name);
            if (region < 0)
                throw new ThawMismatchException($"{snapshot.Path}: the snapshot has no tensor '{target.Name}'");
            TensorEntry entry = snapshot.Tensors[region];
            if (target.DType is { } dtype && dtype != entry.DType)
                throw new ThawMismatchException($"{snapshot.Path}: tensor '{entry.Name}' is {entry.DType} in the snapshot, the destination is {dtype}");
            if (target.Shape is { } shape && !shape.AsSpan().SequenceEqual(entry.Shape))
                throw new ThawMismatchException($"{snapshot.Path}: tensor '{entry.Name}' has shape {entry.ShapeText} in the snapshot, the destination has [{string.Join(", ", shape)}]");
            if (target.Capacity < entry.Length)
                throw new ThawMismatchException($"{snapshot.Path}: the destination of tensor '{entry.Name}' holds {target.Capacity} bytes, the snapshot region has {entry.Length}");
            if (target.Address == 0 && entry.Length > 0)
                throw new ArgumentException($"tensor '{entry.Name}': destination address is null");
            chosen.Add((region, target.Address, allocations?[i] ?? 0));
        }
        return Build(snapshot, chosen, mergeSegments);
    }

    /// <summary>Plans reading every region without copying it anywhere (verification).</summary>
    public static RestorePlan ReadOnly(Snapshot snapshot) =>
        Build(snapshot, Enumerable.Range(0, snapshot.Tensors.Count).Select(r => (r, 0UL, 0UL)).ToList(), mergeSegments: false);

    /// <summary>Plans restoring every region into one buffer laid out as the file's data section.</summary>
    public static RestorePlan IntoArena(Snapshot snapshot, ulong arenaAddress) =>
        Build(snapshot, Enumerable.Range(0, snapshot.Tensors.Count)
            .Select(r => (r, arenaAddress + (ulong)snapshot.Tensors[r].Offset, arenaAddress)).ToList(), mergeSegments: true);

    private static RestorePlan Build(Snapshot snapshot, List<(int Region, ulong Address, ulong Allocation)> chosen, bool mergeSegments)
    {
        chosen.Sort((a, b) => snapshot.Tensors[a.Region].Offset.CompareTo(snapshot.Tensors[b.Region].Offset));
        var extents = new List<Extent>();
        var segments = new List<Segment>(chosen.Count);
        long bytes = 0;
        ulong previousAllocation = 0;
        foreach (var (region, address, allocation) in chosen)
        {
            TensorEntry entry = snapshot.Tensors[region];
            if (entry.Length == 0)
                continue;
            ulong start = (ulong)snapshot.FileOffsetOf(entry);
            ulong end = start + (ulong)entry.Length;
            ulong alignedEnd = (ulong)SnapshotFormat.AlignUp((long)end);
            bytes += entry.Length;

            bool extendExtent = extents.Count > 0 &&
                (long)start - (long)(extents[^1].FileOffset + extents[^1].Length) <= MaxExtentGap;
            if (extendExtent)
            {
                Extent last = extents[^1];
                last.Length = alignedEnd - last.FileOffset;
                extents[^1] = last;
                Segment previous = segments[^1];
                bool adjacent = previous.FileOffset + previous.Length == start &&
                    (address == 0 ? previous.DeviceAddress == 0 : previous.DeviceAddress + previous.Length == address);
                if (mergeSegments && adjacent && allocation == previousAllocation)
                {
                    previous.Length += (ulong)entry.Length;
                    segments[^1] = previous;
                    continue;
                }
            }
            else
            {
                // Snapshot regions start aligned; safetensors tensors need not, and O_DIRECT needs aligned reads.
                ulong alignedStart = start / (ulong)SnapshotFormat.Alignment * (ulong)SnapshotFormat.Alignment;
                extents.Add(new Extent { FileOffset = alignedStart, Length = alignedEnd - alignedStart, FirstSegment = (uint)segments.Count });
            }
            segments.Add(new Segment { FileOffset = start, Length = (ulong)entry.Length, DeviceAddress = address, Region = (uint)region });
            previousAllocation = allocation;
            Extent current = extents[^1];
            current.SegmentCount = (uint)segments.Count - current.FirstSegment;
            extents[^1] = current;
        }
        return new RestorePlan(snapshot, extents.ToArray(), segments.ToArray(), bytes, chosen);
    }
}
