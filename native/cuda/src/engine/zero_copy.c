/* Zero-copy chunks of a restore (io_mode ZEROCOPY): the chunk's pages, already in page
 * cache, are registered for DMA where the file is mapped and copied to the device from
 * there, with no CPU copy and no staging. A lane keeps ZERO_COPY_DEPTH registrations in
 * flight and releases each after its copies complete. A chunk whose pages are not all
 * resident, or whose registration the driver refuses, is read through staging instead. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/restore_job.h"
#include "error.h"
#include "fault.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

/* Registering a page that is not in page cache would read it from disk inside the
 * driver call, one fault at a time, holding the lane: such chunks are staged. */
static int all_resident(const unsigned char *start, size_t length, size_t page)
{
    unsigned char vec[4096];
    size_t pages = (length + page - 1) / page;
    for (size_t done = 0; done < pages;) {
        size_t n = pages - done < sizeof vec ? pages - done : sizeof vec;
        if (mincore((void *)(start + done * page), n * page, vec) != 0)
            return 0;
        for (size_t i = 0; i < n; i++)
            if (!(vec[i] & 1))
                return 0;
        done += n;
    }
    return 1;
}

/* Pins the mapped pages of c; returns the pinned start, or NULL when c must be staged. */
static const unsigned char *pin_mapped(restore_job *job, const chunk_job *c)
{
    thawcore_engine *e = job->engine;
    uint64_t end = c->file_offset + c->length;
    if (!job->map || c->file_offset < job->map_offset || end > job->map_offset + job->map_length)
        return NULL; /* past the end of the file: the staged read reports it */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const unsigned char *src = job->map + (c->file_offset - job->map_offset);
    const unsigned char *start = src - (uintptr_t)src % page;
    size_t length = (size_t)(src + c->length - start + page - 1) / page * page;
    if (!all_resident(start, length, page))
        return NULL;
    /* Page tables filled in one call before the driver walks them: 15.2 against 13.2 GB/s. */
    madvise((void *)start, length, MADV_POPULATE_READ);
    if (thaw_fault_hit(THAWCORE_FAULT_REGISTER) || e->dev.ops->pin_host_readonly(&e->dev, start, length)) {
        thaw_clear_error(); /* not an error: this chunk goes through staging */
        return NULL;
    }
    return start;
}

int thaw_zero_copy_chunk(restore_job *job, lane *l, uint32_t *zero_copy_turn, uint32_t *turn, const chunk_job *c)
{
    thawcore_engine *e = job->engine;
    uint32_t slot = (*zero_copy_turn)++ % ZERO_COPY_DEPTH;
    int rc;
    if (!l->zero_copy_events[slot] && (rc = e->dev.ops->event_create(&e->dev, &l->zero_copy_events[slot])))
        return thaw_restore_failed(job, rc, UINT32_MAX);
    if (l->zero_copy_pinned[slot]) {
        rc = e->dev.ops->event_wait(&e->dev, l->zero_copy_events[slot]);
        if (rc)
            return thaw_restore_failed(job, thaw_fail_context(rc, "waiting for copies from %s", job->path), UINT32_MAX);
        e->dev.ops->unpin_host(&e->dev, (void *)l->zero_copy_pinned[slot]);
        l->zero_copy_pinned[slot] = NULL;
    }
    const unsigned char *pinned = pin_mapped(job, c);
    if (!pinned) {
        atomic_fetch_add(&job->fallback_chunks, 1);
        for (uint64_t off = 0; off < c->length; off += e->chunk) {
            chunk_job piece = { c->extent, c->file_offset + off, c->length - off < e->chunk ? c->length - off : e->chunk };
            if ((rc = thaw_restore_staged_chunk(job, l, turn, &piece)))
                return rc;
        }
        return 0;
    }
    l->zero_copy_pinned[slot] = pinned;
    atomic_fetch_add(&job->bytes_read, c->length);
    uint64_t copied = 0;
    const unsigned char *src = job->map + (c->file_offset - job->map_offset);
    if ((rc = thaw_restore_queue_chunk(job, l, c, src, c->file_offset + c->length, &copied)))
        return rc;
    rc = thaw_fault_hit(THAWCORE_FAULT_EVENT) ? thaw_fail(THAWCORE_ERR_CUDA, "cuEventRecord failed (injected fault)")
                                              : e->dev.ops->event_record(&e->dev, l->zero_copy_events[slot], l->stream);
    if (rc)
        return thaw_restore_failed(job, thaw_fail_context(rc, "recording the copies of %s at offset %llu", job->path,
                                                          (unsigned long long)c->file_offset), UINT32_MAX);
    thaw_restore_count_copied(job, copied);
    return 0;
}

void thaw_zero_copy_release(restore_job *job, lane *l)
{
    thawcore_engine *e = job->engine;
    for (uint32_t s = 0; s < ZERO_COPY_DEPTH; s++)
        if (l->zero_copy_pinned[s]) {
            e->dev.ops->unpin_host(&e->dev, (void *)l->zero_copy_pinned[s]);
            l->zero_copy_pinned[s] = NULL;
        }
}
