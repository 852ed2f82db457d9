/* The restore pipeline.
 *
 * The extents are cut into chunks; each reader thread ("lane") owns a stream and a few
 * staging slots, claims the next chunk, reads it into a free slot, and queues the device
 * copies of the segments it covers on its stream. A slot is reused only after the event
 * recorded behind its copies has completed, so reads, staging and DMA overlap across
 * lanes and slots. Zero-copy restores (zero_copy.c) DMA chunks from a mapping of the
 * page cache instead, and come back here for the chunks they cannot. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/restore_job.h"
#include "error.h"
#include "fault.h"
#include "file_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Zero-copy chunks: large, because each costs a registration and an unregistration. */
#define DEFAULT_ZERO_COPY_CHUNK (64ull << 20)
/* Buffered reads of a file not in page cache ask the kernel (POSIX_FADV_WILLNEED) for the
 * bytes this far ahead of the chunk a lane claims: the disk then has work queued while
 * the lanes copy. Cold 8 GB on the H200: 1.75 GB/s against 1.43 without, 1.62 O_DIRECT. */
#define READ_AHEAD_BYTES (128ull << 20)

int thaw_restore_failed(restore_job *job, int code, uint32_t region)
{
    thaw_first_failure_record(&job->failure, code, region);
    return code;
}

int thaw_restore_cancelled(restore_job *job)
{
    if (!job->options || !job->options->cancel || !*job->options->cancel)
        return 0;
    thaw_restore_failed(job, thaw_fail(THAWCORE_ERR_CANCELED, "restore of %s was cancelled", job->path), UINT32_MAX);
    return 1;
}

static void report_progress(restore_job *job, uint64_t done)
{
    const thawcore_restore_options *o = job->options;
    if (o)
        thaw_throttled_progress(&job->last_progress_ms, o->progress, o->progress_user, done, job->bytes_total);
}

void thaw_restore_count_copied(restore_job *job, uint64_t copied)
{
    uint64_t done = atomic_fetch_add(&job->bytes_copied, copied) + copied;
    report_progress(job, job->verify && !copied ? atomic_load(&job->bytes_read) : done);
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

static uint32_t first_region_of(restore_job *job, const chunk_job *c)
{
    const thawcore_extent *x = &job->extents[c->extent];
    uint32_t first = first_segment_after(x, job->segments, c->file_offset);
    return first < x->first_segment + x->segment_count ? job->segments[first].region : UINT32_MAX;
}

typedef struct { restore_job *job; lane *lane; } direct_copy;

static int copy_direct(void *context, uint64_t dst, const unsigned char *src, size_t length, uint32_t region)
{
    direct_copy *d = context;
    thawcore_engine *e = d->job->engine;
    int rc = thaw_fault_hit(THAWCORE_FAULT_COPY) ? thaw_fail(THAWCORE_ERR_CUDA, "cuMemcpyHtoDAsync failed (injected fault)")
                                                 : e->dev.ops->copy_h2d_async(&e->dev, dst, src, length, d->lane->stream);
    if (rc)
        return thaw_restore_failed(d->job, thaw_fail_context(rc, "copying region %u of %s to the device", region, d->job->path), region);
    return 0;
}

int thaw_restore_queue_chunk(restore_job *job, lane *l, const chunk_job *c, const unsigned char *src_base,
                             uint64_t valid_end, uint64_t *copied)
{
    direct_copy d = { job, l };
    return thaw_restore_queue_chunk_with(job, c, src_base, valid_end, copied, copy_direct, &d);
}

int thaw_restore_queue_chunk_with(restore_job *job, const chunk_job *c, const unsigned char *src_base, uint64_t valid_end,
                                  uint64_t *copied, thaw_piece_copy_fn copy, void *copy_context)
{
    const thawcore_extent *x = &job->extents[c->extent];
    uint64_t chunk_end = c->file_offset + c->length;
    for (uint32_t s = first_segment_after(x, job->segments, c->file_offset); s < x->first_segment + x->segment_count; s++) {
        const thawcore_segment *seg = &job->segments[s];
        if (seg->file_offset >= chunk_end)
            break;
        uint64_t start = seg->file_offset > c->file_offset ? seg->file_offset : c->file_offset;
        uint64_t seg_end = seg->file_offset + seg->length;
        uint64_t end = seg_end < chunk_end ? seg_end : chunk_end;
        if (end > valid_end)
            return thaw_restore_failed(job, thaw_fail(THAWCORE_ERR_SHORT_READ,
                                 "%s is truncated: region %u needs bytes up to offset %llu, the file ends before %llu",
                                 job->path, seg->region, (unsigned long long)end, (unsigned long long)valid_end), seg->region);
        const unsigned char *src = src_base + (start - c->file_offset);
        if (seg->device_address) {
            int rc = copy(copy_context, seg->device_address + (start - seg->file_offset), src, (size_t)(end - start), seg->region);
            if (rc)
                return rc;
            *copied += end - start;
        }
        /* The CRC runs on the CPU while the DMA just queued reads the same bytes. */
        if (job->verify) {
            uint32_t index = atomic_fetch_add(&job->piece_count, 1);
            if (index >= job->piece_capacity)
                return thaw_restore_failed(job, thaw_fail(THAWCORE_ERR_INVALID_PLAN, "internal: checksum piece table overflow"),
                                           seg->region);
            job->pieces[index] = (crc_piece){ seg->region, thawcore_crc32c(0, src, (size_t)(end - start)),
                                              start - seg->file_offset, end - start };
        }
    }
    return 0;
}

/* Reads c into buffer; returns the bytes read (fewer at the end of the file) or -errno. */
static ssize_t read_chunk(restore_job *job, unsigned char *buffer, const chunk_job *c)
{
    /* pread, not a memcpy from a mapping: 37.5 against 30.0 GB/s warm on the H200. */
    if (thaw_fault_hit(THAWCORE_FAULT_READ_EIO))
        return -EIO;
    return thaw_pread_full(job->fd, buffer, (size_t)c->length, c->file_offset);
}

int thaw_restore_read(restore_job *job, unsigned char *buffer, const chunk_job *c, uint64_t *valid_end)
{
    ssize_t got = read_chunk(job, buffer, c);
    if (got > 0 && thaw_fault_hit(THAWCORE_FAULT_SHORT_READ))
        got = 0; /* the file ends where this chunk starts */
    if (got < 0) {
        uint32_t first_region = first_region_of(job, c);
        return thaw_restore_failed(job, thaw_fail((int)got, "reading %s at offset %llu (region %u): %s", job->path,
                                                  (unsigned long long)c->file_offset, first_region, strerror((int)-got)),
                                   first_region);
    }
    atomic_fetch_add(&job->bytes_read, (uint64_t)got);
    *valid_end = c->file_offset + (uint64_t)got;
    return 0;
}

int thaw_restore_staged_chunk(restore_job *job, lane *l, uint32_t *turn, const chunk_job *c)
{
    thawcore_engine *e = job->engine;
    uint32_t slot = (*turn)++ % e->slots_per_lane;
    uint32_t first_region = first_region_of(job, c);
    int rc;
    if (l->pending[slot]) {
        l->pending[slot] = 0;
        if ((rc = e->dev.ops->event_wait(&e->dev, l->events[slot])))
            return thaw_restore_failed(job, thaw_fail_context(rc, "waiting for copies from %s", job->path), UINT32_MAX);
    }
    unsigned char *buffer;
    if ((rc = thaw_lane_slot(e, l, slot, &buffer)))
        return thaw_restore_failed(job, rc, UINT32_MAX);

    uint64_t valid_end = 0, copied = 0;
    if ((rc = thaw_restore_read(job, buffer, c, &valid_end)))
        return rc;
    if ((rc = thaw_restore_queue_chunk(job, l, c, buffer, valid_end, &copied)))
        return rc;
    rc = thaw_fault_hit(THAWCORE_FAULT_EVENT) ? thaw_fail(THAWCORE_ERR_CUDA, "cuEventRecord failed (injected fault)")
                                              : e->dev.ops->event_record(&e->dev, l->events[slot], l->stream);
    if (rc)
        return thaw_restore_failed(job, thaw_fail_context(rc, "recording the copies of region %u of %s", first_region,
                                                          job->path), first_region);
    l->pending[slot] = 1;
    thaw_restore_count_copied(job, copied);
    return 0;
}

void *thaw_restore_lane_main(void *arg)
{
    restore_lane_arg *a = arg;
    restore_job *job = a->job;
    thawcore_engine *e = job->engine;
    lane *l = &e->lanes[a->lane];
    int rc = e->dev.ops->bind_thread(&e->dev);
    if (rc) {
        thaw_restore_failed(job, rc, UINT32_MAX);
        return NULL;
    }
    uint32_t turn = 0, zero_copy_turn = 0;
    while (!atomic_load(&job->failure.failed)) {
        if (thaw_restore_cancelled(job))
            break;
        uint32_t index = atomic_fetch_add(&job->next_chunk, 1);
        if (index >= job->chunk_count)
            break;
        if (job->read_ahead && index + job->read_ahead < job->chunk_count) {
            const chunk_job *next = &job->chunks[index + job->read_ahead];
            posix_fadvise(job->fd, (off_t)next->file_offset, (off_t)next->length, POSIX_FADV_WILLNEED);
        }
        if (job->zero_copy ? thaw_zero_copy_chunk(job, l, &zero_copy_turn, &turn, &job->chunks[index])
                           : thaw_restore_staged_chunk(job, l, &turn, &job->chunks[index]))
            break;
    }
    /* Never leave a copy in flight: the staging slots are reused by the next restore. */
    rc = e->dev.ops->stream_wait(&e->dev, l->stream);
    memset(l->pending, 0, e->slots_per_lane);
    thaw_zero_copy_release(job, l);
    if (rc)
        thaw_restore_failed(job, rc, UINT32_MAX);
    return NULL;
}

/* Every extent and segment lies inside the file as it is now (a file that is already short
 * is refused before anything is allocated for it; one that shrinks later is a short read). */
static int validate_plan(thawcore_engine *e, const char *path, uint64_t file_size,
                         const thawcore_extent *extents, uint32_t extent_count,
                         const thawcore_segment *segments, uint32_t segment_count, int direct,
                         uint64_t *chunk_count, uint32_t *failed_region)
{
    uint64_t chunks = 0;
    uint64_t file_end_aligned = file_size + (ALIGN - file_size % ALIGN) % ALIGN; /* O_DIRECT reads whole blocks */
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
            if (seg->file_offset + seg->length > file_size) {
                *failed_region = seg->region;
                return thaw_fail(THAWCORE_ERR_SHORT_READ,
                                 "%s is truncated: region %u needs bytes up to offset %llu, the file ends before %llu",
                                 path, seg->region, (unsigned long long)(seg->file_offset + seg->length),
                                 (unsigned long long)file_size);
            }
            if (seg->device_address && seg->device_address + seg->length < seg->device_address)
                return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "segment %u (region %u) wraps the address space", s, seg->region);
            previous_end = seg->file_offset + seg->length;
        }
        if (x->file_offset + x->length > file_end_aligned)
            return thaw_fail(THAWCORE_ERR_SHORT_READ, "%s is truncated: extent %u needs bytes up to offset %llu, the file has %llu",
                             path, i, (unsigned long long)(x->file_offset + x->length), (unsigned long long)file_size);
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

/* Read ahead when less than 90% of the file is cached; THAWCORE_READ_AHEAD=0|1 overrides
 * (for measurements). */
static int read_ahead_wanted(double resident)
{
    const char *value = getenv("THAWCORE_READ_AHEAD");
    if (value && (strcmp(value, "0") == 0 || strcmp(value, "1") == 0))
        return value[0] == '1';
    return resident < 0.9;
}

/* The engine's chunk size, or the zero-copy one (THAWCORE_ZERO_COPY_CHUNK_MIB for
 * measurements), a multiple of it. */
static uint64_t job_chunk_size(thawcore_engine *e, int zero_copy)
{
    if (!zero_copy)
        return e->chunk;
    const char *mib = getenv("THAWCORE_ZERO_COPY_CHUNK_MIB");
    uint64_t size = mib ? strtoull(mib, NULL, 10) << 20 : DEFAULT_ZERO_COPY_CHUNK;
    if (size < e->chunk || size > (1ull << 34))
        size = DEFAULT_ZERO_COPY_CHUNK > e->chunk ? DEFAULT_ZERO_COPY_CHUNK : e->chunk;
    return size - size % e->chunk;
}

static int restore_file(thawcore_engine *e, const char *path,
                        const thawcore_extent *extents, uint32_t extent_count,
                        const thawcore_segment *segments, uint32_t segment_count,
                        const thawcore_restore_options *options, thawcore_restore_stats *stats,
                        const thawcore_borrow_options *borrow, thawcore_link_stats *links, uint32_t link_capacity)
{
    thaw_clear_error();
    if (!e || !path || (extent_count && !extents) || (segment_count && !segments))
        return thaw_fail(-EINVAL, "thawcore_engine_restore: missing argument");
    int borrow_rc = borrow ? thaw_borrow_check(e, borrow, links, link_capacity) : 0;
    if (borrow_rc)
        return borrow_rc;
    if (options && options->struct_size < sizeof(thawcore_restore_options))
        return thaw_fail(-EINVAL, "thawcore_engine_restore: options from a newer ABI");
    int mode = options ? options->io_mode : THAWCORE_IO_AUTO;
    if (mode < THAWCORE_IO_AUTO || mode > THAWCORE_IO_ZEROCOPY)
        return thaw_fail(-EINVAL, "thawcore_engine_restore: unknown io mode %d", mode);
    int verify = options && options->region_crc32c;
    if (verify && !options->region_length)
        return thaw_fail(-EINVAL, "thawcore_engine_restore: checksums without region lengths");
    for (uint32_t s = 0; verify && s < segment_count; s++)
        if (segments[s].region >= options->region_count)
            return thaw_fail(THAWCORE_ERR_INVALID_PLAN, "segment %u names region %u of %u", s,
                             segments[s].region, options->region_count);

    pthread_mutex_lock(&e->lock);
    double started = thaw_now_seconds();
    int direct_used = 0;
    int fd = thaw_open_for_read(path, mode == THAWCORE_IO_DIRECT, &direct_used);
    if (fd < 0) {
        pthread_mutex_unlock(&e->lock);
        return fd;
    }
    struct stat st;
    uint64_t file_size = fstat(fd, &st) == 0 && st.st_size > 0 ? (uint64_t)st.st_size : 0;
    uint64_t lo = extent_count ? extents[0].file_offset : 0;
    uint64_t hi = extent_count ? extents[extent_count - 1].file_offset + extents[extent_count - 1].length : 0;
    double resident = direct_used || !extent_count ? -1 : thaw_page_cache_residency(fd, lo, hi > lo ? hi - lo : 0);
    if (mode == THAWCORE_IO_AUTO && extent_count) {
        mode = thaw_pick_io_mode(resident, hi > lo ? hi - lo : 0, thaw_memory_available());
        if (mode == THAWCORE_IO_DIRECT) {
            int direct_fd = thaw_open_for_read(path, 1, &direct_used);
            if (direct_fd >= 0) {
                close(fd);
                fd = direct_fd;
            }
        }
    }
    int zero_copy = mode == THAWCORE_IO_ZEROCOPY;

    uint64_t chunk_count = 0, staged_chunks = 0;
    uint32_t invalid_region = UINT32_MAX;
    int rc = validate_plan(e, path, file_size, extents, extent_count, segments, segment_count, direct_used,
                           &staged_chunks, &invalid_region);
    restore_job job = {
        .engine = e, .path = path, .fd = fd, .file_size = file_size, .extents = extents, .segments = segments,
        .options = options, .verify = verify, .zero_copy = zero_copy,
    };
    thaw_first_failure_init(&job.failure);
    if (rc && invalid_region != UINT32_MAX)
        thaw_first_failure_record(&job.failure, rc, invalid_region);
    /* The mapping covers the plan's range up to the end of the file: bytes past it are
     * never touched (they would fault), the staged read reports the short file instead. */
    if (!rc && zero_copy && file_size > lo && hi > lo) {
        long page = sysconf(_SC_PAGESIZE);
        job.map_offset = lo - lo % (uint64_t)page;
        job.map_length = (hi < file_size ? hi : file_size) - job.map_offset;
        void *map = mmap(NULL, (size_t)job.map_length, PROT_READ, MAP_SHARED, fd, (off_t)job.map_offset);
        if (map != MAP_FAILED)
            job.map = map;
        else
            job.zero_copy = 0; /* read it the staged way */
    }
    if (!job.map)
        job.zero_copy = 0;
    uint64_t chunk_size = job_chunk_size(e, job.zero_copy);
    if (!direct_used && !job.zero_copy && read_ahead_wanted(resident))
        job.read_ahead = (uint32_t)(READ_AHEAD_BYTES / chunk_size > e->lane_count ? READ_AHEAD_BYTES / chunk_size : e->lane_count);
    for (uint32_t i = 0; !rc && i < extent_count; i++)
        chunk_count += (extents[i].length + chunk_size - 1) / chunk_size;
    if (!rc) {
        job.chunk_count = (uint32_t)chunk_count;
        job.chunks = malloc((chunk_count ? chunk_count : 1) * sizeof(chunk_job));
        /* A zero-copy chunk that falls back is cut into staged chunks: at most one more
         * piece per zero-copy chunk than the staged plan has. */
        job.piece_capacity = verify ? (uint32_t)(staged_chunks + chunk_count + segment_count) : 0;
        job.pieces = verify ? malloc((job.piece_capacity ? job.piece_capacity : 1) * sizeof(crc_piece)) : NULL;
        if (!job.chunks || (verify && !job.pieces))
            rc = thaw_fail(-ENOMEM, "out of host memory planning %llu chunks", (unsigned long long)chunk_count);
    }
    if (!rc) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < extent_count; i++) {
            for (uint64_t off = 0; off < extents[i].length; off += chunk_size) {
                uint64_t len = extents[i].length - off < chunk_size ? extents[i].length - off : chunk_size;
                job.chunks[n++] = (chunk_job){ i, extents[i].file_offset + off, len };
            }
            for (uint32_t s = 0; s < extents[i].segment_count; s++)
                job.bytes_total += segments[extents[i].first_segment + s].length;
        }
        if (!direct_used)
            posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);

        if (borrow)
            thaw_borrowed_run(&job, borrow, links);
        else
            thaw_restore_run_lanes(&job);
        if (job.failure.code) {
            rc = job.failure.code;
            thaw_set_error_text(job.failure.text);
        } else if (verify) {
            rc = check_checksums(&job);
        }
        if (!rc && options && options->progress)
            options->progress(options->progress_user, job.bytes_total, job.bytes_total);
    }
    if (job.map)
        munmap((void *)job.map, (size_t)job.map_length);
    close(fd);
    if (stats) {
        stats->bytes_read = atomic_load(&job.bytes_read);
        stats->bytes_copied = atomic_load(&job.bytes_copied);
        stats->seconds = thaw_now_seconds() - started;
        stats->io_mode_used = job.zero_copy ? THAWCORE_IO_ZEROCOPY : direct_used ? THAWCORE_IO_DIRECT : THAWCORE_IO_BUFFERED;
        stats->threads = e->lane_count;
        stats->failed_region = job.failure.region;
        stats->fallback_chunks = atomic_load(&job.fallback_chunks);
    }
    free(job.chunks);
    free(job.pieces);
    thaw_first_failure_finish(&job.failure);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

void thaw_restore_run_lanes(restore_job *job)
{
    thawcore_engine *e = job->engine;
    uint32_t lanes = e->lane_count < job->chunk_count ? e->lane_count : job->chunk_count;
    restore_lane_arg args[MAX_THREADS];
    for (uint32_t i = 0; i < lanes; i++)
        args[i] = (restore_lane_arg){ job, i };
    thaw_run_workers(lanes, thaw_restore_lane_main, args, sizeof args[0], &job->failure);
}

int thawcore_engine_restore(thawcore_engine *e, const char *path,
                            const thawcore_extent *extents, uint32_t extent_count,
                            const thawcore_segment *segments, uint32_t segment_count,
                            const thawcore_restore_options *options, thawcore_restore_stats *stats)
{
    return restore_file(e, path, extents, extent_count, segments, segment_count, options, stats, NULL, NULL, 0);
}

int thawcore_engine_restore_borrowed(thawcore_engine *e, const char *path,
                                     const thawcore_extent *extents, uint32_t extent_count,
                                     const thawcore_segment *segments, uint32_t segment_count,
                                     const thawcore_restore_options *options, const thawcore_borrow_options *borrow,
                                     thawcore_restore_stats *stats, thawcore_link_stats *links, uint32_t link_capacity)
{
    if (!borrow) {
        thaw_clear_error();
        return thaw_fail(-EINVAL, "thawcore_engine_restore_borrowed: missing borrow options");
    }
    return restore_file(e, path, extents, extent_count, segments, segment_count, options, stats, borrow, links, link_capacity);
}
