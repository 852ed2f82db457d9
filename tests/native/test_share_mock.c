/* Shared host copies on the mock: the pool side reserves, backs chunk by chunk and exports;
 * a client in another process receives the descriptors over a Unix socket, maps them, copies
 * to its own memory (grants racing the copies: a copy before its chunk's grant would fault),
 * and cannot map them writable. Announcements that lie (lengths off the granularity, copies
 * outside, too many descriptors) are refused and every descriptor is closed; a line never
 * takes the next line's descriptors. */
#include "helpers.h"

#include <dirent.h>
#include <errno.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define LENGTH ((11u << 20) + 4096) /* 6 chunks of 2 MiB, the last one short */
#define MAX_FDS 16

static void expected(unsigned char *out, size_t length) { fill_random(out, length, 4242); }

static int client(int sock)
{
    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 65536, 65536 * 8, 4);
    char line[256];
    uint64_t length = 0;
    int32_t fds[MAX_FDS];
    uint32_t count = 0;
    CHECK(thawcore_receive_line_with_fds(sock, line, sizeof line, &length, fds, MAX_FDS, &count, 10000) == 0);
    line[length] = 0;
    CHECK(strcmp(line, "share") == 0 && count == 6);
    /* Read-only: the client cannot map the pool's memory writable. */
    void *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    CHECK(w == MAP_FAILED && errno == EACCES);
    uint64_t lengths[6] = { 2u << 20, 2u << 20, 2u << 20, 2u << 20, 2u << 20, 2u << 20 };
    unsigned char *want = malloc(LENGTH), *dest = malloc(LENGTH);
    expected(want, LENGTH);
    memset(dest, 0, LENGTH);
    /* Three copies, out of order, one across a chunk boundary. */
    thawcore_copy copies[3] = {
        { 5u << 20, (uint64_t)(uintptr_t)(dest + (5u << 20)), LENGTH - (5u << 20) },
        { 0, (uint64_t)(uintptr_t)dest, (3u << 20) + 17 },
        { (3u << 20) + 17, (uint64_t)(uintptr_t)(dest + (3u << 20) + 17), (2u << 20) - 17 },
    };
    int before = open_descriptors();
    thawcore_share_copy_stats stats;
    CHECK(thawcore_engine_copy_from_share(e, fds, lengths, 6, copies, 3, &stats) == 0);
    CHECK(stats.chunks == 6 && stats.seconds >= stats.copy_seconds);
    CHECK(memcmp(dest, want, LENGTH) == 0);
    thawcore_engine_destroy(e); /* waits for the release thread */
    CHECK(open_descriptors() == before - 6);
    return 0;
}

static void refused_announcements(void)
{
    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 65536, 65536 * 8, 2);
    thawcore_share *s = NULL;
    CHECK(thawcore_share_create(e, 4u << 20, &s) == 0);
    CHECK(thawcore_share_back(s, 0, 4u << 20) == 0);
    int32_t fds[MAX_FDS];
    uint64_t lengths[MAX_FDS];
    unsigned char dest[64];
    thawcore_copy outside = { (4u << 20) - 10, (uint64_t)(uintptr_t)dest, 64 };
    int before = open_descriptors();
    CHECK(thawcore_share_export(s, fds, lengths, MAX_FDS) == 2);
    CHECK(thawcore_engine_copy_from_share(e, fds, lengths, 2, &outside, 1, NULL) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(strstr(thawcore_last_error(), "outside the shared copy") != NULL);
    CHECK(open_descriptors() == before); /* closed on failure too */
    CHECK(thawcore_share_export(s, fds, lengths, MAX_FDS) == 2);
    lengths[1] = 12345; /* off the granularity */
    thawcore_copy inside = { 0, (uint64_t)(uintptr_t)dest, 64 };
    CHECK(thawcore_engine_copy_from_share(e, fds, lengths, 2, &inside, 1, NULL) == -EINVAL);
    CHECK(open_descriptors() == before);
    CHECK(thawcore_share_export(s, fds, lengths, 1) == -EINVAL); /* no room for both */
    /* More chunks than a copy may have: refused, and every one of the descriptors closed. */
    int32_t many[THAWCORE_SHARE_MAX_CHUNKS + 1];
    uint64_t sizes[THAWCORE_SHARE_MAX_CHUNKS + 1];
    for (int i = 0; i <= THAWCORE_SHARE_MAX_CHUNKS; i++) {
        many[i] = dup(0);
        sizes[i] = 2u << 20;
    }
    CHECK(thawcore_engine_copy_from_share(e, many, sizes, THAWCORE_SHARE_MAX_CHUNKS + 1, &inside, 1, NULL) == -EINVAL);
    CHECK(open_descriptors() == before);
    thawcore_share_destroy(s);
    /* Not backed yet: nothing to export. */
    CHECK(thawcore_share_create(e, 4u << 20, &s) == 0);
    CHECK(thawcore_share_back(s, 0, 1) == 0);
    CHECK(thawcore_share_export(s, fds, lengths, MAX_FDS) == -EINVAL);
    CHECK(thawcore_share_back(s, 1, 4u << 20) == -EINVAL); /* past the end */
    thawcore_share_destroy(s);
    CHECK(open_descriptors() == before - 2); /* the first copy's two chunks went with it */
    thawcore_engine_destroy(e);
}

static void refused_descriptors(void)
{
    int pair[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    int32_t extra[3] = { dup(0), dup(0), dup(0) };
    int before = open_descriptors();
    CHECK(thawcore_send_with_fds(pair[0], "x\n", 2, extra, 3, 1000) == 0);
    char line[16];
    uint64_t length = 0;
    int32_t got[2];
    uint32_t count = 9;
    CHECK(thawcore_receive_line_with_fds(pair[1], line, sizeof line, &length, got, 2, &count, 1000) == -EPROTO);
    CHECK(count == 0 && open_descriptors() == before);
    /* A line takes only its own descriptors, never the next line's. */
    CHECK(write(pair[0], "a\n", 2) == 2);
    CHECK(thawcore_send_with_fds(pair[0], "b\n", 2, extra, 1, 1000) == 0);
    CHECK(thawcore_receive_line_with_fds(pair[1], line, sizeof line, &length, got, 2, &count, 1000) == 0);
    CHECK(length == 1 && line[0] == 'a' && count == 0);
    CHECK(thawcore_receive_line_with_fds(pair[1], line, sizeof line, &length, got, 2, &count, 1000) == 0);
    CHECK(length == 1 && line[0] == 'b' && count == 1);
    close(got[0]);
    CHECK(open_descriptors() == before);
    /* Descriptors with the first part of a line, the rest in a later message: a peek stops after
     * the part that carries descriptors, so the line is taken part by part. */
    CHECK(thawcore_send_with_fds(pair[0], "ab", 2, extra, 1, 1000) == 0);
    CHECK(write(pair[0], "c\n", 2) == 2);
    CHECK(thawcore_receive_line_with_fds(pair[1], line, sizeof line, &length, got, 2, &count, 1000) == 0);
    CHECK(length == 3 && memcmp(line, "abc", 3) == 0 && count == 1);
    close(got[0]);
    CHECK(open_descriptors() == before);
    /* Too long, and nothing at all. */
    CHECK(write(pair[0], "0123456789abcdefXYZ\n", 20) == 20);
    CHECK(thawcore_receive_line_with_fds(pair[1], line, sizeof line, &length, got, 2, &count, 1000) == -EMSGSIZE);
    char sink[32];
    CHECK(read(pair[1], sink, sizeof sink) == 20);
    CHECK(thawcore_receive_line_with_fds(pair[1], line, sizeof line, &length, got, 2, &count, 50) == -ETIMEDOUT);
    for (int i = 0; i < 3; i++)
        close(extra[i]);
    close(pair[0]);
    close(pair[1]);
}

/* A small first chunk, then larger ones: backing, export and a copy across every boundary. */
static void small_first_chunk(void)
{
    setenv("THAWCORE_SHARE_CHUNK_MIB", "4", 1);
    setenv("THAWCORE_SHARE_FIRST_MIB", "2", 1);
    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 65536, 65536 * 8, 3);
    thawcore_share *s = NULL;
    CHECK(thawcore_share_create(e, LENGTH, &s) == 0);
    CHECK(thawcore_share_chunks(s) == 4); /* 2 + 4 + 4 + 2 (the last one short) */
    unsigned char *base = thawcore_share_address(s);
    CHECK(thawcore_share_back(s, (2u << 20) - 1, 2) == 0); /* chunks 0 and 1 */
    CHECK(thawcore_share_back(s, 0, LENGTH) == 0);
    expected(base, LENGTH);
    int32_t fds[MAX_FDS];
    uint64_t lengths[MAX_FDS];
    CHECK(thawcore_share_export(s, fds, lengths, MAX_FDS) == 4);
    CHECK(lengths[0] == 2u << 20 && lengths[1] == 4u << 20 && lengths[2] == 4u << 20 && lengths[3] == 2u << 20);
    unsigned char *want = malloc(LENGTH), *dest = calloc(1, LENGTH);
    expected(want, LENGTH);
    thawcore_copy all = { 0, (uint64_t)(uintptr_t)dest, LENGTH };
    CHECK(thawcore_engine_copy_from_share(e, fds, lengths, 4, &all, 1, NULL) == 0);
    CHECK(memcmp(dest, want, LENGTH) == 0);
    thawcore_share_destroy(s);
    thawcore_engine_destroy(e);
    free(want);
    free(dest);
    setenv("THAWCORE_SHARE_CHUNK_MIB", "2", 1);
    unsetenv("THAWCORE_SHARE_FIRST_MIB");
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    setenv("THAWCORE_SHARE_CHUNK_MIB", "2", 1);
    setenv("THAWCORE_COPY_PIECE_MIB", "1", 1);
    refused_announcements();
    refused_descriptors();
    small_first_chunk();
    int pair[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pair[0]);
        _exit(client(pair[1]));
    }
    close(pair[1]);
    thawcore_engine *e = make_engine(THAWCORE_DEVICE_MOCK, 65536, 65536 * 8, 2);
    thawcore_share *s = NULL;
    CHECK(thawcore_share_create(e, LENGTH, &s) == 0);
    CHECK(thawcore_share_chunks(s) == 6);
    unsigned char *base = thawcore_share_address(s);
    CHECK(thawcore_share_back(s, 0, 5u << 20) == 0); /* three chunks */
    CHECK(thawcore_share_back(s, 5u << 20, LENGTH - (5u << 20)) == 0);
    expected(base, LENGTH);
    int32_t fds[MAX_FDS];
    uint64_t lengths[MAX_FDS];
    CHECK(thawcore_share_export(s, fds, lengths, MAX_FDS) == 6);
    CHECK(lengths[5] == 2u << 20);
    CHECK(thawcore_send_with_fds(pair[0], "share\n", 6, fds, 6, 1000) == 0);
    for (int i = 0; i < 6; i++)
        close(fds[i]);
    thawcore_share_destroy(s); /* the client's mapping keeps the memory */
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    thawcore_engine_destroy(e);
    puts("share_mock: ok");
    return 0;
}
