/* The write pipeline (freeze, convert): segments from device or host memory to a file,
 * each lane reading device bytes back through its first staging slot. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"
#include "error.h"
#include "fault.h"
#include "file_io.h"

#include <errno.h>
#include <string.h>

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
    unsigned char *staging = NULL;
    int rc = job->source_is_host ? 0 : e->dev.ops->bind_thread(&e->dev);
    if (!rc && !job->source_is_host)
        rc = thaw_lane_slot(e, &e->lanes[a->lane], 0, &staging);
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
            thaw_throttled_progress(&job->last_progress_ms, job->progress, job->progress_user, done, job->bytes_total);
        }
        job->crc_out[index] = crc;
    }
    if (rc)
        thaw_first_failure_record(&job->failure, rc, UINT32_MAX);
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
    thaw_first_failure_init(&job.failure);
    uint32_t lanes = e->lane_count < segment_count ? e->lane_count : segment_count;
    write_arg args[MAX_THREADS];
    for (uint32_t i = 0; i < lanes; i++)
        args[i] = (write_arg){ &job, i };
    thaw_run_workers(lanes, write_lane_main, args, sizeof args[0], &job.failure);
    int rc = thaw_first_failure_finish(&job.failure);
    if (!rc && progress)
        progress(progress_user, job.bytes_total, job.bytes_total);
    pthread_mutex_unlock(&e->lock);
    return rc;
}
