/* Engine create and destroy: the device, and one lane per reader thread with its
 * stream, events and pinned staging slots. Every job borrows these lanes. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"
#include "error.h"
#include "fault.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int thawcore_device_count(int32_t device_kind)
{
    thaw_clear_error();
    if (device_kind == THAWCORE_DEVICE_MOCK)
        return THAWCORE_MOCK_DEVICES;
    if (device_kind == THAWCORE_DEVICE_CUDA)
        return thaw_device_count_cuda();
    return thaw_fail(-EINVAL, "unknown device kind %d", device_kind);
}

int thawcore_device_identity(int32_t device_kind, int32_t ordinal, char *out, uint32_t capacity)
{
    thaw_clear_error();
    if (!out || capacity == 0)
        return thaw_fail(-EINVAL, "missing argument");
    if (device_kind == THAWCORE_DEVICE_MOCK)
        return thaw_device_identity_mock(ordinal, out, capacity);
    if (device_kind == THAWCORE_DEVICE_CUDA)
        return thaw_device_identity_cuda(ordinal, out, capacity);
    return thaw_fail(-EINVAL, "unknown device kind %d", device_kind);
}

static void release_lanes(thawcore_engine *e)
{
    for (uint32_t i = 0; e->lanes && i < e->lane_count; i++) {
        lane *l = &e->lanes[i];
        for (uint32_t s = 0; l->events && s < e->slots_per_lane; s++)
            if (l->events[s])
                e->dev.ops->event_destroy(&e->dev, l->events[s]);
        for (uint32_t s = 0; l->slots && s < e->slots_per_lane; s++)
            if (l->slots[s])
                e->dev.ops->host_free(&e->dev, l->slots[s]);
        for (uint32_t s = 0; s < ZERO_COPY_DEPTH; s++)
            if (l->zero_copy_events[s])
                e->dev.ops->event_destroy(&e->dev, l->zero_copy_events[s]);
        if (l->stream)
            e->dev.ops->stream_destroy(&e->dev, l->stream);
        free(l->events);
        free(l->slots);
        free(l->pending);
    }
    free(e->lanes);
}

/* Pinning costs about 0.4 ms a MiB (0.3 s for the default 512 MiB at engine start, when
 * it was done there); a lane pins a slot when it first needs one, while its other slots'
 * reads and copies run. */
int thaw_lane_slot(thawcore_engine *e, lane *l, uint32_t slot, unsigned char **out)
{
    if (!l->slots[slot]) {
        if (thaw_fault_hit(THAWCORE_FAULT_PINNED_ALLOC))
            return thaw_fail(THAWCORE_ERR_OUT_OF_PINNED_MEMORY, "cannot pin %llu bytes of staging memory (injected fault)",
                             (unsigned long long)e->chunk);
        int rc = e->dev.ops->host_alloc(&e->dev, (size_t)e->chunk, (void **)&l->slots[slot]);
        if (rc)
            return rc;
    }
    *out = l->slots[slot];
    return 0;
}

typedef struct { thawcore_engine *engine; uint32_t index; first_failure *failure; } lane_setup;

static void *setup_lane(void *arg)
{
    lane_setup *setup = arg;
    thawcore_engine *e = setup->engine;
    lane *l = &e->lanes[setup->index];
    uint32_t slots = e->slots_per_lane;
    int rc = e->dev.ops->bind_thread(&e->dev);
    l->events = calloc(slots, sizeof(void *));
    l->slots = calloc(slots, sizeof(unsigned char *));
    l->pending = calloc(slots, 1);
    if (!rc && (!l->events || !l->slots || !l->pending))
        rc = thaw_fail(-ENOMEM, "out of host memory");
    if (!rc)
        rc = e->dev.ops->stream_create(&e->dev, &l->stream);
    for (uint32_t s = 0; !rc && s < slots; s++)
        rc = e->dev.ops->event_create(&e->dev, &l->events[s]);
    if (rc)
        thaw_first_failure_record(setup->failure, rc, UINT32_MAX);
    return NULL;
}

int thawcore_engine_create(const thawcore_engine_options *options, thawcore_engine **out)
{
    thaw_clear_error();
    if (!options || !out || options->struct_size < sizeof(thawcore_engine_options))
        return thaw_fail(-EINVAL, "thawcore_engine_create: options missing or from a newer ABI");
    *out = NULL;
    uint64_t chunk = options->chunk_bytes ? options->chunk_bytes : DEFAULT_CHUNK;
    uint64_t staging = options->staging_bytes ? options->staging_bytes : DEFAULT_STAGING;
    if (chunk % ALIGN || chunk == 0)
        return thaw_fail(-EINVAL, "chunk size %llu is not a positive multiple of 4096", (unsigned long long)chunk);
    if (staging < chunk)
        return thaw_fail(-EINVAL, "staging memory (%llu bytes) is smaller than one chunk (%llu bytes)",
                         (unsigned long long)staging, (unsigned long long)chunk);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    /* One lane a core, up to 16: warm restores are bound by page-cache copies, which scale with threads. */
    uint32_t lanes = options->io_threads ? options->io_threads : (uint32_t)(cores > 16 ? 16 : (cores < 1 ? 1 : cores));
    if (lanes > MAX_THREADS)
        lanes = MAX_THREADS;
    uint64_t total_slots = staging / chunk;
    if (total_slots < (uint64_t)lanes * 2) /* keep two slots a lane so reads overlap copies */
        lanes = (uint32_t)(total_slots / 2 ? total_slots / 2 : 1);
    uint32_t slots = (uint32_t)(total_slots / lanes);

    thawcore_engine *e = calloc(1, sizeof *e);
    if (!e)
        return thaw_fail(-ENOMEM, "out of host memory");
    int rc;
    if (options->device_kind == THAWCORE_DEVICE_MOCK)
        rc = thaw_device_open_mock(options->device_ordinal, &e->dev);
    else if (options->device_kind == THAWCORE_DEVICE_CUDA)
        rc = thaw_device_open_cuda(options->device_ordinal, &e->dev);
    else
        rc = thaw_fail(-EINVAL, "unknown device kind %d", options->device_kind);
    if (rc) {
        free(e);
        return rc;
    }
    e->lane_count = lanes;
    e->slots_per_lane = slots;
    e->chunk = chunk;
    pthread_mutex_init(&e->lock, NULL);

    rc = e->dev.ops->bind_thread(&e->dev);
    if (!rc && !(e->lanes = calloc(lanes, sizeof(lane))))
        rc = thaw_fail(-ENOMEM, "out of host memory");
    if (!rc) {
        first_failure failure;
        thaw_first_failure_init(&failure);
        lane_setup setups[MAX_THREADS];
        for (uint32_t i = 0; i < lanes; i++)
            setups[i] = (lane_setup){ e, i, &failure };
        thaw_run_workers(lanes, setup_lane, setups, sizeof setups[0], &failure);
        rc = thaw_first_failure_finish(&failure);
    }
    if (rc) {
        char text[1024];
        snprintf(text, sizeof text, "%s", thaw_error_text());
        release_lanes(e);
        e->dev.ops->close(&e->dev);
        pthread_mutex_destroy(&e->lock);
        free(e);
        thaw_set_error_text(text);
        return rc;
    }
    *out = e;
    return 0;
}

void thawcore_engine_destroy(thawcore_engine *e)
{
    if (!e)
        return;
    thaw_share_release_join(e, 0);
    e->dev.ops->bind_thread(&e->dev);
    release_lanes(e);
    e->dev.ops->close(&e->dev);
    pthread_mutex_destroy(&e->lock);
    free(e);
}
