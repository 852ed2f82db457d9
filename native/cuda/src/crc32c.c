/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every
 * snapshot region. SSE4.2 has an instruction for it; other CPUs use a table. */
#include "thaw_core.h"

#include <pthread.h>
#include <string.h>

#define CRC32C_POLY 0x82F63B78u

static uint32_t table[8][256];
static uint32_t x2n_table[72]; /* x^(2^n) mod P; lengths up to 2^64 bytes need n < 67 */
/* The crc32 instruction has a latency of 3 cycles and a throughput of 1: three
 * independent streams over consecutive blocks run about 3x faster than one, and are
 * joined by shifting a stream's CRC past the next block (a multiplication by the
 * constant x^(8*STREAM_BLOCK) mod P, done by table: 4 lookups). */
#define STREAM_BLOCK 8192
static uint32_t shift_block[4][256];
static int have_sse42;
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static uint32_t multmodp(uint32_t a, uint32_t b)
{
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = (b & 1) ? (b >> 1) ^ CRC32C_POLY : b >> 1;
    }
    return p;
}

/* x^(8*length) mod P, from the x^(2^n) table (8 = 2^3). */
static uint32_t x8nmodp(uint64_t length)
{
    uint32_t shift = 1u << 31; /* x^0 */
    unsigned k = 3;
    for (uint64_t n = length; n; n >>= 1, k++)
        if (n & 1)
            shift = multmodp(x2n_table[k], shift);
    return shift;
}

static void build_tables(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int t = 1; t < 8; t++)
            table[t][n] = (table[t - 1][n] >> 8) ^ table[0][table[t - 1][n] & 0xff];

    uint32_t p = 1u << 30; /* x^1 */
    x2n_table[0] = p;
    for (int n = 1; n < 72; n++)
        x2n_table[n] = p = multmodp(p, p);

    uint32_t shift = x8nmodp(STREAM_BLOCK);
    for (int byte = 0; byte < 4; byte++)
        for (uint32_t v = 0; v < 256; v++)
            shift_block[byte][v] = multmodp(shift, v << (8 * byte));

#if defined(__x86_64__)
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_software(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
        n--;
    }
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        word ^= crc;
        crc = table[7][word & 0xff] ^ table[6][(word >> 8) & 0xff] ^
              table[5][(word >> 16) & 0xff] ^ table[4][(word >> 24) & 0xff] ^
              table[3][(word >> 32) & 0xff] ^ table[2][(word >> 40) & 0xff] ^
              table[1][(word >> 48) & 0xff] ^ table[0][word >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return crc;
}

static uint32_t shift_past_block(uint32_t crc)
{
    return shift_block[0][crc & 0xff] ^ shift_block[1][(crc >> 8) & 0xff] ^
           shift_block[2][(crc >> 16) & 0xff] ^ shift_block[3][crc >> 24];
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc_hardware(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    while (n && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        n--;
    }
    while (n >= 3 * STREAM_BLOCK) {
        uint64_t b = 0, d = 0;
        for (size_t i = 0; i < STREAM_BLOCK; i += 8) {
            uint64_t w0, w1, w2;
            memcpy(&w0, p + i, 8);
            memcpy(&w1, p + STREAM_BLOCK + i, 8);
            memcpy(&w2, p + 2 * STREAM_BLOCK + i, 8);
            c = __builtin_ia32_crc32di(c, w0);
            b = __builtin_ia32_crc32di(b, w1);
            d = __builtin_ia32_crc32di(d, w2);
        }
        c = shift_past_block((uint32_t)c) ^ b;
        c = shift_past_block((uint32_t)c) ^ d;
        p += 3 * STREAM_BLOCK;
        n -= 3 * STREAM_BLOCK;
    }
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
        p += 8;
        n -= 8;
    }
    while (n--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t thawcore_crc32c(uint32_t crc, const void *data, size_t length)
{
    pthread_once(&tables_once, build_tables);
    crc = ~crc;
#if defined(__x86_64__)
    if (have_sse42)
        return ~crc_hardware(crc, data, length);
#endif
    return ~crc_software(crc, data, length);
}

uint32_t thawcore_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b)
{
    pthread_once(&tables_once, build_tables);
    /* Appending length_b bytes multiplies crc_a by x^(8*length_b) mod P. */
    return multmodp(x8nmodp(length_b), crc_a) ^ crc_b;
}
