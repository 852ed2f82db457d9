/* Writing regions from host and mock-device sources: bytes and CRCs. */
#include "helpers.h"

#include <fcntl.h>

int main(void)
{
    const size_t sizes[3] = { 1, 70000, 300000 };
    const uint64_t offsets[3] = { 0, 4096, 4096 * 19 };
    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 16384, 16384 * 8, 3);
    for (int host = 0; host < 2; host++) {
        unsigned char *src[3];
        thawcore_segment segs[3];
        for (int i = 0; i < 3; i++) {
            uint64_t address;
            if (host) {
                src[i] = malloc(sizes[i]);
                address = (uint64_t)(uintptr_t)src[i];
            } else {
                CHECK(thawcore_engine_device_alloc(e, sizes[i], &address) == 0);
                src[i] = (unsigned char *)(uintptr_t)address;
            }
            fill_random(src[i], sizes[i], (uint64_t)i + 100);
            segs[i] = (thawcore_segment){ offsets[i], sizes[i], address, (uint32_t)i, 0 };
        }
        char path[] = "/tmp/thaw-write-test-XXXXXX";
        int fd = mkstemp(path);
        CHECK(fd >= 0);
        uint32_t crcs[3];
        CHECK(thawcore_engine_write(e, fd, segs, 3, host, crcs, NULL, NULL) == 0);
        for (int i = 0; i < 3; i++) {
            unsigned char *back = malloc(sizes[i]);
            CHECK(pread(fd, back, sizes[i], (off_t)offsets[i]) == (ssize_t)sizes[i]);
            CHECK(memcmp(back, src[i], sizes[i]) == 0);
            CHECK(crcs[i] == thawcore_crc32c(0, src[i], sizes[i]));
            free(back);
        }
        /* A read-only descriptor fails with -EBADF and a message naming the region. */
        int ro = open(path, O_RDONLY);
        CHECK(thawcore_engine_write(e, ro, segs, 3, host, crcs, NULL, NULL) == -9);
        CHECK(strstr(thawcore_last_error(), "region") != NULL);
        close(ro);
        close(fd);
        unlink(path);
        for (int i = 0; i < 3; i++) {
            if (host)
                free(src[i]);
            else
                CHECK(thawcore_engine_device_free(e, (uint64_t)(uintptr_t)src[i]) == 0);
        }
    }
    thawcore_engine_destroy(e);
    puts("write_mock: ok");
    return T_EXIT_PASS;
}
