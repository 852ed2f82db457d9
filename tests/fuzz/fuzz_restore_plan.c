/* libFuzzer target: thawcore_engine_restore with extents, segments and checksum options
 * decoded from the input, on the mock device, over a file whose length the input sets.
 * The core trusts device addresses (the C# planner checks them with
 * thawcore_engine_check_destination first), so every destination here lies inside the
 * harness's own arena; everything else is as hostile as the input makes it. The oracle:
 * every call returns 0 or a documented error with a message, and never crashes, leaks or
 * touches memory outside what it was given (ASan, UBSan). */
#include "thaw_core.h"
#include "fuzz_input.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define FILE_MAX (256u * 1024)
#define ARENA (512u * 1024)
#define MAX_EXTENTS 8
#define MAX_SEGMENTS 16
#define MAX_REGIONS 8
/* Extents past the file are planned by no caller (RestorePlan plans inside the validated file);
 * the core sizes its chunk table by extent length, so the harness bounds them here. */
#ifndef EXTENT_LIMIT
#define EXTENT_LIMIT (4u * FILE_MAX)
#endif

static thawcore_engine *engine;
static int fd = -1;
static char path[64];
static unsigned char *arena;
static unsigned char pattern[FILE_MAX];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    thawcore_engine_options o = { sizeof o, THAWCORE_DEVICE_MOCK, 0, 2, 4096, 4096 * 8 };
    if (thawcore_engine_create(&o, &engine) != 0) {
        fprintf(stderr, "engine: %s\n", thawcore_last_error());
        abort();
    }
    snprintf(path, sizeof path, "/tmp/thaw-fuzz-restore-%d", (int)getpid());
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        abort();
    for (size_t i = 0; i < FILE_MAX; i++)
        pattern[i] = (unsigned char)(i * 131 + 7);
    arena = malloc(ARENA);
    return 0;
}

static int documented(int rc)
{
    return rc == 0 || (rc < 0 && rc > -4096) ||
           (rc <= THAWCORE_ERR_CUDA && rc >= THAWCORE_ERR_INVALID_PLAN);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_input in = { data, size };
    uint32_t file_length = (uint32_t)(fuzz_raw64(&in) % (FILE_MAX + 1));
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pattern, file_length, 0) != (ssize_t)file_length)
        abort();

    int io_mode = fuzz_u8(&in) % 3;
    uint32_t extent_count = fuzz_u8(&in) % (MAX_EXTENTS + 1);
    uint32_t segment_count = fuzz_u8(&in) % (MAX_SEGMENTS + 1);
    thawcore_extent extents[MAX_EXTENTS];
    thawcore_segment segments[MAX_SEGMENTS];
    for (uint32_t i = 0; i < extent_count; i++) {
        extents[i].file_offset = fuzz_u64(&in, file_length);
        extents[i].length = fuzz_u64(&in, file_length);
        extents[i].first_segment = fuzz_u8(&in) % (MAX_SEGMENTS + 2);
        extents[i].segment_count = fuzz_u8(&in) % (MAX_SEGMENTS + 2);
        if (extents[i].length > EXTENT_LIMIT || extents[i].file_offset > EXTENT_LIMIT)
            return 0;
    }
    for (uint32_t s = 0; s < segment_count; s++) {
        segments[s].file_offset = fuzz_u64(&in, file_length);
        segments[s].length = fuzz_u64(&in, file_length);
        uint64_t at = fuzz_u64(&in, ARENA);
        segments[s].device_address = 0;
        if (at != 0 && at <= ARENA && segments[s].length <= ARENA - at)
            segments[s].device_address = (uint64_t)(uintptr_t)(arena + at);
        segments[s].region = fuzz_u8(&in) % (MAX_REGIONS + 2);
        segments[s].region_offset = 0;
    }
    uint32_t crcs[MAX_REGIONS];
    uint64_t lengths[MAX_REGIONS];
    uint32_t region_count = fuzz_u8(&in) % (MAX_REGIONS + 1);
    int verify = region_count && (fuzz_u8(&in) & 1);
    for (uint32_t r = 0; r < region_count; r++) {
        lengths[r] = fuzz_u64(&in, file_length);
        /* Half the time the right checksum of the pattern's bytes, so that success paths run. */
        crcs[r] = (fuzz_u8(&in) & 1) ? (uint32_t)fuzz_raw64(&in)
                                     : thawcore_crc32c(0, pattern, lengths[r] <= file_length ? lengths[r] : 0);
    }
    thawcore_restore_options options = { sizeof options, io_mode, verify ? crcs : NULL, verify ? lengths : NULL,
                                         region_count, 0, NULL, NULL, NULL };
    thawcore_restore_stats stats;
    int rc = thawcore_engine_restore(engine, path, extents, extent_count, segments, segment_count, &options, &stats);
    if (!documented(rc) || (rc < 0 && !*thawcore_last_error())) {
        fprintf(stderr, "undocumented result %d: %s\n", rc, thawcore_last_error());
        abort();
    }
    return 0;
}
