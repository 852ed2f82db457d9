/* A pool restore's copies into a peer's IPC allocations over the engine's lanes. By default
 * (serial) every allocation is opened and bounded in order, then the pieces of all copies go
 * out over the lanes, then every allocation is closed. THAWCORE_POOL_OPEN=pipelined keeps the
 * other order to measure against: the lanes open handles a few allocations ahead of the copies,
 * copy each allocation's pieces as soon as it is open, and close each behind its last piece.
 * On the H200 the driver serialises the opens, so pipelining loses (49.1 GB/s against 51.2).
 *
 * Nothing is kept open between calls: a mapping the pool holds keeps a peer's freed
 * allocation alive (docs/POOL.md, "One client"). */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"
#include "error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { UNOPENED = 0, OPEN = 1, CLOSED = 2, FAILED = -1 };

typedef struct {
    thawcore_engine *engine;
    const thawcore_ipc_peer *peer;
    const thawcore_peer_allocation *allocations;
    uint32_t allocation_count;
    const thawcore_peer_copy *copies;
    uint32_t copy_count;
    uint64_t piece;
    uint64_t *piece_start;        /* first piece of each copy, copy_count + 1 entries */
    uint32_t *allocation_of_copy;
    uint64_t *address;            /* each allocation's opened address */
    atomic_int *state;            /* UNOPENED, OPEN, CLOSED or FAILED */
    atomic_ullong *pieces_left;   /* pieces of each allocation not yet complete */
    atomic_uint next_open;
    atomic_ullong next_piece;
    uint32_t open_ahead;          /* allocations a lane may open beyond the one being copied */
    int close_behind;             /* 0 when the caller closes everything after the lanes */
    pthread_mutex_t lock;         /* guards the condition and the time sums */
    pthread_cond_t opened;
    double open_s, wait_s, copy_s, close_s;
    atomic_uint failed_allocation, failed_copy;
    first_failure failure;
} peer_job;

typedef struct { peer_job *job; uint32_t lane; } peer_arg;

static void fail_allocation(peer_job *job, uint32_t allocation, uint32_t copy, int rc)
{
    unsigned expected = UINT32_MAX;
    if (atomic_compare_exchange_strong(&job->failed_allocation, &expected, allocation))
        atomic_store(&job->failed_copy, copy);
    thaw_first_failure_record(&job->failure, rc, UINT32_MAX);
}

static int close_allocation(peer_job *job, uint32_t a)
{
    thawcore_engine *e = job->engine;
    int rc = e->dev.ops->ipc_close(&e->dev, job->address[a]);
    atomic_store(&job->state[a], CLOSED);
    return rc ? thaw_fail_context(rc, "closing the handle of allocation %u", a) : 0;
}

/* Opens allocation a and bounds every copy into it by what the handle really opens. */
static void open_allocation(peer_job *job, uint32_t a)
{
    thawcore_engine *e = job->engine;
    const thawcore_peer_allocation *al = &job->allocations[a];
    uint64_t address = 0, length = 0;
    int rc = e->dev.ops->ipc_open(&e->dev, al->handle, al->handle_length, job->peer, &address, &length);
    uint32_t bad = UINT32_MAX;
    if (!rc) {
        job->address[a] = address;
        for (uint32_t i = al->first_copy; i < al->first_copy + al->copy_count && bad == UINT32_MAX; i++) {
            const thawcore_peer_copy *c = &job->copies[i];
            if (c->offset > length || c->capacity > length - c->offset)
                bad = i;
        }
        if (bad != UINT32_MAX) {
            const thawcore_peer_copy *c = &job->copies[bad];
            rc = thaw_fail(THAWCORE_ERR_BAD_DESTINATION,
                           "the destination (offset %llu, capacity %llu) runs past the end of its allocation of %llu bytes",
                           (unsigned long long)c->offset, (unsigned long long)c->capacity, (unsigned long long)length);
            e->dev.ops->ipc_close(&e->dev, address);
        }
    }
    /* Read before it is published: once open, other lanes' copies count it down. */
    int nothing_to_copy = atomic_load(&job->pieces_left[a]) == 0;
    pthread_mutex_lock(&job->lock);
    atomic_store(&job->state[a], rc ? FAILED : OPEN);
    pthread_cond_broadcast(&job->opened);
    pthread_mutex_unlock(&job->lock);
    if (rc) {
        fail_allocation(job, a, bad, rc);
        return;
    }
    if (job->close_behind && nothing_to_copy) {
        rc = close_allocation(job, a); /* nothing to copy into it (empty tensors): bounded, done */
        if (rc)
            fail_allocation(job, a, UINT32_MAX, rc);
    }
}

/* Claims and opens allocations until every one up to `through` has been claimed by some lane. */
static void open_through(peer_job *job, uint32_t through, double *open_s)
{
    while (atomic_load(&job->next_open) <= through && !atomic_load(&job->failure.failed)) {
        uint32_t a = atomic_fetch_add(&job->next_open, 1);
        if (a >= job->allocation_count)
            return;
        double t = thaw_now_seconds();
        open_allocation(job, a);
        *open_s += thaw_now_seconds() - t;
    }
}

/* The lane's pieces of allocation a have been issued: once they complete, the lane that
 * completes the allocation's last piece closes it. */
static int finish_allocation(peer_job *job, lane *l, uint32_t a, uint64_t issued, double *copy_s, double *close_s)
{
    thawcore_engine *e = job->engine;
    double t = thaw_now_seconds();
    int rc = e->dev.ops->stream_wait(&e->dev, l->stream);
    *copy_s += thaw_now_seconds() - t;
    if (rc || !issued)
        return rc;
    if (atomic_fetch_sub(&job->pieces_left[a], issued) == issued && job->close_behind) {
        t = thaw_now_seconds();
        rc = close_allocation(job, a);
        *close_s += thaw_now_seconds() - t;
    }
    return rc;
}

static void *peer_lane_main(void *arg)
{
    peer_arg *pa = arg;
    peer_job *job = pa->job;
    thawcore_engine *e = job->engine;
    lane *l = &e->lanes[pa->lane];
    uint64_t total = job->piece_start[job->copy_count];
    double open_s = 0, wait_s = 0, copy_s = 0, close_s = 0;
    uint32_t copy = 0, current = UINT32_MAX;
    uint64_t issued = 0;
    int rc = e->dev.ops->bind_thread(&e->dev);
    while (!rc && !atomic_load(&job->failure.failed)) {
        /* Keep the opens a little ahead of the copies, so that a lane rarely waits for one. */
        uint64_t next = atomic_load(&job->next_piece);
        uint32_t frontier = next < total ? job->allocation_of_copy[copy] : job->allocation_count;
        uint32_t opening = atomic_load(&job->next_open);
        if (opening < job->allocation_count && (next >= total || opening <= frontier + job->open_ahead)) {
            open_through(job, opening, &open_s);
            continue;
        }
        uint64_t piece = atomic_fetch_add(&job->next_piece, 1);
        if (piece >= total)
            break;
        thaw_copy_of_piece(job->piece_start, piece, &copy);
        uint32_t a = job->allocation_of_copy[copy];
        if (atomic_load(&job->state[a]) == UNOPENED) {
            open_through(job, a, &open_s); /* never wait for an allocation nobody has claimed */
            double t = thaw_now_seconds();
            pthread_mutex_lock(&job->lock);
            while (atomic_load(&job->state[a]) == UNOPENED && !atomic_load(&job->failure.failed))
                pthread_cond_wait(&job->opened, &job->lock);
            pthread_mutex_unlock(&job->lock);
            wait_s += thaw_now_seconds() - t;
        }
        if (atomic_load(&job->state[a]) != OPEN)
            break;
        if (a != current) {
            if (current != UINT32_MAX)
                rc = finish_allocation(job, l, current, issued, &copy_s, &close_s);
            current = a;
            issued = 0;
            if (rc)
                break;
        }
        const thawcore_peer_copy *c = &job->copies[copy];
        uint64_t offset = (piece - job->piece_start[copy]) * job->piece;
        uint64_t n = c->length - offset < job->piece ? c->length - offset : job->piece;
        double t = thaw_now_seconds();
        rc = e->dev.ops->copy_h2d_async(&e->dev, job->address[a] + c->offset + offset,
                                        (const void *)(uintptr_t)(c->host_address + offset), (size_t)n, l->stream);
        copy_s += thaw_now_seconds() - t;
        if (rc) {
            rc = thaw_fail_context(rc, "copying piece %llu of copy %u to the device", (unsigned long long)piece, copy);
            fail_allocation(job, a, copy, rc);
            rc = 0; /* recorded; still wait for this lane's pieces in flight below */
            break;
        }
        issued++;
    }
    if (rc)
        thaw_first_failure_record(&job->failure, rc, UINT32_MAX);
    /* Always wait for what this lane issued: nothing is closed or returned with a copy in flight. */
    int finish = current != UINT32_MAX && !atomic_load(&job->failure.failed)
        ? finish_allocation(job, l, current, issued, &copy_s, &close_s)
        : e->dev.ops->stream_wait(&e->dev, l->stream);
    if (finish)
        thaw_first_failure_record(&job->failure, finish, UINT32_MAX);
    pthread_mutex_lock(&job->lock);
    job->open_s += open_s;
    job->wait_s += wait_s;
    job->copy_s += copy_s;
    job->close_s += close_s;
    pthread_cond_broadcast(&job->opened); /* a failure may have been recorded: wake any waiter */
    pthread_mutex_unlock(&job->lock);
    return NULL;
}

static int check_arguments(const thawcore_peer_allocation *allocations, uint32_t allocation_count,
                           const thawcore_peer_copy *copies, uint32_t copy_count)
{
    if ((allocation_count && !allocations) || (copy_count && !copies))
        return thaw_fail(-EINVAL, "missing argument");
    uint64_t next = 0;
    for (uint32_t a = 0; a < allocation_count; a++) {
        const thawcore_peer_allocation *al = &allocations[a];
        if (!al->handle || al->first_copy != next || al->copy_count > copy_count - next)
            return thaw_fail(-EINVAL, "allocation %u has no handle, or its copies do not follow the previous allocation's", a);
        next += al->copy_count;
    }
    if (next != copy_count)
        return thaw_fail(-EINVAL, "the allocations list %llu copies, not %u", (unsigned long long)next, copy_count);
    for (uint32_t i = 0; i < copy_count; i++)
        if (copies[i].length > copies[i].capacity || (copies[i].length && !copies[i].host_address))
            return thaw_fail(-EINVAL, "copy %u has no source, or more bytes than its capacity", i);
    return 0;
}

/* THAWCORE_POOL_OPEN picks the order, for measurements against the default. */
static uint32_t open_order(void)
{
    const char *mode = getenv("THAWCORE_POOL_OPEN");
    return mode && strcmp(mode, "pipelined") == 0 ? THAWCORE_POOL_OPEN_PIPELINED : THAWCORE_POOL_OPEN_SERIAL;
}

/* The serial order, the default: the driver serialises IPC opens (16 lanes opening 194 handles
 * took as long as one thread, 9-15 ms, on the H200) and holds off other threads' copies while it
 * opens, so neither opening in parallel nor overlapping the opens with copies gained anything:
 * 51.2 GB/s serial, 51.0 overlapped, 49.1 pipelined, one run (docs/BENCHMARKS.md). */
static void open_all_serially(peer_job *job, double *open_s)
{
    double t = thaw_now_seconds();
    int rc = job->engine->dev.ops->bind_thread(&job->engine->dev);
    if (rc)
        thaw_first_failure_record(&job->failure, rc, UINT32_MAX);
    for (uint32_t a = 0; !rc && a < job->allocation_count && !atomic_load(&job->failure.failed); a++)
        open_allocation(job, a);
    atomic_store(&job->next_open, job->allocation_count);
    *open_s = thaw_now_seconds() - t;
}

static void run_job(peer_job *job, uint32_t order, thawcore_peer_copy_stats *stats)
{
    thawcore_engine *e = job->engine;
    uint64_t pieces = job->piece_start[job->copy_count];
    /* A lane for each piece or allocation (opens run in parallel too), at most one a lane. */
    uint64_t work = pieces > job->allocation_count ? pieces : job->allocation_count;
    uint32_t lanes = work < e->lane_count ? (uint32_t)(work ? work : 1) : e->lane_count;
    stats->lanes = lanes;
    stats->open_order = order;
    int serial = order == THAWCORE_POOL_OPEN_SERIAL;
    double serial_open = 0;
    if (serial)
        open_all_serially(job, &serial_open);
    peer_arg args[MAX_THREADS];
    for (uint32_t i = 0; i < lanes; i++)
        args[i] = (peer_arg){ job, i };
    if (!atomic_load(&job->failure.failed))
        thaw_run_workers(lanes, peer_lane_main, args, sizeof args[0], &job->failure);
    /* Whatever the lanes did not close (serial mode, a failure): every lane has waited for its
     * copies, so nothing is in flight. */
    double t = thaw_now_seconds();
    int bound = e->dev.ops->bind_thread(&e->dev);
    for (uint32_t a = 0; a < job->allocation_count; a++) {
        if (atomic_load(&job->state[a]) != OPEN)
            continue;
        int rc = bound ? bound : close_allocation(job, a);
        if (rc)
            fail_allocation(job, a, UINT32_MAX, rc);
    }
    double late_close = thaw_now_seconds() - t;
    stats->open_seconds = serial ? serial_open : job->open_s / lanes;
    stats->wait_seconds = job->wait_s / lanes;
    stats->copy_seconds = job->copy_s / lanes;
    stats->close_seconds = job->close_s / lanes + late_close;
}

int thawcore_engine_peer_copy(thawcore_engine *e, const thawcore_ipc_peer *peer,
                              const thawcore_peer_allocation *allocations, uint32_t allocation_count,
                              const thawcore_peer_copy *copies, uint32_t copy_count,
                              thawcore_peer_copy_stats *stats)
{
    thaw_clear_error();
    double started = thaw_now_seconds();
    thawcore_peer_copy_stats local;
    if (!stats)
        stats = &local;
    memset(stats, 0, sizeof *stats);
    stats->failed_allocation = stats->failed_copy = UINT32_MAX;
    if (!e || !peer)
        return thaw_fail(-EINVAL, "missing argument");
    if (peer->struct_size < sizeof *peer)
        return thaw_fail(-EINVAL, "thawcore_ipc_peer of %u bytes is too small", peer->struct_size);
    int rc = check_arguments(allocations, allocation_count, copies, copy_count);
    if (rc)
        return rc;
    peer_job job = { .engine = e, .peer = peer, .allocations = allocations, .allocation_count = allocation_count,
                     .copies = copies, .copy_count = copy_count, .piece = thaw_pool_copy_piece() };
    job.piece_start = malloc(((size_t)copy_count + 1) * sizeof *job.piece_start);
    job.allocation_of_copy = malloc(((size_t)copy_count + 1) * sizeof *job.allocation_of_copy);
    job.address = calloc((size_t)allocation_count + 1, sizeof *job.address);
    job.state = calloc((size_t)allocation_count + 1, sizeof *job.state);
    job.pieces_left = calloc((size_t)allocation_count + 1, sizeof *job.pieces_left);
    if (!job.piece_start || !job.allocation_of_copy || !job.address || !job.state || !job.pieces_left) {
        rc = thaw_fail(-ENOMEM, "out of host memory");
        goto done;
    }
    job.piece_start[0] = 0;
    for (uint32_t a = 0; a < allocation_count; a++) {
        for (uint32_t i = allocations[a].first_copy; i < allocations[a].first_copy + allocations[a].copy_count; i++) {
            uint64_t n = (copies[i].length + job.piece - 1) / job.piece;
            job.piece_start[i + 1] = job.piece_start[i] + n;
            job.allocation_of_copy[i] = a;
            atomic_fetch_add(&job.pieces_left[a], n);
        }
    }
    job.allocation_of_copy[copy_count] = allocation_count;
    job.open_ahead = e->lane_count;
    uint32_t order = open_order();
    job.close_behind = order == THAWCORE_POOL_OPEN_PIPELINED;
    atomic_store(&job.failed_allocation, UINT32_MAX);
    atomic_store(&job.failed_copy, UINT32_MAX);
    pthread_mutex_init(&job.lock, NULL);
    pthread_cond_init(&job.opened, NULL);
    thaw_first_failure_init(&job.failure);
    pthread_mutex_lock(&e->lock);
    run_job(&job, order, stats);
    pthread_mutex_unlock(&e->lock);
    rc = thaw_first_failure_finish(&job.failure);
    stats->failed_allocation = atomic_load(&job.failed_allocation);
    stats->failed_copy = atomic_load(&job.failed_copy);
    pthread_cond_destroy(&job.opened);
    pthread_mutex_destroy(&job.lock);
done:
    free(job.piece_start);
    free(job.allocation_of_copy);
    free(job.address);
    free(job.state);
    free(job.pieces_left);
    stats->seconds = thaw_now_seconds() - started;
    return rc;
}
