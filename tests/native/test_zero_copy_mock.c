/* Zero-copy restores on the mock device: chunks are copied straight from the mapping
 * (no staging pinned), a chunk whose registration fails or whose pages are not in page
 * cache goes through staging, and either way the bytes and checksums are right. */
#include "helpers.h"

#include <fcntl.h>
#include <sys/mman.h>

#define REGIONS 4
#define MIB (1024 * 1024)

static const uint64_t region_offset[REGIONS] = { 0, 4096, 3 * MIB, 3 * MIB + 8192 };
static const uint64_t region_length[REGIONS] = { 100, 3 * MIB - 4096 - 5, 4096, 2 * MIB + 333 };

static int restore(thawcore_engine *e, const char *path, unsigned char **dst, const uint32_t *crcs,
                   thawcore_restore_stats *stats)
{
    thawcore_segment segs[REGIONS];
    for (int r = 0; r < REGIONS; r++)
        segs[r] = (thawcore_segment){ region_offset[r], region_length[r], (uint64_t)(uintptr_t)dst[r], (uint32_t)r, 0 };
    uint64_t end = region_offset[REGIONS - 1] + region_length[REGIONS - 1];
    thawcore_extent extent = { 0, (end + 4095) & ~4095ull, 0, REGIONS };
    thawcore_restore_options o = { sizeof o, THAWCORE_IO_ZEROCOPY, crcs, region_length, REGIONS, 0, NULL, NULL, NULL };
    for (int r = 0; r < REGIONS; r++)
        memset(dst[r], 0, region_length[r]);
    return thawcore_engine_restore(e, path, &extent, 1, segs, REGIONS, &o, stats);
}

static void check_bytes(unsigned char **dst, const unsigned char *data)
{
    for (int r = 0; r < REGIONS; r++)
        CHECK(memcmp(dst[r], data + region_offset[r], region_length[r]) == 0);
}

/* Pages of the file in page cache, as the engine will see them. */
static size_t resident_pages(const char *path, size_t length)
{
    int fd = open(path, O_RDONLY);
    void *map = mmap(NULL, length, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    CHECK(map != MAP_FAILED);
    size_t pages = (length + 4095) / 4096, resident = 0;
    unsigned char *vec = malloc(pages);
    CHECK(mincore(map, length, vec) == 0);
    for (size_t i = 0; i < pages; i++)
        resident += vec[i] & 1;
    free(vec);
    munmap(map, length);
    return resident;
}

int main(void)
{
    uint64_t end = region_offset[REGIONS - 1] + region_length[REGIONS - 1];
    size_t file_length = (size_t)((end + 4095) & ~4095ull);
    size_t pages = file_length / 4096;
    unsigned char *data;
    char *path = make_random_file(file_length, 11, &data);
    unsigned char *dst[REGIONS];
    uint32_t crcs[REGIONS];
    for (int r = 0; r < REGIONS; r++) {
        dst[r] = malloc(region_length[r]);
        crcs[r] = thawcore_crc32c(0, data + region_offset[r], region_length[r]);
    }
    setenv("THAWCORE_ZERO_COPY_CHUNK_MIB", "1", 1); /* 6 zero-copy chunks of 4 staged ones each */
    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 256 * 1024, 256 * 1024 * 8, 3);
    thawcore_restore_stats stats;
    int cached = resident_pages(path, file_length) == pages;

    /* Every chunk from the mapping, and not one staging slot pinned for it. */
    if (cached) {
        thawcore_fault_inject(THAWCORE_FAULT_PINNED_ALLOC, 0);
        CHECK(restore(e, path, dst, crcs, &stats) == 0);
        CHECK(thawcore_fault_inject(THAWCORE_FAULT_NONE, -1) == 0);
        check_bytes(dst, data);
        CHECK(stats.io_mode_used == THAWCORE_IO_ZEROCOPY);
        CHECK(stats.fallback_chunks == 0);
        CHECK(stats.bytes_copied == region_length[0] + region_length[1] + region_length[2] + region_length[3]);
    } else {
        fprintf(stderr, "zero-copy: the test file is not in page cache here; the all-mapped case is not checked\n");
    }

    /* The driver refuses the second registration: that chunk is staged, the rest mapped. */
    thawcore_fault_inject(THAWCORE_FAULT_REGISTER, 1);
    CHECK(restore(e, path, dst, crcs, &stats) == 0);
    CHECK(thawcore_fault_inject(THAWCORE_FAULT_NONE, -1) == 1 || !cached);
    check_bytes(dst, data);
    CHECK(stats.io_mode_used == THAWCORE_IO_ZEROCOPY);
    CHECK(!cached || stats.fallback_chunks == 1);

    /* Every registration refused: the whole restore goes through staging. */
    for (int64_t hit = 0; hit < 6; hit++) {
        thawcore_fault_inject(THAWCORE_FAULT_REGISTER, hit);
        CHECK(restore(e, path, dst, crcs, &stats) == 0);
        thawcore_fault_inject(THAWCORE_FAULT_NONE, -1);
        check_bytes(dst, data);
    }

    /* A corrupt region is caught on the mapped path too, and named. */
    uint32_t bad[REGIONS];
    memcpy(bad, crcs, sizeof bad);
    bad[1] ^= 4;
    CHECK(restore(e, path, dst, bad, &stats) == THAWCORE_ERR_CHECKSUM);
    CHECK(stats.failed_region == 1);
    CHECK(strstr(thawcore_last_error(), "region 1") != NULL);

    /* Pages dropped from page cache are not registered: those chunks are staged (the
     * staged reads' readahead can bring later chunks back in, which are then mapped). */
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    fsync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    if (resident_pages(path, file_length) == 0) {
        CHECK(restore(e, path, dst, crcs, &stats) == 0);
        check_bytes(dst, data);
        CHECK(stats.fallback_chunks >= 1 && stats.fallback_chunks <= 6);
    } else {
        fprintf(stderr, "zero-copy: this file system keeps the pages; the uncached case is not checked\n");
    }

    /* The file ends inside the last region: the short read is reported, not a fault. */
    CHECK(truncate(path, 5 * MIB) == 0);
    CHECK(restore(e, path, dst, crcs, &stats) == THAWCORE_ERR_SHORT_READ);
    CHECK(stats.failed_region == 3);
    CHECK(strstr(thawcore_last_error(), "truncated") != NULL);

    thawcore_engine_destroy(e);
    unlink(path);
    for (int r = 0; r < REGIONS; r++)
        free(dst[r]);
    free(data);
    puts("zero_copy_mock: ok");
    return T_EXIT_PASS;
}
