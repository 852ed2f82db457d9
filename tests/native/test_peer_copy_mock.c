/* The pool's pipelined copies into a peer's allocations, on the mock: several shared files
 * opened in parallel on the lanes, copied into and closed behind, bit-exact, nothing left
 * open; a bound or a handle that fails is refused with nothing written into that
 * allocation; the time breakdown adds up; each mock ordinal is its own device (identity,
 * and a handle opened by one device cannot be copied into by another); two devices' copies
 * run at once. */
#include "helpers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>

#define FILES 5

static char directory[] = "/tmp/thaw-peer-copy-XXXXXX";

static void make_file(const char *name, off_t length)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", directory, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0 && ftruncate(fd, length) == 0);
    close(fd);
}

static void read_file(const char *name, unsigned char *out, size_t length, off_t offset)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", directory, name);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && pread(fd, out, length, offset) == (ssize_t)length);
    close(fd);
}

typedef struct {
    thawcore_engine *engine;
    const char *names[FILES];
    thawcore_peer_allocation allocations[FILES];
    thawcore_peer_copy copies[3 * FILES];
    uint32_t copy_count;
    thawcore_peer_copy_stats stats;
    int rc;
} request;

/* File i gets three copies from source: a large one over several pieces, an empty one, a small one. */
static void build(request *r, thawcore_engine *e, const char *prefix, const unsigned char *source, size_t piece)
{
    static char names[2][FILES][64];
    int which = prefix[0] == 'b';
    memset(r, 0, sizeof *r);
    r->engine = e;
    for (uint32_t i = 0; i < FILES; i++) {
        snprintf(names[which][i], sizeof names[which][i], "%s%u", prefix, i);
        r->names[i] = names[which][i];
        make_file(r->names[i], (off_t)(4 * piece));
        r->allocations[i] = (thawcore_peer_allocation){ r->names[i], (uint32_t)strlen(r->names[i]), r->copy_count, 3, 0 };
        const unsigned char *from = source + i * 1000;
        r->copies[r->copy_count++] = (thawcore_peer_copy){ (uint64_t)(uintptr_t)from, 100, 3 * piece, 3 * piece - 7 };
        r->copies[r->copy_count++] = (thawcore_peer_copy){ (uint64_t)(uintptr_t)from, 50, 0, 0 };
        r->copies[r->copy_count++] = (thawcore_peer_copy){ (uint64_t)(uintptr_t)(from + 5), 3 * piece + 200, 99, 99 };
    }
}

static void *run(void *arg)
{
    request *r = arg;
    thawcore_ipc_peer peer = { sizeof peer, (uint32_t)getuid(), directory };
    r->rc = thawcore_engine_peer_copy(r->engine, &peer, r->allocations, FILES, r->copies, r->copy_count, &r->stats);
    return NULL;
}

static void check_landed(const request *r, const unsigned char *source, size_t piece)
{
    unsigned char *back = malloc(3 * piece);
    for (uint32_t i = 0; i < FILES; i++) {
        read_file(r->names[i], back, 3 * piece - 7, 100);
        CHECK(memcmp(back, source + i * 1000, 3 * piece - 7) == 0);
        read_file(r->names[i], back, 99, (off_t)(3 * piece + 200));
        CHECK(memcmp(back, source + i * 1000 + 5, 99) == 0);
    }
    free(back);
    const thawcore_peer_copy_stats *s = &r->stats;
    CHECK(s->lanes >= 1 && s->seconds > 0 && s->open_seconds > 0 && s->copy_seconds > 0);
    CHECK(s->open_seconds + s->wait_seconds + s->copy_seconds + s->close_seconds <= s->seconds);
    CHECK(s->failed_allocation == UINT32_MAX && s->failed_copy == UINT32_MAX);
}

static int all_zero(const char *name, size_t length)
{
    unsigned char *back = malloc(length);
    read_file(name, back, length, 0);
    int zero = 1;
    for (size_t i = 0; i < length; i++)
        zero &= back[i] == 0;
    free(back);
    return zero;
}

int main(void)
{
    setenv("THAWCORE_COPY_PIECE_MIB", "1", 1);
    const size_t piece = 1u << 20;
    CHECK(mkdtemp(directory) != NULL);
    size_t length = FILES * 1000 + 3 * piece;
    unsigned char *source = malloc(length);
    fill_random(source, length, 19);

    /* Identity: one per mock ordinal, the same whatever engine asks. */
    char id[64];
    CHECK(thawcore_device_count(THAWCORE_DEVICE_MOCK) == THAWCORE_MOCK_DEVICES);
    CHECK(thawcore_device_identity(THAWCORE_DEVICE_MOCK, 0, id, sizeof id) == 6 && strcmp(id, "mock-0") == 0);
    CHECK(thawcore_device_identity(THAWCORE_DEVICE_MOCK, 3, id, sizeof id) == 6 && strcmp(id, "mock-3") == 0);
    CHECK(thawcore_device_identity(THAWCORE_DEVICE_MOCK, THAWCORE_MOCK_DEVICES, id, sizeof id) == THAWCORE_ERR_NO_DEVICE);
    CHECK(thawcore_device_identity(THAWCORE_DEVICE_MOCK, 1, id, 3) == -ENOSPC);

    thawcore_engine *zero = make_engine(THAWCORE_DEVICE_MOCK, 65536, 65536 * 8, 4);
    thawcore_engine_options o = { sizeof o, THAWCORE_DEVICE_MOCK, 1, 4, 65536, 65536 * 8 };
    thawcore_engine *one = NULL;
    CHECK(thawcore_engine_create(&o, &one) == 0);
    o.device_ordinal = THAWCORE_MOCK_DEVICES;
    thawcore_engine *none = NULL;
    CHECK(thawcore_engine_create(&o, &none) == THAWCORE_ERR_NO_DEVICE);

    /* A handle opened on device 1 is device 1's: device 0 cannot copy into it. */
    make_file("solo", 4096);
    thawcore_ipc_peer peer = { sizeof peer, (uint32_t)getuid(), directory };
    uint64_t base = 0, size = 0;
    CHECK(thawcore_engine_ipc_open(one, "solo", 4, &peer, &base, &size) == 0);
    thawcore_copy into = { (uint64_t)(uintptr_t)source, base, 100 };
    CHECK(thawcore_engine_copy_host_to_device(zero, &into, 1) == THAWCORE_ERR_BAD_DESTINATION);
    CHECK(strstr(thawcore_last_error(), "opened by mock device 1") != NULL);
    CHECK(thawcore_engine_copy_host_to_device(one, &into, 1) == 0);
    CHECK(thawcore_engine_ipc_close(one, base) == 0);

    /* Serial (the default) on both devices at once, bit-exact, nothing left open. */
    int descriptors = open_descriptors();
    request a, b;
    build(&a, zero, "a", source, piece);
    build(&b, one, "b", source, piece);
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, run, &a) == 0 && pthread_create(&tb, NULL, run, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(a.rc == 0 && b.rc == 0);
    check_landed(&a, source, piece);
    check_landed(&b, source, piece);
    CHECK(a.stats.open_order == THAWCORE_POOL_OPEN_SERIAL && a.stats.lanes == 4);
    CHECK(open_descriptors() == descriptors);

    /* The measurement knob: pipelined (copies into each allocation once open, closed behind) and
     * serial (opened in order first, closed after); the same bytes, nothing left open. */
    setenv("THAWCORE_POOL_OPEN", "pipelined", 1);
    build(&a, zero, "a", source, piece);
    run(&a);
    CHECK(a.rc == 0 && a.stats.open_order == THAWCORE_POOL_OPEN_PIPELINED);
    check_landed(&a, source, piece);
    CHECK(open_descriptors() == descriptors);
    setenv("THAWCORE_POOL_OPEN", "serial", 1);
    build(&a, zero, "a", source, piece);
    run(&a);
    CHECK(a.rc == 0 && a.stats.open_order == THAWCORE_POOL_OPEN_SERIAL);
    check_landed(&a, source, piece);
    unsetenv("THAWCORE_POOL_OPEN");
    CHECK(open_descriptors() == descriptors);

    /* A copy past the end of allocation 3: refused, named, nothing written there, all closed. */
    build(&a, zero, "a", source, piece);
    a.copies[3 * 3 + 2].offset = 4 * piece - 98;
    run(&a);
    CHECK(a.rc == THAWCORE_ERR_BAD_DESTINATION && strstr(thawcore_last_error(), "runs past the end of its allocation of 4194304 bytes"));
    CHECK(a.stats.failed_allocation == 3 && a.stats.failed_copy == 3 * 3 + 2);
    CHECK(all_zero(a.names[3], 4 * piece));
    CHECK(all_zero(a.names[0], 4 * piece)); /* serial: every bound is checked before the first copy */
    CHECK(open_descriptors() == descriptors);

    /* A handle that does not open: refused, named, everything opened is closed again. */
    build(&a, zero, "a", source, piece);
    a.allocations[2].handle = "missing";
    a.allocations[2].handle_length = 7;
    run(&a);
    CHECK(a.rc == THAWCORE_ERR_BAD_DESTINATION && strstr(thawcore_last_error(), "missing"));
    CHECK(a.stats.failed_allocation == 2 && a.stats.failed_copy == UINT32_MAX);
    CHECK(open_descriptors() == descriptors);

    /* Many more allocations than lanes, in every order; pipelined, lanes meet allocations nobody
     * has opened yet, open them themselves or wait for the lane opening them, and close behind. */
    static const char *const orders[] = { "serial", "pipelined" };
    for (uint32_t order = 0; order < 2; order++) {
        setenv("THAWCORE_POOL_OPEN", orders[order], 1);
        enum { MANY = 64 };
        thawcore_engine *two = make_engine(THAWCORE_DEVICE_MOCK, 65536, 65536 * 4, 2);
        static char names[MANY][32];
        thawcore_peer_allocation allocations[MANY];
        thawcore_peer_copy copies[MANY];
        size_t each = piece + piece / 2;
        unsigned char *many = malloc(MANY * each);
        fill_random(many, MANY * each, 23);
        for (uint32_t i = 0; i < MANY; i++) {
            snprintf(names[i], sizeof names[i], "many%u", i);
            make_file(names[i], (off_t)each);
            allocations[i] = (thawcore_peer_allocation){ names[i], (uint32_t)strlen(names[i]), i, 1, 0 };
            copies[i] = (thawcore_peer_copy){ (uint64_t)(uintptr_t)(many + i * each), 0, each, each };
        }
        thawcore_peer_copy_stats stats;
        CHECK(thawcore_engine_peer_copy(two, &peer, allocations, MANY, copies, MANY, &stats) == 0);
        CHECK(stats.lanes == 2 && stats.open_order == order);
        CHECK(stats.open_seconds + stats.wait_seconds + stats.copy_seconds + stats.close_seconds <= stats.seconds);
        unsigned char *back = malloc(each);
        for (uint32_t i = 0; i < MANY; i++) {
            read_file(names[i], back, each, 0);
            CHECK(memcmp(back, many + i * each, each) == 0);
        }
        CHECK(open_descriptors() == descriptors);
        free(back);
        free(many);
        thawcore_engine_destroy(two);
        unsetenv("THAWCORE_POOL_OPEN");
    }

    /* Malformed requests never reach a handle. */
    build(&a, zero, "a", source, piece);
    a.allocations[1].first_copy = 4;
    run(&a);
    CHECK(a.rc == -EINVAL);
    build(&a, zero, "a", source, piece);
    a.copies[0].length = a.copies[0].capacity + 1;
    run(&a);
    CHECK(a.rc == -EINVAL);
    CHECK(thawcore_engine_peer_copy(zero, NULL, a.allocations, FILES, a.copies, a.copy_count, NULL) == -EINVAL);
    CHECK(thawcore_engine_peer_copy(zero, &peer, NULL, 0, NULL, 0, NULL) == 0);
    CHECK(open_descriptors() == descriptors);

    thawcore_engine_destroy(zero);
    thawcore_engine_destroy(one);
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", directory);
    CHECK(system(command) == 0);
    free(source);
    puts("peer_copy_mock: ok");
    return T_EXIT_PASS;
}
