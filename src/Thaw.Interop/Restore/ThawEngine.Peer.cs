using System.Text;
using Thaw.Interop.Native;
using static Thaw.Interop.Native.Interop.ThawCore;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Restore;

/// <summary>A peer's allocation to copy into: its IPC handle and its copies (host bytes to an
/// offset of the allocation, bounded by a capacity there).</summary>
public sealed record PeerAllocation(byte[] Handle, IReadOnlyList<PeerCopy> Copies);

/// <summary><paramref name="Length"/> bytes from pinned host memory to <paramref name="Offset"/> of an
/// allocation, refused unless <paramref name="Offset"/> + <paramref name="Capacity"/> fits in it.</summary>
public readonly record struct PeerCopy(ulong HostAddress, long Offset, long Capacity, long Length);

/// <summary>Where a peer copy's time went (thaw_core.h, thawcore_peer_copy_stats): the lanes'
/// time in each part divided by the lanes, so the parts add up to at most <see cref="Seconds"/>.</summary>
public sealed record PeerCopyTimings(double OpenSeconds, double WaitSeconds, double CopySeconds, double CloseSeconds,
    double Seconds, int Lanes, string Opens)
{
    /// <summary>The core's orders of opens, copies and closes (thaw_core.h, THAWCORE_POOL_OPEN_*), by number.</summary>
    public static readonly IReadOnlyList<string> OpenOrders = ["serial", "pipelined"];

    internal static string OrderName(uint order) => order < OpenOrders.Count ? OpenOrders[(int)order] : "unknown";
}

/// <summary>A peer copy refused: the message, and which allocation and copy it concerns (-1: none).</summary>
public sealed class PeerCopyException(Exception inner, int allocation, int copy) : Exception(inner.Message, inner)
{
    /// <summary>The allocation whose handle or bound failed, or -1.</summary>
    public int Allocation { get; } = allocation;
    /// <summary>The copy (numbered across all allocations, in order) whose bound failed, or -1.</summary>
    public int Copy { get; } = copy;
}

public sealed partial class ThawEngine
{
    /// <summary>The identity of device <paramref name="ordinal"/> of a kind, the same in every process
    /// of the node (CUDA: the GPU's UUID, "GPU-..."; mock: "mock-N"); needs no context.</summary>
    /// <exception cref="ThawDeviceException">No such device.</exception>
    public static unsafe string DeviceIdentity(DeviceKind kind, int ordinal)
    {
        byte* text = stackalloc byte[128];
        int length = NativeErrors.Check(Core.DeviceIdentity((int)kind, ordinal, text, 128));
        return Encoding.ASCII.GetString(text, length);
    }

    /// <summary>This engine's device identity (<see cref="DeviceIdentity(DeviceKind, int)"/>).</summary>
    public string Identity => DeviceIdentity(Kind, Ordinal);

    /// <summary>Opens a peer's allocations on this device, in parallel over the lanes, copies into each
    /// once it is open and bounded, and closes each behind its copies; nothing stays open.</summary>
    /// <exception cref="PeerCopyException">A handle that does not open, a copy past its allocation's end,
    /// or a failed copy; its inner exception is the core's error (a <see cref="ThawMismatchException"/>
    /// for handles and bounds).</exception>
    public unsafe PeerCopyTimings CopyToPeer(IReadOnlyList<PeerAllocation> allocations, uint peerUid, string mockDirectory)
    {
        var natives = new Core.PeerAllocation[allocations.Count];
        var copies = new List<Core.PeerCopy>();
        byte[] handles = allocations.SelectMany(a => a.Handle).ToArray();
        byte[] directory = Encoding.UTF8.GetBytes(mockDirectory + "\0");
        fixed (byte* handleBytes = handles)
        fixed (byte* d = directory)
        {
            int at = 0;
            for (int i = 0; i < allocations.Count; i++)
            {
                PeerAllocation a = allocations[i];
                natives[i] = new Core.PeerAllocation
                {
                    Handle = handleBytes + at, HandleLength = (uint)a.Handle.Length,
                    FirstCopy = (uint)copies.Count, CopyCount = (uint)a.Copies.Count,
                };
                at += a.Handle.Length;
                foreach (PeerCopy c in a.Copies)
                    copies.Add(new Core.PeerCopy
                    {
                        HostAddress = c.HostAddress, Offset = (ulong)c.Offset, Capacity = (ulong)c.Capacity, Length = (ulong)c.Length,
                    });
            }
            Core.PeerCopy[] copyArray = copies.ToArray();
            var peer = new IpcPeer { StructSize = (uint)sizeof(IpcPeer), Uid = peerUid, MockDirectory = d };
            PeerCopyStats stats;
            int rc;
            fixed (Core.PeerAllocation* allocationPointer = natives)
            fixed (Core.PeerCopy* copyPointer = copyArray)
                rc = EnginePeerCopy(_handle, &peer, allocationPointer, (uint)natives.Length, copyPointer, (uint)copyArray.Length, &stats);
            if (rc < 0)
                throw new PeerCopyException(NativeErrors.FromCode(rc, NativeErrors.LastMessage()),
                    stats.FailedAllocation == uint.MaxValue ? -1 : (int)stats.FailedAllocation,
                    stats.FailedCopy == uint.MaxValue ? -1 : (int)stats.FailedCopy);
            return new PeerCopyTimings(stats.OpenSeconds, stats.WaitSeconds, stats.CopySeconds, stats.CloseSeconds,
                stats.Seconds, (int)stats.Lanes, PeerCopyTimings.OrderName(stats.OpenOrder));
        }
    }
}
