/* CRC32C: the standard check value, and combine() agrees with one pass. */
#include "helpers.h"

int main(void)
{
    CHECK(thawcore_crc32c(0, "123456789", 9) == 0xE3069283u);
    CHECK(thawcore_crc32c(0, "", 0) == 0);
    size_t n = 1 << 20;
    unsigned char *data = malloc(n);
    fill_random(data, n, 7);
    uint32_t whole = thawcore_crc32c(0, data, n);
    size_t splits[] = { 0, 1, 7, 4096, 65537, n - 1, n };
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) {
        size_t k = splits[i];
        uint32_t a = thawcore_crc32c(0, data, k), b = thawcore_crc32c(0, data + k, n - k);
        CHECK(thawcore_crc32c_combine(a, b, n - k) == whole);
        CHECK(thawcore_crc32c(a, data + k, n - k) == whole); /* incremental */
    }
    /* Long buffers run three interleaved streams; pieces shorter than three stream
     * blocks run one. Both must give the same CRC, at any start and length. */
    size_t starts[] = { 0, 1, 5 }, lengths[] = { 3 * 8192, 3 * 8192 + 1, 3 * 8192 - 1, 100003, n - 5 };
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < sizeof lengths / sizeof lengths[0]; j++) {
            uint32_t piecewise = 0;
            for (size_t off = 0; off < lengths[j]; off += 1000)
                piecewise = thawcore_crc32c(piecewise, data + starts[i] + off,
                                            lengths[j] - off < 1000 ? lengths[j] - off : 1000);
            CHECK(thawcore_crc32c(0, data + starts[i], lengths[j]) == piecewise);
        }
    /* Unaligned starts take the byte-wise head path. */
    CHECK(thawcore_crc32c(0, data + 3, 1000) ==
          thawcore_crc32c(thawcore_crc32c(0, data + 3, 5), data + 8, 995));
    free(data);
    puts("crc32c: ok");
    return T_EXIT_PASS;
}
