using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Thaw.Interop.Format;
using Thaw.Interop.Native;
using static Thaw.Interop.Native.Interop.ThawCore;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Restore;

/// <summary>A device with its pinned staging memory, allocated once and reused by
/// every restore and write. Thread-safe: operations on one engine run one at a time.</summary>
public sealed partial class ThawEngine : IDisposable
{
    private readonly EngineHandle _handle;

    /// <summary>The core's chunk size when <see cref="EngineSettings.ChunkBytes"/> is 0 (thaw_core.h).</summary>
    private const long DefaultChunkBytes = 1L << 20;
    /// <summary>Pieces of a streamed write when no chunk size is set: writes gain nothing from the
    /// small chunks that keep a restore's staging in the CPU's caches, so they keep the 8 MiB
    /// pieces they were measured with (docs/BENCHMARKS.md, convert).</summary>
    private const long DefaultWritePieceBytes = 8L << 20;
    private readonly long _chunkSetting;

    private ThawEngine(EngineHandle handle, DeviceKind kind, int ordinal, long chunkBytes)
    {
        _handle = handle;
        Kind = kind;
        Ordinal = ordinal;
        ChunkBytes = chunkBytes > 0 ? chunkBytes : DefaultChunkBytes;
        _chunkSetting = chunkBytes;
    }

    /// <summary>The device this engine restores into.</summary>
    public DeviceKind Kind { get; }
    /// <summary>The GPU index (0 on the mock device).</summary>
    public int Ordinal { get; }
    /// <summary>The size of the pieces the engine moves at a time.</summary>
    public long ChunkBytes { get; }
    /// <summary>The pieces a streamed write (convert, freeze from host) cuts regions into.</summary>
    internal long WritePieceBytes => _chunkSetting > 0 ? _chunkSetting : DefaultWritePieceBytes;

    /// <exception cref="ThawDeviceException">No CUDA driver or no such device.</exception>
    public static unsafe ThawEngine Create(DeviceKind kind, int ordinal = 0, EngineSettings? settings = null)
    {
        settings ??= new EngineSettings();
        var options = new EngineOptions
        {
            StructSize = (uint)sizeof(EngineOptions),
            DeviceKind = (int)kind,
            DeviceOrdinal = ordinal,
            IoThreads = (uint)Math.Max(0, settings.IoThreads),
            ChunkBytes = (ulong)Math.Max(0, settings.ChunkBytes),
            StagingBytes = (ulong)Math.Max(0, settings.StagingBytes),
        };
        return new ThawEngine(EngineHandle.Create(options), kind, ordinal, settings.ChunkBytes);
    }

    /// <summary>Devices of a kind on this machine (0 when there is no driver).</summary>
    public static int DeviceCount(DeviceKind kind)
    {
        int count = Core.DeviceCount((int)kind);
        return Math.Max(count, 0);
    }

    /// <summary>Runs a plan: reads the snapshot and copies every segment to its address.</summary>
    /// <exception cref="ThawChecksumException">Verifying (<see cref="RestoreOptions.Verify"/>), a region is corrupt.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    public unsafe RestoreResult Restore(RestorePlan plan, RestoreOptions? options = null)
    {
        options ??= new RestoreOptions();
        if (options.Verify == true && !plan.Snapshot.HasChecksums)
            throw new ArgumentException($"{plan.Snapshot.Path} records no checksums to verify (a safetensors file)");
        bool verify = options.Verify ?? plan.Snapshot.HasChecksums;
        if (verify)
            plan = plan.Unmerged();
        Snapshot snapshot = plan.Snapshot;
        options.CancellationToken.ThrowIfCancellationRequested();
        int regionCount = snapshot.Tensors.Count;
        uint[] crcs = verify ? snapshot.Tensors.Select(t => t.Crc32C).ToArray() : [];
        ulong[] lengths = verify ? snapshot.Tensors.Select(t => (ulong)t.Length).ToArray() : [];
        int* cancel = (int*)NativeMemory.AllocZeroed(sizeof(int));
        GCHandle progress = options.Progress is null ? default : GCHandle.Alloc(options.Progress);
        try
        {
            using CancellationTokenRegistration registration = options.CancellationToken.Register(() => Volatile.Write(ref *cancel, 1));
            fixed (Extent* extents = plan.Extents)
            fixed (Segment* segments = plan.Segments)
            fixed (uint* crcPointer = crcs)
            fixed (ulong* lengthPointer = lengths)
            {
                var native = new Core.RestoreOptions
                {
                    StructSize = (uint)sizeof(Core.RestoreOptions),
                    IoMode = (int)options.IoMode,
                    RegionCrc32C = verify ? crcPointer : null,
                    RegionLength = verify ? lengthPointer : null,
                    RegionCount = (uint)regionCount,
                    Cancel = cancel,
                    Progress = options.Progress is null ? null : &OnProgress,
                    ProgressUser = options.Progress is null ? 0 : GCHandle.ToIntPtr(progress),
                };
                RestoreStats stats = new() { FailedRegion = uint.MaxValue }; // an early refusal names no region
                int rc = RunRestore(snapshot.Path, extents, (uint)plan.Extents.Length, segments, (uint)plan.Segments.Length,
                    &native, &stats, options.Borrow, out IReadOnlyList<LinkShare> links, out string? linksNote);
                if (rc < 0)
                    throw NativeErrors.FromCode(rc, NamingTheTensor(snapshot, stats.FailedRegion, NativeErrors.LastMessage()));
                return new RestoreResult((long)stats.BytesCopied, (long)stats.BytesRead, stats.Seconds,
                    (IoMode)stats.IoModeUsed, (int)stats.Threads)
                { FallbackChunks = (int)stats.FallbackChunks, Verified = verify, Links = links, LinksNote = linksNote };
            }
        }
        finally
        {
            if (progress.IsAllocated)
                progress.Free();
            NativeMemory.Free(cancel);
        }
    }

    // The core knows regions by index; users know tensors by name.
    private static string NamingTheTensor(Snapshot snapshot, uint region, string message) =>
        region < (uint)snapshot.Tensors.Count ? $"tensor '{snapshot.Tensors[(int)region].Name}': {message}" : message;

    /// <summary>Restores named tensors into caller-owned device memory, after checking
    /// that each destination lies inside one allocation of this engine's device.</summary>
    /// <exception cref="ThawMismatchException">A tensor the snapshot lacks, or a destination of the wrong size, dtype, shape or device.</exception>
    public RestoreResult RestoreInto(Snapshot snapshot, IReadOnlyList<RestoreTarget> targets, RestoreOptions? options = null)
    {
        options ??= new RestoreOptions();
        // Copies merge only inside one allocation: two allocations can sit side by side in
        // the address space, and one device copy must not span them.
        var allocations = new ulong[targets.Count];
        for (int i = 0; i < targets.Count; i++)
        {
            if (targets[i].Capacity == 0)
                continue;
            try
            {
                allocations[i] = CheckDestination(targets[i].Address, targets[i].Capacity);
            }
            catch (ThawMismatchException e)
            {
                throw new ThawMismatchException($"tensor '{targets[i].Name}': {e.Message}");
            }
        }
        RestorePlan plan = RestorePlan.Create(snapshot, targets, mergeSegments: true, allocations);
        return Restore(plan, options);
    }

    /// <summary>Checks every region's checksum by streaming the whole file (no device copies).</summary>
    public RestoreResult Verify(Snapshot snapshot, Action<long, long>? progress = null, CancellationToken cancellationToken = default) =>
        Restore(RestorePlan.ReadOnly(snapshot), new RestoreOptions { Verify = true, Progress = progress, CancellationToken = cancellationToken });

    /// <summary>Writes regions from device (or host) memory into a file; returns each segment's CRC32C.</summary>
    internal unsafe uint[] Write(SafeFileHandle file, Segment[] segments, bool sourceIsHost, Action<long, long>? progress)
    {
        uint[] crcs = new uint[segments.Length];
        GCHandle progressHandle = progress is null ? default : GCHandle.Alloc(progress);
        bool added = false;
        try
        {
            file.DangerousAddRef(ref added);
            fixed (Segment* segmentPointer = segments)
            fixed (uint* crcPointer = crcs)
            {
                NativeErrors.Check(EngineWrite(_handle, (int)file.DangerousGetHandle(), segmentPointer, (uint)segments.Length,
                    sourceIsHost ? 1 : 0, crcPointer, progress is null ? null : &OnProgress,
                    progress is null ? 0 : GCHandle.ToIntPtr(progressHandle)));
            }
            return crcs;
        }
        finally
        {
            if (added)
                file.DangerousRelease();
            if (progressHandle.IsAllocated)
                progressHandle.Free();
        }
    }

    /// <summary>Checks that the range lies inside one allocation of this device; returns that allocation's start.</summary>
    /// <exception cref="ThawMismatchException">The range is not inside one allocation of this device.</exception>
    public ulong CheckDestination(ulong address, long length)
    {
        NativeErrors.Check(EngineCheckDestination(_handle, address, (ulong)length, out ulong allocation));
        return allocation;
    }

    /// <exception cref="ThawDeviceException">Out of device memory.</exception>
    public ulong Allocate(long length)
    {
        NativeErrors.Check(EngineDeviceAlloc(_handle, (ulong)length, out ulong address));
        return address;
    }

    /// <summary>Frees memory from <see cref="Allocate"/>.</summary>
    public void Free(ulong address) => NativeErrors.Check(EngineDeviceFree(_handle, address));

    /// <summary>Copies device memory at <paramref name="address"/> into <paramref name="destination"/>.</summary>
    public unsafe void CopyToHost(ulong address, Span<byte> destination)
    {
        fixed (byte* p = destination)
            NativeErrors.Check(EngineCopyToHost(_handle, p, address, (ulong)destination.Length));
    }

    /// <summary>Free and total bytes of the device's memory.</summary>
    public (long Free, long Total) DeviceMemory()
    {
        NativeErrors.Check(EngineDeviceMemory(_handle, out ulong free, out ulong total));
        return ((long)free, (long)total);
    }

    /// <summary>Pins host memory this process owns, for copies at the DMA engines' rate.</summary>
    public unsafe void PinHost(void* host, long length) => NativeErrors.Check(EnginePinHost(_handle, host, (ulong)length));

    /// <summary>Unpins memory pinned with <see cref="PinHost"/>.</summary>
    public unsafe void UnpinHost(void* host) => NativeErrors.Check(EngineUnpinHost(_handle, host));

    /// <summary>Opens a peer's allocation, confined to memory that peer owns: CUDA, its 64-byte
    /// IPC handle; mock, the name of a regular file of the peer's uid directly inside
    /// <paramref name="mockDirectory"/> (symbolic links refused). Returns its start and size.</summary>
    /// <exception cref="ThawMismatchException">The handle cannot be opened, or is not the peer's to give.</exception>
    public unsafe (ulong Address, long Length) IpcOpen(ReadOnlySpan<byte> handle, uint peerUid, string mockDirectory)
    {
        byte[] directory = System.Text.Encoding.UTF8.GetBytes(mockDirectory + "\0");
        fixed (byte* p = handle)
        fixed (byte* d = directory)
        {
            var peer = new IpcPeer { StructSize = (uint)sizeof(IpcPeer), Uid = peerUid, MockDirectory = d };
            NativeErrors.Check(EngineIpcOpen(_handle, p, (uint)handle.Length, &peer, out ulong address, out ulong length));
            return (address, checked((long)length));
        }
    }

    /// <summary>Closes a mapping from <see cref="IpcOpen"/>.</summary>
    public void IpcClose(ulong address) => NativeErrors.Check(EngineIpcClose(_handle, address));

    /// <summary>The CUDA IPC handle of an allocation of this process (CUDA engines only).</summary>
    public unsafe byte[] IpcHandle(ulong address)
    {
        byte[] handle = new byte[64];
        fixed (byte* p = handle)
            return handle[..NativeErrors.Check(EngineIpcHandle(_handle, address, p, (uint)handle.Length))];
    }

    internal unsafe void CopyHostToDevice(Copy[] copies)
    {
        fixed (Copy* p = copies)
            NativeErrors.Check(EngineCopyHostToDevice(_handle, p, (uint)copies.Length));
    }

    /// <summary>Device-to-device copies between opened allocations (the pool serving from a live peer).</summary>
    internal unsafe void CopyDeviceToDevice(DeviceCopy[] copies)
    {
        fixed (DeviceCopy* p = copies)
            NativeErrors.Check(EngineCopyDeviceToDevice(_handle, p, (uint)copies.Length));
    }

    /// <summary>Releases the engine's threads, streams and pinned staging memory.</summary>
    public void Dispose() => _handle.Dispose();

    [UnmanagedCallersOnly]
    private static void OnProgress(nint user, ulong done, ulong total)
    {
        try
        {
            if (GCHandle.FromIntPtr(user).Target is Action<long, long> callback)
                callback((long)done, (long)total);
        }
        catch
        {
            // A failing progress callback must not unwind through native frames.
        }
    }
}
