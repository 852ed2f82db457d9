/* Device-to-device copies on the mock, as the pool serves a restore from a live publisher: a
 * publisher's shared file copied into a client's, bit-exact over several lanes and pieces;
 * reads bounded by the publisher's file (past its end refused, a file truncated after it was
 * opened fails instead of reading past it or raising SIGBUS); host memory at either end. */
#include "helpers.h"

#include <fcntl.h>
#include <errno.h>
#include <sys/stat.h>

static void make_file(const char *directory, const char *name, const void *data, size_t length)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", directory, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0 && ftruncate(fd, (off_t)length) == 0);
    if (data)
        CHECK(pwrite(fd, data, length, 0) == (ssize_t)length);
    close(fd);
}

static void read_file(const char *directory, const char *name, void *out, size_t length, off_t offset)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", directory, name);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && pread(fd, out, length, offset) == (ssize_t)length);
    close(fd);
}

static uint64_t open_handle(thawcore_engine *e, const char *directory, const char *name, uint64_t *length)
{
    thawcore_ipc_peer peer = { sizeof peer, (uint32_t)getuid(), directory };
    uint64_t base = 0;
    CHECK(thawcore_engine_ipc_open(e, name, (uint32_t)strlen(name), &peer, &base, length) == 0 && base);
    return base;
}

int main(void)
{
    size_t length = (20u << 20) + 4321; /* several 8 MiB bounce pieces, a ragged end */
    unsigned char *weights = malloc(length), *back = malloc(length);
    CHECK(weights && back);
    fill_random(weights, length, 19);
    char directory[] = "/tmp/thaw-device-copy-XXXXXX";
    CHECK(mkdtemp(directory) != NULL);
    make_file(directory, "publisher", weights, length);
    make_file(directory, "client", NULL, length + 4096);

    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 65536, 65536 * 8, 4);
    uint64_t publisher_length = 0, client_length = 0;
    uint64_t publisher = open_handle(e, directory, "publisher", &publisher_length);
    uint64_t client = open_handle(e, directory, "client", &client_length);
    CHECK(publisher_length == length && client_length == length + 4096);

    /* Two tensors, the second at an offset on both sides. */
    thawcore_device_copy copies[3] = {
        { publisher, client + 4096, length - 5000 },
        { publisher + length - 5000, client + 4096 + length - 5000, 5000 },
        { publisher, client, 0 }, /* empty tensors are allowed */
    };
    CHECK(thawcore_engine_copy_device_to_device(e, copies, 3) == 0);
    read_file(directory, "client", back, length, 4096);
    CHECK(memcmp(back, weights, length) == 0);

    /* Reads never pass the publisher's file; writes never pass the client's. */
    thawcore_device_copy past = { publisher + length - 10, client, 11 };
    CHECK(thawcore_engine_copy_device_to_device(e, &past, 1) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(strstr(thawcore_last_error(), "past the end") != NULL);
    thawcore_device_copy over = { publisher, client + 4097, length };
    CHECK(thawcore_engine_copy_device_to_device(e, &over, 1) == THAWCORE_ERR_BAD_DESTINATION);
    thawcore_device_copy wrap = { UINT64_MAX - 4, client, 10 };
    CHECK(thawcore_engine_copy_device_to_device(e, &wrap, 1) == THAWCORE_ERR_BAD_DESTINATION);
    thawcore_device_copy none = { 0, client, 10 };
    CHECK(thawcore_engine_copy_device_to_device(e, &none, 1) == -EINVAL);
    CHECK(thawcore_engine_copy_device_to_device(NULL, copies, 1) == -EINVAL);
    CHECK(thawcore_engine_copy_device_to_device(e, NULL, 1) == -EINVAL);
    CHECK(thawcore_engine_copy_device_to_device(e, NULL, 0) == 0);

    /* Host memory at either end (the mock's plain device memory). */
    unsigned char *host = malloc(length);
    CHECK(host);
    thawcore_device_copy to_host = { publisher, (uint64_t)(uintptr_t)host, length };
    CHECK(thawcore_engine_copy_device_to_device(e, &to_host, 1) == 0 && memcmp(host, weights, length) == 0);
    memset(back, 0, length);
    thawcore_device_copy from_host = { (uint64_t)(uintptr_t)host, client, length };
    CHECK(thawcore_engine_copy_device_to_device(e, &from_host, 1) == 0);
    read_file(directory, "client", back, length, 0);
    CHECK(memcmp(back, weights, length) == 0);

    /* A publisher that shrinks its file after the pool opened it: the read fails where the
     * file now ends, naming the copy; nothing is read past it and no signal is raised. */
    char path[512];
    snprintf(path, sizeof path, "%s/publisher", directory);
    CHECK(truncate(path, 4096) == 0);
    CHECK(thawcore_engine_copy_device_to_device(e, copies, 1) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(strstr(thawcore_last_error(), "ended") != NULL && strstr(thawcore_last_error(), "device copy 0") != NULL);

    CHECK(thawcore_engine_ipc_close(e, publisher) == 0);
    CHECK(thawcore_engine_ipc_close(e, client) == 0);
    thawcore_engine_destroy(e);
    unlink(path);
    snprintf(path, sizeof path, "%s/client", directory);
    unlink(path);
    rmdir(directory);
    free(host);
    free(back);
    free(weights);
    puts("device_copy_mock: ok");
    return T_EXIT_PASS;
}
