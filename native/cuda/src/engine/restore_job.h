/* A restore in flight, shared by the staged pipeline (restore.c) and its zero-copy
 * chunks (zero_copy.c). */
#ifndef THAW_RESTORE_JOB_H
#define THAW_RESTORE_JOB_H

#include "engine/engine.h"

typedef struct { uint32_t extent; uint64_t file_offset; uint64_t length; } chunk_job;
typedef struct { uint32_t region; uint32_t crc; uint64_t offset; uint64_t length; } crc_piece;

typedef struct {
    thawcore_engine *engine;
    const char *path;
    int fd;
    uint64_t file_size;
    const thawcore_extent *extents;
    const thawcore_segment *segments;
    chunk_job *chunks;
    uint32_t chunk_count;
    const thawcore_restore_options *options;
    int verify;
    int zero_copy;             /* chunks are DMA'd from the mapping where they can be */
    uint32_t read_ahead;       /* chunks ahead a lane asks the kernel to read (uncached files); 0 = none */
    const unsigned char *map;  /* the file from map_offset, up to its end; NULL when unmapped */
    uint64_t map_offset;
    uint64_t map_length;
    crc_piece *pieces;
    uint32_t piece_capacity;

    atomic_uint next_chunk;
    atomic_uint piece_count;
    atomic_uint fallback_chunks;
    atomic_ullong bytes_read;
    atomic_ullong bytes_copied;
    atomic_llong last_progress_ms;
    uint64_t bytes_total;

    first_failure failure;
} restore_job;

int thaw_restore_failed(restore_job *job, int code, uint32_t region);
/* Non-zero, and the restore failed as cancelled, once the caller's cancel flag is set. */
int thaw_restore_cancelled(restore_job *job);

/* Queues one piece of a chunk (bytes of `region` at src, for device address dst); returns non-zero
 * only for a failure of the restore, which it has recorded. */
typedef int (*thaw_piece_copy_fn)(void *context, uint64_t dst, const unsigned char *src, size_t length, uint32_t region);

/* Queues the device copies (and, verifying, the CRC32C) of every segment piece inside
 * chunk c, whose bytes are at src and valid up to file offset valid_end, on the lane's
 * stream. Adds the bytes queued to *copied; on failure records it and returns its code. */
int thaw_restore_queue_chunk(restore_job *job, lane *l, const chunk_job *c, const unsigned char *src,
                             uint64_t valid_end, uint64_t *copied);
/* The same, each piece queued by copy (a borrowed link forwards it from its bounce slot). */
int thaw_restore_queue_chunk_with(restore_job *job, const chunk_job *c, const unsigned char *src, uint64_t valid_end,
                                  uint64_t *copied, thaw_piece_copy_fn copy, void *copy_context);
/* Reads chunk c into buffer (fault injection included); *valid_end is the file offset up to which
 * the bytes read are valid. On failure records it and returns its code. */
int thaw_restore_read(restore_job *job, unsigned char *buffer, const chunk_job *c, uint64_t *valid_end);
/* Reads a chunk of at most the engine's chunk size through the lane's next staging slot
 * and queues its copies. */
int thaw_restore_staged_chunk(restore_job *job, lane *l, uint32_t *turn, const chunk_job *c);
void thaw_restore_count_copied(restore_job *job, uint64_t copied);

/* Queues chunk c straight from the mapping once its pages are resident and registered
 * for DMA; otherwise (pages missing, registration refused) reads it through staging. */
int thaw_zero_copy_chunk(restore_job *job, lane *l, uint32_t *zero_copy_turn, uint32_t *turn, const chunk_job *c);
/* Releases the lane's registrations; its stream must be idle. */
void thaw_zero_copy_release(restore_job *job, lane *l);

/* The destination's lanes, job->chunks[0 .. job->chunk_count) among them: the argument of
 * thaw_restore_lane_main, and a run of all of them to the end (thaw_run_workers). */
typedef struct { restore_job *job; uint32_t lane; } restore_lane_arg;
void *thaw_restore_lane_main(void *arg);
void thaw_restore_run_lanes(restore_job *job);

/* Borrowed links (borrowed_links.c): the options' bounds, checked before anything is read
 * (and links cleared); then the run: the helpers set up, the split, every lane, the dropped
 * helpers' leftovers on the destination's lanes, links filled in. */
int thaw_borrow_check(thawcore_engine *e, const thawcore_borrow_options *borrow, thawcore_link_stats *links,
                      uint32_t link_capacity);
void thaw_borrowed_run(restore_job *job, const thawcore_borrow_options *borrow, thawcore_link_stats *links);

#endif
