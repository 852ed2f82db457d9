/* Pool support on the mock: a shared-memory file opened as an IPC handle, filled by
 * host-to-device copies spread over lanes, closed; bad handles fail cleanly. */
#include "helpers.h"

#include <fcntl.h>

int main(void)
{
    size_t length = (3u << 20) + 12345;
    unsigned char *source = malloc(length);
    fill_random(source, length, 77);
    char path[] = "/tmp/thaw-pool-ipc-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && ftruncate(fd, (off_t)length + 8192) == 0);
    close(fd);

    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 65536, 65536 * 8, 4);
    CHECK(thawcore_engine_pin_host(e, source, length) == 0);
    uint64_t base = 0;
    CHECK(thawcore_engine_ipc_open(e, path, (uint32_t)strlen(path), &base) == 0 && base != 0);
    thawcore_copy copies[2] = {
        { (uint64_t)(uintptr_t)source, base + 8192, length - 1000 },
        { (uint64_t)(uintptr_t)(source + length - 1000), base + 8192 + length - 1000, 1000 },
    };
    CHECK(thawcore_engine_copy_host_to_device(e, copies, 2) == 0);
    CHECK(thawcore_engine_ipc_close(e, base) == 0);
    CHECK(thawcore_engine_ipc_close(e, base) == -22); /* closed once only */

    unsigned char *back = malloc(length);
    fd = open(path, O_RDONLY);
    CHECK(pread(fd, back, length, 8192) == (ssize_t)length);
    close(fd);
    CHECK(memcmp(back, source, length) == 0);

    uint64_t ignored;
    CHECK(thawcore_engine_ipc_open(e, "/nonexistent/handle", 19, &ignored) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(strstr(thawcore_last_error(), "/nonexistent/handle") != NULL);
    thawcore_copy bad = { 0, base, 10 };
    CHECK(thawcore_engine_copy_host_to_device(e, &bad, 1) == -22);
    CHECK(thawcore_engine_unpin_host(e, source) == 0);

    thawcore_engine_destroy(e);
    unlink(path);
    free(back);
    free(source);
    puts("pool_mock: ok");
    return T_EXIT_PASS;
}
