using Thaw.Interop.Native;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Restore;

public sealed partial class ThawEngine
{
    /// <summary>One core restore, over the borrowed links <paramref name="borrow"/> names when there are
    /// helpers to borrow; <paramref name="links"/> then says which links served how many bytes, and
    /// <paramref name="note"/> why nothing was borrowed where the option could do nothing.</summary>
    private unsafe int RunRestore(string path, Core.Extent* extents, uint extentCount, Core.Segment* segments, uint segmentCount,
        Core.RestoreOptions* options, Core.RestoreStats* stats, BorrowedLinks? borrow, out IReadOnlyList<LinkShare> links, out string? note)
    {
        links = [];
        note = null;
        int[] helpers = [];
        if (borrow is not null && borrow.Mode != BorrowMode.Off)
            (helpers, note) = borrow.Resolve(Kind, Ordinal, DeviceCount(Kind));
        if (helpers.Length == 0)
            return Core.EngineRestore(_handle, path, extents, extentCount, segments, segmentCount, options, stats);
        double[] weights = borrow!.Weights?.ToArray() ?? [];
        Core.LinkStats* native = stackalloc Core.LinkStats[helpers.Length + 1];
        int rc;
        fixed (int* helperPointer = helpers)
        fixed (double* weightPointer = weights)
        {
            var b = new Core.BorrowOptions
            {
                StructSize = (uint)sizeof(Core.BorrowOptions),
                HelperCount = (uint)helpers.Length,
                HelperOrdinals = helperPointer,
                LinkWeights = borrow.Weights is null ? null : weightPointer,
                LanesPerHelper = (uint)borrow.LanesPerHelper,
            };
            rc = Core.EngineRestoreBorrowed(_handle, path, extents, extentCount, segments, segmentCount, options, &b, stats,
                native, (uint)helpers.Length + 1);
        }
        if (rc >= 0)
        {
            var shares = new LinkShare[helpers.Length + 1];
            for (int i = 0; i < shares.Length; i++)
            {
                Core.LinkStats* l = &native[i];
                string text = System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)l->Note) ?? "";
                shares[i] = new LinkShare(LinkShare.DeviceName(Kind, l->Ordinal), l->Ordinal, l->Role == Core.LinkBorrowed,
                    (long)l->Bytes, (long)l->PlannedBytes, (long)l->TakenOverBytes, (int)l->Lanes, l->Status, text);
            }
            links = shares;
        }
        return rc;
    }
}
