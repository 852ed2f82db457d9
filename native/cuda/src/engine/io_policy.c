/* Which way a restore reads its file when the caller leaves it to the engine (io_mode
 * AUTO). Measured on the H200 (docs/BENCHMARKS.md): O_DIRECT keeps an uncached snapshot
 * out of the page cache, so every later restart reads the disk again; a buffered read
 * leaves the next restart warm. Direct is kept for files too large to stay cached. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The rule for an uncached file, in one place so that a measurement can switch it:
 * SIZE_BOUND (today): buffered when it fits in half of MemAvailable, else O_DIRECT;
 * ALWAYS_BUFFERED: buffered (with read-ahead) whatever its size.
 * THAWCORE_AUTO_IO=size|buffered overrides it, for those measurements (bench/warm_restart_bench.py). */
enum auto_rule { AUTO_SIZE_BOUND, AUTO_ALWAYS_BUFFERED };
#define DEFAULT_AUTO_RULE AUTO_SIZE_BOUND

static enum auto_rule auto_rule(void)
{
    const char *rule = getenv("THAWCORE_AUTO_IO");
    if (rule && strcmp(rule, "buffered") == 0)
        return AUTO_ALWAYS_BUFFERED;
    if (rule && strcmp(rule, "size") == 0)
        return AUTO_SIZE_BOUND;
    return DEFAULT_AUTO_RULE;
}

int thaw_pick_io_mode(double resident, uint64_t span, uint64_t memory_available)
{
    if (resident < 0 || resident >= 0.5)
        return THAWCORE_IO_BUFFERED;
    if (auto_rule() == AUTO_ALWAYS_BUFFERED)
        return THAWCORE_IO_BUFFERED;
    /* Uncached: read it into the page cache when it fits in half the memory the kernel
     * could give it without swapping; else it would only evict itself (and others). */
    if (memory_available && span <= memory_available / 2)
        return THAWCORE_IO_BUFFERED;
    return THAWCORE_IO_DIRECT;
}

uint64_t thaw_memory_available(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
            break;
    fclose(f);
    return (uint64_t)kib * 1024;
}
