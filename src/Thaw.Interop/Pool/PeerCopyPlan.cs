using System.Text.Json;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>What a pool restore did: the bytes, the pool's time for it, the device that served it and
/// where the copy's time went (written into the restore's response, docs/POOL.md).</summary>
public sealed record PoolServedRestore(long Bytes, double Seconds, string Device, PeerCopyTimings Copy)
{
    /// <summary>The pool did not hold the snapshot and read it while serving (a fill), rather than a hit.</summary>
    public bool Filled { get; init; }

    /// <summary>Distinct allocations of the client the restore opened (a handle each).</summary>
    public int Allocations { get; init; }

    /// <summary>The response fields beside <c>ok</c>.</summary>
    public void WriteTo(Utf8JsonWriter w)
    {
        w.WriteNumber("bytes", Bytes);
        w.WriteNumber("seconds", Seconds);
        w.WriteString("served", Filled ? "fill" : "hit");
        w.WriteString("device", Device);
        w.WriteNumber("open_s", Copy.OpenSeconds);
        w.WriteNumber("wait_s", Copy.WaitSeconds);
        w.WriteNumber("copy_s", Copy.CopySeconds);
        w.WriteNumber("close_s", Copy.CloseSeconds);
        w.WriteNumber("lanes", Copy.Lanes);
        w.WriteNumber("allocations", Allocations);
        w.WriteString("opens", Copy.Opens);
    }
}

/// <summary>A restore's targets as copies grouped by allocation (each distinct handle once, in the
/// order first named), checked against the snapshot before any handle is opened: names it has, each
/// once, capacities that hold their tensors. What only the opened handle can tell (its size) the
/// core checks per allocation before copying into it; its refusals are named by tensor here.</summary>
internal sealed class PeerCopyPlan
{
    private readonly string _key;
    private readonly List<PeerAllocation> _allocations = [];
    private readonly List<string> _tensorOfCopy = [];

    private PeerCopyPlan(string key) => _key = key;

    /// <summary>Tensor bytes the restore copies.</summary>
    public long Bytes { get; private set; }

    /// <summary>Distinct allocations (handles) the restore opens.</summary>
    public int Allocations => _allocations.Count;

    /// <exception cref="ThawMismatchException">A name the snapshot lacks or asked twice, a capacity too small,
    /// or more distinct handles than <paramref name="maxHandles"/>.</exception>
    public static PeerCopyPlan Create(string key, Snapshot snapshot, ulong buffer, IReadOnlyList<PoolTarget> targets, int maxHandles)
    {
        var plan = new PeerCopyPlan(key);
        var copiesOf = new Dictionary<string, (List<PeerCopy> Copies, List<string> Names)>(StringComparer.Ordinal);
        var order = new List<(byte[] Handle, List<PeerCopy> Copies, List<string> Names)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (PoolTarget target in targets)
        {
            int region = snapshot.IndexOf(target.Name);
            if (region < 0 || !seen.Add(target.Name))
                throw new ThawMismatchException($"{key}: the snapshot has no tensor '{target.Name}', or it is asked twice");
            TensorEntry tensor = snapshot.Tensors[region];
            if (target.Capacity < tensor.Length || target.Offset < 0)
                throw new ThawMismatchException($"{key}: the destination of tensor '{tensor.Name}' holds {target.Capacity} bytes, the snapshot region has {tensor.Length}");
            string handleKey = Convert.ToBase64String(target.Handle);
            if (!copiesOf.TryGetValue(handleKey, out var group))
            {
                if (copiesOf.Count == maxHandles)
                    throw new ThawMismatchException($"{key}: a restore may open at most {maxHandles} allocations");
                group = ([], []);
                copiesOf[handleKey] = group;
                order.Add((target.Handle, group.Copies, group.Names));
            }
            group.Copies.Add(new PeerCopy(buffer + (ulong)tensor.Offset, target.Offset, target.Capacity, tensor.Length));
            group.Names.Add(tensor.Name);
            plan.Bytes += tensor.Length;
        }
        foreach (var (handle, copies, names) in order)
        {
            plan._allocations.Add(new PeerAllocation(handle, copies));
            plan._tensorOfCopy.AddRange(names);
        }
        return plan;
    }

    /// <summary>Runs the copies on <paramref name="engine"/> for <paramref name="peer"/>.</summary>
    /// <exception cref="ThawMismatchException">A handle that does not open or is not the peer's, or a
    /// destination past the end of its allocation: the message names the tensor.</exception>
    public PeerCopyTimings Run(ThawEngine engine, PoolPeer peer)
    {
        try
        {
            return engine.CopyToPeer(_allocations, peer.Uid, peer.SharedMemoryDirectory);
        }
        catch (PeerCopyException e)
        {
            throw Named(e);
        }
    }

    private Exception Named(PeerCopyException e)
    {
        int first = e.Allocation < 0 ? -1 : _allocations.Take(e.Allocation).Sum(a => a.Copies.Count);
        int copy = e.Copy >= 0 ? e.Copy : first;
        if (copy < 0 || copy >= _tensorOfCopy.Count)
            return e.InnerException!;
        string message = $"{_key}: tensor '{_tensorOfCopy[copy]}': {e.Message}";
        return e.InnerException switch
        {
            ThawMismatchException => new ThawMismatchException(message),
            ThawException t => new ThawException(t.Kind, message, t),
            _ => new ThawException(ThawErrorKind.Unknown, message, e.InnerException),
        };
    }
}
