/* The disk's own O_DIRECT ceiling: N threads each reading block-sized pieces of a
 * file with O_DIRECT, no copies after the read. Usage: direct_read FILE THREADS BLOCK_MIB [LIMIT_GIB]
 * Prints one line: bytes, seconds, GB/s. Used by bench/gpu_bench.py as the cold-restore ceiling. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int fd;
static size_t block;
static unsigned long long limit;
static atomic_ullong next_offset, total_read;

static void *reader(void *arg)
{
    (void)arg;
    void *buffer;
    if (posix_memalign(&buffer, 4096, block))
        return NULL;
    for (;;) {
        unsigned long long offset = atomic_fetch_add(&next_offset, block);
        if (offset >= limit)
            break;
        ssize_t n = pread(fd, buffer, block, (off_t)offset);
        if (n <= 0)
            break;
        atomic_fetch_add(&total_read, (unsigned long long)n);
    }
    free(buffer);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s FILE THREADS BLOCK_MIB [LIMIT_GIB]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[2]);
    block = (size_t)atoi(argv[3]) << 20;
    fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    struct stat st;
    fstat(fd, &st);
    limit = (unsigned long long)st.st_size;
    if (argc > 4 && (unsigned long long)atoll(argv[4]) << 30 < limit)
        limit = (unsigned long long)atoll(argv[4]) << 30;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pthread_t t[256];
    for (int i = 0; i < threads && i < 256; i++)
        pthread_create(&t[i], NULL, reader, NULL);
    for (int i = 0; i < threads && i < 256; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("%llu bytes %.3f s %.3f GB/s threads=%d block_mib=%zu\n", (unsigned long long)total_read, s,
           (double)total_read / s / 1e9, threads, block >> 20);
    return 0;
}
