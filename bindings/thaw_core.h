/*
 * thaw_core.h — the one C ABI of libthawcore, the byte-moving core of Thaw.
 *
 * The core moves bytes; it knows nothing of the snapshot format. Callers (the C#
 * layer) hand it a plan: extents (aligned file ranges to read) and segments
 * (pieces of those ranges and the device address each piece lands at).
 *
 * Conventions
 *  - Every function that can fail returns an int: >= 0 on success, -errno for an
 *    operating-system failure, or one of THAWCORE_ERR_* (all below -10000).
 *  - After a failure, thawcore_last_error() returns a message for the calling
 *    thread, owned by the library, valid until that thread's next core call.
 *  - No inline functions: every entry point is callable through any FFI.
 */
#ifndef THAW_CORE_H
#define THAW_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define THAWCORE_ABI_VERSION 1

enum thawcore_error {
    THAWCORE_ERR_CUDA = -10001,                 /* a CUDA driver call failed */
    THAWCORE_ERR_NO_DEVICE = -10002,            /* no CUDA driver, or no such device */
    THAWCORE_ERR_SHORT_READ = -10003,           /* the file ended inside a region */
    THAWCORE_ERR_CHECKSUM = -10004,             /* a region's CRC32C disagrees */
    THAWCORE_ERR_OUT_OF_DEVICE_MEMORY = -10005,
    THAWCORE_ERR_OUT_OF_PINNED_MEMORY = -10006,
    THAWCORE_ERR_BAD_DESTINATION = -10007,      /* a range not inside one device allocation */
    THAWCORE_ERR_CANCELED = -10008,
    THAWCORE_ERR_INVALID_PLAN = -10009          /* extents/segments inconsistent or unaligned */
};

enum thawcore_device_kind {
    THAWCORE_DEVICE_MOCK = 0,   /* host memory stands in for device memory */
    THAWCORE_DEVICE_CUDA = 1    /* CUDA driver API, libcuda.so.1 opened at run time */
};

enum thawcore_io_mode {
    THAWCORE_IO_AUTO = 0,       /* buffered, unless the file is uncached and larger than half the
                                   available memory: then direct (docs/BENCHMARKS.md) */
    THAWCORE_IO_BUFFERED = 1,
    THAWCORE_IO_DIRECT = 2,     /* O_DIRECT; falls back to buffered where unsupported */
    THAWCORE_IO_ZEROCOPY = 3    /* DMA straight from the page cache (the file mapped and registered
                                   read-only, chunk by chunk); chunks not in page cache, or that the
                                   driver will not register, are read buffered through staging */
};

typedef struct thawcore_engine thawcore_engine;

typedef struct thawcore_engine_options {
    uint32_t struct_size;       /* sizeof(thawcore_engine_options) */
    int32_t device_kind;        /* enum thawcore_device_kind */
    int32_t device_ordinal;
    uint32_t io_threads;        /* reader threads; 0 = default (min(16, cores)) */
    uint64_t chunk_bytes;       /* staging chunk; multiple of 4096; 0 = 1 MiB */
    uint64_t staging_bytes;     /* pinned staging in total, pinned as lanes first need it; 0 = 64 MiB */
} thawcore_engine_options;

/* A contiguous file range to read; offset and length are multiples of 4096. */
typedef struct thawcore_extent {
    uint64_t file_offset;
    uint64_t length;
    uint32_t first_segment;     /* index into the segment array */
    uint32_t segment_count;     /* segments of this extent, ascending, inside it */
} thawcore_extent;

/* A piece of an extent and where it goes. device_address 0 = read only (verify). */
typedef struct thawcore_segment {
    uint64_t file_offset;
    uint64_t length;
    uint64_t device_address;
    uint32_t region;            /* caller's region index, reported in errors and checksums */
    uint32_t region_offset;     /* reserved, zero */
} thawcore_segment;

typedef void (*thawcore_progress_fn)(void *user, uint64_t bytes_done, uint64_t bytes_total);

typedef struct thawcore_restore_options {
    uint32_t struct_size;           /* sizeof(thawcore_restore_options) */
    int32_t io_mode;                /* enum thawcore_io_mode */
    /* When non-NULL, each region r is checksummed (CRC32C) as it streams and
     * compared with region_crc32c[r]; region_length[r] is its full length.
     * Every region must then be covered by segments exactly once. */
    const uint32_t *region_crc32c;
    const uint64_t *region_length;
    uint32_t region_count;
    uint32_t reserved;
    volatile int32_t *cancel;       /* non-zero stops the restore with THAWCORE_ERR_CANCELED */
    thawcore_progress_fn progress;  /* called from worker threads, at most ~10 times a second */
    void *progress_user;
} thawcore_restore_options;

typedef struct thawcore_restore_stats {
    uint64_t bytes_read;
    uint64_t bytes_copied;
    double seconds;
    int32_t io_mode_used;           /* THAWCORE_IO_BUFFERED or THAWCORE_IO_DIRECT */
    uint32_t threads;
    uint32_t failed_region;         /* region of the first error, or UINT32_MAX */
    uint32_t fallback_chunks;       /* ZEROCOPY: chunks read through staging instead */
} thawcore_restore_stats;

const char *thawcore_last_error(void);
int thawcore_abi_version(void);

/* CRC32C (Castagnoli), hardware-accelerated where the CPU has SSE4.2. */
uint32_t thawcore_crc32c(uint32_t crc, const void *data, size_t length);
/* crc of A||B from crc(A), crc(B) and len(B). */
uint32_t thawcore_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b);

/* Number of devices of a kind (the mock always has THAWCORE_MOCK_DEVICES); < 0 on failure. */
int thawcore_device_count(int32_t device_kind);

/* Mock devices 0 .. THAWCORE_MOCK_DEVICES-1: each its own device, as GPUs of one node are. */
#define THAWCORE_MOCK_DEVICES 8

/* The identity of a device, the same in every process of the node whatever ordinal it sees
 * (CUDA_VISIBLE_DEVICES renumbers GPUs): CUDA, the GPU's UUID as nvidia-smi prints it
 * ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", from cuDeviceGetUuid); mock, "mock-<ordinal>".
 * Writes it NUL-terminated into out; needs no context. Returns its length (without the NUL). */
int thawcore_device_identity(int32_t device_kind, int32_t ordinal, char *out, uint32_t capacity);

int thawcore_engine_create(const thawcore_engine_options *options, thawcore_engine **out);
void thawcore_engine_destroy(thawcore_engine *engine);

/* Reads the extents of the file at path and copies each segment to its device
 * address. Returns when every copy has completed, or on the first error (after
 * every worker has stopped and no copy is in flight). */
int thawcore_engine_restore(thawcore_engine *engine, const char *path,
                            const thawcore_extent *extents, uint32_t extent_count,
                            const thawcore_segment *segments, uint32_t segment_count,
                            const thawcore_restore_options *options,
                            thawcore_restore_stats *stats);

/* ---- Borrowed links: other GPUs' host links carry a share of one restore (docs/MULTI_GPU.md) ----
 *
 * The destination's own lanes copy one share of the chunks host to device as usual; lanes bound
 * to each helper device copy their share host to device into bounce slots of that helper's memory
 * (two per lane, each of the engine's chunk size) and forward them device to device into the
 * destination (CUDA: cuMemcpyPeerAsync, peer access enabled both ways; an event orders each
 * forward behind its host-to-device copy). A helper that cannot be set up is left out of the split;
 * one that fails mid-restore is dropped and its unfinished share is copied by the destination's own
 * lanes afterwards; neither fails the restore. Errors of the file (a read, a short file, a checksum)
 * fail it as they always do. */
#define THAWCORE_MAX_HELPERS 15
#define THAWCORE_MAX_HELPER_LANES 8

typedef struct thawcore_borrow_options {
    uint32_t struct_size;           /* sizeof(thawcore_borrow_options) */
    uint32_t helper_count;          /* 1 .. THAWCORE_MAX_HELPERS */
    const int32_t *helper_ordinals; /* devices of the engine's kind, each once, none the destination */
    /* helper_count + 1 relative link rates, the destination's first, each finite and in
     * [0, 1e6], their sum positive; NULL: equal shares. */
    const double *link_weights;
    uint32_t lanes_per_helper;      /* reader threads a helper gets; 0 = 2; at most THAWCORE_MAX_HELPER_LANES
                                       (fewer when helpers x lanes would pass 64 threads) */
    uint32_t reserved;              /* zero */
} thawcore_borrow_options;

enum thawcore_link_role { THAWCORE_LINK_DIRECT = 0, THAWCORE_LINK_BORROWED = 1 };

/* What one link did: links[0] is the destination's own, links[1 + i] helper i. */
typedef struct thawcore_link_stats {
    int32_t ordinal;
    int32_t role;                   /* enum thawcore_link_role */
    int32_t status;                 /* 0: served (or, the destination, took over); else the error that left it out or dropped it */
    uint32_t lanes;                 /* threads it ran (0: left out) */
    uint64_t planned_bytes;         /* file bytes of the share it was given */
    uint64_t bytes;                 /* tensor bytes it delivered into the destination */
    uint64_t taken_over_bytes;      /* the destination: of its bytes, those of dropped helpers' shares */
    char note[256];                 /* why it was left out or dropped; empty otherwise */
} thawcore_link_stats;

/* thawcore_engine_restore with borrowed links. links (may be NULL) has room for link_capacity
 * entries, at least borrow->helper_count + 1. Refused with -EINVAL, before anything is read, when
 * an option is out of bounds (a helper out of range, repeated or equal to the destination). */
int thawcore_engine_restore_borrowed(thawcore_engine *engine, const char *path,
                                     const thawcore_extent *extents, uint32_t extent_count,
                                     const thawcore_segment *segments, uint32_t segment_count,
                                     const thawcore_restore_options *options,
                                     const thawcore_borrow_options *borrow,
                                     thawcore_restore_stats *stats,
                                     thawcore_link_stats *links, uint32_t link_capacity);

/* Writes each segment's bytes (from a device address, or from a host address when
 * source_is_host) to fd at its file_offset, and stores the CRC32C of each segment
 * in crc32c_out[i]. Does not fsync or close fd. */
int thawcore_engine_write(thawcore_engine *engine, int fd,
                          const thawcore_segment *segments, uint32_t segment_count,
                          int32_t source_is_host, uint32_t *crc32c_out,
                          thawcore_progress_fn progress, void *progress_user);

/* Fails with THAWCORE_ERR_BAD_DESTINATION unless [address, address+length) lies
 * inside one allocation of this engine's device. When allocation_out is not NULL it
 * receives the start of that allocation (on the mock: address itself), so callers can
 * tell which destinations share one allocation. */
int thawcore_engine_check_destination(thawcore_engine *engine, uint64_t address, uint64_t length,
                                      uint64_t *allocation_out);

int thawcore_engine_device_alloc(thawcore_engine *engine, uint64_t length, uint64_t *address_out);
int thawcore_engine_device_free(thawcore_engine *engine, uint64_t address);
int thawcore_engine_copy_to_host(thawcore_engine *engine, void *host, uint64_t address, uint64_t length);
/* ---- Host-cache pool support (thaw pool) ---- */

/* One host-to-device copy: pinned (or, on the mock, any) host memory to a device address. */
typedef struct thawcore_copy {
    uint64_t host_address;
    uint64_t device_address;
    uint64_t length;
} thawcore_copy;

/* Pins host memory the caller owns for fast copies (CUDA: cuMemHostRegister; mock: nothing). */
int thawcore_engine_pin_host(thawcore_engine *engine, void *host, uint64_t length);
int thawcore_engine_unpin_host(thawcore_engine *engine, void *host);

/* Who asks the pool to open an allocation: checked so that a peer reaches only memory it owns. */
typedef struct thawcore_ipc_peer {
    uint32_t struct_size;           /* sizeof(thawcore_ipc_peer) */
    uint32_t uid;                   /* the peer's uid, from SO_PEERCRED */
    const char *mock_directory;     /* mock: the only directory its handles may name files in */
} thawcore_ipc_peer;

/* Opens a peer's device allocation from its IPC handle, for that peer.
 * CUDA: the 64-byte CUipcMemHandle (cudaIpcMemHandle_t), which only a process that owns the
 * allocation can produce (cuIpcGetMemHandle). Mock: the name (no '/') of a regular file directly
 * inside peer->mock_directory, or its absolute path spelled as the directory + '/' + name; opened
 * with O_NOFOLLOW and refused unless owned by peer->uid.
 * *address_out is the allocation's start, *length_out the bytes it holds (CUDA:
 * cuMemGetAddressRange of the opened pointer; mock: the file's size), which bound every copy
 * into it. Close it with thawcore_engine_ipc_close. */
int thawcore_engine_ipc_open(thawcore_engine *engine, const void *handle, uint32_t handle_length,
                             const thawcore_ipc_peer *peer, uint64_t *address_out, uint64_t *length_out);
int thawcore_engine_ipc_close(thawcore_engine *engine, uint64_t address);
/* The 64-byte CUDA IPC handle of an allocation of this process (CUDA only). */
int thawcore_engine_ipc_handle(thawcore_engine *engine, uint64_t address, void *handle_out, uint32_t handle_capacity);

/* Runs the copies over all lanes (split into chunk-sized pieces) and waits for all of them. */
int thawcore_engine_copy_host_to_device(thawcore_engine *engine, const thawcore_copy *copies, uint32_t count);

/* One allocation of a peer, by its IPC handle (as for thawcore_engine_ipc_open), and its copies:
 * copies[first_copy .. first_copy + copy_count). Allocations list their copies in order, back
 * to back, covering the copy array exactly. */
typedef struct thawcore_peer_allocation {
    const void *handle;
    uint32_t handle_length;
    uint32_t first_copy;
    uint32_t copy_count;
    uint32_t reserved;              /* zero */
} thawcore_peer_allocation;

/* Host bytes to [offset, offset + length) of an allocation. Refused, before any byte goes into
 * that allocation, unless [offset, offset + capacity) lies inside what the handle opens and
 * length <= capacity. */
typedef struct thawcore_peer_copy {
    uint64_t host_address;
    uint64_t offset;
    uint64_t capacity;
    uint64_t length;
} thawcore_peer_copy;

/* Where a peer copy's time went. The lanes' thread time in each part, divided by the lanes, so
 * that open + wait + copy + close <= seconds (one lane's life is at most the wall time). */
typedef struct thawcore_peer_copy_stats {
    double open_seconds;            /* opening handles and bounding their copies */
    double wait_seconds;            /* waiting for an allocation that another lane is opening */
    double copy_seconds;            /* issuing copies and waiting for them to complete */
    double close_seconds;           /* closing handles */
    double seconds;                 /* wall time of the whole call */
    uint32_t lanes;
    uint32_t failed_allocation;     /* the allocation of the first error, or UINT32_MAX */
    uint32_t failed_copy;           /* the copy of the first error (a bound), or UINT32_MAX */
    uint32_t open_order;            /* THAWCORE_POOL_OPEN_*: how the handles were opened and closed */
} thawcore_peer_copy_stats;

/* The order of a peer copy's opens, copies and closes (THAWCORE_POOL_OPEN=serial|pipelined).
 * Serial, the default: all opened in order and bounded, then copied over the lanes, then closed.
 * Pipelined (kept to measure against; slower on the H200): the lanes open allocations too, copy
 * into each as soon as it is open, and close each behind its last copy. */
enum { THAWCORE_POOL_OPEN_SERIAL = 0, THAWCORE_POOL_OPEN_PIPELINED = 1 };

/* Opens a peer's allocations, bounding every copy by what its
 * handle really opens, copies, and closes them all; nothing stays mapped after the call (the
 * order: THAWCORE_POOL_OPEN_* above). On failure no copy is in flight and every allocation is
 * closed; allocations already bounded may have been written (they are the peer's own).
 * stats may be NULL. */
int thawcore_engine_peer_copy(thawcore_engine *engine, const thawcore_ipc_peer *peer,
                              const thawcore_peer_allocation *allocations, uint32_t allocation_count,
                              const thawcore_peer_copy *copies, uint32_t copy_count,
                              thawcore_peer_copy_stats *stats);

/* One device-to-device copy: from one opened allocation (a live peer's) into another. */
typedef struct thawcore_device_copy {
    uint64_t source_address;
    uint64_t destination_address;
    uint64_t length;
} thawcore_device_copy;

/* Queues the copies over the lanes' streams and waits for all of them. CUDA: cuMemcpyDtoDAsync
 * when both lie on one device, cuMemcpyPeerAsync when they lie on two. Mock: both ends may be
 * opened shared files (read with pread, written with pwrite, each bounded by its file's size)
 * or host memory. The caller bounds each copy by the lengths ipc_open returned. */
int thawcore_engine_copy_device_to_device(thawcore_engine *engine, const thawcore_device_copy *copies, uint32_t count);

/* Shared host copies (docs/POOL.md, "Shared host copies"): host memory the pool fills once
 * and hands to clients as descriptors, so that each client copies to its own device itself and
 * the pool opens no handle of the client's memory. CUDA: cuMemCreate host memory of the GPU's
 * NUMA node, exported as POSIX descriptors (a client that imports one could also map it
 * writable: serve them to the pool's own uid only). Mock: a memfd, exported read-only. */
#define THAWCORE_SHARE_MAX_CHUNKS 240 /* descriptors of one copy: inside one SCM_RIGHTS message */
typedef struct thawcore_share thawcore_share;

/* Reserves length bytes (1 byte to 64 TiB) of address range for a shared copy, backed by
 * nothing yet; chunks are at least 256 MiB and at most THAWCORE_SHARE_MAX_CHUNKS. */
int thawcore_share_create(thawcore_engine *engine, uint64_t length, thawcore_share **out);
/* Where the copy lies in this process (readable and writable by the CPU once backed). */
void *thawcore_share_address(const thawcore_share *share);
uint32_t thawcore_share_chunks(const thawcore_share *share);
/* Backs every chunk that [offset, offset + length) touches with memory (thread-safe). */
int thawcore_share_back(thawcore_share *share, uint64_t offset, uint64_t length);
/* New descriptors for every chunk, and their lengths; the caller closes the descriptors.
 * Every chunk must be backed. Returns the number of chunks. */
int thawcore_share_export(thawcore_share *share, int32_t *fds, uint64_t *lengths, uint32_t capacity);
/* Unmaps and releases the copy; clients that mapped it keep their mappings until they release them. */
void thawcore_share_destroy(thawcore_share *share);

/* Where a copy from a shared host copy spent its time. */
typedef struct thawcore_share_copy_stats {
    double map_seconds;             /* importing and mapping the chunks (summed over the grant threads) */
    double grant_seconds;           /* the grant thread's life: maps and grants, overlapped with the copies */
    double wait_seconds;            /* lanes waiting for a chunk's grant, per lane */
    double copy_seconds;            /* from the first copy queued to the last one complete */
    double seconds;                 /* the whole call */
    uint32_t chunks;
    uint32_t lanes;
} thawcore_share_copy_stats;

/* Client side: maps the chunks the pool sent (fds, with their lengths, back to back) and grants
 * the engine's device read access, chunk by chunk on a thread of its own, while the lanes copy
 * the chunks granted, and
 * releases the mapping on a thread of its own once the copies are complete (up to 4 such releases
 * run behind an engine's restores; thawcore_engine_destroy waits for them; THAWCORE_SHARE_RELEASE=sync releases before returning).
 * copies[i].host_address is an OFFSET into the shared copy. The announcement is checked before
 * anything is mapped: 1 to THAWCORE_SHARE_MAX_CHUNKS chunks, lengths multiples of the backend's
 * granularity, every copy inside. Takes the descriptors: closes every one of them, also on
 * failure. stats may be NULL. */
int thawcore_engine_copy_from_share(thawcore_engine *engine, const int32_t *fds, const uint64_t *lengths, uint32_t chunks,
                                    const thawcore_copy *copies, uint32_t count, thawcore_share_copy_stats *stats);

/* Sends length bytes on a connected Unix socket with fds attached to the first of them
 * (SCM_RIGHTS; count <= THAWCORE_SHARE_MAX_CHUNKS), waiting up to timeout_ms for room. */
int thawcore_send_with_fds(int32_t socket, const void *data, uint64_t length, const int32_t *fds, uint32_t count, int32_t timeout_ms);
/* Receives one line (through its '\n', which is not stored) from a Unix socket, and the
 * descriptors sent with it (CLOEXEC). More bytes than capacity, more descriptors than
 * fd_capacity, or no line within timeout_ms: an error, and every descriptor received is
 * closed. Reads nothing past the newline (so never the next line's descriptors). */
int thawcore_receive_line_with_fds(int32_t socket, void *buffer, uint64_t capacity, uint64_t *length_out,
                                   int32_t *fds, uint32_t fd_capacity, uint32_t *fd_count, int32_t timeout_ms);

/* Test support. Arms one fault for the whole process: the after-th time (counting
 * from 0) the core reaches a point of that kind, it fails there as the real fault
 * would. after < 0 disarms. Returns how many times the previously armed fault fired. */
enum thawcore_fault {
    THAWCORE_FAULT_NONE = 0,
    THAWCORE_FAULT_READ_EIO = 1,        /* a read fails with EIO */
    THAWCORE_FAULT_SHORT_READ = 2,      /* a read finds the file ending where it starts */
    THAWCORE_FAULT_COPY = 3,            /* a host-to-device copy fails */
    THAWCORE_FAULT_EVENT = 4,           /* recording or waiting for a copy-completion event fails */
    THAWCORE_FAULT_PINNED_ALLOC = 5,    /* pinning staging memory fails */
    THAWCORE_FAULT_WRITE_ENOSPC = 6,    /* a write finds the disk full */
    THAWCORE_FAULT_WRITE_EIO = 7,       /* a write fails with EIO */
    THAWCORE_FAULT_REGISTER = 8,        /* registering mapped file pages for DMA fails (zero-copy) */
    THAWCORE_FAULT_BORROW_SETUP = 9,    /* setting up a borrowed link (its device, peer access, bounce memory) fails */
    THAWCORE_FAULT_BORROW_COPY = 10     /* a borrowed link's copy into its bounce slot, or its forward, fails */
};
int thawcore_fault_inject(int32_t kind, int64_t after);

/* fsync a directory, so that a rename inside it is durable. */
int thawcore_sync_directory(const char *path);

int thawcore_engine_device_memory(thawcore_engine *engine, uint64_t *free_out, uint64_t *total_out);

/* What identifies a file's contents without reading them (the pool compares it before
 * serving a snapshot it holds): stat(2)'s device, inode, size, and times in nanoseconds.
 * ctime changes on every write and cannot be set back by utime, unlike mtime. */
typedef struct thawcore_file_identity {
    uint64_t device;
    uint64_t inode;
    int64_t size;
    int64_t mtime_ns;
    int64_t ctime_ns;
} thawcore_file_identity;

/* Fills *out from stat(path); -ENOENT and the like when it cannot. */
int thawcore_file_identity_of(const char *path, thawcore_file_identity *out);

/* Starts argv[0] (an absolute path; argv NULL-terminated) detached from the caller: fork,
 * setsid, fork, exec, with stdin from /dev/null, stdout/stderr appended to log_path (created
 * 0600), / as its working directory, and the caller's environment less the variables named
 * in withheld (NULL-terminated; NULL: none withheld). The intermediate child is reaped; the
 * caller's signal handlers are left alone. Returns 0 and the new process's pid, or -errno
 * when fork, setsid or exec failed. */
int thawcore_spawn_detached(const char *const *argv, const char *const *withheld, const char *log_path, int32_t *pid_out);

/* Checks that path (absolute) is a directory, not a symbolic link (lstat), owned by the
 * calling uid, without group or other permissions; with create, makes it 0700 first when
 * absent. Returns 0, or -EPERM/-ENOTDIR/-errno with a message naming the path and the fault. */
int thawcore_private_directory(const char *path, int create);

/* The device, inode and status-change time (ns) of path itself (lstat): together they tell a
 * file from a later one at the same path even when the inode number is reused. */
int thawcore_path_identity(const char *path, uint64_t *device_out, uint64_t *inode_out, uint64_t *changed_ns_out);

/* A stream socket bound at path and listening (CLOEXEC): its descriptor in *fd_out, for the
 * caller to own. The caller removes the file (the managed runtime does not know of it). */
int thawcore_unix_listen(const char *path, int32_t backlog, int32_t *fd_out);

/* The file the core was loaded from (libthaw.so, or the executable it is linked into):
 * copies it NUL-terminated, truncated to capacity; returns its full length. */
int thawcore_module_path(char *buffer, size_t capacity);

#ifdef __cplusplus
}
#endif
#endif /* THAW_CORE_H */
