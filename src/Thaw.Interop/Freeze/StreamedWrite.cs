using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;
using static Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Freeze;

/// <summary>Streams regions whose bytes a <see cref="TensorBytesReader"/> supplies into a snapshot
/// file through two host buffers: one is filled while the engine writes the other. Regions are
/// cut into pieces (<see cref="ThawEngine.WritePieceBytes"/>) so that its lanes share even one large tensor; the
/// pieces' CRC32Cs are combined into each region's. Host memory held: two buffers of
/// <see cref="PiecesPerBuffer"/> pieces (2 × 64 MiB with the default chunks).</summary>
internal static unsafe class StreamedWrite
{
    private const int PiecesPerBuffer = 8;
    private const long MaxBufferBytes = 256L << 20;

    private sealed record Batch(Segment[] Segments, long[] Offsets, long Bytes);

    public static uint[] Run(ThawEngine engine, SafeFileHandle file, SnapshotLayout layout, TensorBytesReader read,
        Action<long, long>? progress)
    {
        int count = layout.Tensors.Count;
        uint[] crcs = new uint[count];
        long total = layout.Lengths.Sum();
        long pieceBytes = Math.Min(engine.WritePieceBytes, MaxBufferBytes);
        long bufferBytes = Math.Min(pieceBytes * PiecesPerBuffer, Math.Max(pieceBytes, MaxBufferBytes));
        byte*[] buffers = [(byte*)NativeMemory.AlignedAlloc((nuint)bufferBytes, 4096), (byte*)NativeMemory.AlignedAlloc((nuint)bufferBytes, 4096)];
        // The reading position: region and offset inside it; only the one running fill moves it.
        int region = 0;
        long offset = 0;
        Batch Fill(byte* buffer)
        {
            var segments = new List<Segment>();
            var offsets = new List<long>();
            long used = 0;
            while (region < count && used < bufferBytes)
            {
                long length = Math.Min(Math.Min(layout.Lengths[region] - offset, pieceBytes), bufferBytes - used);
                if (length > 0)
                {
                    read(region, offset, new Span<byte>(buffer + used, (int)length));
                    segments.Add(SnapshotWriter.SegmentOf(layout, region, offset, length, (ulong)(buffer + used)));
                    offsets.Add(offset);
                    used += length;
                    offset += length;
                }
                if (offset == layout.Lengths[region])
                {
                    region++;
                    offset = 0;
                }
            }
            return new Batch(segments.ToArray(), offsets.ToArray(), used);
        }

        Task<Batch>? pending = null;
        try
        {
            int next = 0;
            pending = Task.Run(() => Fill(buffers[0]));
            long written = 0;
            while (true)
            {
                Batch batch = pending.GetAwaiter().GetResult();
                pending = null;
                if (batch.Segments.Length == 0)
                    break;
                next ^= 1;
                byte* other = buffers[next];
                if (region < count)
                    pending = Task.Run(() => Fill(other));
                long before = written;
                uint[] pieceCrcs = engine.Write(file, batch.Segments, sourceIsHost: true,
                    progress is null ? null : (done, _) => progress(before + done, total));
                for (int i = 0; i < batch.Segments.Length; i++)
                {
                    int r = (int)batch.Segments[i].Region;
                    crcs[r] = batch.Offsets[i] == 0 ? pieceCrcs[i] : Crc32CCombine(crcs[r], pieceCrcs[i], batch.Segments[i].Length);
                }
                written += batch.Bytes;
                if (pending is null)
                    break;
            }
            progress?.Invoke(total, total);
            return crcs;
        }
        finally
        {
            // A fill still running writes into a buffer: wait for it before the buffers go.
            try
            {
                pending?.Wait();
            }
            catch (AggregateException)
            {
                // The write already failed; the first error is the one reported.
            }
            NativeMemory.AlignedFree(buffers[0]);
            NativeMemory.AlignedFree(buffers[1]);
        }
    }
}
