/* Pool support on the mock: a shared-memory file named inside the pool's directory opened
 * as an IPC handle, filled by host-to-device copies spread over lanes, closed; copies are
 * bounded by the file's size; handles outside the directory, symlinks, other owners' files
 * and non-files are refused; a peer truncating its file mid-restore costs no signal. */
#include "helpers.h"

#include <fcntl.h>
#include <sys/stat.h>

static int open_handle(thawcore_engine *e, const char *directory, const char *name, uint32_t uid,
                       uint64_t *base, uint64_t *length)
{
    thawcore_ipc_peer peer = { sizeof peer, uid, directory };
    return thawcore_engine_ipc_open(e, name, (uint32_t)strlen(name), &peer, base, length);
}

static void make_file(const char *directory, const char *name, off_t length)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", directory, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0 && ftruncate(fd, length) == 0);
    close(fd);
}

static void expect_refused(thawcore_engine *e, const char *directory, const char *name, uint32_t uid, const char *why)
{
    uint64_t base = 0, length = 0;
    CHECK(open_handle(e, directory, name, uid, &base, &length) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(strstr(thawcore_last_error(), why) != NULL);
}

int main(void)
{
    setenv("THAWCORE_COPY_PIECE_MIB", "1", 1); /* so the 3 MiB copy is cut into pieces over the lanes */
    size_t length = (3u << 20) + 12345;
    unsigned char *source = malloc(length);
    fill_random(source, length, 77);
    char directory[] = "/tmp/thaw-pool-ipc-XXXXXX";
    CHECK(mkdtemp(directory) != NULL);
    make_file(directory, "arena", (off_t)length + 8192);
    uint32_t me = (uint32_t)getuid();

    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 65536, 65536 * 8, 4);
    CHECK(thawcore_engine_pin_host(e, source, length) == 0);
    uint64_t base = 0, size = 0;
    CHECK(open_handle(e, directory, "arena", me, &base, &size) == 0 && base != 0);
    CHECK(size == length + 8192);
    thawcore_copy copies[2] = {
        { (uint64_t)(uintptr_t)source, base + 8192, length - 1000 },
        { (uint64_t)(uintptr_t)(source + length - 1000), base + 8192 + length - 1000, 1000 },
    };
    CHECK(thawcore_engine_copy_host_to_device(e, copies, 2) == 0);

    /* The file's size bounds every copy and every destination check. */
    uint64_t allocation = 0;
    CHECK(thawcore_engine_check_destination(e, base + 8192, length, &allocation) == 0 && allocation == base);
    CHECK(thawcore_engine_check_destination(e, base + 8193, length, &allocation) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(thawcore_engine_check_destination(e, base + 1, UINT64_MAX, &allocation) == THAWCORE_ERR_BAD_DESTINATION);
    thawcore_copy past = { (uint64_t)(uintptr_t)source, base + size - 10, 11 };
    CHECK(thawcore_engine_copy_host_to_device(e, &past, 1) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(strstr(thawcore_last_error(), "past the end") != NULL);

    unsigned char *back = malloc(length);
    CHECK(thawcore_engine_copy_to_host(e, back, base + 8192, length) == 0);
    CHECK(memcmp(back, source, length) == 0);

    /* A peer that shrinks its file mid-restore: the pool's writes extend it, no SIGBUS. */
    char path[512];
    snprintf(path, sizeof path, "%s/arena", directory);
    CHECK(truncate(path, 0) == 0);
    CHECK(thawcore_engine_copy_host_to_device(e, copies, 2) == 0);
    CHECK(thawcore_engine_ipc_close(e, base) == 0);
    CHECK(thawcore_engine_ipc_close(e, base) == -22); /* closed once only */

    memset(back, 0, length);
    int fd = open(path, O_RDONLY);
    CHECK(pread(fd, back, length, 8192) == (ssize_t)length);
    close(fd);
    CHECK(memcmp(back, source, length) == 0);

    /* Confinement: only plain names of regular files the peer owns, inside the directory. */
    expect_refused(e, directory, "missing", me, "missing");
    expect_refused(e, directory, "../etc", me, "not a file name");
    expect_refused(e, directory, "/etc/passwd", me, "not a file name");
    expect_refused(e, directory, "..", me, "not a file name");
    char spelled[600];
    snprintf(spelled, sizeof spelled, "%s/./arena", directory);
    expect_refused(e, directory, spelled, me, "not a file name");
    snprintf(spelled, sizeof spelled, "%s//arena", directory);
    expect_refused(e, directory, spelled, me, "not a file name");
    snprintf(spelled, sizeof spelled, "%s/arena", directory); /* the exact path is a name too */
    CHECK(open_handle(e, directory, spelled, me, &base, &size) == 0 && size == length + 8192);
    CHECK(thawcore_engine_ipc_close(e, base) == 0);
    char link[512];
    snprintf(link, sizeof link, "%s/link", directory);
    CHECK(symlink(path, link) == 0);
    expect_refused(e, directory, "link", me, "symbolic link");
    char sub[512];
    snprintf(sub, sizeof sub, "%s/sub", directory);
    CHECK(mkdir(sub, 0700) == 0);
    expect_refused(e, directory, "sub", me, "Is a directory");
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s/fifo", directory);
    CHECK(mkfifo(fifo, 0600) == 0);
    expect_refused(e, directory, "fifo", me, "not a regular file");
    make_file(directory, "empty", 0);
    expect_refused(e, directory, "empty", me, "holds 0 bytes");
    make_file(directory, "arena", 4096);
    expect_refused(e, directory, "arena", me + 1, "belongs to uid");
    uint64_t ignored = 0, ignored_length = 0;
    thawcore_ipc_peer peer = { sizeof peer, me, directory };
    CHECK(thawcore_engine_ipc_open(e, "arena\0x", 7, &peer, &ignored, &ignored_length) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(thawcore_engine_ipc_open(e, "arena", 0, &peer, &ignored, &ignored_length) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(thawcore_engine_ipc_open(e, "arena", 5, NULL, &ignored, &ignored_length) == -22);

    thawcore_copy bad = { 0, base, 10 };
    CHECK(thawcore_engine_copy_host_to_device(e, &bad, 1) == -22);
    CHECK(thawcore_engine_unpin_host(e, source) == 0);

    thawcore_engine_destroy(e);
    unlink(link);
    unlink(fifo);
    rmdir(sub);
    snprintf(link, sizeof link, "%s/empty", directory);
    unlink(link);
    unlink(path);
    rmdir(directory);
    free(back);
    free(source);
    puts("pool_mock: ok");
    return T_EXIT_PASS;
}
