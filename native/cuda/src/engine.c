/* The engine: a device, its pinned staging ring, and the restore pipeline.
 *
 * Restore: the extents are cut into staging-sized chunks; each reader thread
 * ("lane") owns a stream and a few staging slots, claims the next chunk, reads
 * it into a free slot, and queues the device copies of the segments it covers on
 * its stream. A slot is reused only after the event recorded behind its copies
 * has completed, so reads, staging and DMA overlap across lanes and slots. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "device.h"
#include "error.h"
#include "fault.h"
#include "file_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The first failure of a job run on several threads: its code and message, the region
 * it concerns, and a flag every worker polls to stop early. */
typedef struct {
    pthread_mutex_t lock;
    atomic_int failed;
    int code;
    uint32_t region;
    char text[1024];
} first_failure;

static void first_failure_init(first_failure *f)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->lock, NULL);
    f->region = UINT32_MAX;
}

/* Keeps the first failure (with the calling thread's message); later ones only stop work. */
static void first_failure_record(first_failure *f, int code, uint32_t region)
{
    pthread_mutex_lock(&f->lock);
    if (!f->code) {
        f->code = code;
        f->region = region;
        snprintf(f->text, sizeof f->text, "%s", thaw_error_text());
    }
    pthread_mutex_unlock(&f->lock);
    atomic_store(&f->failed, 1);
}

/* Hands the failure's message to the calling thread; returns its code (0 when none). */
static int first_failure_finish(first_failure *f)
{
    pthread_mutex_destroy(&f->lock);
    if (f->code)
        thaw_set_error_text(f->text);
    return f->code;
}

/* Runs worker on `count` threads, each with its own element of args, and joins them all.
 * A thread that cannot start is a failure; the ones already started see it and stop. */
static void run_workers(uint32_t count, void *(*worker)(void *), void *args, size_t arg_size, first_failure *f)
{
    pthread_t threads[MAX_THREADS];
    uint32_t started = 0;
    for (; started < count; started++) {
        if (pthread_create(&threads[started], NULL, worker, (char *)args + started * arg_size) != 0) {
            first_failure_record(f, thaw_fail(-EAGAIN, "cannot start worker thread %u", started), UINT32_MAX);
            break;
        }
    }
    for (uint32_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
}

int thawcore_device_count(int32_t device_kind)
{
    thaw_clear_error();
    if (device_kind == THAWCORE_DEVICE_MOCK)
        return 1;
    if (device_kind == THAWCORE_DEVICE_CUDA)
        return thaw_device_count_cuda();
    return thaw_fail(-EINVAL, "unknown device kind %d", device_kind);
}

static void release_lanes(thawcore_engine *e)
{
    for (uint32_t i = 0; e->lanes && i < e->lane_count; i++) {
        lane *l = &e->lanes[i];
        for (uint32_t s = 0; l->events && s < e->slots_per_lane; s++)
            if (l->events[s])
                e->dev.ops->event_destroy(&e->dev, l->events[s]);
        if (l->stream)
            e->dev.ops->stream_destroy(&e->dev, l->stream);
        if (l->staging)
            e->dev.ops->host_free(&e->dev, l->staging);
        free(l->events);
        free(l->slots);
        free(l->pending);
    }
    free(e->lanes);
}

typedef struct { thawcore_engine *engine; uint32_t index; first_failure *failure; } lane_setup;

/* Pinning memory costs about 0.4 ms a MiB; lanes pin their own slots in parallel. */
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
    if (!rc && thaw_fault_hit(THAWCORE_FAULT_PINNED_ALLOC))
        rc = thaw_fail(THAWCORE_ERR_OUT_OF_PINNED_MEMORY, "cannot pin %llu bytes of staging memory (injected fault)",
                       (unsigned long long)(e->chunk * slots));
    if (!rc)
        rc = e->dev.ops->host_alloc(&e->dev, (size_t)(e->chunk * slots), (void **)&l->staging);
    if (!rc)
        rc = e->dev.ops->stream_create(&e->dev, &l->stream);
    for (uint32_t s = 0; !rc && s < slots; s++) {
        l->slots[s] = l->staging + s * e->chunk;
        rc = e->dev.ops->event_create(&e->dev, &l->events[s]);
    }
    if (rc)
        first_failure_record(setup->failure, rc, UINT32_MAX);
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
        first_failure_init(&failure);
        lane_setup setups[MAX_THREADS];
        for (uint32_t i = 0; i < lanes; i++)
            setups[i] = (lane_setup){ e, i, &failure };
        run_workers(lanes, setup_lane, setups, sizeof setups[0], &failure);
        rc = first_failure_finish(&failure);
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
    e->dev.ops->bind_thread(&e->dev);
    release_lanes(e);
    e->dev.ops->close(&e->dev);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

/* ---- restore ---- */

typedef struct { uint32_t extent; uint64_t file_offset; uint64_t length; } chunk_job;
typedef struct { uint32_t region; uint32_t crc; uint64_t offset; uint64_t length; } crc_piece;

typedef struct {
    thawcore_engine *engine;
    const char *path;
    int fd;
    const thawcore_extent *extents;
    const thawcore_segment *segments;
    chunk_job *chunks;
    uint32_t chunk_count;
    const thawcore_restore_options *options;
    int verify;
    crc_piece *pieces;
    uint32_t piece_capacity;

    atomic_uint next_chunk;
    atomic_uint piece_count;
    atomic_ullong bytes_read;
    atomic_ullong bytes_copied;
    atomic_llong last_progress_ms;
    uint64_t bytes_total;

    first_failure failure;
} restore_job;

typedef struct { restore_job *job; uint32_t lane; } lane_arg;

static void record_failure(restore_job *job, int code, uint32_t region)
{
    first_failure_record(&job->failure, code, region);
}

/* Calls progress at most every 100 ms across all workers: the one that wins the swap reports. */
static void throttled_progress(atomic_llong *last_ms, thawcore_progress_fn progress, void *user,
                               uint64_t done, uint64_t total)
{
    if (!progress)
        return;
    long long now = (long long)(now_seconds() * 1000.0);
    long long last = atomic_load(last_ms);
    if (now - last >= 100 && atomic_compare_exchange_strong(last_ms, &last, now))
        progress(user, done, total);
}

static void report_progress(restore_job *job, uint64_t done)
{
    const thawcore_restore_options *o = job->options;
    if (o)
        throttled_progress(&job->last_progress_ms, o->progress, o->progress_user, done, job->bytes_total);
}

/* First segment of the extent that ends after offset. */
static uint32_t first_segment_after(const thawcore_extent *x, const thawcore_segment *segs, uint64_t offset)
{
    uint32_t lo = x->first_segment, hi = x->first_segment + x->segment_count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (segs[mid].file_offset + segs[mid].length <= offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int process_chunk(restore_job *job, lane *l, uint32_t slot, const chunk_job *c)
{
    thawcore_engine *e = job->engine;
    unsigned char *buffer = l->slots[slot];
    const thawcore_extent *x = &job->extents[c->extent];
    uint32_t first = first_segment_after(x, job->segments, c->file_offset);
    uint32_t first_region = first < x->first_segment + x->segment_count ? job->segments[first].region : UINT32_MAX;

    ssize_t got = thaw_fault_hit(THAWCORE_FAULT_READ_EIO) ? -EIO
                  : thaw_pread_full(job->fd, buffer, (size_t)c->length, c->file_offset);
    if (got > 0 && thaw_fault_hit(THAWCORE_FAULT_SHORT_READ))
        got = 0; /* the file ends where this chunk starts */
    if (got < 0) {
        int code = thaw_fail((int)got, "reading %s at offset %llu (region %u): %s", job->path,
                             (unsigned long long)c->file_offset, first_region, strerror((int)-got));
        record_failure(job, code, first_region);
        return code;
    }
    atomic_fetch_add(&job->bytes_read, (uint64_t)got);
    uint64_t chunk_end = c->file_offset + c->length;
    uint64_t valid_end = c->file_offset + (uint64_t)got;
    uint64_t copied = 0;
    for (uint32_t s = first; s < x->first_segment + x->segment_count; s++) {
        const thawcore_segment *seg = &job->segments[s];
        if (seg->file_offset >= chunk_end)
            break;
        uint64_t start = seg->file_offset > c->file_offset ? seg->file_offset : c->file_offset;
        uint64_t seg_end = seg->file_offset + seg->length;
        uint64_t end = seg_end < chunk_end ? seg_end : chunk_end;
        if (end > valid_end) {
            int code = thaw_fail(THAWCORE_ERR_SHORT_READ,
                                 "%s is truncated: region %u needs bytes up to offset %llu, the file ends before %llu",
                                 job->path, seg->region, (unsigned long long)end, (unsigned long long)valid_end);
            record_failure(job, code, seg->region);
            return code;
        }
        const unsigned char *src = buffer + (start - c->file_offset);
        if (seg->device_address) {
            uint64_t dst = seg->device_address + (start - seg->file_offset);
            int rc = thaw_fault_hit(THAWCORE_FAULT_COPY)
                         ? thaw_fail(THAWCORE_ERR_CUDA, "cuMemcpyHtoDAsync failed (injected fault)")
                         : e->dev.ops->copy_h2d_async(&e->dev, dst, src, (size_t)(end - start), l->stream);
            if (rc) {
                int code = thaw_fail_context(rc, "copying region %u of %s to the device", seg->region, job->path);
                record_failure(job, code, seg->region);
                return code;
            }
            copied += end - start;
        }
        if (job->verify) {
            uint32_t index = atomic_fetch_add(&job->piece_count, 1);
            if (index >= job->piece_capacity) {
                int code = thaw_fail(THAWCORE_ERR_INVALID_PLAN, "internal: checksum piece table overflow");
                record_failure(job, code, seg->region);
                return code;
            }
            job->pieces[index] = (crc_piece){ seg->region, thawcore_crc32c(0, src, (size_t)(end - start)),
                                              start - seg->file_offset, end - start };
        }
    }
    int rc = thaw_fault_hit(THAWCORE_FAULT_EVENT) ? thaw_fail(THAWCORE_ERR_CUDA, "cuEventRecord failed (injected fault)")
                                                  : e->dev.ops->event_record(&e->dev, l->events[slot], l->stream);
    if (rc) {
        int code = thaw_fail_context(rc, "recording the copies of region %u of %s", first_region, job->path);
        record_failure(job, code, first_region);
        return code;
    }
    l->pending[slot] = 1;
    uint64_t done = atomic_fetch_add(&job->bytes_copied, copied) + copied;
    report_progress(job, job->verify && !copied ? atomic_load(&job->bytes_read) : done);
    return 0;
}

static void *lane_main(void *arg)
{
    lane_arg *a = arg;
    restore_job *job = a->job;
    thawcore_engine *e = job->engine;
    lane *l = &e->lanes[a->lane];
    int rc = e->dev.ops->bind_thread(&e->dev);
    if (rc) {
        record_failure(job, rc, UINT32_MAX);
        return NULL;
    }
    uint32_t turn = 0;
    while (!atomic_load(&job->failure.failed)) {
        if (job->options && job->options->cancel && *job->options->cancel) {
            record_failure(job, thaw_fail(THAWCORE_ERR_CANCELED, "restore of %s was cancelled", job->path), UINT32_MAX);
            break;
        }
        uint32_t index = atomic_fetch_add(&job->next_chunk, 1);
        if (index >= job->chunk_count)
            break;
        uint32_t slot = turn++ % e->slots_per_lane;
        if (l->pending[slot]) {
            l->pending[slot] = 0;
            if ((rc = e->dev.ops->event_wait(&e->dev, l->events[slot]))) {
                record_failure(job, thaw_fail_context(rc, "waiting for copies from %s", job->path), UINT32_MAX);
                break;
            }
        }
        if (process_chunk(job, l, slot, &job->chunks[index]))
            break;
    }
    /* Never leave a copy in flight: the staging slots are reused by the next restore. */
    rc = e->dev.ops->stream_wait(&e->dev, l->stream);
    memset(l->pending, 0, e->slots_per_lane);
    if (rc)
        record_failure(job, rc, UINT32_MAX);
    return NULL;
}

static int validate_plan(thawcore_engine *e, const thawcore_extent *extents, uint32_t extent_count,
                         const thawcore_segment *segments, uint32_t segment_count, int direct,
                         uint64_t *chunk_count)
{
    uint64_t chunks = 0;
    for (uint32_t i = 0; i < extent_count; i++) {
        const thawcore_extent *x = &extents[i];
        if (x->file_offset + x->length < x->file_offset ||
            (uint64_t)x->first_segment + x->segment_count > segment_count)
            return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "extent %u is out of range", i);
        if (direct && (x->file_offset % ALIGN || x->length % ALIGN))
            return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "extent %u is not 4096-aligned, as O_DIRECT needs", i);
        uint64_t previous_end = x->file_offset;
        for (uint32_t s = x->first_segment; s < x->first_segment + x->segment_count; s++) {
            const thawcore_segment *seg = &segments[s];
            if (seg->file_offset < previous_end || seg->file_offset + seg->length < seg->file_offset ||
                seg->file_offset + seg->length > x->file_offset + x->length)
                return thaw_fail(THAWCORE_ERR_INVALID_PLAN,
                                 "segment %u (region %u) is not inside extent %u in ascending order", s, seg->region, i);
            if (seg->device_address && seg->device_address + seg->length < seg->device_address)
                return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "segment %u (region %u) wraps the address space", s, seg->region);
            previous_end = seg->file_offset + seg->length;
        }
        chunks += (x->length + e->chunk - 1) / e->chunk;
    }
    if (chunks > UINT32_MAX / 2)
        return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "plan has too many chunks");
    *chunk_count = chunks;
    return 0;
}

static int compare_pieces(const void *pa, const void *pb)
{
    const crc_piece *a = pa, *b = pb;
    if (a->region != b->region)
        return a->region < b->region ? -1 : 1;
    return a->offset < b->offset ? -1 : a->offset > b->offset;
}

static int check_checksums(restore_job *job)
{
    const thawcore_restore_options *o = job->options;
    uint32_t count = atomic_load(&job->piece_count);
    /* Pieces arrive in any order; a region's pieces are combined in file order. */
    qsort(job->pieces, count, sizeof(crc_piece), compare_pieces);
    uint32_t i = 0;
    for (uint32_t region = 0; region < o->region_count; region++) {
        uint32_t crc = 0;
        uint64_t length = 0;
        while (i < count && job->pieces[i].region < region)
            i++;
        for (; i < count && job->pieces[i].region == region; i++) {
            if (job->pieces[i].offset != length)
                return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "region %u is not covered exactly once", region);
            crc = thawcore_crc32c_combine(crc, job->pieces[i].crc, job->pieces[i].length);
            length += job->pieces[i].length;
        }
        if (length == 0 && o->region_length[region] != 0)
            continue; /* not part of this restore */
        if (length != o->region_length[region])
            return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "region %u: %llu of %llu bytes covered", region,
                             (unsigned long long)length, (unsigned long long)o->region_length[region]);
        if (crc != o->region_crc32c[region]) {
            job->failure.region = region;
            return thaw_fail(THAWCORE_ERR_CHECKSUM,
                             "%s: region %u is corrupt (CRC32C 0x%08x, the snapshot records 0x%08x)",
                             job->path, region, crc, o->region_crc32c[region]);
        }
    }
    return 0;
}

int thawcore_engine_restore(thawcore_engine *e, const char *path,
                            const thawcore_extent *extents, uint32_t extent_count,
                            const thawcore_segment *segments, uint32_t segment_count,
                            const thawcore_restore_options *options, thawcore_restore_stats *stats)
{
    thaw_clear_error();
    if (!e || !path || (extent_count && !extents) || (segment_count && !segments))
        return thaw_fail(-EINVAL, "thawcore_engine_restore: missing argument");
    if (options && options->struct_size < sizeof(thawcore_restore_options))
        return thaw_fail(-EINVAL, "thawcore_engine_restore: options from a newer ABI");
    int verify = options && options->region_crc32c;
    if (verify && !options->region_length)
        return thaw_fail(-EINVAL, "thawcore_engine_restore: checksums without region lengths");
    for (uint32_t s = 0; verify && s < segment_count; s++)
        if (segments[s].region >= options->region_count)
            return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "segment %u names region %u of %u", s,
                             segments[s].region, options->region_count);

    pthread_mutex_lock(&e->lock);
    double started = now_seconds();
    int mode = options ? options->io_mode : THAWCORE_IO_AUTO;
    int direct_used = 0;
    int fd = thaw_open_for_read(path, mode == THAWCORE_IO_DIRECT, &direct_used);
    if (fd < 0) {
        pthread_mutex_unlock(&e->lock);
        return fd;
    }
    if (mode == THAWCORE_IO_AUTO && extent_count) {
        uint64_t lo = extents[0].file_offset, hi = extents[extent_count - 1].file_offset + extents[extent_count - 1].length;
        double resident = thaw_page_cache_residency(fd, lo, hi > lo ? hi - lo : 0);
        if (resident >= 0 && resident < 0.5) {
            int direct_fd = thaw_open_for_read(path, 1, &direct_used);
            if (direct_fd >= 0) {
                close(fd);
                fd = direct_fd;
            }
        }
    }

    uint64_t chunk_count = 0;
    int rc = validate_plan(e, extents, extent_count, segments, segment_count, direct_used, &chunk_count);
    restore_job job = {
        .engine = e, .path = path, .fd = fd, .extents = extents, .segments = segments,
        .options = options, .verify = verify,
    };
    first_failure_init(&job.failure);
    if (!rc) {
        job.chunk_count = (uint32_t)chunk_count;
        job.chunks = malloc((chunk_count ? chunk_count : 1) * sizeof(chunk_job));
        job.piece_capacity = verify ? (uint32_t)(chunk_count + segment_count) : 0;
        job.pieces = verify ? malloc((job.piece_capacity ? job.piece_capacity : 1) * sizeof(crc_piece)) : NULL;
        if (!job.chunks || (verify && !job.pieces))
            rc = thaw_fail(-ENOMEM, "out of host memory planning %llu chunks", (unsigned long long)chunk_count);
    }
    if (!rc) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < extent_count; i++) {
            for (uint64_t off = 0; off < extents[i].length; off += e->chunk) {
                uint64_t len = extents[i].length - off < e->chunk ? extents[i].length - off : e->chunk;
                job.chunks[n++] = (chunk_job){ i, extents[i].file_offset + off, len };
            }
            for (uint32_t s = 0; s < extents[i].segment_count; s++)
                job.bytes_total += segments[extents[i].first_segment + s].length;
        }
        if (!direct_used)
            posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);

        uint32_t lanes = e->lane_count < job.chunk_count ? e->lane_count : job.chunk_count;
        lane_arg args[MAX_THREADS];
        for (uint32_t i = 0; i < lanes; i++)
            args[i] = (lane_arg){ &job, i };
        run_workers(lanes, lane_main, args, sizeof args[0], &job.failure);
        if (job.failure.code) {
            rc = job.failure.code;
            thaw_set_error_text(job.failure.text);
        } else if (verify) {
            rc = check_checksums(&job);
        }
        if (!rc && options && options->progress)
            options->progress(options->progress_user, job.bytes_total, job.bytes_total);
    }
    close(fd);
    if (stats) {
        stats->bytes_read = atomic_load(&job.bytes_read);
        stats->bytes_copied = atomic_load(&job.bytes_copied);
        stats->seconds = now_seconds() - started;
        stats->io_mode_used = direct_used ? THAWCORE_IO_DIRECT : THAWCORE_IO_BUFFERED;
        stats->threads = e->lane_count;
        stats->failed_region = job.failure.region;
    }
    free(job.chunks);
    free(job.pieces);
    first_failure_finish(&job.failure);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

/* ---- write (freeze, convert) ---- */

typedef struct {
    thawcore_engine *engine;
    int fd;
    const thawcore_segment *segments;
    uint32_t segment_count;
    int source_is_host;
    uint32_t *crc_out;
    thawcore_progress_fn progress;
    void *progress_user;
    uint64_t bytes_total;
    atomic_uint next_segment;
    atomic_ullong bytes_done;
    atomic_llong last_progress_ms;
    first_failure failure;
} write_job;

typedef struct { write_job *job; uint32_t lane; } write_arg;

static void *write_lane_main(void *arg)
{
    write_arg *a = arg;
    write_job *job = a->job;
    thawcore_engine *e = job->engine;
    unsigned char *staging = e->lanes[a->lane].slots[0];
    int rc = job->source_is_host ? 0 : e->dev.ops->bind_thread(&e->dev);
    while (!rc && !atomic_load(&job->failure.failed)) {
        uint32_t index = atomic_fetch_add(&job->next_segment, 1);
        if (index >= job->segment_count)
            break;
        const thawcore_segment *seg = &job->segments[index];
        uint32_t crc = 0;
        for (uint64_t off = 0; !rc && off < seg->length; off += e->chunk) {
            size_t n = (size_t)(seg->length - off < e->chunk ? seg->length - off : e->chunk);
            const unsigned char *src;
            if (job->source_is_host) {
                src = (const unsigned char *)(uintptr_t)(seg->device_address + off);
            } else {
                if ((rc = e->dev.ops->copy_d2h(&e->dev, staging, seg->device_address + off, n))) {
                    rc = thaw_fail_context(rc, "reading region %u back from the device", seg->region);
                    break;
                }
                src = staging;
            }
            crc = thawcore_crc32c(crc, src, n);
            rc = thaw_fault_hit(THAWCORE_FAULT_WRITE_ENOSPC) ? -ENOSPC
                 : thaw_fault_hit(THAWCORE_FAULT_WRITE_EIO) ? -EIO
                 : thaw_pwrite_full(job->fd, src, n, seg->file_offset + off);
            if (rc) {
                rc = thaw_fail(rc, "writing region %u at offset %llu: %s", seg->region,
                               (unsigned long long)(seg->file_offset + off), strerror(-rc));
                break;
            }
            uint64_t done = atomic_fetch_add(&job->bytes_done, n) + n;
            throttled_progress(&job->last_progress_ms, job->progress, job->progress_user, done, job->bytes_total);
        }
        job->crc_out[index] = crc;
    }
    if (rc)
        first_failure_record(&job->failure, rc, UINT32_MAX);
    return NULL;
}

int thawcore_engine_write(thawcore_engine *e, int fd, const thawcore_segment *segments, uint32_t segment_count,
                          int32_t source_is_host, uint32_t *crc32c_out,
                          thawcore_progress_fn progress, void *progress_user)
{
    thaw_clear_error();
    if (!e || fd < 0 || (segment_count && (!segments || !crc32c_out)))
        return thaw_fail(-EINVAL, "thawcore_engine_write: missing argument");
    for (uint32_t i = 0; i < segment_count; i++)
        if (segments[i].length && !segments[i].device_address)
            return thaw_fail(-EINVAL, "thawcore_engine_write: segment %u (region %u) has no source", i,
                             segments[i].region);
    pthread_mutex_lock(&e->lock);
    write_job job = { .engine = e, .fd = fd, .segments = segments, .segment_count = segment_count,
                      .source_is_host = source_is_host, .crc_out = crc32c_out,
                      .progress = progress, .progress_user = progress_user };
    for (uint32_t i = 0; i < segment_count; i++)
        job.bytes_total += segments[i].length;
    first_failure_init(&job.failure);
    uint32_t lanes = e->lane_count < segment_count ? e->lane_count : segment_count;
    write_arg args[MAX_THREADS];
    for (uint32_t i = 0; i < lanes; i++)
        args[i] = (write_arg){ &job, i };
    run_workers(lanes, write_lane_main, args, sizeof args[0], &job.failure);
    int rc = first_failure_finish(&job.failure);
    if (!rc && progress)
        progress(progress_user, job.bytes_total, job.bytes_total);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

/* ---- device memory helpers ---- */

int thawcore_engine_check_destination(thawcore_engine *e, uint64_t address, uint64_t length,
                                      uint64_t *allocation_out)
{
    thaw_clear_error();
    if (!e)
        return thaw_fail(-EINVAL, "no engine");
    uint64_t allocation = 0;
    int rc = e->dev.ops->bind_thread(&e->dev);
    if (!rc)
        rc = e->dev.ops->check_range(&e->dev, address, length, &allocation);
    if (!rc && allocation_out)
        *allocation_out = allocation;
    return rc;
}

int thawcore_engine_device_alloc(thawcore_engine *e, uint64_t length, uint64_t *address_out)
{
    thaw_clear_error();
    if (!e || !address_out)
        return thaw_fail(-EINVAL, "missing argument");
    return e->dev.ops->mem_alloc(&e->dev, length, address_out);
}

int thawcore_engine_device_free(thawcore_engine *e, uint64_t address)
{
    thaw_clear_error();
    if (!e)
        return thaw_fail(-EINVAL, "no engine");
    return address ? e->dev.ops->mem_free(&e->dev, address) : 0;
}

int thawcore_engine_copy_to_host(thawcore_engine *e, void *host, uint64_t address, uint64_t length)
{
    thaw_clear_error();
    if (!e || (length && (!host || !address)))
        return thaw_fail(-EINVAL, "missing argument");
    int rc = e->dev.ops->bind_thread(&e->dev);
    return rc ? rc : e->dev.ops->copy_d2h(&e->dev, host, address, (size_t)length);
}

int thawcore_engine_device_memory(thawcore_engine *e, uint64_t *free_out, uint64_t *total_out)
{
    thaw_clear_error();
    if (!e || !free_out || !total_out)
        return thaw_fail(-EINVAL, "missing argument");
    return e->dev.ops->mem_info(&e->dev, free_out, total_out);
}

/* ---- host-cache pool support ---- */

int thawcore_engine_pin_host(thawcore_engine *e, void *host, uint64_t length)
{
    thaw_clear_error();
    if (!e || !host)
        return thaw_fail(-EINVAL, "missing argument");
    int rc = e->dev.ops->bind_thread(&e->dev);
    return rc ? rc : e->dev.ops->pin_host(&e->dev, host, length);
}

int thawcore_engine_unpin_host(thawcore_engine *e, void *host)
{
    thaw_clear_error();
    if (!e || !host)
        return thaw_fail(-EINVAL, "missing argument");
    int rc = e->dev.ops->bind_thread(&e->dev);
    return rc ? rc : e->dev.ops->unpin_host(&e->dev, host);
}

int thawcore_engine_ipc_open(thawcore_engine *e, const void *handle, uint32_t handle_length, uint64_t *address_out)
{
    thaw_clear_error();
    if (!e || !handle || !address_out)
        return thaw_fail(-EINVAL, "missing argument");
    return e->dev.ops->ipc_open(&e->dev, handle, handle_length, address_out);
}

int thawcore_engine_ipc_close(thawcore_engine *e, uint64_t address)
{
    thaw_clear_error();
    if (!e)
        return thaw_fail(-EINVAL, "no engine");
    return e->dev.ops->ipc_close(&e->dev, address);
}

typedef struct {
    thawcore_engine *engine;
    const thawcore_copy *copies;
    uint32_t count;
    atomic_ullong next_piece; /* pieces of all copies, numbered in order */
    uint64_t *piece_start;    /* first piece number of each copy, count + 1 entries */
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
    while (!rc && !atomic_load(&job->failure.failed)) {
        uint64_t piece = atomic_fetch_add(&job->next_piece, 1);
        if (piece >= total)
            break;
        while (job->piece_start[copy + 1] <= piece)
            copy++;
        while (job->piece_start[copy] > piece)
            copy--;
        const thawcore_copy *c = &job->copies[copy];
        uint64_t offset = (piece - job->piece_start[copy]) * e->chunk;
        uint64_t n = c->length - offset < e->chunk ? c->length - offset : e->chunk;
        rc = e->dev.ops->copy_h2d_async(&e->dev, c->device_address + offset,
                                        (const void *)(uintptr_t)(c->host_address + offset), (size_t)n, l->stream);
        if (rc)
            rc = thaw_fail_context(rc, "copying piece %llu of copy %u to the device", (unsigned long long)piece, copy);
    }
    int wait = e->dev.ops->stream_wait(&e->dev, l->stream);
    if (!rc)
        rc = wait;
    if (rc)
        first_failure_record(&job->failure, rc, UINT32_MAX);
    return NULL;
}

int thawcore_engine_copy_host_to_device(thawcore_engine *e, const thawcore_copy *copies, uint32_t count)
{
    thaw_clear_error();
    if (!e || (count && !copies))
        return thaw_fail(-EINVAL, "missing argument");
    for (uint32_t i = 0; i < count; i++)
        if (copies[i].length && (!copies[i].host_address || !copies[i].device_address))
            return thaw_fail(-EINVAL, "copy %u has no source or destination", i);
    uint64_t *piece_start = malloc(((size_t)count + 1) * sizeof(uint64_t));
    if (!piece_start)
        return thaw_fail(-ENOMEM, "out of host memory");
    piece_start[0] = 0;
    for (uint32_t i = 0; i < count; i++)
        piece_start[i + 1] = piece_start[i] + (copies[i].length + e->chunk - 1) / e->chunk;
    pthread_mutex_lock(&e->lock);
    copy_job job = { .engine = e, .copies = copies, .count = count, .piece_start = piece_start };
    first_failure_init(&job.failure);
    uint64_t pieces = piece_start[count];
    uint32_t lanes = pieces < e->lane_count ? (uint32_t)pieces : e->lane_count;
    copy_arg args[MAX_THREADS];
    for (uint32_t i = 0; i < lanes; i++)
        args[i] = (copy_arg){ &job, i };
    run_workers(lanes, copy_lane_main, args, sizeof args[0], &job.failure);
    int rc = first_failure_finish(&job.failure);
    pthread_mutex_unlock(&e->lock);
    free(piece_start);
    return rc;
}

int thawcore_engine_ipc_handle(thawcore_engine *e, uint64_t address, void *handle_out, uint32_t handle_capacity)
{
    thaw_clear_error();
    if (!e || !handle_out)
        return thaw_fail(-EINVAL, "missing argument");
    return e->dev.ops->ipc_handle(&e->dev, address, handle_out, handle_capacity);
}
