using System.Runtime.InteropServices;
using System.Text.Json;
using Thaw.Interop.Restore;

namespace Thaw.PyBridge;

public static unsafe partial class Exports
{
    /// <summary>thaw_restore_checked over borrowed links (docs/MULTI_GPU.md, "Borrowed links").
    /// <paramref name="borrowJson"/> is what the caller said ("auto", "off", [1, 2] or
    /// {"devices", "weights", "lanes"}), null for nothing; <c>$THAW_BORROW</c>, when set, overrides it.
    /// When <paramref name="linksOut"/> is not null and a restore ran it receives
    /// {"links": [{device, ordinal, role, bytes, planned_bytes, taken_over_bytes, lanes, status, note}],
    /// "summary": "links: ..." or null, "note": why nothing was borrowed or null}, to release with thaw_free.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_restore_borrowed")]
    public static int RestoreBorrowed(byte* path, EngineRequest* request, TensorArray* tensors, byte* requirementsJson,
        byte* borrowJson, RestoreStatsOut* stats, byte** infoOut, byte** linksOut) => Guard(() =>
    {
        BorrowedLinks? said = borrowJson == null ? null : BorrowedLinks.ParseJson(Text(borrowJson, "borrow"));
        RestoreResult? result = RestoreCheckedWith(path, request, tensors, requirementsJson, stats, infoOut, BorrowedLinks.Decide(said));
        if (linksOut != null)
            *linksOut = result is null ? null : ToNative(LinksJson(result));
        return 0;
    });

    private static string LinksJson(RestoreResult result)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteStartArray("links");
            foreach (LinkShare l in result.Links)
            {
                w.WriteStartObject();
                w.WriteString("device", l.Device);
                w.WriteNumber("ordinal", l.Ordinal);
                w.WriteString("role", l.Borrowed ? "borrowed" : "direct");
                w.WriteNumber("bytes", l.Bytes);
                w.WriteNumber("planned_bytes", l.PlannedBytes);
                w.WriteNumber("taken_over_bytes", l.TakenOverBytes);
                w.WriteNumber("lanes", l.Lanes);
                w.WriteNumber("status", l.Status);
                w.WriteString("note", l.Note);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteString("summary", result.LinksSummary);
            w.WriteString("note", result.LinksNote);
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
