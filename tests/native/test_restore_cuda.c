/* Restore into CUDA device memory and read it back; skips without a GPU. */
#include "helpers.h"

int main(void)
{
    if (thawcore_device_count(THAWCORE_DEVICE_CUDA) <= 0) {
        printf("restore_cuda: skipped (%s)\n", thawcore_last_error());
        return T_EXIT_SKIP;
    }
    size_t length = 64u << 20;
    unsigned char *data;
    char *path = make_random_file(length, 9, &data);
    thawcore_engine *e = make_engine(THAWCORE_DEVICE_CUDA, 4u << 20, 32u << 20, 4);
    CHECK(e);
    uint64_t dev;
    CHECK(thawcore_engine_device_alloc(e, length, &dev) == 0);
    uint64_t allocation = 0;
    CHECK(thawcore_engine_check_destination(e, dev + 4096, length - 4096, &allocation) == 0 && allocation == dev);
    CHECK(thawcore_engine_check_destination(e, dev, length + 4096, NULL) == THAWCORE_ERR_BAD_DESTINATION);
    thawcore_segment seg = { 0, length, dev, 0, 0 };
    thawcore_extent extent = { 0, length, 0, 1 };
    uint32_t crc = thawcore_crc32c(0, data, length);
    uint64_t region_length = length;
    thawcore_restore_options o = { sizeof o, THAWCORE_IO_AUTO, &crc, &region_length, 1, 0, NULL, NULL, NULL };
    thawcore_restore_stats stats;
    CHECK(thawcore_engine_restore(e, path, &extent, 1, &seg, 1, &o, &stats) == 0);
    unsigned char *back = malloc(length);
    CHECK(thawcore_engine_copy_to_host(e, back, dev, length) == 0);
    CHECK(memcmp(back, data, length) == 0);
    printf("restore_cuda: ok (%.2f GB/s)\n", (double)length / stats.seconds / 1e9);

    /* Zero-copy: the file's pages registered read-only where mapped, DMA'd from there. */
    unsigned char *zeros = calloc(1, length);
    CHECK(zeros);
    thawcore_copy clear = { (uint64_t)(uintptr_t)zeros, dev, length };
    CHECK(thawcore_engine_copy_host_to_device(e, &clear, 1) == 0);
    o.io_mode = THAWCORE_IO_ZEROCOPY;
    CHECK(thawcore_engine_restore(e, path, &extent, 1, &seg, 1, &o, &stats) == 0);
    CHECK(stats.io_mode_used == THAWCORE_IO_ZEROCOPY);
    CHECK(thawcore_engine_copy_to_host(e, back, dev, length) == 0);
    CHECK(memcmp(back, data, length) == 0);
    printf("restore_cuda: zero-copy ok (%.2f GB/s, %u of %llu chunks staged)\n", (double)length / stats.seconds / 1e9,
           stats.fallback_chunks, (unsigned long long)(length >> 26));
    free(zeros);
    CHECK(thawcore_engine_device_free(e, dev) == 0);
    thawcore_engine_destroy(e);
    unlink(path);
    free(back);
    free(data);
    return T_EXIT_PASS;
}
