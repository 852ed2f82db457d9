/* Shared by the core's test programs. */
#ifndef THAW_TEST_HELPERS_H
#define THAW_TEST_HELPERS_H

#include "thaw_core.h"

#include <dirent.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T_EXIT_PASS 0
#define T_EXIT_FAIL 1
#define T_EXIT_SKIP 77

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, \
                    __LINE__, #cond, thawcore_last_error());                          \
            exit(T_EXIT_FAIL);                                                       \
        }                                                                            \
    } while (0)

/* Descriptors open in this process: equal counts before and after mean none was left open. */
static inline int open_descriptors(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECK(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static inline void fill_random(void *buffer, size_t length, uint64_t seed)
{
    unsigned char *p = buffer;
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < length; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)x;
    }
}

/* A temporary file holding length random bytes; the caller unlinks it. */
static inline char *make_random_file(size_t length, uint64_t seed, unsigned char **copy_out)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/thaw-core-test-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    unsigned char *data = malloc(length ? length : 1);
    CHECK(data);
    fill_random(data, length, seed);
    CHECK(write(fd, data, length) == (ssize_t)length);
    close(fd);
    *copy_out = data;
    return path;
}

static inline thawcore_engine *make_engine(int kind, uint64_t chunk, uint64_t staging, uint32_t threads)
{
    thawcore_engine_options o = { sizeof o, kind, 0, threads, chunk, staging };
    thawcore_engine *e = NULL;
    int rc = thawcore_engine_create(&o, &e);
    if (rc == THAWCORE_ERR_NO_DEVICE)
        return NULL;
    CHECK(rc == 0 && e);
    return e;
}

#endif
