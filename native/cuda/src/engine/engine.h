/* The engine's private parts, shared by its jobs: the device and its lanes (a stream,
 * events and pinned staging slots per reader thread), and the machinery every job
 * uses to run on several threads and report its first failure.
 *
 * Files, by the sections of bindings/thaw_core.h they implement:
 *   lanes.c      engine create/destroy: lanes and their pinned staging
 *   restore.c    thawcore_engine_restore: the restore pipeline
 *   write.c      thawcore_engine_write: the write pipeline (freeze, convert)
 *   device_ops.c device memory and IPC operations
 *   pool_copy.c  thawcore_engine_copy_host_to_device: the pool's copy lanes
 *   workers.c    threads, first failure, progress throttle (used by all of the above) */
#ifndef THAW_ENGINE_H
#define THAW_ENGINE_H

#include "thaw_core.h"
#include "device.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define DEFAULT_CHUNK (8ull << 20)
#define DEFAULT_STAGING (512ull << 20)
#define MAX_THREADS 64
#define ALIGN 4096ull

typedef struct lane {
    unsigned char *staging; /* this lane's slots, contiguous */
    void *stream;
    void **events;
    unsigned char **slots;
    unsigned char *pending;
} lane;

struct thawcore_engine {
    thaw_device dev;
    uint32_t lane_count;
    uint32_t slots_per_lane;
    uint64_t chunk;
    lane *lanes;
    pthread_mutex_t lock; /* one restore or write at a time: they share the staging */
};

double thaw_now_seconds(void);

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

/* Calls progress at most every 100 ms across all workers: the one that wins the swap reports. */
void thaw_throttled_progress(atomic_llong *last_ms, thawcore_progress_fn progress, void *user,
                             uint64_t done, uint64_t total);

#endif
