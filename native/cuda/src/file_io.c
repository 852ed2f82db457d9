#define _GNU_SOURCE
#include "file_io.h"
#include "error.h"
#include "thaw_core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

ssize_t thaw_pread_full(int fd, void *buffer, size_t length, uint64_t offset)
{
    size_t done = 0;
    while (done < length) {
        ssize_t n = pread(fd, (char *)buffer + done, length - done, (off_t)(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

int thaw_pwrite_full(int fd, const void *buffer, size_t length, uint64_t offset)
{
    size_t done = 0;
    while (done < length) {
        ssize_t n = pwrite(fd, (const char *)buffer + done, length - done, (off_t)(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)n;
    }
    return 0;
}

int thaw_open_for_read(const char *path, int direct, int *direct_used)
{
    *direct_used = 0;
    if (direct) {
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
        if (fd >= 0) {
            *direct_used = 1;
            return fd;
        }
        if (errno != EINVAL) /* EINVAL: the file system has no O_DIRECT (tmpfs) */
            return thaw_fail(-errno, "cannot open %s: %s", path, strerror(errno));
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return thaw_fail(-errno, "cannot open %s: %s", path, strerror(errno));
    return fd;
}

/* Samples RESIDENCY_SAMPLES pages spread over the range: asking mincore about every
 * page of a 16 GB file costs more than 100 ms, a sample costs microseconds. */
#define RESIDENCY_SAMPLES 1024

double thaw_page_cache_residency(int fd, uint64_t offset, uint64_t length)
{
    long page = sysconf(_SC_PAGESIZE);
    if (length == 0 || page <= 0)
        return -1;
    uint64_t start = offset & ~(uint64_t)(page - 1);
    size_t span = (size_t)(offset + length - start);
    void *map = mmap(NULL, span, PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (map == MAP_FAILED)
        return -1;
    size_t pages = (span + (size_t)page - 1) / (size_t)page;
    size_t samples = pages < RESIDENCY_SAMPLES ? pages : RESIDENCY_SAMPLES;
    size_t resident = 0, asked = 0;
    for (size_t i = 0; i < samples; i++) {
        size_t index = (size_t)((unsigned __int128)i * pages / samples);
        unsigned char vec = 0;
        if (mincore((char *)map + index * (size_t)page, (size_t)page, &vec) == 0) {
            resident += vec & 1;
            asked++;
        }
    }
    munmap(map, span);
    return asked ? (double)resident / (double)asked : -1;
}

int thawcore_sync_directory(const char *path)
{
    thaw_clear_error();
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return thaw_fail(-errno, "cannot open directory %s: %s", path, strerror(errno));
    int rc = fsync(fd) == 0 ? 0 : thaw_fail(-errno, "cannot fsync directory %s: %s", path, strerror(errno));
    close(fd);
    return rc;
}

int thawcore_file_identity_of(const char *path, thawcore_file_identity *out)
{
    thaw_clear_error();
    if (!path || !out)
        return thaw_fail(-EINVAL, "missing argument");
    struct stat st;
    if (stat(path, &st) != 0)
        return thaw_fail(-errno, "cannot stat %s: %s", path, strerror(errno));
    out->device = (uint64_t)st.st_dev;
    out->inode = (uint64_t)st.st_ino;
    out->size = (int64_t)st.st_size;
    out->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    out->ctime_ns = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
    return 0;
}
