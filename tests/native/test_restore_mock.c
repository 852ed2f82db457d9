/* Restore through the mock device: bytes land, checksums catch corruption,
 * truncation and cancellation fail cleanly, and the engine stays usable. */
#include "helpers.h"

#include <fcntl.h>

#define REGIONS 5

static const uint64_t region_offset[REGIONS] = { 0, 8192, 8192 + 4096 * 3, 65536, 65536 + 4096 };
static const uint64_t region_length[REGIONS] = { 5000, 12288, 100, 4096, 3 * 1024 * 1024 + 17 };

static int restore(thawcore_engine *e, const char *path, unsigned char **dst, int io_mode,
                   const uint32_t *crcs, volatile int32_t *cancel, thawcore_restore_stats *stats)
{
    thawcore_segment segs[REGIONS];
    for (int r = 0; r < REGIONS; r++)
        segs[r] = (thawcore_segment){ region_offset[r], region_length[r], (uint64_t)(uintptr_t)dst[r], (uint32_t)r, 0 };
    uint64_t end = region_offset[REGIONS - 1] + region_length[REGIONS - 1];
    thawcore_extent extent = { 0, (end + 4095) & ~4095ull, 0, REGIONS };
    thawcore_restore_options o = { sizeof o, io_mode, crcs, region_length, REGIONS, 0, cancel, NULL, NULL };
    return thawcore_engine_restore(e, path, &extent, 1, segs, REGIONS, &o, stats);
}

int main(void)
{
    uint64_t end = region_offset[REGIONS - 1] + region_length[REGIONS - 1];
    size_t file_length = (size_t)((end + 4095) & ~4095ull);
    unsigned char *data;
    char *path = make_random_file(file_length, 42, &data);
    unsigned char *dst[REGIONS];
    uint32_t crcs[REGIONS];
    for (int r = 0; r < REGIONS; r++) {
        dst[r] = calloc(1, region_length[r]);
        crcs[r] = thawcore_crc32c(0, data + region_offset[r], region_length[r]);
    }

    /* Small chunks and several lanes so regions straddle chunks and lanes. */
    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 8192, 8192 * 16, 4);
    int modes[] = { THAWCORE_IO_BUFFERED, THAWCORE_IO_DIRECT, THAWCORE_IO_AUTO };
    for (int m = 0; m < 3; m++) {
        for (int r = 0; r < REGIONS; r++)
            memset(dst[r], 0, region_length[r]);
        thawcore_restore_stats stats;
        CHECK(restore(e, path, dst, modes[m], crcs, NULL, &stats) == 0);
        for (int r = 0; r < REGIONS; r++)
            CHECK(memcmp(dst[r], data + region_offset[r], region_length[r]) == 0);
        CHECK(stats.bytes_copied == 5000 + 12288 + 100 + 4096 + 3 * 1024 * 1024 + 17);
    }

    /* A wrong checksum names its region. */
    uint32_t bad[REGIONS];
    memcpy(bad, crcs, sizeof bad);
    bad[3] ^= 1;
    thawcore_restore_stats stats;
    CHECK(restore(e, path, dst, THAWCORE_IO_BUFFERED, bad, NULL, &stats) == THAWCORE_ERR_CHECKSUM);
    CHECK(stats.failed_region == 3);
    CHECK(strstr(thawcore_last_error(), "region 3") != NULL);

    /* Cancelled before it starts. */
    volatile int32_t cancel = 1;
    CHECK(restore(e, path, dst, THAWCORE_IO_BUFFERED, NULL, &cancel, NULL) == THAWCORE_ERR_CANCELED);

    /* Truncated file: a short read naming the file. */
    CHECK(truncate(path, 65536 + 100) == 0);
    CHECK(restore(e, path, dst, THAWCORE_IO_BUFFERED, NULL, NULL, NULL) == THAWCORE_ERR_SHORT_READ);
    CHECK(strstr(thawcore_last_error(), path) != NULL);
    CHECK(strstr(thawcore_last_error(), "is truncated") != NULL); /* region 3 or 4, whichever lane got there first */

    /* A plan reaching far past the end of a small file (a hostile header) is refused before
     * anything is allocated for it: no terabyte chunk table. */
    {
        thawcore_segment far = { 0, 1ull << 40, (uint64_t)(uintptr_t)dst[0], 0, 0 };
        thawcore_extent huge = { 0, 1ull << 40, 0, 1 };
        thawcore_restore_stats far_stats;
        CHECK(thawcore_engine_restore(e, path, &huge, 1, &far, 1, NULL, &far_stats) == THAWCORE_ERR_SHORT_READ);
        CHECK(far_stats.failed_region == 0);
        CHECK(strstr(thawcore_last_error(), "region 0 needs bytes up to offset 1099511627776") != NULL);
        thawcore_segment small = { 0, 100, (uint64_t)(uintptr_t)dst[0], 0, 0 };
        CHECK(thawcore_engine_restore(e, path, &huge, 1, &small, 1, NULL, NULL) == THAWCORE_ERR_SHORT_READ);
        CHECK(strstr(thawcore_last_error(), "extent 0 needs bytes up to offset 1099511627776") != NULL);
    }

    /* Missing file. */
    CHECK(restore(e, "/nonexistent/snapshot.thaw", dst, THAWCORE_IO_BUFFERED, NULL, NULL, NULL) == -2);

    /* The engine still works after failures. */
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK(pwrite(fd, data, file_length, 0) == (ssize_t)file_length);
    close(fd);
    CHECK(restore(e, path, dst, THAWCORE_IO_AUTO, crcs, NULL, NULL) == 0);
    for (int r = 0; r < REGIONS; r++)
        CHECK(memcmp(dst[r], data + region_offset[r], region_length[r]) == 0);

    /* A plan whose segment leaves its extent is refused. */
    thawcore_segment seg = { 0, file_length + 1, (uint64_t)(uintptr_t)dst[0], 0, 0 };
    thawcore_extent extent = { 0, file_length, 0, 1 };
    CHECK(thawcore_engine_restore(e, path, &extent, 1, &seg, 1, NULL, NULL) == THAWCORE_ERR_INVALID_PLAN);

    thawcore_engine_destroy(e);
    unlink(path);
    for (int r = 0; r < REGIONS; r++)
        free(dst[r]);
    free(data);
    puts("restore_mock: ok");
    return T_EXIT_PASS;
}
