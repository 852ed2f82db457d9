using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Freeze;
using Thaw.Interop.Pool;
using Thaw.Interop.Restore;
using Thaw.Interop.Safetensors;

namespace Thaw.PyBridge;

/// <summary>The C ABI that the Python shim calls through ctypes (python/thaw_vllm/_native.py).
/// Every export returns 0 on success or the negative <see cref="ThawErrorKind"/> of the
/// failure, whose message thaw_last_error returns; no exception crosses into the caller.</summary>
public static unsafe partial class Exports
{
    [ThreadStatic] private static byte[]? t_lastError;

    [StructLayout(LayoutKind.Sequential)]
    public struct EngineRequest
    {
        public int DeviceKind;
        public int DeviceOrdinal;
        public int IoThreads;
        public int IoMode;
        public long ChunkBytes;
        public long StagingBytes;
        public int Verify;
        public int PoolFlags;       // thaw_pool_restore: PoolNoFill; 0 elsewhere
    }

    /// <summary>Bits of <see cref="EngineRequest.PoolFlags"/>.</summary>
    public const int PoolNoFill = 1; // on a miss, do not have the pool read the snapshot while serving
    public const int PoolNoShare = 2; // on a hit, have the pool copy rather than map its shared host copy here

    [StructLayout(LayoutKind.Sequential)]
    public struct TensorArray
    {
        public int Count;
        public int Reserved;
        public byte** Names;
        public byte** DTypes;       // may be null: no dtype check
        public int* Ndims;          // may be null: no shape check
        public long* Shapes;        // concatenated dimensions
        public ulong* Addresses;
        public long* Capacities;    // restore only
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct RestoreStatsOut
    {
        public long Bytes;
        public long BytesRead;
        public double Seconds;
        public int IoMode;
        public int Threads;
        public int Source;          // RestoreSource: which path served the bytes
        public int Reserved;
        // Through a pool (PoolRestoreTimings), else 0: the client's own time, then the pool's.
        public double ResolveSeconds;
        public double RequestSeconds;
        public double PoolSeconds;
        public double OpenSeconds;
        public double WaitSeconds;
        public double CopySeconds;
        public double CloseSeconds;
        public int OpenOrder;       // the pool's order of opens (PeerCopyTimings.OpenOrders' index), -1: unknown
        public int Allocations;     // distinct allocations (IPC handles) the pool opened
    }

    /// <summary>Which path served a restore's bytes (the loader's log line names it).</summary>
    public enum RestoreSource
    {
        PageCache = 1,
        Disk = 2,
        PoolHit = 3,
        PoolFill = 4,
        Peer = 5,
        PoolShare = 6,
    }

    /// <summary>The open order a restore from the pool's shared host copy reports: no handle opened.</summary>
    private const int SharedOpenOrder = 2;

    [UnmanagedCallersOnly(EntryPoint = "thaw_abi_version")]
    public static int AbiVersion() => 1;

    /// <summary>Copies the calling thread's last error (UTF-8, NUL-terminated, truncated to fit); returns its full length.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_last_error")]
    public static int LastError(byte* buffer, long capacity)
    {
        byte[] message = t_lastError ?? [];
        if (buffer != null && capacity > 0)
        {
            int n = (int)Math.Min(message.Length, capacity - 1);
            message.AsSpan(0, n).CopyTo(new Span<byte>(buffer, n));
            buffer[n] = 0;
        }
        return message.Length;
    }

    [UnmanagedCallersOnly(EntryPoint = "thaw_free")]
    public static void Free(void* pointer) => NativeMemory.Free(pointer);

    [UnmanagedCallersOnly(EntryPoint = "thaw_device_count")]
    public static int DeviceCount(int kind) => Guard(() => ThawEngine.DeviceCount((DeviceKind)kind));

    /// <summary>Describes a snapshot as JSON in memory the caller releases with thaw_free.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_snapshot_info")]
    public static int SnapshotInfo(byte* path, byte** jsonOut) => Guard(() =>
    {
        *jsonOut = ToNative(SnapshotJson.Describe(SnapshotReader.Read(Text(path, "path"))));
        return 0;
    });

    /// <summary>Describes a safetensors file in the same JSON shape as a snapshot (offsets from the file start).</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_safetensors_info")]
    public static int SafetensorsInfo(byte* path, byte** jsonOut) => Guard(() =>
    {
        *jsonOut = ToNative(SnapshotJson.Describe(Snapshot.FromSafetensors(SafetensorsFile.Read(Text(path, "path")))));
        return 0;
    });

    [UnmanagedCallersOnly(EntryPoint = "thaw_restore")]
    public static int Restore(byte* path, EngineRequest* request, TensorArray* tensors, RestoreStatsOut* stats) =>
        Guard(() => RestoreFrom(SnapshotReader.Read(Text(path, "path")), request, tensors, stats));

    /// <summary>Streams tensors of a plain safetensors file into caller memory through the same engine.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_restore_safetensors")]
    public static int RestoreSafetensors(byte* path, EngineRequest* request, TensorArray* tensors, RestoreStatsOut* stats) =>
        Guard(() => RestoreFrom(Snapshot.FromSafetensors(SafetensorsFile.Read(Text(path, "path"))), request, tensors, stats));

    /// <summary>Checks a destination against a snapshot and restores into it, from one parse of the
    /// header: <paramref name="requirementsJson"/> (may be null) holds
    /// <c>{"strict", "metadata", "missing_hint"}</c> (<see cref="DestinationRequirements"/>); alias
    /// names resolve to their region. With a null <paramref name="request"/> only the checks run
    /// (for a restore another process carries out, the pool). When <paramref name="infoOut"/> is
    /// not null it receives the snapshot's description (thaw_snapshot_info's JSON), to release with thaw_free.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_restore_checked")]
    public static int RestoreChecked(byte* path, EngineRequest* request, TensorArray* tensors, byte* requirementsJson,
        RestoreStatsOut* stats, byte** infoOut) => Guard(() =>
    {
        RestoreCheckedWith(path, request, tensors, requirementsJson, stats, infoOut, null);
        return 0;
    });

    /// <summary>thaw_restore_checked's body; with <paramref name="borrow"/> the restore may borrow links
    /// (BorrowExports.cs). Returns the restore's result, or null when only the checks ran.</summary>
    private static RestoreResult? RestoreCheckedWith(byte* path, EngineRequest* request, TensorArray* tensors, byte* requirementsJson,
        RestoreStatsOut* stats, byte** infoOut, BorrowedLinks? borrow)
    {
        Snapshot snapshot = SnapshotReader.Read(Text(path, "path"));
        var requirements = requirementsJson == null ? new DestinationRequirements()
            : DestinationRequirements.Parse(Text(requirementsJson, "requirements"));
        List<RestoreTarget> targets = DestinationCheck.Resolve(snapshot, Targets(tensors), requirements);
        RestoreResult? result = null;
        if (request == null)
            RestorePlan.Create(snapshot, targets);
        else
            result = RestoreTargets(snapshot, request, targets, stats, borrow);
        if (infoOut != null)
            *infoOut = ToNative(SnapshotJson.Describe(snapshot));
        return result;
    }

    private static int RestoreFrom(Snapshot snapshot, EngineRequest* request, TensorArray* tensors, RestoreStatsOut* stats)
    {
        RestoreTargets(snapshot, request, Targets(tensors), stats);
        return 0;
    }

    /// <summary>Restores tensors of a snapshot through a pool into caller memory: the caller hands
    /// over device pointers only; the IPC handles come from the core. A snapshot the pool does not
    /// hold is filled while it is served, unless <see cref="PoolNoFill"/> is set in the request. Fails with
    /// -<see cref="ThawErrorKind.PoolUnavailable"/> when the caller should restore from the file.</summary>
    /// <param name="socket">The pool's socket; null: <see cref="ClientSocket.Default"/>.</param>
    [UnmanagedCallersOnly(EntryPoint = "thaw_pool_restore")]
    public static int PoolRestore(byte* socket, byte* path, EngineRequest* request, TensorArray* tensors, RestoreStatsOut* stats) => Guard(() =>
    {
        Snapshot snapshot = SnapshotReader.Read(Text(path, "path"));
        List<RestoreTarget> targets = Targets(tensors);
        ThawEngine engine = Engines.Get(*request);
        string socketPath = socket == null ? ClientSocket.Default() : Text(socket, "socket");
        PoolRestoreResult r;
        using (PoolClient client = PoolClient.Connect(socketPath))
            r = client.Restore(engine, snapshot, targets, fill: (request->PoolFlags & PoolNoFill) == 0,
                share: (request->PoolFlags & PoolNoShare) == 0);
        if (stats != null)
            *stats = new RestoreStatsOut
            {
                Bytes = r.Bytes, Seconds = r.Seconds, IoMode = (int)IoMode.Buffered,
                Source = (int)(r.FromPeer ? RestoreSource.Peer : r.Shared ? RestoreSource.PoolShare : r.Filled ? RestoreSource.PoolFill : RestoreSource.PoolHit),
                ResolveSeconds = r.Timings.ResolveSeconds, RequestSeconds = r.Timings.RequestSeconds,
                PoolSeconds = r.Timings.PoolSeconds, OpenSeconds = r.Timings.OpenSeconds, WaitSeconds = r.Timings.WaitSeconds,
                CopySeconds = r.Timings.CopySeconds, CloseSeconds = r.Timings.CloseSeconds, OpenOrder = r.Shared ? SharedOpenOrder : PeerCopyTimings.OpenOrders.ToList().IndexOf(r.Timings.Opens), Allocations = r.Timings.Allocations,
            };
        return 0;
    });

    private static List<RestoreTarget> Targets(TensorArray* tensors)
    {
        var targets = new List<RestoreTarget>(tensors->Count);
        long* shape = tensors->Shapes;
        for (int i = 0; i < tensors->Count; i++)
        {
            string name = Text(tensors->Names[i], "tensor name");
            DType? dtype = tensors->DTypes == null ? null : ParseDType(Text(tensors->DTypes[i], "dtype"));
            long[]? dims = null;
            if (tensors->Ndims != null)
            {
                dims = new ReadOnlySpan<long>(shape, tensors->Ndims[i]).ToArray();
                shape += tensors->Ndims[i];
            }
            targets.Add(new RestoreTarget(name, tensors->Addresses[i], tensors->Capacities[i], dtype, dims));
        }
        return targets;
    }

    private static RestoreResult RestoreTargets(Snapshot snapshot, EngineRequest* request, List<RestoreTarget> targets, RestoreStatsOut* stats,
        BorrowedLinks? borrow = null)
    {
        ThawEngine engine = Engines.Get(*request);
        RestoreResult r = engine.RestoreInto(snapshot, targets, new RestoreOptions
        {
            IoMode = (IoMode)request->IoMode,
            Verify = request->Verify < 0 ? null : request->Verify != 0,
            Borrow = borrow,
        });
        if (stats != null)
            *stats = new RestoreStatsOut
            {
                Bytes = r.Bytes, BytesRead = r.BytesRead, Seconds = r.Seconds, IoMode = (int)r.IoModeUsed, Threads = r.Threads,
                Source = (int)(r.IoModeUsed == IoMode.Direct ? RestoreSource.Disk : RestoreSource.PageCache),
            };
        return r;
    }

    [UnmanagedCallersOnly(EntryPoint = "thaw_freeze")]
    public static int Freeze(byte* path, EngineRequest* request, TensorArray* tensors, byte* metadataJson, int tpRank, int tpWorldSize) => Guard(() =>
    {
        var sources = new List<TensorSource>(tensors->Count);
        long* shape = tensors->Shapes;
        for (int i = 0; i < tensors->Count; i++)
        {
            long[] dims = new ReadOnlySpan<long>(shape, tensors->Ndims[i]).ToArray();
            shape += tensors->Ndims[i];
            sources.Add(new TensorSource(Text(tensors->Names[i], "tensor name"), ParseDType(Text(tensors->DTypes[i], "dtype")), dims, tensors->Addresses[i]));
        }
        var metadata = metadataJson == null ? null : SnapshotJson.ParseMetadata(Text(metadataJson, "metadata"));
        ThawEngine engine = Engines.Get(*request);
        SnapshotWriter.Write(engine, Text(path, "path"), sources, metadata, tpRank, tpWorldSize);
        return 0;
    });

    /// <summary>The pool socket clients use when none is named (<see cref="ClientSocket.Default"/>: THAW_POOL_SOCKET,
    /// else the automatic pool's when its socket exists, else the per-user default); starts nothing.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_pool_default_socket")]
    public static int PoolDefaultSocket(byte** pathOut) => Guard(() =>
    {
        *pathOut = ToNative(ClientSocket.Default());
        return 0;
    });

    /// <summary>Decides whether a restore goes through a pool (<see cref="PoolChoice.Decide(PoolChoice?, DeviceKind)"/>)
    /// and finds it: <paramref name="mode"/> is what the caller said (-1 nothing: $THAW_POOL, then the
    /// destination decides; 0 off; 1 auto; 2 the pool on <paramref name="socket"/>, null: the default one).
    /// *socketOut receives the socket to pass to thaw_pool_restore (release with thaw_free), or null for
    /// no pool. An automatic pool that cannot be used fails with -<see cref="ThawErrorKind.PoolUnavailable"/>
    /// and says why: restore from the file.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_pool_select")]
    public static int PoolSelect(int mode, byte* socket, int deviceKind, int deviceOrdinal, byte** socketOut) => Guard(() =>
    {
        PoolChoice? said = mode switch
        {
            -1 => null,
            0 => PoolChoice.Off,
            1 => PoolChoice.Auto,
            2 => new PoolChoice(PoolMode.Socket, socket == null ? null : Text(socket, "socket")),
            _ => throw new ArgumentException($"pool mode must be -1 (unspecified), 0 (off), 1 (auto) or 2 (socket), not {mode}"),
        };
        var kind = (DeviceKind)deviceKind;
        AutoPoolResult found = PoolChoice.Decide(said, kind).Locate(kind, deviceOrdinal);
        if (found.Error is not null)
            throw new PoolUnavailableException(found.Error);
        *socketOut = found.Socket is null ? null : ToNative(found.Socket);
        return 0;
    });

    /// <summary>Asks a pool to load, evict or describe (op "status") snapshots; the answer's JSON
    /// (docs/POOL.md) in memory the caller releases with thaw_free.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_pool_call")]
    public static int PoolCall(byte* socket, byte* op, byte* snapshot, byte** jsonOut) => Guard(() =>
    {
        string verb = Text(op, "op");
        if (verb is not ("load" or "evict" or "status"))
            throw new ArgumentException($"unknown pool operation '{verb}' (load, evict, status)");
        string socketPath = socket == null ? ClientSocket.Default() : Text(socket, "socket");
        string? path = snapshot == null ? null : Path.GetFullPath(Text(snapshot, "snapshot"));
        using PoolClient client = PoolClient.Connect(socketPath);
        using JsonDocument response = client.Send(PoolProtocol.Write(w =>
        {
            w.WriteString("op", verb);
            if (path is not null)
                w.WriteString("snapshot", path);
        }));
        *jsonOut = ToNative(response.RootElement.GetRawText());
        return 0;
    });

    [UnmanagedCallersOnly(EntryPoint = "thaw_convert")]
    public static int Convert(byte* checkpoint, byte* output) => Guard(() =>
    {
        CheckpointConverter.Convert(Text(checkpoint, "checkpoint"), Text(output, "output"), Engines.Get(default));
        return 0;
    });

    [UnmanagedCallersOnly(EntryPoint = "thaw_verify")]
    public static int Verify(byte* path) => Guard(() =>
    {
        Snapshot snapshot = SnapshotReader.Read(Text(path, "path"));
        Engines.Get(default).Verify(snapshot);
        Thaw.Interop.Kv.KvSnapshot.VerifyIfKv(snapshot);
        return 0;
    });

    /// <summary>Extends crc (0 to start) with the CRC32C of length bytes of host memory at data: the
    /// checksum the snapshot records for each region, so other paths (multicast) can check the same.</summary>
    [UnmanagedCallersOnly(EntryPoint = "thaw_crc32c")]
    public static int Crc32C(byte* data, long length, uint crc, uint* crcOut) => Guard(() =>
    {
        if (length < 0 || (data == null && length > 0) || crcOut == null)
            throw new ArgumentException($"thaw_crc32c: invalid buffer (length {length})");
        const int Piece = 1 << 30;
        for (long done = 0; done < length; done += Piece)
            crc = Thaw.Interop.Native.Crc32C.Append(crc, new ReadOnlySpan<byte>(data + done, (int)Math.Min(Piece, length - done)));
        *crcOut = crc;
        return 0;
    });

    private static DType ParseDType(string name) =>
        DTypes.TryParse(name, out DType dtype) ? dtype : throw new ArgumentException($"unknown dtype '{name}'");

    private static string Text(byte* utf8, string what) =>
        utf8 == null ? throw new ArgumentException($"{what} is null") : Marshal.PtrToStringUTF8((nint)utf8)!;

    private static byte* ToNative(string text)
    {
        int n = Encoding.UTF8.GetByteCount(text);
        byte* p = (byte*)NativeMemory.Alloc((nuint)n + 1);
        Encoding.UTF8.GetBytes(text, new Span<byte>(p, n));
        p[n] = 0;
        return p;
    }

    /// <summary>Runs an export's body; turns every exception into a return code and a message.</summary>
    private static int Guard(Func<int> body)
    {
        t_lastError = null;
        try
        {
            return body();
        }
        catch (Exception e)
        {
            ThawErrorKind kind = e switch
            {
                ThawException t => t.Kind,
                FileNotFoundException or DirectoryNotFoundException => ThawErrorKind.NotFound,
                OperationCanceledException => ThawErrorKind.Canceled,
                ArgumentException => ThawErrorKind.InvalidArgument,
                OutOfMemoryException => ThawErrorKind.OutOfHostMemory,
                IOException or UnauthorizedAccessException => ThawErrorKind.Io,
                _ => ThawErrorKind.Unknown,
            };
            string message = kind == ThawErrorKind.Unknown ? $"{e.GetType().Name}: {e.Message}" : e.Message;
            t_lastError = Encoding.UTF8.GetBytes(message);
            return -(int)kind;
        }
    }
}
