/* The mock device: "device addresses" are host pointers and copies are memcpy,
 * so the whole pipeline runs, and is tested, on machines without a GPU. */
#include "device.h"
#include "error.h"
#include "thaw_core.h"

#include <errno.h>
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

static int mock_copy_h2d_async(thaw_device *dev, uint64_t dst, const void *src, size_t length, void *stream)
{
    (void)dev; (void)stream;
    memcpy((void *)(uintptr_t)dst, src, length);
    return 0;
}

static int mock_copy_d2h(thaw_device *dev, void *dst, uint64_t src, size_t length)
{
    (void)dev;
    memcpy(dst, (const void *)(uintptr_t)src, length);
    return 0;
}

static int mock_event_record(thaw_device *dev, void *event, void *stream) { (void)dev; (void)event; (void)stream; return 0; }
static int mock_wait(thaw_device *dev, void *token) { (void)dev; (void)token; return 0; }

static int mock_check_range(thaw_device *dev, uint64_t address, uint64_t length, uint64_t *allocation_out)
{
    (void)dev;
    *allocation_out = address; /* host memory: nothing says which buffers belong together */
    if (address == 0 || address + length < address)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION,
                         "mock device: destination 0x%llx+%llu is not a valid range",
                         (unsigned long long)address, (unsigned long long)length);
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

/* Mock IPC: the "handle" is the path of a shared-memory file, as /dev/shm files are. */
static struct mapping { uint64_t address; size_t length; struct mapping *next; } *mappings;
static pthread_mutex_t mappings_lock = PTHREAD_MUTEX_INITIALIZER;

static int mock_ipc_open(thaw_device *dev, const void *handle, uint32_t handle_length, uint64_t *address_out)
{
    (void)dev;
    char path[4096];
    if (handle_length == 0 || handle_length >= sizeof path)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "mock IPC handle of %u bytes is not a path", handle_length);
    memcpy(path, handle, handle_length);
    path[handle_length] = '\0';
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "cannot open mock IPC handle %s: %s", path, strerror(errno));
    struct stat st;
    void *map = MAP_FAILED;
    if (fstat(fd, &st) == 0 && st.st_size > 0)
        map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    struct mapping *m = map == MAP_FAILED ? NULL : malloc(sizeof *m);
    if (!m) {
        if (map != MAP_FAILED)
            munmap(map, (size_t)st.st_size);
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "cannot map mock IPC handle %s", path);
    }
    *m = (struct mapping){ (uint64_t)(uintptr_t)map, (size_t)st.st_size, NULL };
    pthread_mutex_lock(&mappings_lock);
    m->next = mappings;
    mappings = m;
    pthread_mutex_unlock(&mappings_lock);
    *address_out = m->address;
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
    munmap((void *)(uintptr_t)m->address, m->length);
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
    .event_record = mock_event_record,
    .event_wait = mock_wait,
    .stream_wait = mock_wait,
    .check_range = mock_check_range,
    .mem_alloc = mock_mem_alloc,
    .mem_free = mock_mem_free,
    .mem_info = mock_mem_info,
    .pin_host = mock_pin_host,
    .unpin_host = mock_unpin_host,
    .ipc_open = mock_ipc_open,
    .ipc_close = mock_ipc_close,
    .ipc_handle = mock_ipc_handle,
    .close = mock_close,
};

int thaw_device_open_mock(int ordinal, thaw_device *out)
{
    if (ordinal != 0)
        return thaw_fail(THAWCORE_ERR_NO_DEVICE, "mock device: no device %d (the mock has only device 0)", ordinal);
    out->ops = &mock_ops;
    out->state = NULL;
    out->ordinal = 0;
    return 0;
}
