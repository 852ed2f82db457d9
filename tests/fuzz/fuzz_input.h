/* Decoding a fuzzer's bytes into the numbers of a plan. Values are drawn so that the edges a
 * plan can hit (0, 4096 multiples, a file's end, UINT64_MAX, 2^63) come up often. */
#ifndef THAW_FUZZ_INPUT_H
#define THAW_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct { const uint8_t *data; size_t size; } fuzz_input;

static uint8_t fuzz_u8(fuzz_input *in)
{
    if (!in->size)
        return 0;
    in->size--;
    return *in->data++;
}

static uint64_t fuzz_raw64(fuzz_input *in)
{
    uint64_t v = 0;
    size_t n = in->size < 8 ? in->size : 8;
    memcpy(&v, in->data, n);
    in->data += n;
    in->size -= n;
    return v;
}

/* A size or offset near `scale` (the file or buffer under test), or an edge value. */
static uint64_t fuzz_u64(fuzz_input *in, uint64_t scale)
{
    uint8_t kind = fuzz_u8(in);
    uint64_t raw = fuzz_raw64(in);
    switch (kind % 8) {
    case 0: return raw;
    case 1: return scale ? raw % (scale + 1) : 0;
    case 2: return (raw % (scale / 4096 + 2)) * 4096;
    case 3: return scale + (raw % 8192) - 4096;
    case 4: return UINT64_MAX - (raw % 4096);
    case 5: return (UINT64_C(1) << 63) + (raw % 4096);
    case 6: return raw % 64;
    default: return 0;
    }
}

#endif
