/* Fault injection: a read error, a short read, a failed copy or event at every point of
 * a restore, a failed staging pin at every slot, a full disk at every write. Each
 * fails with the right code and a message naming the file (and region), leaves no
 * thread behind, and the next restore succeeds. Leaks are caught by the sanitizer run. */
#include "helpers.h"

#include <dirent.h>
#include <fcntl.h>

#define REGIONS 6
static uint64_t region_offset[REGIONS], region_length[REGIONS];

static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* A joined thread can still be listed for a moment while the kernel finishes its exit;
 * a thread still running stays listed. Waits up to a second for the count to settle. */
static int settled_thread_count(int expected)
{
    int n = thread_count();
    for (int i = 0; i < 100 && n != expected; i++) {
        usleep(10000);
        n = thread_count();
    }
    return n;
}

static int restore(thawcore_engine *e, const char *path, unsigned char **dst, const uint32_t *crcs)
{
    thawcore_segment segs[REGIONS];
    for (int r = 0; r < REGIONS; r++)
        segs[r] = (thawcore_segment){ region_offset[r], region_length[r], (uint64_t)(uintptr_t)dst[r], (uint32_t)r, 0 };
    uint64_t end = region_offset[REGIONS - 1] + region_length[REGIONS - 1];
    thawcore_extent extent = { 0, (end + 4095) & ~4095ull, 0, REGIONS };
    thawcore_restore_options o = { sizeof o, THAWCORE_IO_BUFFERED, crcs, region_length, REGIONS, 0, NULL, NULL, NULL };
    return thawcore_engine_restore(e, path, &extent, 1, segs, REGIONS, &o, NULL);
}

int main(void)
{
    uint64_t offset = 0;
    for (int r = 0; r < REGIONS; r++) {
        region_offset[r] = offset;
        region_length[r] = 20000 + (uint64_t)r * 7777;
        offset = (offset + region_length[r] + 4095) & ~4095ull;
    }
    unsigned char *data;
    char *path = make_random_file((size_t)offset, 5, &data);
    unsigned char *dst[REGIONS];
    uint32_t crcs[REGIONS];
    for (int r = 0; r < REGIONS; r++) {
        dst[r] = malloc(region_length[r]);
        crcs[r] = thawcore_crc32c(0, data + region_offset[r], region_length[r]);
    }
    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 16384, 16384 * 12, 3);
    int baseline_threads = thread_count();
    int injected = 0;

    const struct { int kind; int code; } faults[] = {
        { THAWCORE_FAULT_READ_EIO, -5 },
        { THAWCORE_FAULT_SHORT_READ, THAWCORE_ERR_SHORT_READ },
        { THAWCORE_FAULT_COPY, THAWCORE_ERR_CUDA },
        { THAWCORE_FAULT_EVENT, THAWCORE_ERR_CUDA },
    };
    for (size_t f = 0; f < sizeof faults / sizeof faults[0]; f++) {
        for (int64_t after = 0;; after++) {
            thawcore_fault_inject(faults[f].kind, after);
            int rc = restore(e, path, dst, crcs);
            int fired = thawcore_fault_inject(THAWCORE_FAULT_NONE, -1);
            if (!fired) {
                CHECK(rc == 0);
                CHECK(after > 0);
                break;
            }
            injected++;
            if (rc != faults[f].code || !strstr(thawcore_last_error(), path)) {
                fprintf(stderr, "fault %d at hit %lld: rc %d, message: %s\n", faults[f].kind, (long long)after, rc,
                        thawcore_last_error());
                return T_EXIT_FAIL;
            }
            CHECK(faults[f].kind == THAWCORE_FAULT_READ_EIO || strstr(thawcore_last_error(), "region"));
            CHECK(settled_thread_count(baseline_threads) == baseline_threads);
            CHECK(restore(e, path, dst, crcs) == 0);
            for (int r = 0; r < REGIONS; r++)
                CHECK(memcmp(dst[r], data + region_offset[r], region_length[r]) == 0);
        }
    }

    /* Staging is pinned as the lanes first need it: pinning fails at the first, second,
     * ... slot of a new engine's first restore. That restore fails naming the pinning, no
     * thread is left, and the next restore pins the slot and succeeds. */
    for (int64_t after = 0; after < 3; after++) {
        thawcore_engine *fresh = make_engine(THAWCORE_DEVICE_MOCK, 16384, 16384 * 12, 3);
        thawcore_fault_inject(THAWCORE_FAULT_PINNED_ALLOC, after);
        int rc = restore(fresh, path, dst, crcs);
        CHECK(thawcore_fault_inject(THAWCORE_FAULT_NONE, -1) == 1);
        injected++;
        CHECK(rc == THAWCORE_ERR_OUT_OF_PINNED_MEMORY);
        CHECK(strstr(thawcore_last_error(), "pin") != NULL);
        CHECK(settled_thread_count(baseline_threads) == baseline_threads);
        CHECK(restore(fresh, path, dst, crcs) == 0);
        for (int r = 0; r < REGIONS; r++)
            CHECK(memcmp(dst[r], data + region_offset[r], region_length[r]) == 0);
        thawcore_engine_destroy(fresh);
    }

    /* A full disk or an I/O error at every write of a freeze. */
    thawcore_segment segs[REGIONS];
    for (int r = 0; r < REGIONS; r++)
        segs[r] = (thawcore_segment){ region_offset[r], region_length[r], (uint64_t)(uintptr_t)(data + region_offset[r]), (uint32_t)r, 0 };
    char out[] = "/tmp/thaw-fault-write-XXXXXX";
    int fd = mkstemp(out);
    CHECK(fd >= 0);
    const int write_faults[][2] = { { THAWCORE_FAULT_WRITE_ENOSPC, -28 }, { THAWCORE_FAULT_WRITE_EIO, -5 } };
    for (int w = 0; w < 2; w++) {
        for (int64_t after = 0;; after++) {
            uint32_t written[REGIONS];
            thawcore_fault_inject(write_faults[w][0], after);
            int rc = thawcore_engine_write(e, fd, segs, REGIONS, 1, written, NULL, NULL);
            if (!thawcore_fault_inject(THAWCORE_FAULT_NONE, -1)) {
                CHECK(rc == 0);
                for (int r = 0; r < REGIONS; r++)
                    CHECK(written[r] == crcs[r]);
                break;
            }
            injected++;
            CHECK(rc == write_faults[w][1]);
            CHECK(strstr(thawcore_last_error(), "region") != NULL);
            CHECK(settled_thread_count(baseline_threads) == baseline_threads);
        }
    }
    close(fd);
    unlink(out);

    thawcore_engine_destroy(e);
    unlink(path);
    for (int r = 0; r < REGIONS; r++)
        free(dst[r]);
    free(data);
    printf("faults: %d injected, each failed cleanly and the next operation succeeded\n", injected);
    return T_EXIT_PASS;
}
