/* The pool serving a restore from a live publisher (docs/POOL.md, "Restoring from a live
 * peer"): device-to-device copies from the publisher's allocations into the client's. The copies are asynchronous on the device, so one thread
 * queues them round-robin over the lanes' streams and then waits for every stream. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"
#include "error.h"

#include <errno.h>

/* Pieces large enough that queueing costs nothing next to the copy (a 256 MiB copy takes about
 * a quarter of a millisecond on an H200), small enough that a big tensor uses several streams. */
#define PEER_COPY_PIECE (256ull << 20)

int thawcore_engine_copy_device_to_device(thawcore_engine *e, const thawcore_device_copy *copies, uint32_t count)
{
    thaw_clear_error();
    if (!e || (count && !copies))
        return thaw_fail(-EINVAL, "missing argument");
    for (uint32_t i = 0; i < count; i++) {
        const thawcore_device_copy *c = &copies[i];
        if (c->length && (!c->source_address || !c->destination_address))
            return thaw_fail(-EINVAL, "copy %u has no source or destination", i);
        if (c->length && (c->source_address + c->length < c->source_address ||
                          c->destination_address + c->length < c->destination_address))
            return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "copy %u wraps around the address space", i);
    }
    pthread_mutex_lock(&e->lock);
    int rc = e->dev.ops->bind_thread(&e->dev);
    uint32_t used = 0, next_lane = 0;
    for (uint32_t i = 0; i < count && !rc; i++) {
        const thawcore_device_copy *c = &copies[i];
        for (uint64_t offset = 0; offset < c->length && !rc; offset += PEER_COPY_PIECE) {
            uint64_t n = c->length - offset < PEER_COPY_PIECE ? c->length - offset : PEER_COPY_PIECE;
            lane *l = &e->lanes[next_lane];
            rc = e->dev.ops->copy_d2d_async(&e->dev, c->destination_address + offset, c->source_address + offset,
                                            (size_t)n, l->stream);
            if (rc)
                rc = thaw_fail_context(rc, "copying %llu bytes at offset %llu of device copy %u",
                                       (unsigned long long)n, (unsigned long long)offset, i);
            next_lane = (next_lane + 1) % e->lane_count;
            if (used < e->lane_count)
                used++;
        }
    }
    /* Every queued copy completes before return, failed or not: none may land later. */
    for (uint32_t i = 0; i < used; i++) {
        int wait = e->dev.ops->stream_wait(&e->dev, e->lanes[i].stream);
        if (!rc)
            rc = wait;
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}
