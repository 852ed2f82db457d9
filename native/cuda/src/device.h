/* The device backends behind the engine: the same operations on a CUDA GPU
 * (driver API) and on the mock (host memory standing in for device memory). */
#ifndef THAW_DEVICE_H
#define THAW_DEVICE_H

#include <stddef.h>
#include <stdint.h>

typedef struct thaw_device thaw_device;
struct thawcore_ipc_peer;
struct thaw_share_ops;

typedef struct thaw_device_ops {
    const char *name;
    /* Makes the device current on the calling thread (CUDA: the primary context). */
    int (*bind_thread)(thaw_device *dev);
    int (*host_alloc)(thaw_device *dev, size_t length, void **out);
    void (*host_free)(thaw_device *dev, void *host);
    int (*stream_create)(thaw_device *dev, void **out);
    void (*stream_destroy)(thaw_device *dev, void *stream);
    int (*event_create)(thaw_device *dev, void **out);
    void (*event_destroy)(thaw_device *dev, void *event);
    int (*copy_h2d_async)(thaw_device *dev, uint64_t dst, const void *src, size_t length, void *stream);
    int (*copy_d2h)(thaw_device *dev, void *dst, uint64_t src, size_t length);
    /* Device to device, queued on stream: the same device, or another one (peer copy). */
    int (*copy_d2d_async)(thaw_device *dev, uint64_t dst, uint64_t src, size_t length, void *stream);
    int (*event_record)(thaw_device *dev, void *event, void *stream);
    int (*event_wait)(thaw_device *dev, void *event);
    int (*stream_wait)(thaw_device *dev, void *stream);
    /* Holds back the work queued on stream after this call until event (recorded on any
     * stream, of this device or another) has completed. */
    int (*stream_wait_event)(thaw_device *dev, void *stream, void *event);
    /* Lets dev's copies reach peer's memory and peer's reach dev's (CUDA: cuCtxEnablePeerAccess
     * both ways); fails where the two cannot reach each other peer to peer. Binds the calling
     * thread to each context in turn, and leaves it bound to dev. */
    int (*enable_peer_access)(thaw_device *dev, thaw_device *peer);
    int (*check_range)(thaw_device *dev, uint64_t address, uint64_t length, uint64_t *allocation_out);
    int (*mem_alloc)(thaw_device *dev, uint64_t length, uint64_t *out);
    int (*mem_free)(thaw_device *dev, uint64_t address);
    int (*mem_info)(thaw_device *dev, uint64_t *free_bytes, uint64_t *total_bytes);
    int (*pin_host)(thaw_device *dev, void *host, uint64_t length);
    int (*unpin_host)(thaw_device *dev, void *host);
    /* Pins pages the device will only read (a mapping of a file in page cache); released
     * with unpin_host. */
    int (*pin_host_readonly)(thaw_device *dev, const void *host, uint64_t length);
    /* Opens a peer's allocation; *length_out bounds every copy into it (see thaw_core.h). */
    int (*ipc_open)(thaw_device *dev, const void *handle, uint32_t handle_length,
                    const struct thawcore_ipc_peer *peer, uint64_t *address_out, uint64_t *length_out);
    int (*ipc_close)(thaw_device *dev, uint64_t address);
    int (*ipc_handle)(thaw_device *dev, uint64_t address, void *handle_out, uint32_t capacity);
    void (*close)(thaw_device *dev);
    /* Shared host copies (share.h). */
    const struct thaw_share_ops *share;
} thaw_device_ops;

struct thaw_device {
    const thaw_device_ops *ops;
    void *state;
    int ordinal;
};

int thaw_device_open_mock(int ordinal, thaw_device *out);
int thaw_device_open_cuda(int ordinal, thaw_device *out);
int thaw_device_count_cuda(void);
/* thawcore_device_identity of each backend: the string and its length. */
int thaw_device_identity_mock(int ordinal, char *out, uint32_t capacity);
int thaw_device_identity_cuda(int ordinal, char *out, uint32_t capacity);

#endif
