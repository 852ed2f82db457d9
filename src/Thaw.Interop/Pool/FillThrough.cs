using System.Runtime.ExceptionServices;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>Reads a snapshot into the pool's buffer once and, as each batch of whole regions
/// lands, copies it on to a client's device: a three-stage pipeline (pin batch i+2, read and
/// check batch i+1, copy batch i), so a fill runs at the slower of the disk and the link
/// instead of their sum, and pinning is paid a batch at a time ahead of need rather than for
/// the whole snapshot before the first byte moves.</summary>
internal static unsafe class FillThrough
{
    /// <summary>Bytes of whole regions a batch gathers (a region larger than this is a batch alone).</summary>
    public const long DefaultBatchBytes = 256L << 20;

    /// <summary>Batches pinned ahead of the one being read.</summary>
    private const int PinAhead = 2;

    /// <summary>Regions [First, First+Count) of the snapshot, occupying [Start, Start+Length) of the
    /// buffer (the batches tile the data section, so together they pin all of it).</summary>
    internal readonly record struct Batch(int First, int Count, long Start, long Length);

    /// <summary>Cuts the data section into batches of whole regions of about <paramref name="batchBytes"/>.</summary>
    public static List<Batch> Plan(Snapshot snapshot, long batchBytes)
    {
        var batches = new List<Batch>();
        IReadOnlyList<TensorEntry> regions = snapshot.Tensors;
        int first = 0;
        long start = 0;
        for (int i = 0; i < regions.Count; i++)
        {
            long end = i + 1 < regions.Count ? AlignDown(regions[i + 1].Offset) : snapshot.DataLength;
            if (end - start >= batchBytes || i + 1 == regions.Count)
            {
                if (end > start)
                    batches.Add(new Batch(first, i + 1 - first, start, end - start));
                first = i + 1;
                start = end;
            }
        }
        return batches;
    }

    /// <summary>Fills <paramref name="memory"/> (laid out as the file's data section) from the
    /// snapshot's file, checking every region's CRC32C, and hands each batch to
    /// <paramref name="copyBatch"/> (the copies of its regions to a client) once it is read.
    /// Each batch's range is backed (pinned, or shareable memory made) ahead of its read; on a
    /// failure the caller disposes the memory. Returns the bytes read from the file.</summary>
    /// <exception cref="ThawChecksumException">A region is corrupt (the copies of its batch are not run).</exception>
    public static long Run(Snapshot snapshot, PoolMemory memory, Action<Batch>? copyBatch, long batchBytes = DefaultBatchBytes)
    {
        byte* buffer = memory.Start;
        List<Batch> batches = Plan(snapshot, batchBytes);
        using var stop = new CancellationTokenSource();
        using var pinnedBatches = new SemaphoreSlim(0);
        using var pinRoom = new SemaphoreSlim(PinAhead);
        using var readBatches = new SemaphoreSlim(0);
        Exception? failure = null;
        void Fail(Exception e)
        {
            Interlocked.CompareExchange(ref failure, e, null); // the first failure is the cause; the rest are its echo
            stop.Cancel();
        }
        void Stage(Action body)
        {
            try
            {
                body();
            }
            catch (Exception e)
            {
                Fail(e);
            }
        }

        Task readAhead = ReadAhead.Start(snapshot.Path, snapshot.DataOffset, snapshot.DataLength, stop.Token);
        Task pinner = Task.Factory.StartNew(() => Stage(() =>
        {
            foreach (Batch b in batches)
            {
                pinRoom.Wait(stop.Token);
                memory.Back(b.Start, b.Length);
                pinnedBatches.Release();
            }
        }), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        Task copier = Task.Factory.StartNew(() => Stage(() =>
        {
            foreach (Batch batch in batches)
            {
                readBatches.Wait(stop.Token);
                copyBatch?.Invoke(batch);
            }
        }), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

        long bytesRead = 0;
        Stage(() =>
        {
            using ThawEngine reader = ThawEngine.Create(DeviceKind.Mock);
            var options = new RestoreOptions { Verify = true, CancellationToken = stop.Token };
            foreach (Batch b in batches)
            {
                pinnedBatches.Wait(stop.Token);
                var targets = new List<RestoreTarget>(b.Count);
                for (int r = b.First; r < b.First + b.Count; r++)
                {
                    TensorEntry t = snapshot.Tensors[r];
                    if (t.Length > 0)
                        targets.Add(new RestoreTarget(t.Name, (ulong)(buffer + t.Offset), t.Length));
                }
                bytesRead += reader.Restore(RestorePlan.Create(snapshot, targets), options).BytesRead;
                readBatches.Release();
                pinRoom.Release();
            }
        });
        Task.WaitAll(pinner, copier);
        stop.Cancel(); // the read is over: no more advice
        readAhead.Wait();
        if (failure is not null)
            ExceptionDispatchInfo.Throw(failure);
        return bytesRead;
    }

    private static long AlignDown(long offset) => offset / SnapshotFormat.Alignment * SnapshotFormat.Alignment;
}
