/* The host-to-device ceiling of this machine, through the engine's own copy lanes (the
 * path the pool uses): a host buffer pinned once, copied to device memory over all lanes,
 * and the CPU's copy rate into pinned memory (what a staged restore pays per byte).
 * Copies are cut into pieces (THAWCORE_COPY_PIECE_MIB), measured at several sizes, and
 * as one copy on one stream.
 * Usage: pinned_ceiling [MIB] [REPEATS] [THREADS]. Prints one line per figure, medians. */
#define _GNU_SOURCE
#include "thaw_core.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    return v[n / 2];
}

typedef struct { unsigned char *dst; const unsigned char *src; size_t length; } copy_part;

static void *copy_worker(void *arg)
{
    copy_part *p = arg;
    memcpy(p->dst, p->src, p->length);
    return NULL;
}

static double memcpy_seconds(unsigned char *dst, const unsigned char *src, size_t length, int threads)
{
    pthread_t t[128];
    copy_part parts[128];
    size_t per = length / (size_t)threads / 4096 * 4096;
    double start = now();
    for (int i = 0; i < threads; i++) {
        parts[i] = (copy_part){ dst + (size_t)i * per, src + (size_t)i * per, i == threads - 1 ? length - (size_t)i * per : per };
        pthread_create(&t[i], NULL, copy_worker, &parts[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    return now() - start;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 2048;
    int repeats = argc > 2 ? atoi(argv[2]) : 7;
    int threads = argc > 3 ? atoi(argv[3]) : 16;
    if (repeats < 1 || repeats > 100 || threads < 1 || threads > 128 || mib < 64)
        return fprintf(stderr, "usage: pinned_ceiling [MIB>=64] [REPEATS 1..100] [THREADS 1..128]\n"), 2;
    size_t length = mib << 20;
    thawcore_engine_options o = { sizeof o, THAWCORE_DEVICE_CUDA, 0, 0, 0, 0 };
    thawcore_engine *e = NULL;
    if (thawcore_engine_create(&o, &e))
        return fprintf(stderr, "engine: %s\n", thawcore_last_error()), 77;
    unsigned char *host = NULL, *pageable = NULL;
    uint64_t device = 0;
    if (posix_memalign((void **)&host, 1 << 21, length) || posix_memalign((void **)&pageable, 1 << 21, length))
        return fprintf(stderr, "out of memory\n"), 1;
    memset(host, 1, length);
    memset(pageable, 2, length);
    double pin_start = now();
    if (thawcore_engine_pin_host(e, host, length) || thawcore_engine_device_alloc(e, length, &device))
        return fprintf(stderr, "%s\n", thawcore_last_error()), 1;
    printf("pin %zu MiB (cuMemHostRegister): %.3f s\n", mib, now() - pin_start);

    double s[100];
    thawcore_copy copy = { (uint64_t)(uintptr_t)host, device, length };
    /* Each size gets its own engine; the first one keeps the context (and the pin) alive. */
    uint64_t pieces[] = { 2, 8, 64, mib };
    for (int p = 0; p < 4; p++) {
        int whole = pieces[p] == mib;
        uint32_t lanes = whole ? 1 : (uint32_t)threads;
        char piece_mib[32];
        snprintf(piece_mib, sizeof piece_mib, "%llu", (unsigned long long)pieces[p]);
        setenv("THAWCORE_COPY_PIECE_MIB", piece_mib, 1);
        thawcore_engine_options po = { sizeof po, THAWCORE_DEVICE_CUDA, 0, lanes, 0, 0 };
        thawcore_engine *pe = NULL;
        if (thawcore_engine_create(&po, &pe))
            return fprintf(stderr, "engine: %s\n", thawcore_last_error()), 1;
        for (int i = 0; i < repeats; i++) {
            double start = now();
            if (thawcore_engine_copy_host_to_device(pe, &copy, 1))
                return fprintf(stderr, "%s\n", thawcore_last_error()), 1;
            s[i] = now() - start;
        }
        thawcore_engine_destroy(pe);
        if (whole)
            printf("pinned H2D ceiling, one %zu MiB copy on one stream: %.2f GB/s median of %d\n", mib,
                   length / median(s, repeats) / 1e9, repeats);
        else
            printf("pinned H2D ceiling, %llu MiB pieces over %d lanes: %.2f GB/s median of %d\n",
                   (unsigned long long)pieces[p], threads, length / median(s, repeats) / 1e9, repeats);
    }
    int counts[] = { 1, threads };
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < repeats; i++)
            s[i] = memcpy_seconds(host, pageable, length, counts[c]);
        printf("memcpy pageable -> pinned, %d thread%s: %.2f GB/s median of %d\n", counts[c], counts[c] > 1 ? "s" : "",
               length / median(s, repeats) / 1e9, repeats);
    }
    thawcore_engine_unpin_host(e, host);
    thawcore_engine_device_free(e, device);
    thawcore_engine_destroy(e);
    return 0;
}
