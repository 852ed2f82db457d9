/* libFuzzer target: thawcore_engine_write of host segments decoded from the input into a
 * file. Sources lie inside the harness's arena (the core trusts source addresses, as it
 * trusts destinations); offsets and lengths are hostile. The oracle, beyond "no crash":
 * on success each reported CRC32C is the CRC32C of its source bytes, and when segments do
 * not overlap in the file, the file holds exactly those bytes at their offsets. */
#include "thaw_core.h"
#include "fuzz_input.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define ARENA (256u * 1024)
#define FILE_SPAN (1u << 20)
#define MAX_SEGMENTS 12

static thawcore_engine *engine;
static int fd = -1;
static char path[64];
static unsigned char *arena;
static unsigned char readback[ARENA];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    thawcore_engine_options o = { sizeof o, THAWCORE_DEVICE_MOCK, 0, 3, 4096, 4096 * 8 };
    if (thawcore_engine_create(&o, &engine) != 0)
        abort();
    snprintf(path, sizeof path, "/tmp/thaw-fuzz-write-%d", (int)getpid());
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    arena = malloc(ARENA);
    if (fd < 0 || !arena)
        abort();
    unlink(path);
    for (size_t i = 0; i < ARENA; i++)
        arena[i] = (unsigned char)(i * 37 + i / 4096);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_input in = { data, size };
    uint32_t count = fuzz_u8(&in) % (MAX_SEGMENTS + 1);
    thawcore_segment segments[MAX_SEGMENTS];
    uint32_t crcs[MAX_SEGMENTS];
    for (uint32_t i = 0; i < count; i++) {
        uint64_t at = fuzz_u64(&in, ARENA) % ARENA;
        uint64_t length = fuzz_u64(&in, ARENA - at);
        if (length > ARENA - at)
            length = ARENA - at;
        /* Offsets far past FILE_SPAN would only make sparse files; they stay hostile in the low bits. */
        uint64_t offset = fuzz_u64(&in, FILE_SPAN) % (2 * FILE_SPAN);
        uint8_t null_source = fuzz_u8(&in) == 0xff;
        segments[i] = (thawcore_segment){ offset, length, null_source ? 0 : (uint64_t)(uintptr_t)(arena + at), i, 0 };
    }
    if (ftruncate(fd, 0) != 0)
        abort();
    int rc = thawcore_engine_write(engine, fd, segments, count, 1, crcs, NULL, NULL);
    if (rc < 0) {
        if (!*thawcore_last_error())
            abort();
        return 0;
    }
    int overlap = 0;
    for (uint32_t i = 0; i < count; i++)
        for (uint32_t j = i + 1; j < count; j++)
            if (segments[i].length && segments[j].length &&
                segments[i].file_offset < segments[j].file_offset + segments[j].length &&
                segments[j].file_offset < segments[i].file_offset + segments[i].length)
                overlap = 1;
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *source = (const unsigned char *)(uintptr_t)segments[i].device_address;
        if (segments[i].length && crcs[i] != thawcore_crc32c(0, source, segments[i].length)) {
            fprintf(stderr, "segment %u: CRC32C 0x%08x is not its bytes' checksum\n", i, crcs[i]);
            abort();
        }
        if (!overlap && segments[i].length) {
            if (pread(fd, readback, segments[i].length, (off_t)segments[i].file_offset) != (ssize_t)segments[i].length ||
                memcmp(readback, source, segments[i].length) != 0) {
                fprintf(stderr, "segment %u: the file does not hold its bytes\n", i);
                abort();
            }
        }
    }
    return 0;
}
