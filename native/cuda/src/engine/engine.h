/* The engine's private parts, shared by its jobs: the device and its lanes (a stream,
 * events and pinned staging slots per reader thread), and the machinery every job
 * uses to run on several threads and report its first failure.
 *
 * Files, by the sections of bindings/thaw_core.h they implement:
 *   lanes.c      engine create/destroy: lanes and their pinned staging
 *   restore.c    thawcore_engine_restore: the restore pipeline (staged: read, then DMA)
 *   zero_copy.c  the restore's zero-copy chunks (io_mode ZEROCOPY): DMA from the page cache
 *   io_policy.c  which way a restore reads its file (io_mode AUTO)
 *   borrowed_links.c thawcore_engine_restore_borrowed: other GPUs' host links carry a share,
 *                forwarded device to device from bounce slots on those GPUs
 *   write.c      thawcore_engine_write: the write pipeline (freeze, convert)
 *   device_ops.c device memory and IPC operations
 *   pool_copy.c  thawcore_engine_copy_host_to_device: the copy lanes from pinned host memory
 *   share.c      thawcore_share_*: the pool's shared host copies, backed chunk by chunk
 *   share_copy.c thawcore_engine_copy_from_share: a client's copies from a shared host copy
 *   peer_copy.c  thawcore_engine_peer_copy: a peer's allocations opened, copied into and
 *                closed on those lanes, pipelined
 *   device_copy.c thawcore_engine_copy_device_to_device: the pool serving from a live publisher
 *   workers.c    threads, first failure, progress throttle (used by all of the above) */
#ifndef THAW_ENGINE_H
#define THAW_ENGINE_H

#include "thaw_core.h"
#include "device.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Small chunks keep the staged bytes in the CPU's caches until the DMA (and the CRC32C)
 * read them, so the copy out of the page cache does not go to DRAM and back: warm 16 GB
 * on the H200, 1-2 MiB chunks 47-50 GB/s against 30 for 8 MiB; verified, 1 MiB 46.0
 * against 41.2 for 2 MiB (docs/BENCHMARKS.md). */
#define DEFAULT_CHUNK (1ull << 20)
#define DEFAULT_STAGING (64ull << 20)
#define MAX_THREADS 64
#define ALIGN 4096ull

/* Shared host copies an engine may still be unmapping behind its restores. */
#define THAW_SHARE_RELEASES 4

/* Zero-copy registrations a lane keeps in flight: one copying while the next registers. */
#define ZERO_COPY_DEPTH 2

typedef struct lane {
    void *stream;
    void **events;          /* one per staging slot */
    unsigned char **slots;  /* staging slots, pinned on first use (thaw_lane_slot) */
    unsigned char *pending; /* a slot's copies are queued behind its event */
    /* Zero-copy restores: mapped file ranges registered for DMA, released after their
     * copies complete. Made on first use. */
    void *zero_copy_events[ZERO_COPY_DEPTH];
    const void *zero_copy_pinned[ZERO_COPY_DEPTH];
} lane;

struct thawcore_engine {
    thaw_device dev;
    uint32_t lane_count;
    uint32_t slots_per_lane;
    uint64_t chunk;
    lane *lanes;
    pthread_mutex_t lock; /* one restore or write at a time: they share the staging */
    /* Copies from a shared host copy unmap it on a thread of their own (share_copy.c): the
     * last few of them, so that a restore right after another does not wait for its unmap. */
    pthread_t share_release[THAW_SHARE_RELEASES];
    uint32_t share_release_count;
};

/* Waits for every shared host copy still being unmapped (all: 0), or for the oldest until fewer
 * than `below` are (share_copy.c). */
void thaw_share_release_join(thawcore_engine *e, uint32_t below);

/* The staging slot of a lane, pinned on its first use by the lane's own thread, so a
 * new engine starts at once and paths that need no staging never pin it. */
int thaw_lane_slot(thawcore_engine *e, lane *l, uint32_t slot, unsigned char **out);

double thaw_now_seconds(void);

/* What copy lanes ask before each piece of a copy from memory that becomes readable bit by bit
 * (a shared host copy whose chunks are granted while earlier ones copy): wait blocks until
 * [.., source_end) may be read (or `stop` is set, or the grant failed: an error), copy queues it. */
typedef struct thaw_copy_gate {
    void *context;
    int (*wait)(void *context, uint64_t source_end, const atomic_int *stop);
    int (*copy)(thaw_device *dev, uint64_t dst, const void *src, size_t length, void *stream);
    void (*waited)(void *context, double seconds); /* a lane's time in wait, told once at its end */
} thaw_copy_gate;

/* Runs the copies over all lanes in pieces and waits for them; the caller holds e->lock.
 * gate may be NULL (the source is readable already; copies by the device's copy_h2d_async). */
int thaw_copy_lanes(thawcore_engine *e, const thawcore_copy *copies, uint32_t count, const thaw_copy_gate *gate);

/* The size of the pieces the pool's copies are cut into (THAWCORE_COPY_PIECE_MIB, else 64 MiB). */
uint64_t thaw_pool_copy_piece(void);

/* Moves *copy to the copy that piece number `piece` belongs to, where piece_start[i] is the first
 * piece of copy i (one entry more than there are copies); lanes take pieces in rising order, so the
 * cursor they keep moves a little each time. */
static inline void thaw_copy_of_piece(const uint64_t *piece_start, uint64_t piece, uint32_t *copy)
{
    while (piece_start[*copy + 1] <= piece)
        (*copy)++;
    while (piece_start[*copy] > piece)
        (*copy)--;
}

/* The io mode for AUTO: the fraction of the range in page cache (-1 unknown), its
 * length, and the memory available to the page cache (0 unknown). */
int thaw_pick_io_mode(double resident, uint64_t span, uint64_t memory_available);
/* MemAvailable of /proc/meminfo in bytes; 0 when unknown. */
uint64_t thaw_memory_available(void);

/* The first failure of a job run on several threads: its code and message, the region
 * it concerns, and a flag every worker polls to stop early. */
typedef struct {
    pthread_mutex_t lock;
    atomic_int failed;
    int code;
    uint32_t region;
    char text[1024];
} first_failure;

void thaw_first_failure_init(first_failure *f);
/* Keeps the first failure (with the calling thread's message); later ones only stop work. */
void thaw_first_failure_record(first_failure *f, int code, uint32_t region);
/* Hands the failure's message to the calling thread; returns its code (0 when none). */
int thaw_first_failure_finish(first_failure *f);

/* Runs worker on `count` threads, each with its own element of args, and joins them all.
 * A thread that cannot start is a failure; the ones already started see it and stop. */
void thaw_run_workers(uint32_t count, void *(*worker)(void *), void *args, size_t arg_size, first_failure *f);

/* A knob for measurements and tests: the decimal number in environment variable `name`, or
 * fallback when it is unset, not a whole number, or outside [min, max]. */
uint64_t thaw_env_number(const char *name, uint64_t fallback, uint64_t min, uint64_t max);

/* Calls progress at most every 100 ms across all workers: the one that wins the swap reports. */
void thaw_throttled_progress(atomic_llong *last_ms, thawcore_progress_fn progress, void *user,
                             uint64_t done, uint64_t total);

#endif
