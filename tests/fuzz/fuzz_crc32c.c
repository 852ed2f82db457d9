/* libFuzzer target: CRC32C over any bytes, split anywhere. The oracle: the hardware and
 * table paths agree however the data is cut (every alignment, every tail length), and
 * combine(crc(A), crc(B), |B|) is crc(A||B) — the identity restores and streamed writes
 * rely on when they checksum a region in pieces. */
#include "thaw_core.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t cut = data[0] % size;
    const uint8_t *body = data + 1;
    size_t length = size - 1;
    if (cut > length)
        cut = length;
    uint32_t whole = thawcore_crc32c(0, body, length);
    uint32_t a = thawcore_crc32c(0, body, cut);
    uint32_t b = thawcore_crc32c(0, body + cut, length - cut);
    if (thawcore_crc32c(a, body + cut, length - cut) != whole ||
        thawcore_crc32c_combine(a, b, length - cut) != whole) {
        fprintf(stderr, "CRC32C of %zu bytes cut at %zu disagrees\n", length, cut);
        abort();
    }
    /* Byte at a time: the slow path. */
    uint32_t slow = 0;
    for (size_t i = 0; i < length && i < 64; i++)
        slow = thawcore_crc32c(slow, body + i, 1);
    if (length <= 64 && slow != whole)
        abort();
    return 0;
}
