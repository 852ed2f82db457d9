/* Shared host copies (docs/POOL.md, "Shared host copies"): host memory that the pool allocates
 * so that another process can map it and copy from it to its own device itself, with no handle
 * of the client's memory ever opened by the pool. Each backend's operations:
 *   CUDA  cuMemCreate of CU_MEM_LOCATION_TYPE_HOST_NUMA memory exported as a POSIX descriptor,
 *         cuMemMap'd into a reserved range; the client imports, maps, and grants its device read
 *         access (cuMemSetAccess, which costs about 10 ms a GiB: granted chunk by chunk while
 *         earlier chunks copy).
 *   mock  a memfd mapped MAP_SHARED; exported as a read-only descriptor; the client maps it
 *         PROT_NONE and "grants" with mprotect(PROT_READ), so a copy issued before its grant
 *         faults in the tests. */
#ifndef THAW_SHARE_H
#define THAW_SHARE_H

#include "device.h"

#include <stdint.h>

/* Import handles that own nothing beyond the mapping (the mock's). */
#define THAW_SHARE_NO_HANDLE UINT64_MAX

typedef struct thaw_share_ops {
    /* Sizes and offsets of shared chunks are multiples of this. */
    int (*granularity)(thaw_device *dev, uint64_t *out);
    /* An address range with nothing mapped in it yet. */
    int (*reserve)(thaw_device *dev, uint64_t length, void **out);
    void (*unreserve)(thaw_device *dev, void *at, uint64_t length);
    /* Pool: new memory of `length` bytes mapped at `at`, readable and writable by the CPU and
     * readable by every device of the backend. */
    int (*create_at)(thaw_device *dev, void *at, uint64_t length, uint64_t *handle_out);
    /* Pool: a new descriptor another process imports the chunk with; the caller closes it. */
    int (*export_fd)(thaw_device *dev, uint64_t handle, int *fd_out);
    /* Client: maps a chunk another process exported at `at`; not yet readable by the device. */
    int (*import_at)(thaw_device *dev, int fd, void *at, uint64_t length, uint64_t *handle_out);
    /* Client: lets the device read the imported chunk at [at, at + length). */
    int (*grant_read)(thaw_device *dev, void *at, uint64_t length);
    /* Either side: unmaps a chunk and drops this process's hold on its memory; the range stays reserved. */
    void (*release)(thaw_device *dev, void *at, uint64_t length, uint64_t handle);
    /* Queues a copy from shared memory to device memory. */
    int (*copy_async)(thaw_device *dev, uint64_t dst, const void *src, size_t length, void *stream);
} thaw_share_ops;

extern const thaw_share_ops thaw_share_ops_cuda;
extern const thaw_share_ops thaw_share_ops_mock;


#endif
