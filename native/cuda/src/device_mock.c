/* The mock device: "device addresses" are host pointers and copies are memcpy,
 * so the whole pipeline runs, and is tested, on machines without a GPU. */
#include "device.h"
#include "share.h"
#include "error.h"
#include "thaw_core.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

static int mock_bind_thread(thaw_device *dev) { (void)dev; return 0; }

static int mock_host_alloc(thaw_device *dev, size_t length, void **out)
{
    (void)dev;
    size_t rounded = (length + 4095) & ~(size_t)4095;
    void *p = aligned_alloc(4096, rounded ? rounded : 4096);
    if (!p)
        return thaw_fail(THAWCORE_ERR_OUT_OF_PINNED_MEMORY,
                         "mock device: cannot allocate %zu bytes of staging memory", length);
    *out = p;
    return 0;
}

static void mock_host_free(thaw_device *dev, void *host) { (void)dev; free(host); }

/* Streams and events need no state on the mock: copies complete before returning. */
static int mock_token_create(thaw_device *dev, void **out) { (void)dev; *out = NULL; return 0; }
static void mock_token_destroy(thaw_device *dev, void *token) { (void)dev; (void)token; }

static int mock_event_record(thaw_device *dev, void *event, void *stream) { (void)dev; (void)event; (void)stream; return 0; }
static int mock_wait(thaw_device *dev, void *token) { (void)dev; (void)token; return 0; }
static int mock_stream_wait_event(thaw_device *dev, void *stream, void *event) { (void)dev; (void)stream; (void)event; return 0; }

/* Every mock device reaches every other (all of them are this process's host memory). */
static int mock_enable_peer_access(thaw_device *dev, thaw_device *peer)
{
    if (dev->ordinal == peer->ordinal)
        return thaw_fail(-EINVAL, "mock device %d cannot be its own peer", dev->ordinal);
    return 0;
}

static int mock_mem_alloc(thaw_device *dev, uint64_t length, uint64_t *out)
{
    (void)dev;
    void *p = NULL;
    size_t rounded = (size_t)((length + 4095) & ~(uint64_t)4095);
    if (length > SIZE_MAX - 4096 || !(p = aligned_alloc(4096, rounded ? rounded : 4096)))
        return thaw_fail(THAWCORE_ERR_OUT_OF_DEVICE_MEMORY,
                         "mock device: cannot allocate %llu bytes", (unsigned long long)length);
    *out = (uint64_t)(uintptr_t)p;
    return 0;
}

static int mock_mem_free(thaw_device *dev, uint64_t address)
{
    (void)dev;
    free((void *)(uintptr_t)address);
    return 0;
}

static int mock_mem_info(thaw_device *dev, uint64_t *free_bytes, uint64_t *total_bytes)
{
    (void)dev;
    *free_bytes = *total_bytes = 0;
    return 0;
}

static int mock_pin_host(thaw_device *dev, void *host, uint64_t length) { (void)dev; (void)host; (void)length; return 0; }
static int mock_unpin_host(thaw_device *dev, void *host) { (void)dev; (void)host; return 0; }
static int mock_pin_host_readonly(thaw_device *dev, const void *host, uint64_t length)
{
    (void)dev; (void)host; (void)length;
    return 0;
}

/* Mock IPC: a handle is the name of a shared-memory file in the pool's directory, as
 * /dev/shm files are, owned by the peer. A handle opened by one mock device can be copied
 * into only by that device, as an IPC mapping belongs to the CUDA context that opened it:
 * copies sent through another device's engine are refused, so each mock ordinal is
 * observably its own device. The pool writes into it with pwrite, never through
 * a mapping, so a peer that truncates its file mid-copy loses its own bytes instead of
 * killing the pool with SIGBUS. Its "device address" is a reserved, inaccessible range of
 * the file's size: unique while open, and a stray direct access faults instead of writing. */
static struct mapping { uint64_t address; uint64_t length; int fd; int ordinal; struct mapping *next; } *mappings;
static pthread_mutex_t mappings_lock = PTHREAD_MUTEX_INITIALIZER;

/* 1 and a private descriptor of the file when [address, +length) starts inside an open mapping
 * (-BAD_DESTINATION when it runs past its end), 0 when it is ordinary host memory. */
static int find_mapping(const thaw_device *dev, uint64_t address, uint64_t length, int *fd_out, uint64_t *offset_out,
                        uint64_t *start_out)
{
    int found = 0;
    pthread_mutex_lock(&mappings_lock);
    for (struct mapping *m = mappings; m; m = m->next) {
        if (address < m->address || address - m->address >= m->length)
            continue;
        uint64_t offset = address - m->address;
        if (dev && m->ordinal != dev->ordinal) { /* dev NULL: any device's (a peer copy's source) */
            found = thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock device %d: the shared file at 0x%llx was opened by mock device %d",
                              dev->ordinal, (unsigned long long)m->address, m->ordinal);
        } else if (length > m->length - offset) {
            found = thaw_fail(THAWCORE_ERR_BAD_DESTINATION,
                              "mock device: %llu bytes at offset %llu run past the end of a shared file of %llu bytes",
                              (unsigned long long)length, (unsigned long long)offset, (unsigned long long)m->length);
        } else {
            found = 1;
            *offset_out = offset;
            *start_out = m->address;
            if (fd_out && (*fd_out = fcntl(m->fd, F_DUPFD_CLOEXEC, 0)) < 0)
                found = thaw_fail(-errno, "mock device: cannot duplicate a shared file's descriptor: %s", strerror(errno));
        }
        break;
    }
    pthread_mutex_unlock(&mappings_lock);
    return found;
}

static int shared_file_io(int fd, void *buffer, size_t length, uint64_t offset, int write)
{
    int rc = 0;
    for (size_t done = 0; done < length && !rc;) {
        ssize_t n = write ? pwrite(fd, (const char *)buffer + done, length - done, (off_t)(offset + done))
                          : pread(fd, (char *)buffer + done, length - done, (off_t)(offset + done));
        if (n > 0)
            done += (size_t)n;
        else if (n == 0)
            rc = thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock device: the shared file ended at %llu bytes",
                           (unsigned long long)(offset + done));
        else if (errno != EINTR)
            rc = thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock device: cannot %s a shared file: %s",
                           write ? "write" : "read", strerror(errno));
    }
    close(fd);
    return rc;
}

static int mock_copy_h2d_async(thaw_device *dev, uint64_t dst, const void *src, size_t length, void *stream)
{
    (void)dev; (void)stream;
    int fd = -1;
    uint64_t offset = 0, start = 0;
    int found = find_mapping(dev, dst, length, &fd, &offset, &start);
    if (found)
        return found < 0 ? found : shared_file_io(fd, (void *)src, length, offset, 1);
    memcpy((void *)(uintptr_t)dst, src, length);
    return 0;
}

static int mock_copy_d2h(thaw_device *dev, void *dst, uint64_t src, size_t length)
{
    (void)dev;
    int fd = -1;
    uint64_t offset = 0, start = 0;
    int found = find_mapping(dev, src, length, &fd, &offset, &start);
    if (found)
        return found < 0 ? found : shared_file_io(fd, dst, length, offset, 0);
    memcpy(dst, (const void *)(uintptr_t)src, length);
    return 0;
}

/* Device to device: a source in an opened shared file (a live publisher's memory, opened by this
 * or another mock device: a peer copy) is read with pread, in pieces through a bounce buffer, each
 * read bounded by the file's size at open and failing where the file now ends; the destination
 * is written as a host-to-device copy, by this device only. */
#define MOCK_BOUNCE (8u << 20)

static int mock_copy_d2d_async(thaw_device *dev, uint64_t dst, uint64_t src, size_t length, void *stream)
{
    uint64_t offset = 0, start = 0;
    int found = find_mapping(NULL, src, length, NULL, &offset, &start);
    if (found < 0)
        return found;
    if (!found)
        return mock_copy_h2d_async(dev, dst, (const void *)(uintptr_t)src, length, stream);
    unsigned char *bounce = malloc(length < MOCK_BOUNCE ? (length ? length : 1) : MOCK_BOUNCE);
    if (!bounce)
        return thaw_fail(-ENOMEM, "out of host memory");
    int rc = 0;
    for (size_t done = 0; done < length && !rc;) {
        size_t n = length - done < MOCK_BOUNCE ? length - done : MOCK_BOUNCE;
        int fd = -1;
        found = find_mapping(NULL, src + done, n, &fd, &offset, &start);
        rc = found < 0 ? found : found == 0 ? thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock device: the source was closed during the copy")
                                            : shared_file_io(fd, bounce, n, offset, 0);
        if (!rc)
            rc = mock_copy_h2d_async(dev, dst + done, bounce, n, stream);
        done += n;
    }
    free(bounce);
    return rc;
}

static int mock_check_range(thaw_device *dev, uint64_t address, uint64_t length, uint64_t *allocation_out)
{
    (void)dev;
    uint64_t offset = 0, start = address;
    int found = find_mapping(dev, address, length, NULL, &offset, &start);
    if (found < 0)
        return found;
    *allocation_out = start; /* other host memory: nothing says which buffers belong together */
    if (address == 0 || address + length < address)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION,
                         "mock device: destination 0x%llx+%llu is not a valid range",
                         (unsigned long long)address, (unsigned long long)length);
    return 0;
}

/* The open file, if the peer may have the pool write it: a regular file the peer owns. */
static int check_shared_file(int fd, const char *directory, const char *name, uint32_t uid, uint64_t *length_out)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "cannot stat mock IPC handle %s/%s: %s", directory, name, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock IPC handle %s/%s is not a regular file", directory, name);
    if (st.st_uid != uid)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock IPC handle %s/%s belongs to uid %u, not to the peer (uid %u)",
                         directory, name, (unsigned)st.st_uid, (unsigned)uid);
    if (st.st_size <= 0 || (uint64_t)st.st_size > (uint64_t)PTRDIFF_MAX / 2)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock IPC handle %s/%s holds %lld bytes",
                         directory, name, (long long)st.st_size);
    *length_out = (uint64_t)st.st_size;
    return 0;
}

static int mock_ipc_open(thaw_device *dev, const void *handle, uint32_t handle_length,
                         const thawcore_ipc_peer *peer, uint64_t *address_out, uint64_t *length_out)
{
    (void)dev;
    const char *directory = peer->mock_directory;
    if (!directory || !directory[0])
        return thaw_fail(-EINVAL, "mock IPC: no directory for shared-memory files was given");
    char text[PATH_MAX];
    if (handle_length == 0 || handle_length >= sizeof text)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION,
                         "a mock IPC handle is a file name of 1 to %d bytes, not %u bytes", NAME_MAX, handle_length);
    memcpy(text, handle, handle_length);
    text[handle_length] = '\0';
    /* A name, or the absolute path of a file directly inside the directory, spelled exactly. */
    const char *name = text;
    const char *slash = strrchr(text, '/');
    size_t directory_length = strlen(directory);
    if (text[0] == '/' && slash && (size_t)(slash - text) == directory_length && memcmp(text, directory, directory_length) == 0)
        name = slash + 1;
    if (strlen(text) != handle_length || strlen(name) > NAME_MAX || !name[0] || strchr(name, '/') ||
        strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock IPC handle '%s' is not a file name inside %s", text, directory);
    int dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "cannot open the shared-memory directory %s: %s", directory, strerror(errno));
    int fd = openat(dir, name, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    int open_errno = errno;
    close(dir);
    if (fd < 0)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "cannot open mock IPC handle %s/%s: %s", directory, name,
                         open_errno == ELOOP ? "it is a symbolic link" : strerror(open_errno));
    uint64_t length = 0;
    int rc = check_shared_file(fd, directory, name, peer->uid, &length);
    void *reserved = MAP_FAILED;
    if (!rc && (reserved = mmap(NULL, (size_t)length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)) == MAP_FAILED)
        rc = thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock IPC handle %s/%s: cannot reserve %llu bytes of address space",
                       directory, name, (unsigned long long)length);
    struct mapping *m = rc ? NULL : malloc(sizeof *m);
    if (!rc && !m)
        rc = thaw_fail(-ENOMEM, "out of host memory");
    if (rc) {
        if (reserved != MAP_FAILED)
            munmap(reserved, (size_t)length);
        close(fd);
        return rc;
    }
    *m = (struct mapping){ (uint64_t)(uintptr_t)reserved, length, fd, dev->ordinal, NULL };
    pthread_mutex_lock(&mappings_lock);
    m->next = mappings;
    mappings = m;
    pthread_mutex_unlock(&mappings_lock);
    *address_out = m->address;
    *length_out = length;
    return 0;
}

static int mock_ipc_close(thaw_device *dev, uint64_t address)
{
    (void)dev;
    pthread_mutex_lock(&mappings_lock);
    struct mapping **at = &mappings;
    while (*at && (*at)->address != address)
        at = &(*at)->next;
    struct mapping *m = *at;
    if (m)
        *at = m->next;
    pthread_mutex_unlock(&mappings_lock);
    if (!m)
        return thaw_fail(-EINVAL, "mock IPC address 0x%llx is not open", (unsigned long long)address);
    munmap((void *)(uintptr_t)m->address, (size_t)m->length);
    close(m->fd);
    free(m);
    return 0;
}

static int mock_ipc_handle(thaw_device *dev, uint64_t address, void *handle_out, uint32_t capacity)
{
    (void)dev; (void)address; (void)handle_out; (void)capacity;
    return thaw_fail(-EINVAL, "the mock device shares memory as files, not IPC handles of its allocations");
}

static void mock_close(thaw_device *dev) { (void)dev; }

static const thaw_device_ops mock_ops = {
    .name = "mock",
    .bind_thread = mock_bind_thread,
    .host_alloc = mock_host_alloc,
    .host_free = mock_host_free,
    .stream_create = mock_token_create,
    .stream_destroy = mock_token_destroy,
    .event_create = mock_token_create,
    .event_destroy = mock_token_destroy,
    .copy_h2d_async = mock_copy_h2d_async,
    .copy_d2h = mock_copy_d2h,
    .copy_d2d_async = mock_copy_d2d_async,
    .event_record = mock_event_record,
    .event_wait = mock_wait,
    .stream_wait = mock_wait,
    .stream_wait_event = mock_stream_wait_event,
    .enable_peer_access = mock_enable_peer_access,
    .check_range = mock_check_range,
    .mem_alloc = mock_mem_alloc,
    .mem_free = mock_mem_free,
    .mem_info = mock_mem_info,
    .pin_host = mock_pin_host,
    .unpin_host = mock_unpin_host,
    .pin_host_readonly = mock_pin_host_readonly,
    .ipc_open = mock_ipc_open,
    .ipc_close = mock_ipc_close,
    .ipc_handle = mock_ipc_handle,
    .close = mock_close,
    .share = &thaw_share_ops_mock,
};

static int check_ordinal(int ordinal)
{
    if (ordinal < 0 || ordinal >= THAWCORE_MOCK_DEVICES)
        return thaw_fail(THAWCORE_ERR_NO_DEVICE, "mock device: no device %d (the mock has devices 0 to %d)",
                         ordinal, THAWCORE_MOCK_DEVICES - 1);
    return 0;
}

int thaw_device_open_mock(int ordinal, thaw_device *out)
{
    int rc = check_ordinal(ordinal);
    if (rc)
        return rc;
    out->ops = &mock_ops;
    out->state = NULL;
    out->ordinal = ordinal;
    return 0;
}

int thaw_device_identity_mock(int ordinal, char *out, uint32_t capacity)
{
    int rc = check_ordinal(ordinal);
    if (rc)
        return rc;
    int n = snprintf(out, capacity, "mock-%d", ordinal);
    return n < (int)capacity ? n : thaw_fail(-ENOSPC, "a device identity needs %d bytes", n + 1);
}
