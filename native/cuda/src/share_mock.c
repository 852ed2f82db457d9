/* Shared host copies on the mock device (share.h): a memfd per chunk, exported as a
 * read-only descriptor (the client can map it for reading only, like the CUDA client's
 * read-only grant), imported PROT_NONE and made readable by the grant. The memfd is sealed
 * against shrinking, and the client maps only such a one: a file the sender could still
 * truncate would turn the client's copies into SIGBUS. */
#define _GNU_SOURCE
#include "share.h"
#include "error.h"
#include "thaw_core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The CUDA backend's granularity on the H200, so the mock exercises the same rounding. */
#define MOCK_SHARE_GRANULARITY (2ull << 20)

static int mock_granularity(thaw_device *dev, uint64_t *out)
{
    (void)dev;
    *out = MOCK_SHARE_GRANULARITY;
    return 0;
}

static int mock_reserve(thaw_device *dev, uint64_t length, void **out)
{
    (void)dev;
    void *at = mmap(NULL, (size_t)length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (at == MAP_FAILED)
        return thaw_fail(-errno, "mock device: cannot reserve %llu bytes of address space: %s",
                         (unsigned long long)length, strerror(errno));
    *out = at;
    return 0;
}

static void mock_unreserve(thaw_device *dev, void *at, uint64_t length)
{
    (void)dev;
    munmap(at, (size_t)length);
}

static int mock_create_at(thaw_device *dev, void *at, uint64_t length, uint64_t *handle_out)
{
    (void)dev;
    int fd = memfd_create("thaw-shared-copy", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return thaw_fail(-errno, "mock device: memfd_create: %s", strerror(errno));
    if (ftruncate(fd, (off_t)length) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 ||
        mmap(at, (size_t)length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
        int err = errno;
        close(fd);
        return thaw_fail(-err, "mock device: cannot map %llu bytes of shared memory: %s", (unsigned long long)length, strerror(err));
    }
    *handle_out = (uint64_t)fd;
    return 0;
}

static int mock_export_fd(thaw_device *dev, uint64_t handle, int *fd_out)
{
    (void)dev;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", (int)handle);
    /* A new open file description, read-only: the importer cannot map it writable. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return thaw_fail(-errno, "mock device: cannot reopen shared memory read-only: %s", strerror(errno));
    *fd_out = fd;
    return 0;
}

static int mock_import_at(thaw_device *dev, int fd, void *at, uint64_t length, uint64_t *handle_out)
{
    (void)dev;
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return thaw_fail(-EPROTO, "mock device: a shared chunk must be a memfd sealed against shrinking (%s)",
                         seals < 0 ? strerror(errno) : "it is not sealed");
    off_t size = lseek(fd, 0, SEEK_END);
    if (size < 0 || (uint64_t)size < length)
        return thaw_fail(-EPROTO, "mock device: the shared chunk holds %lld bytes, not the %llu announced",
                         (long long)size, (unsigned long long)length);
    if (mmap(at, (size_t)length, PROT_NONE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
        return thaw_fail(-errno, "mock device: cannot map a shared chunk: %s", strerror(errno));
    *handle_out = THAW_SHARE_NO_HANDLE;
    return 0;
}

static int mock_grant_read(thaw_device *dev, void *at, uint64_t length)
{
    (void)dev;
    if (mprotect(at, (size_t)length, PROT_READ) != 0)
        return thaw_fail(-errno, "mock device: cannot make a shared chunk readable: %s", strerror(errno));
    return 0;
}

static void mock_release(thaw_device *dev, void *at, uint64_t length, uint64_t handle)
{
    (void)dev;
    /* Back to a hole of the reservation, which the caller frees with unreserve. */
    mmap(at, (size_t)length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (handle != THAW_SHARE_NO_HANDLE)
        close((int)handle);
}

static int mock_copy_async(thaw_device *dev, uint64_t dst, const void *src, size_t length, void *stream)
{
    return dev->ops->copy_h2d_async(dev, dst, src, length, stream);
}

const thaw_share_ops thaw_share_ops_mock = {
    .granularity = mock_granularity,
    .reserve = mock_reserve,
    .unreserve = mock_unreserve,
    .create_at = mock_create_at,
    .export_fd = mock_export_fd,
    .import_at = mock_import_at,
    .grant_read = mock_grant_read,
    .release = mock_release,
    .copy_async = mock_copy_async,
};
