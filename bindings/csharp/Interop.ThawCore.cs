// The C# surface of bindings/thaw_core.h: one declaration per C entry point,
// structs laid out exactly as the header's.
using System.Runtime.InteropServices;

namespace Thaw.Interop.Native;

internal static partial class Interop
{
    internal static partial class ThawCore
    {
        private const string Library = "thawcore";

        internal const int AbiVersion = 1;

        internal const int ErrCuda = -10001;
        internal const int ErrNoDevice = -10002;
        internal const int ErrShortRead = -10003;
        internal const int ErrChecksum = -10004;
        internal const int ErrOutOfDeviceMemory = -10005;
        internal const int ErrOutOfPinnedMemory = -10006;
        internal const int ErrBadDestination = -10007;
        internal const int ErrCanceled = -10008;
        internal const int ErrInvalidPlan = -10009;

        [StructLayout(LayoutKind.Sequential)]
        internal struct EngineOptions
        {
            public uint StructSize;
            public int DeviceKind;
            public int DeviceOrdinal;
            public uint IoThreads;
            public ulong ChunkBytes;
            public ulong StagingBytes;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct Extent
        {
            public ulong FileOffset;
            public ulong Length;
            public uint FirstSegment;
            public uint SegmentCount;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct Segment
        {
            public ulong FileOffset;
            public ulong Length;
            public ulong DeviceAddress;
            public uint Region;
            public uint RegionOffset;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct RestoreOptions
        {
            public uint StructSize;
            public int IoMode;
            public uint* RegionCrc32C;
            public ulong* RegionLength;
            public uint RegionCount;
            public uint Reserved;
            public int* Cancel;
            public delegate* unmanaged<nint, ulong, ulong, void> Progress;
            public nint ProgressUser;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct RestoreStats
        {
            public ulong BytesRead;
            public ulong BytesCopied;
            public double Seconds;
            public int IoModeUsed;
            public uint Threads;
            public uint FailedRegion;
            public uint FallbackChunks;
        }

        [LibraryImport(Library, EntryPoint = "thawcore_last_error")]
        internal static partial nint LastError();

        [LibraryImport(Library, EntryPoint = "thawcore_abi_version")]
        internal static partial int GetAbiVersion();

        [LibraryImport(Library, EntryPoint = "thawcore_crc32c")]
        internal static unsafe partial uint Crc32C(uint crc, byte* data, nuint length);

        [LibraryImport(Library, EntryPoint = "thawcore_crc32c_combine")]
        internal static partial uint Crc32CCombine(uint crcA, uint crcB, ulong lengthB);

        [LibraryImport(Library, EntryPoint = "thawcore_device_count")]
        internal static partial int DeviceCount(int deviceKind);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_create")]
        internal static unsafe partial int EngineCreate(EngineOptions* options, out nint engine);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_destroy")]
        internal static partial void EngineDestroy(nint engine);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_restore", StringMarshalling = StringMarshalling.Utf8)]
        internal static unsafe partial int EngineRestore(EngineHandle engine, string path,
            Extent* extents, uint extentCount, Segment* segments, uint segmentCount,
            RestoreOptions* options, RestoreStats* stats);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_write")]
        internal static unsafe partial int EngineWrite(EngineHandle engine, int fd,
            Segment* segments, uint segmentCount, int sourceIsHost, uint* crc32COut,
            delegate* unmanaged<nint, ulong, ulong, void> progress, nint progressUser);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_check_destination")]
        internal static partial int EngineCheckDestination(EngineHandle engine, ulong address, ulong length, out ulong allocation);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_device_alloc")]
        internal static partial int EngineDeviceAlloc(EngineHandle engine, ulong length, out ulong address);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_device_free")]
        internal static partial int EngineDeviceFree(EngineHandle engine, ulong address);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_copy_to_host")]
        internal static unsafe partial int EngineCopyToHost(EngineHandle engine, void* host, ulong address, ulong length);

        [StructLayout(LayoutKind.Sequential)]
        internal struct Copy
        {
            public ulong HostAddress;
            public ulong DeviceAddress;
            public ulong Length;
        }

        [LibraryImport(Library, EntryPoint = "thawcore_engine_pin_host")]
        internal static unsafe partial int EnginePinHost(EngineHandle engine, void* host, ulong length);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_unpin_host")]
        internal static unsafe partial int EngineUnpinHost(EngineHandle engine, void* host);

        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct IpcPeer
        {
            public uint StructSize;
            public uint Uid;
            public byte* MockDirectory;
        }

        [LibraryImport(Library, EntryPoint = "thawcore_engine_ipc_open")]
        internal static unsafe partial int EngineIpcOpen(EngineHandle engine, byte* handle, uint handleLength, IpcPeer* peer,
            out ulong address, out ulong length);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_ipc_close")]
        internal static partial int EngineIpcClose(EngineHandle engine, ulong address);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_ipc_handle")]
        internal static unsafe partial int EngineIpcHandle(EngineHandle engine, ulong address, byte* handle, uint capacity);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_copy_host_to_device")]
        internal static unsafe partial int EngineCopyHostToDevice(EngineHandle engine, Copy* copies, uint count);

        internal const int MockDevices = 8;

        [LibraryImport(Library, EntryPoint = "thawcore_device_identity")]
        internal static unsafe partial int DeviceIdentity(int deviceKind, int ordinal, byte* identity, uint capacity);

        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct PeerAllocation
        {
            public byte* Handle;
            public uint HandleLength;
            public uint FirstCopy;
            public uint CopyCount;
            public uint Reserved;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct PeerCopy
        {
            public ulong HostAddress;
            public ulong Offset;
            public ulong Capacity;
            public ulong Length;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct PeerCopyStats
        {
            public double OpenSeconds;
            public double WaitSeconds;
            public double CopySeconds;
            public double CloseSeconds;
            public double Seconds;
            public uint Lanes;
            public uint FailedAllocation;
            public uint FailedCopy;
            public uint OpenOrder;
        }

        [LibraryImport(Library, EntryPoint = "thawcore_engine_peer_copy")]
        internal static unsafe partial int EnginePeerCopy(EngineHandle engine, IpcPeer* peer, PeerAllocation* allocations, uint allocationCount,
            PeerCopy* copies, uint copyCount, PeerCopyStats* stats);

        [StructLayout(LayoutKind.Sequential)]
        internal struct DeviceCopy
        {
            public ulong SourceAddress;
            public ulong DestinationAddress;
            public ulong Length;
        }

        [LibraryImport(Library, EntryPoint = "thawcore_engine_copy_device_to_device")]
        internal static unsafe partial int EngineCopyDeviceToDevice(EngineHandle engine, DeviceCopy* copies, uint count);

        internal const int ShareMaxChunks = 240;

        [LibraryImport(Library, EntryPoint = "thawcore_share_create")]
        internal static unsafe partial int ShareCreate(EngineHandle engine, ulong length, out nint share);

        [LibraryImport(Library, EntryPoint = "thawcore_share_address")]
        internal static partial nint ShareAddress(nint share);

        [LibraryImport(Library, EntryPoint = "thawcore_share_chunks")]
        internal static partial uint ShareChunks(nint share);

        [LibraryImport(Library, EntryPoint = "thawcore_share_back")]
        internal static partial int ShareBack(nint share, ulong offset, ulong length);

        [LibraryImport(Library, EntryPoint = "thawcore_share_export")]
        internal static unsafe partial int ShareExport(nint share, int* fds, ulong* lengths, uint capacity);

        [LibraryImport(Library, EntryPoint = "thawcore_share_destroy")]
        internal static partial void ShareDestroy(nint share);

        [StructLayout(LayoutKind.Sequential)]
        internal struct ShareCopyStats
        {
            public double MapSeconds;
            public double GrantSeconds;
            public double WaitSeconds;
            public double CopySeconds;
            public double Seconds;
            public uint Chunks;
            public uint Lanes;
        }

        [LibraryImport(Library, EntryPoint = "thawcore_engine_copy_from_share")]
        internal static unsafe partial int EngineCopyFromShare(EngineHandle engine, int* fds, ulong* lengths, uint chunks,
            Copy* copies, uint count, ShareCopyStats* stats);

        [LibraryImport(Library, EntryPoint = "thawcore_send_with_fds")]
        internal static unsafe partial int SendWithFds(int socket, byte* data, ulong length, int* fds, uint count, int timeoutMs);

        [LibraryImport(Library, EntryPoint = "thawcore_receive_line_with_fds")]
        internal static unsafe partial int ReceiveLineWithFds(int socket, byte* buffer, ulong capacity, out ulong length,
            int* fds, uint fdCapacity, out uint fdCount, int timeoutMs);

        internal const int FaultNone = 0, FaultReadEio = 1, FaultShortRead = 2, FaultCopy = 3, FaultEvent = 4,
            FaultPinnedAlloc = 5, FaultWriteEnospc = 6, FaultWriteEio = 7, FaultRegister = 8, FaultBorrowSetup = 9,
            FaultBorrowCopy = 10;

        internal const int MaxHelpers = 15;         // THAWCORE_MAX_HELPERS
        internal const int MaxHelperLanes = 8;      // THAWCORE_MAX_HELPER_LANES
        internal const int LinkDirect = 0, LinkBorrowed = 1;

        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct BorrowOptions
        {
            public uint StructSize;
            public uint HelperCount;
            public int* HelperOrdinals;
            public double* LinkWeights;
            public uint LanesPerHelper;
            public uint Reserved;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct LinkStats
        {
            public int Ordinal;
            public int Role;
            public int Status;
            public uint Lanes;
            public ulong PlannedBytes;
            public ulong Bytes;
            public ulong TakenOverBytes;
            public fixed byte Note[256];
        }

        [LibraryImport(Library, EntryPoint = "thawcore_engine_restore_borrowed", StringMarshalling = StringMarshalling.Utf8)]
        internal static unsafe partial int EngineRestoreBorrowed(EngineHandle engine, string path,
            Extent* extents, uint extentCount, Segment* segments, uint segmentCount,
            RestoreOptions* options, BorrowOptions* borrow, RestoreStats* stats, LinkStats* links, uint linkCapacity);

        [LibraryImport(Library, EntryPoint = "thawcore_fault_inject")]
        internal static partial int FaultInject(int kind, long after);

        [LibraryImport(Library, EntryPoint = "thawcore_sync_directory", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int SyncDirectory(string path);

        [StructLayout(LayoutKind.Sequential)]
        internal struct FileIdentity
        {
            public ulong Device;
            public ulong Inode;
            public long Size;
            public long ModifiedNs;
            public long ChangedNs;
        }

        [LibraryImport(Library, EntryPoint = "thawcore_file_identity_of", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int FileIdentityOf(string path, out FileIdentity identity);

        [LibraryImport(Library, EntryPoint = "thawcore_engine_device_memory")]
        internal static partial int EngineDeviceMemory(EngineHandle engine, out ulong freeBytes, out ulong totalBytes);

        [LibraryImport(Library, EntryPoint = "thawcore_spawn_detached", StringMarshalling = StringMarshalling.Utf8)]
        internal static unsafe partial int SpawnDetached(byte** argv, byte** withheld, string logPath, out int pid);

        [LibraryImport(Library, EntryPoint = "thawcore_private_directory", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int PrivateDirectory(string path, int create);

        [LibraryImport(Library, EntryPoint = "thawcore_path_identity", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int PathIdentity(string path, out ulong device, out ulong inode, out ulong changedNanoseconds);

        [LibraryImport(Library, EntryPoint = "thawcore_unix_listen", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int UnixListen(string path, int backlog, out int fd);

        [LibraryImport(Library, EntryPoint = "thawcore_module_path")]
        internal static unsafe partial int ModulePath(byte* buffer, nuint capacity);
    }
}
