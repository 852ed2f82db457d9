/* Borrowed links on the mock devices: the bytes land whichever link carried them, the split
 * follows the weights, a helper that cannot be set up or fails mid-restore hands its share to
 * the destination's own link (checksums still checked once), errors of the file still fail the
 * restore, and out-of-bounds options are refused before anything is read. */
#include "helpers.h"

#include <errno.h>
#include <math.h>

#define REGIONS 48
#define CHUNK (64u << 10)

static uint64_t region_offset[REGIONS], region_length[REGIONS];
static uint32_t crcs[REGIONS];
static unsigned char *dst[REGIONS];
static thawcore_segment segs[REGIONS];
static thawcore_extent extents[2];
static uint64_t total_bytes;

/* Regions of odd sizes at 4096-aligned offsets with gaps, in two extents. */
static size_t layout(void)
{
    uint64_t offset = 0, x = 7;
    for (int r = 0; r < REGIONS; r++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        region_offset[r] = offset;
        region_length[r] = 1 + (x >> 33) % (300u << 10);
        offset = (offset + region_length[r] + 4095) & ~4095ull;
        if (r % 5 == 0)
            offset += 4096; /* a gap the restore reads past */
        total_bytes += region_length[r];
    }
    uint32_t half = REGIONS / 2;
    extents[0] = (thawcore_extent){ 0, region_offset[half], 0, half };
    extents[1] = (thawcore_extent){ region_offset[half], offset - region_offset[half], half, REGIONS - half };
    return (size_t)offset;
}

static int restore(thawcore_engine *e, const char *path, int io_mode, const uint32_t *expected,
                   const thawcore_borrow_options *b, thawcore_link_stats *links, uint32_t capacity, volatile int32_t *cancel)
{
    for (int r = 0; r < REGIONS; r++) {
        memset(dst[r], 0, region_length[r]);
        segs[r] = (thawcore_segment){ region_offset[r], region_length[r], (uint64_t)(uintptr_t)dst[r], (uint32_t)r, 0 };
    }
    thawcore_restore_options o = { sizeof o, io_mode, expected, region_length, REGIONS, 0, cancel, NULL, NULL };
    thawcore_restore_stats stats;
    int rc = thawcore_engine_restore_borrowed(e, path, extents, 2, segs, REGIONS, &o, b, &stats, links, capacity);
    if (rc == 0)
        CHECK(stats.bytes_copied == total_bytes);
    return rc;
}

static void check_landed(const unsigned char *data)
{
    for (int r = 0; r < REGIONS; r++)
        CHECK(memcmp(dst[r], data + region_offset[r], region_length[r]) == 0);
}

static uint64_t link_total(const thawcore_link_stats *links, uint32_t n)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < n; i++)
        sum += links[i].bytes;
    return sum;
}

static int untouched(void)
{
    for (int r = 0; r < REGIONS; r++)
        for (uint64_t i = 0; i < region_length[r]; i++)
            if (dst[r][i])
                return 0;
    return 1;
}

int main(void)
{
    size_t file_length = layout();
    unsigned char *data;
    char *path = make_random_file(file_length, 19, &data);
    for (int r = 0; r < REGIONS; r++) {
        dst[r] = malloc(region_length[r]);
        CHECK(dst[r]);
        crcs[r] = thawcore_crc32c(0, data + region_offset[r], region_length[r]);
    }
    thawcore_engine_options eo = { sizeof eo, THAWCORE_DEVICE_MOCK, 4, 2, CHUNK, CHUNK * 8 };
    thawcore_engine *e = NULL;
    CHECK(thawcore_engine_create(&eo, &e) == 0);
    thawcore_link_stats links[4];

    /* Equal shares over the destination (mock-4) and three helpers, verified, every io mode. */
    int32_t three[] = { 1, 2, 7 };
    thawcore_borrow_options b = { sizeof b, 3, three, NULL, 0, 0 };
    int modes[] = { THAWCORE_IO_BUFFERED, THAWCORE_IO_DIRECT, THAWCORE_IO_ZEROCOPY };
    setenv("THAWCORE_ZERO_COPY_CHUNK_MIB", "1", 1); /* zero-copy chunks of 16 staging pieces, cut up by helpers */
    for (int m = 0; m < 3; m++) {
        CHECK(restore(e, path, modes[m], crcs, &b, links, 4, NULL) == 0);
        check_landed(data);
        CHECK(links[0].ordinal == 4 && links[0].role == THAWCORE_LINK_DIRECT && links[0].taken_over_bytes == 0);
        uint64_t planned = 0;
        for (int i = 0; i < 4; i++) {
            CHECK(links[i].status == 0 && links[i].note[0] == '\0');
            CHECK(links[i].bytes > 0);
            planned += links[i].planned_bytes;
            if (i > 0)
                CHECK(links[i].ordinal == three[i - 1] && links[i].role == THAWCORE_LINK_BORROWED && links[i].lanes == 2);
        }
        CHECK(planned == file_length);
        CHECK(link_total(links, 4) == total_bytes);
        if (m == 0) /* staged chunks of 64 KiB: each share within two chunks of a quarter */
            for (int i = 0; i < 4; i++)
                CHECK(fabs((double)links[i].planned_bytes - file_length / 4.0) <= 2.0 * CHUNK);
    }
    unsetenv("THAWCORE_ZERO_COPY_CHUNK_MIB");

    /* Weights: the destination three times as fast as its one helper. */
    int32_t one[] = { 0 };
    double weights[] = { 3, 1 };
    thawcore_borrow_options weighted = { sizeof weighted, 1, one, weights, 1, 0 };
    CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &weighted, links, 2, NULL) == 0);
    check_landed(data);
    CHECK(fabs((double)links[0].planned_bytes - 0.75 * file_length) <= 2.0 * CHUNK);
    CHECK(links[1].lanes == 1 && links[1].bytes > 0);
    /* A weight of 0 for the destination: every byte borrowed. */
    double all_borrowed[] = { 0, 1 };
    weighted.link_weights = all_borrowed;
    CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &weighted, links, 2, NULL) == 0);
    check_landed(data);
    CHECK(links[0].bytes == 0 && links[1].bytes == total_bytes);

    /* A helper that cannot be set up is left out of the split. */
    int32_t two[] = { 1, 2 };
    thawcore_borrow_options pair = { sizeof pair, 2, two, NULL, 0, 0 };
    thawcore_fault_inject(THAWCORE_FAULT_BORROW_SETUP, 0);
    CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &pair, links, 3, NULL) == 0);
    CHECK(thawcore_fault_inject(THAWCORE_FAULT_NONE, -1) == 1);
    check_landed(data);
    int out = links[1].status ? 1 : 2, in = 3 - out;
    CHECK(links[out].status == THAWCORE_ERR_CUDA && links[out].planned_bytes == 0 && links[out].bytes == 0);
    CHECK(strstr(links[out].note, "left out") && strstr(links[out].note, "injected fault"));
    CHECK(links[in].status == 0 && links[in].bytes > 0);
    CHECK(link_total(links, 3) == total_bytes);
    /* None can: the destination's own link serves all, and says so. */
    thawcore_borrow_options single = { sizeof single, 1, two, NULL, 0, 0 };
    thawcore_fault_inject(THAWCORE_FAULT_BORROW_SETUP, 0);
    CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &single, links, 2, NULL) == 0);
    thawcore_fault_inject(THAWCORE_FAULT_NONE, -1);
    check_landed(data);
    CHECK(links[0].bytes == total_bytes && strstr(links[0].note, "no borrowed link could be set up"));
    CHECK(strstr(links[1].note, "mock-1 left out"));

    /* A helper failing mid-restore, at its first copy or later: dropped, its unfinished share
     * copied by the destination, every checksum checked once and right. */
    int64_t afters[] = { 0, 3, 20 };
    for (int a = 0; a < 3; a++) {
        thawcore_fault_inject(THAWCORE_FAULT_BORROW_COPY, afters[a]);
        CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &pair, links, 3, NULL) == 0);
        CHECK(thawcore_fault_inject(THAWCORE_FAULT_NONE, -1) == 1);
        check_landed(data);
        int dropped = links[1].status ? 1 : 2;
        CHECK(links[3 - dropped].status == 0);
        CHECK(links[dropped].status == THAWCORE_ERR_CUDA && strstr(links[dropped].note, "dropped mid-restore"));
        CHECK(links[0].taken_over_bytes > 0 && links[dropped].bytes < total_bytes / 2);
        CHECK(link_total(links, 3) == total_bytes);
    }
    /* The same without checksums. */
    thawcore_fault_inject(THAWCORE_FAULT_BORROW_COPY, 5);
    CHECK(restore(e, path, THAWCORE_IO_BUFFERED, NULL, &pair, links, 3, NULL) == 0);
    thawcore_fault_inject(THAWCORE_FAULT_NONE, -1);
    check_landed(data);
    CHECK(link_total(links, 3) == total_bytes && links[0].taken_over_bytes > 0);

    /* The file's errors are the restore's, on whichever link reads them. */
    uint32_t bad[REGIONS];
    memcpy(bad, crcs, sizeof bad);
    bad[REGIONS - 1] ^= 1; /* in the last helper's share */
    CHECK(restore(e, path, THAWCORE_IO_BUFFERED, bad, &pair, links, 3, NULL) == THAWCORE_ERR_CHECKSUM);
    CHECK(strstr(thawcore_last_error(), "region 47"));
    for (int64_t after = 0; after < 40; after += 13) {
        thawcore_fault_inject(THAWCORE_FAULT_READ_EIO, after);
        CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &pair, links, 3, NULL) == -EIO);
        thawcore_fault_inject(THAWCORE_FAULT_NONE, -1);
    }
    volatile int32_t cancel = 1;
    CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &pair, links, 3, &cancel) == THAWCORE_ERR_CANCELED);

    /* Bounds: refused before a byte moves. */
    int32_t itself[] = { 1, 4 }, repeated[] = { 1, 1 }, missing[] = { 8 }, negative[] = { -1 };
    thawcore_borrow_options refused[] = {
        { sizeof b, 2, itself, NULL, 0, 0 },
        { sizeof b, 2, repeated, NULL, 0, 0 },
        { sizeof b, 1, missing, NULL, 0, 0 },
        { sizeof b, 1, negative, NULL, 0, 0 },
        { sizeof b, 0, three, NULL, 0, 0 },
        { sizeof b, THAWCORE_MAX_HELPERS + 1, three, NULL, 0, 0 },
        { sizeof b, 1, one, NULL, THAWCORE_MAX_HELPER_LANES + 1, 0 },
        { sizeof b - 8, 1, one, NULL, 0, 0 },
    };
    const char *why[] = { "destination itself", "named twice", "no mock device 8", "no mock device -1", "1 to 15",
                          "1 to 15", "at most 8", "newer ABI" };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &refused[i], links, 4, NULL) == -EINVAL);
        CHECK(strstr(thawcore_last_error(), why[i]));
        CHECK(untouched());
    }
    double nan_weight[] = { 1, NAN }, negative_weight[] = { 1, -1 }, zero_weights[] = { 0, 0 }, huge[] = { 1, 1e7 };
    double *bad_weights[] = { nan_weight, negative_weight, zero_weights, huge };
    for (int i = 0; i < 4; i++) {
        thawcore_borrow_options w = { sizeof w, 1, one, bad_weights[i], 0, 0 };
        CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &w, links, 2, NULL) == -EINVAL);
        CHECK(strstr(thawcore_last_error(), i == 2 ? "add up to 0" : "each must lie in"));
        CHECK(untouched());
    }
    CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &b, links, 3, NULL) == -EINVAL); /* no room for 4 links */
    CHECK(strstr(thawcore_last_error(), "room for 3"));
    CHECK(thawcore_engine_restore_borrowed(e, path, extents, 2, segs, REGIONS, NULL, NULL, NULL, NULL, 0) == -EINVAL);

    /* Links may go unreported; and the engine still restores plainly afterwards. */
    CHECK(restore(e, path, THAWCORE_IO_BUFFERED, crcs, &b, NULL, 0, NULL) == 0);
    check_landed(data);
    thawcore_restore_options o = { sizeof o, THAWCORE_IO_BUFFERED, crcs, region_length, REGIONS, 0, NULL, NULL, NULL };
    for (int r = 0; r < REGIONS; r++)
        memset(dst[r], 0, region_length[r]);
    CHECK(thawcore_engine_restore(e, path, extents, 2, segs, REGIONS, &o, NULL) == 0);
    check_landed(data);

    thawcore_engine_destroy(e);
    unlink(path);
    for (int r = 0; r < REGIONS; r++)
        free(dst[r]);
    free(data);
    return T_EXIT_PASS;
}
