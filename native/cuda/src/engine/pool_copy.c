/* The copy lanes from host memory that stays pinned (the pool's, or a shared host copy a
 * client mapped, share_copy.c) to device addresses, cut into pieces spread over the engine's
 * lane streams. Copies into a peer's IPC allocations, opened and closed on the lanes too, are
 * peer_copy.c. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"
#include "error.h"

#include <errno.h>
#include <stdlib.h>

/* Pinned memory needs no staging, so pieces are large: the H200's ceiling through these
 * lanes is 48.9 GB/s in 2 MiB pieces, 53.5 in 8 MiB, 54.2 in 64 MiB (docs/BENCHMARKS.md).
 * THAWCORE_COPY_PIECE_MIB overrides it, for those measurements. */
#define DEFAULT_COPY_PIECE (64ull << 20)

uint64_t thaw_pool_copy_piece(void)
{
    return thaw_env_number("THAWCORE_COPY_PIECE_MIB", DEFAULT_COPY_PIECE >> 20, 1, 1u << 14) << 20;
}

typedef struct {
    thawcore_engine *engine;
    const thawcore_copy *copies;
    uint32_t count;
    const thaw_copy_gate *gate;
    atomic_ullong next_piece; /* pieces of all copies, numbered in order */
    uint64_t *piece_start;    /* first piece number of each copy, count + 1 entries */
    uint64_t piece;
    first_failure failure;
} copy_job;

typedef struct { copy_job *job; uint32_t lane; } copy_arg;

static void *copy_lane_main(void *arg)
{
    copy_arg *a = arg;
    copy_job *job = a->job;
    thawcore_engine *e = job->engine;
    lane *l = &e->lanes[a->lane];
    uint64_t total = job->piece_start[job->count];
    int rc = e->dev.ops->bind_thread(&e->dev);
    uint32_t copy = 0;
    const thaw_copy_gate *gate = job->gate;
    double waited = 0;
    while (!rc && !atomic_load(&job->failure.failed)) {
        uint64_t piece = atomic_fetch_add(&job->next_piece, 1);
        if (piece >= total)
            break;
        thaw_copy_of_piece(job->piece_start, piece, &copy);
        const thawcore_copy *c = &job->copies[copy];
        uint64_t offset = (piece - job->piece_start[copy]) * job->piece;
        uint64_t n = c->length - offset < job->piece ? c->length - offset : job->piece;
        if (gate) {
            double t = thaw_now_seconds();
            rc = gate->wait(gate->context, c->host_address + offset + n, &job->failure.failed);
            waited += thaw_now_seconds() - t;
            if (rc)
                break;
        }
        rc = (gate ? gate->copy : e->dev.ops->copy_h2d_async)(&e->dev, c->device_address + offset,
                                        (const void *)(uintptr_t)(c->host_address + offset), (size_t)n, l->stream);
        if (rc)
            rc = thaw_fail_context(rc, "copying piece %llu of copy %u to the device", (unsigned long long)piece, copy);
    }
    int wait = e->dev.ops->stream_wait(&e->dev, l->stream);
    if (!rc)
        rc = wait;
    if (rc)
        thaw_first_failure_record(&job->failure, rc, UINT32_MAX);
    if (gate)
        gate->waited(gate->context, waited);
    return NULL;
}

int thaw_copy_lanes(thawcore_engine *e, const thawcore_copy *copies, uint32_t count, const thaw_copy_gate *gate)
{
    uint64_t *piece_start = malloc(((size_t)count + 1) * sizeof(uint64_t));
    if (!piece_start)
        return thaw_fail(-ENOMEM, "out of host memory");
    uint64_t size = thaw_pool_copy_piece();
    piece_start[0] = 0;
    for (uint32_t i = 0; i < count; i++)
        piece_start[i + 1] = piece_start[i] + (copies[i].length + size - 1) / size;
    copy_job job = { .engine = e, .copies = copies, .count = count, .gate = gate, .piece_start = piece_start, .piece = size };
    thaw_first_failure_init(&job.failure);
    uint64_t pieces = piece_start[count];
    uint32_t lanes = pieces < e->lane_count ? (uint32_t)pieces : e->lane_count;
    copy_arg args[MAX_THREADS];
    for (uint32_t i = 0; i < lanes; i++)
        args[i] = (copy_arg){ &job, i };
    thaw_run_workers(lanes, copy_lane_main, args, sizeof args[0], &job.failure);
    int rc = thaw_first_failure_finish(&job.failure);
    free(piece_start);
    return rc;
}

int thawcore_engine_copy_host_to_device(thawcore_engine *e, const thawcore_copy *copies, uint32_t count)
{
    thaw_clear_error();
    if (!e || (count && !copies))
        return thaw_fail(-EINVAL, "missing argument");
    for (uint32_t i = 0; i < count; i++)
        if (copies[i].length && (!copies[i].host_address || !copies[i].device_address))
            return thaw_fail(-EINVAL, "copy %u has no source or destination", i);
    pthread_mutex_lock(&e->lock);
    int rc = thaw_copy_lanes(e, copies, count, NULL);
    pthread_mutex_unlock(&e->lock);
    return rc;
}
