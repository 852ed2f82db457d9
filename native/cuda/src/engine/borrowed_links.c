/* Borrowed links: a restore onto one GPU also uses the host links of other GPUs of the node.
 *
 * The chunk list is cut into contiguous shares by link weight: the destination's first (its
 * lanes run as in any restore, over job->chunks[0 .. n0)), then one per helper. Each lane of a
 * helper owns two streams on that helper: one copies host to device into the lane's bounce
 * slots, the other forwards a slot into the destination once an event says its copy landed.
 * A slot is reused when its forward has completed, so reads, copies in and forwards overlap.
 *
 * A helper that cannot be set up gets no share. One that fails mid-restore is dropped: what it
 * had not delivered for certain (its slots in flight, the rest of its share) is copied afterwards
 * by the destination's own lanes. Copying a chunk twice writes the same bytes to the same place,
 * and its checksum pieces were recorded from the bytes read, whether or not their forward landed,
 * so the second pass over chunks already read runs without checksums. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/restore_job.h"
#include "error.h"
#include "fault.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOUNCE_SLOTS 2 /* one filling while the other forwards */
#define DEFAULT_HELPER_LANES 2
#define MAX_WEIGHT 1e6

typedef struct {
    unsigned char *staging; /* pinned host memory, one chunk */
    uint64_t bounce;        /* the helper's device memory, one chunk */
    void *loaded;           /* recorded behind the copy into bounce */
    void *forwarded;        /* recorded behind the forwards out of it */
    int pending;            /* forwards queued, not yet known complete */
    chunk_job piece;
    uint64_t bytes;         /* tensor bytes its forwards carry */
} bounce_slot;

struct helper;

typedef struct {
    struct helper *helper;
    void *load_stream;
    void *forward_stream;
    bounce_slot slots[BOUNCE_SLOTS];
    uint32_t turn;
} helper_lane;

typedef struct borrow_run borrow_run;

typedef struct helper {
    borrow_run *run;
    thaw_device dev;
    int opened;
    int32_t ordinal;
    uint32_t lane_count;
    helper_lane lanes[THAWCORE_MAX_HELPER_LANES];
    atomic_int dropped;
    int status;             /* the error that left it out or dropped it (under run->lock) */
    char note[256];
    atomic_ullong bytes;    /* delivered for certain */
    uint32_t share_first, share_end;
    atomic_uint next;
    uint64_t planned;
} helper;

struct borrow_run {
    restore_job *job;
    helper helpers[THAWCORE_MAX_HELPERS];
    uint32_t count;
    pthread_mutex_t lock;
    /* What the destination copies after the helpers: pieces of at most one chunk, and whether
     * their checksums were recorded already. */
    chunk_job *left;
    unsigned char *left_checked;
    uint32_t left_count, left_capacity;
};

static int is_mock(const thaw_device *dev) { return strcmp(dev->ops->name, "mock") == 0; }

static int device_count_like(const thaw_device *like)
{
    return is_mock(like) ? THAWCORE_MOCK_DEVICES : thaw_device_count_cuda();
}

static void link_name(const thaw_device *like, int ordinal, char *out, size_t capacity)
{
    snprintf(out, capacity, is_mock(like) ? "mock-%d" : "cuda:%d", ordinal);
}

int thaw_borrow_check(thawcore_engine *e, const thawcore_borrow_options *b, thawcore_link_stats *links,
                      uint32_t link_capacity)
{
    if (b->struct_size < sizeof(thawcore_borrow_options))
        return thaw_fail(-EINVAL, "borrowed links: options from a newer ABI");
    if (b->helper_count == 0 || b->helper_count > THAWCORE_MAX_HELPERS || !b->helper_ordinals)
        return thaw_fail(-EINVAL, "borrowed links: %u helper devices given; 1 to %d", b->helper_count, THAWCORE_MAX_HELPERS);
    if (b->lanes_per_helper > THAWCORE_MAX_HELPER_LANES)
        return thaw_fail(-EINVAL, "borrowed links: %u lanes a helper; at most %d", b->lanes_per_helper, THAWCORE_MAX_HELPER_LANES);
    if (links && link_capacity < b->helper_count + 1)
        return thaw_fail(-EINVAL, "borrowed links: room for %u link statistics, %u needed", link_capacity, b->helper_count + 1);
    int devices = device_count_like(&e->dev);
    if (devices < 0)
        return devices;
    for (uint32_t i = 0; i < b->helper_count; i++) {
        int32_t o = b->helper_ordinals[i];
        if (o < 0 || o >= devices)
            return thaw_fail(-EINVAL, "borrowed links: no %s device %d (this machine has %d)", e->dev.ops->name, o, devices);
        if (o == e->dev.ordinal)
            return thaw_fail(-EINVAL, "borrowed links: device %d is the destination itself, not a helper", o);
        for (uint32_t j = 0; j < i; j++)
            if (b->helper_ordinals[j] == o)
                return thaw_fail(-EINVAL, "borrowed links: device %d is named twice", o);
    }
    double sum = 0;
    for (uint32_t i = 0; b->link_weights && i <= b->helper_count; i++) {
        double w = b->link_weights[i];
        if (!isfinite(w) || w < 0 || w > MAX_WEIGHT)
            return thaw_fail(-EINVAL, "borrowed links: link weight %u is %g; each must lie in [0, %g]", i, w, MAX_WEIGHT);
        sum += w;
    }
    if (b->link_weights && !(sum > 0))
        return thaw_fail(-EINVAL, "borrowed links: the link weights add up to 0");
    if (links)
        memset(links, 0, sizeof *links * (b->helper_count + 1));
    return 0;
}

/* ---- a helper's own failures: they leave it out or drop it, never fail the restore ---- */

static void drop(helper *h, int rc, const char *what)
{
    char name[32];
    link_name(&h->run->job->engine->dev, h->ordinal, name, sizeof name);
    pthread_mutex_lock(&h->run->lock);
    if (!h->status) {
        h->status = rc ? rc : THAWCORE_ERR_CUDA;
        snprintf(h->note, sizeof h->note, "%s %s (%s: %s)", name,
                 h->lane_count && h->share_end > h->share_first ? "dropped mid-restore; the destination's own link copied the rest of its share"
                                                                 : "left out",
                 what, thaw_error_text());
    }
    pthread_mutex_unlock(&h->run->lock);
    atomic_store(&h->dropped, 1);
}

static void leave_over(borrow_run *run, const chunk_job *piece, int checked)
{
    pthread_mutex_lock(&run->lock);
    if (run->left_count < run->left_capacity) {
        run->left[run->left_count] = *piece;
        run->left_checked[run->left_count++] = (unsigned char)checked;
    } else {
        thaw_restore_failed(run->job, thaw_fail(THAWCORE_ERR_INVALID_PLAN, "internal: borrowed links' leftover table overflow"),
                            UINT32_MAX);
    }
    pthread_mutex_unlock(&run->lock);
}

/* The pieces of at most one chunk (the staging and bounce slot size) that chunk c is read in. */
static uint32_t pieces_of(const restore_job *job, const chunk_job *c)
{
    uint64_t size = job->engine->chunk;
    return (uint32_t)((c->length + size - 1) / size);
}

static chunk_job piece_of(const restore_job *job, const chunk_job *c, uint32_t index)
{
    uint64_t size = job->engine->chunk, offset = (uint64_t)index * size;
    return (chunk_job){ c->extent, c->file_offset + offset, c->length - offset < size ? c->length - offset : size };
}

/* ---- setup and teardown, on worker threads: they bind the helper's context ---- */

static void release_helper(helper *h)
{
    if (!h->opened)
        return;
    thaw_device *d = &h->dev;
    d->ops->bind_thread(d);
    for (uint32_t i = 0; i < h->lane_count; i++) {
        helper_lane *l = &h->lanes[i];
        for (uint32_t s = 0; s < BOUNCE_SLOTS; s++) {
            bounce_slot *slot = &l->slots[s];
            if (slot->bounce)
                d->ops->mem_free(d, slot->bounce);
            if (slot->staging)
                d->ops->host_free(d, slot->staging);
            if (slot->loaded)
                d->ops->event_destroy(d, slot->loaded);
            if (slot->forwarded)
                d->ops->event_destroy(d, slot->forwarded);
        }
        if (l->load_stream)
            d->ops->stream_destroy(d, l->load_stream);
        if (l->forward_stream)
            d->ops->stream_destroy(d, l->forward_stream);
    }
    d->ops->close(d);
    h->opened = 0;
}

static int setup_lane(helper *h, helper_lane *l, uint64_t chunk)
{
    thaw_device *d = &h->dev;
    int rc = d->ops->stream_create(d, &l->load_stream);
    if (!rc)
        rc = d->ops->stream_create(d, &l->forward_stream);
    for (uint32_t s = 0; !rc && s < BOUNCE_SLOTS; s++) {
        bounce_slot *slot = &l->slots[s];
        if (!(rc = d->ops->event_create(d, &slot->loaded)) && !(rc = d->ops->event_create(d, &slot->forwarded)) &&
            !(rc = d->ops->mem_alloc(d, chunk, &slot->bounce)))
            rc = d->ops->host_alloc(d, (size_t)chunk, (void **)&slot->staging);
    }
    return rc;
}

static void *setup_helper(void *arg)
{
    helper *h = arg;
    thaw_device *dest = &h->run->job->engine->dev;
    int rc = thaw_fault_hit(THAWCORE_FAULT_BORROW_SETUP) ? thaw_fail(THAWCORE_ERR_CUDA, "opening the device failed (injected fault)")
             : is_mock(dest) ? thaw_device_open_mock(h->ordinal, &h->dev)
                             : thaw_device_open_cuda(h->ordinal, &h->dev);
    h->opened = rc == 0;
    if (!rc)
        rc = h->dev.ops->enable_peer_access(&h->dev, dest);
    if (!rc)
        rc = h->dev.ops->bind_thread(&h->dev);
    for (uint32_t i = 0; !rc && i < h->lane_count; i++) {
        h->lanes[i].helper = h;
        rc = setup_lane(h, &h->lanes[i], h->run->job->engine->chunk);
    }
    if (rc) {
        drop(h, rc, "cannot set it up");
        release_helper(h);
    }
    return NULL;
}

static void *teardown_helper(void *arg)
{
    release_helper(arg);
    return NULL;
}

/* Runs fn(helper) for every helper, each on a thread of its own (failures are the helpers'). */
static void for_each_helper(borrow_run *run, void *(*fn)(void *))
{
    first_failure unused;
    thaw_first_failure_init(&unused);
    thaw_run_workers(run->count, fn, run->helpers, sizeof run->helpers[0], &unused);
    if (unused.code) /* a thread that could not start: its helper did nothing */
        for (uint32_t i = 0; i < run->count; i++)
            if (fn == setup_helper && !run->helpers[i].opened && !run->helpers[i].status)
                drop(&run->helpers[i], unused.code, "cannot start its thread");
    thaw_first_failure_finish(&unused);
    thaw_clear_error();
}

/* ---- a helper lane ---- */

typedef struct { helper_lane *lane; bounce_slot *slot; } forward;

static int forward_piece(void *context, uint64_t dst, const unsigned char *src, size_t length, uint32_t region)
{
    forward *f = context;
    helper *h = f->lane->helper;
    if (atomic_load(&h->dropped))
        return 0; /* the checksum still goes on: these bytes are read once */
    thaw_device *d = &h->dev;
    int rc = thaw_fault_hit(THAWCORE_FAULT_BORROW_COPY)
                 ? thaw_fail(THAWCORE_ERR_CUDA, "cuMemcpyPeerAsync failed (injected fault)")
                 : d->ops->copy_d2d_async(d, dst, f->slot->bounce + (uint64_t)(src - f->slot->staging), length, f->lane->forward_stream);
    if (rc) {
        char what[64];
        snprintf(what, sizeof what, "forwarding region %u", region);
        drop(h, rc, what);
    }
    return 0;
}

static void confirm(restore_job *job, helper *h, bounce_slot *slot)
{
    atomic_fetch_add(&h->bytes, slot->bytes);
    thaw_restore_count_copied(job, slot->bytes);
}

/* Reads piece p into the lane's next slot, copies it into that slot's bounce memory and queues
 * its forwards behind an event. */
static void carry_piece(helper_lane *l, const chunk_job *p)
{
    helper *h = l->helper;
    restore_job *job = h->run->job;
    thaw_device *d = &h->dev;
    bounce_slot *slot = &l->slots[l->turn++ % BOUNCE_SLOTS];
    if (slot->pending) {
        slot->pending = 0;
        int rc = d->ops->event_wait(d, slot->forwarded);
        if (rc) {
            drop(h, rc, "waiting for a forward");
            leave_over(h->run, &slot->piece, 1);
        } else {
            confirm(job, h, slot);
        }
    }
    if (atomic_load(&h->dropped)) {
        leave_over(h->run, p, 0);
        return;
    }
    uint64_t valid_end = 0, copied = 0;
    if (thaw_restore_read(job, slot->staging, p, &valid_end))
        return; /* the file's failure: the restore's */
    uint64_t length = valid_end - p->file_offset;
    int rc = 0;
    if (length) {
        rc = thaw_fault_hit(THAWCORE_FAULT_BORROW_COPY)
                 ? thaw_fail(THAWCORE_ERR_CUDA, "cuMemcpyHtoDAsync failed (injected fault)")
                 : d->ops->copy_h2d_async(d, slot->bounce, slot->staging, (size_t)length, l->load_stream);
        if (!rc)
            rc = d->ops->event_record(d, slot->loaded, l->load_stream);
        if (!rc)
            rc = d->ops->stream_wait_event(d, l->forward_stream, slot->loaded);
        if (rc)
            drop(h, rc, "copying into its bounce memory");
    }
    forward f = { l, slot };
    if (thaw_restore_queue_chunk_with(job, p, slot->staging, valid_end, &copied, forward_piece, &f))
        return;
    if (!atomic_load(&h->dropped) && (rc = d->ops->event_record(d, slot->forwarded, l->forward_stream)))
        drop(h, rc, "recording a forward");
    if (atomic_load(&h->dropped)) {
        leave_over(h->run, p, 1);
        return;
    }
    slot->pending = 1;
    slot->piece = *p;
    slot->bytes = copied;
}

static void *helper_lane_main(void *arg)
{
    helper_lane *l = *(helper_lane **)arg;
    helper *h = l->helper;
    restore_job *job = h->run->job;
    thaw_device *d = &h->dev;
    int rc = d->ops->bind_thread(d);
    if (rc)
        drop(h, rc, "binding a thread to it");
    while (!atomic_load(&job->failure.failed) && !atomic_load(&h->dropped)) {
        if (thaw_restore_cancelled(job))
            break;
        uint32_t index = atomic_fetch_add(&h->next, 1);
        if (index >= h->share_end)
            break;
        const chunk_job *c = &job->chunks[index];
        for (uint32_t i = 0; i < pieces_of(job, c) && !atomic_load(&job->failure.failed); i++) {
            chunk_job p = piece_of(job, c, i);
            if (atomic_load(&h->dropped))
                leave_over(h->run, &p, 0);
            else
                carry_piece(l, &p);
        }
    }
    /* Nothing in flight past this point: the destination may copy these pieces again next. */
    if (!rc && !(rc = d->ops->stream_wait(d, l->load_stream)))
        rc = d->ops->stream_wait(d, l->forward_stream);
    if (rc)
        drop(h, rc, "waiting for its copies");
    for (uint32_t s = 0; s < BOUNCE_SLOTS; s++) {
        bounce_slot *slot = &l->slots[s];
        if (!slot->pending)
            continue;
        slot->pending = 0;
        if (rc)
            leave_over(h->run, &slot->piece, 1);
        else
            confirm(job, h, slot);
    }
    return NULL;
}

static void *helpers_main(void *arg)
{
    borrow_run *run = arg;
    helper_lane *lanes[MAX_THREADS];
    uint32_t n = 0;
    for (uint32_t i = 0; i < run->count; i++)
        for (uint32_t j = 0; !run->helpers[i].status && j < run->helpers[i].lane_count && n < MAX_THREADS; j++)
            lanes[n++] = &run->helpers[i].lanes[j];
    first_failure unused;
    thaw_first_failure_init(&unused);
    thaw_run_workers(n, helper_lane_main, lanes, sizeof lanes[0], &unused);
    if (unused.code) /* lanes that never started: their helpers' shares are left over */
        for (uint32_t i = 0; i < run->count; i++)
            if (!run->helpers[i].status)
                drop(&run->helpers[i], unused.code, "cannot start its threads");
    thaw_first_failure_finish(&unused);
    return NULL;
}

/* ---- the split and the run ---- */

/* Cuts job->chunks into contiguous shares by weight, the destination's first. Returns the end
 * of the destination's share; helpers get theirs in share_first/share_end. */
static uint32_t split(borrow_run *run, const thawcore_borrow_options *b, uint64_t *planned_direct)
{
    restore_job *job = run->job;
    double weight[THAWCORE_MAX_HELPERS + 1], total_weight = 0, total_bytes = 0;
    for (uint32_t k = 0; k <= run->count; k++) {
        weight[k] = k > 0 && run->helpers[k - 1].status ? 0 : b->link_weights ? b->link_weights[k] : 1;
        total_weight += weight[k];
    }
    if (!(total_weight > 0)) { /* only helpers that could not be set up had weight: the destination takes all */
        weight[0] = 1;
        total_weight = 1;
    }
    for (uint32_t i = 0; i < job->chunk_count; i++)
        total_bytes += (double)job->chunks[i].length;
    uint32_t index = 0, last = 0, direct_end = 0;
    for (uint32_t k = 0; k <= run->count; k++)
        if (weight[k] > 0)
            last = k;
    double acc = 0, cumulative = 0;
    for (uint32_t k = 0; k <= run->count; k++) {
        cumulative += weight[k];
        double target = k == last ? INFINITY : total_bytes * cumulative / total_weight;
        uint32_t first = index;
        uint64_t planned = 0;
        while (index < job->chunk_count && (weight[k] > 0 && acc + (double)job->chunks[index].length / 2 < target)) {
            acc += (double)job->chunks[index].length;
            planned += job->chunks[index].length;
            index++;
        }
        if (k == 0) {
            direct_end = index;
            *planned_direct = planned;
        } else {
            helper *h = &run->helpers[k - 1];
            h->share_first = first;
            h->share_end = index;
            atomic_store(&h->next, first);
            h->planned = planned;
        }
    }
    return direct_end;
}

/* The dropped helpers' unclaimed chunks join the pieces their lanes left over. */
static void collect_unclaimed(borrow_run *run)
{
    for (uint32_t i = 0; i < run->count; i++) {
        helper *h = &run->helpers[i];
        if (!atomic_load(&h->dropped))
            continue;
        uint32_t next = atomic_load(&h->next);
        for (uint32_t c = next < h->share_end ? next : h->share_end; c < h->share_end; c++)
            for (uint32_t p = 0; p < pieces_of(run->job, &run->job->chunks[c]); p++) {
                chunk_job piece = piece_of(run->job, &run->job->chunks[c], p);
                leave_over(run, &piece, 0);
            }
    }
}

/* The destination's lanes over pieces [first, first + count) of the leftovers, with or without checksums. */
static void take_over(borrow_run *run, uint32_t first, uint32_t count, int verify)
{
    restore_job *job = run->job;
    if (!count || atomic_load(&job->failure.failed))
        return;
    int saved_verify = job->verify;
    job->chunks = run->left + first;
    job->chunk_count = count;
    atomic_store(&job->next_chunk, 0);
    job->verify = saved_verify && verify;
    thaw_restore_run_lanes(job);
    job->verify = saved_verify;
}

static int allocate_leftovers(borrow_run *run)
{
    uint64_t capacity = 0;
    for (uint32_t i = 0; i < run->count; i++)
        for (uint32_t c = run->helpers[i].share_first; c < run->helpers[i].share_end; c++)
            capacity += pieces_of(run->job, &run->job->chunks[c]);
    if (capacity > UINT32_MAX / 2)
        return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "borrowed links: too many pieces");
    run->left_capacity = (uint32_t)capacity;
    run->left = malloc((capacity ? capacity : 1) * sizeof(chunk_job));
    run->left_checked = malloc(capacity ? capacity : 1);
    if (!run->left || !run->left_checked)
        return thaw_fail(-ENOMEM, "out of host memory planning borrowed links");
    return 0;
}

static void report(borrow_run *run, thawcore_link_stats *links, uint64_t planned_direct, uint64_t taken_over, int any_helper)
{
    restore_job *job = run->job;
    thawcore_engine *e = job->engine;
    uint64_t borrowed = 0;
    for (uint32_t i = 0; i < run->count; i++)
        borrowed += atomic_load(&run->helpers[i].bytes);
    uint64_t copied = atomic_load(&job->bytes_copied);
    if (!links)
        return;
    links[0] = (thawcore_link_stats){ .ordinal = e->dev.ordinal, .role = THAWCORE_LINK_DIRECT, .lanes = e->lane_count,
                                      .planned_bytes = planned_direct, .bytes = copied > borrowed ? copied - borrowed : 0,
                                      .taken_over_bytes = taken_over };
    if (!any_helper)
        snprintf(links[0].note, sizeof links[0].note, "no borrowed link could be set up; the destination's own link served every byte");
    for (uint32_t i = 0; i < run->count; i++) {
        helper *h = &run->helpers[i];
        links[1 + i] = (thawcore_link_stats){ .ordinal = h->ordinal, .role = THAWCORE_LINK_BORROWED, .status = h->status,
                                              .lanes = h->lane_count, .planned_bytes = h->planned, .bytes = atomic_load(&h->bytes) };
        snprintf(links[1 + i].note, sizeof links[1 + i].note, "%s", h->note);
    }
}

void thaw_borrowed_run(restore_job *job, const thawcore_borrow_options *b, thawcore_link_stats *links)
{
    borrow_run *run = calloc(1, sizeof *run);
    if (!run) {
        thaw_restore_failed(job, thaw_fail(-ENOMEM, "out of host memory planning borrowed links"), UINT32_MAX);
        return;
    }
    run->job = job;
    run->count = b->helper_count;
    pthread_mutex_init(&run->lock, NULL);
    uint32_t lanes = b->lanes_per_helper ? b->lanes_per_helper : DEFAULT_HELPER_LANES;
    if (lanes * run->count > MAX_THREADS)
        lanes = MAX_THREADS / run->count;
    for (uint32_t i = 0; i < run->count; i++) {
        run->helpers[i].run = run;
        run->helpers[i].ordinal = b->helper_ordinals[i];
        run->helpers[i].lane_count = lanes;
    }
    for_each_helper(run, setup_helper);
    int any_helper = 0;
    for (uint32_t i = 0; i < run->count; i++) {
        if (run->helpers[i].status)
            run->helpers[i].lane_count = 0;
        else
            any_helper = 1;
    }

    chunk_job *chunks = job->chunks;
    uint32_t chunk_count = job->chunk_count;
    int zero_copy = job->zero_copy;
    uint64_t planned_direct = 0, taken_over = 0;
    job->chunk_count = split(run, b, &planned_direct);
    int rc = allocate_leftovers(run);
    pthread_t helpers_thread;
    int helpers_started = !rc && any_helper && pthread_create(&helpers_thread, NULL, helpers_main, run) == 0;
    if (rc) {
        thaw_restore_failed(job, rc, UINT32_MAX);
    } else {
        if (any_helper && !helpers_started)
            for (uint32_t i = 0; i < run->count; i++)
                if (!run->helpers[i].status)
                    drop(&run->helpers[i], thaw_fail(-EAGAIN, "cannot start a thread"), "starting its lanes");
        thaw_restore_run_lanes(job);
        if (helpers_started)
            pthread_join(helpers_thread, NULL);
        collect_unclaimed(run);
        /* Checked pieces first: they go again without checksums. */
        uint32_t checked = 0;
        for (uint32_t i = 0; i < run->left_count; i++)
            if (run->left_checked[i]) {
                chunk_job t = run->left[checked];
                run->left[checked] = run->left[i];
                run->left[i] = t;
                run->left_checked[i] = run->left_checked[checked];
                run->left_checked[checked++] = 1;
            }
        uint64_t before = atomic_load(&job->bytes_copied);
        job->zero_copy = 0; /* leftover pieces are read through staging */
        take_over(run, 0, checked, 0);
        take_over(run, checked, run->left_count - checked, 1);
        taken_over = atomic_load(&job->bytes_copied) - before;
    }
    job->chunks = chunks;
    job->chunk_count = chunk_count;
    job->zero_copy = zero_copy;
    report(run, links, planned_direct, taken_over, any_helper);
    for_each_helper(run, teardown_helper);
    free(run->left);
    free(run->left_checked);
    pthread_mutex_destroy(&run->lock);
    free(run);
}
