/* The CUDA backend, through the driver API. libcuda.so.1 is opened at run time,
 * so the core builds without a CUDA toolkit and loads on machines without a GPU.
 * The primary context is used, which is the one PyTorch uses: addresses that
 * PyTorch allocated are valid destinations. */
#include "device.h"
#include "device_cuda.h"
#include "share.h"
#include "error.h"
#include "thaw_core.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUstream;
typedef void *CUevent;
typedef uint64_t CUdeviceptr;
typedef struct { char reserved[64]; } CUipcMemHandle;
typedef struct { unsigned char bytes[16]; } CUuuid;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704,
    CU_MEMHOSTALLOC_PORTABLE = 1,
    CU_STREAM_NON_BLOCKING = 1,
    CU_EVENT_DISABLE_TIMING = 2,
    CU_MEMHOSTREGISTER_PORTABLE = 1,
    CU_MEMHOSTREGISTER_READ_ONLY = 8,
    CU_POINTER_ATTRIBUTE_CONTEXT = 1,
    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9,
    CU_POINTER_ATTRIBUTE_RANGE_START_ADDR = 11,
    CU_POINTER_ATTRIBUTE_RANGE_SIZE = 12,
};

static struct {
    CUresult (*cuInit)(unsigned);
    CUresult (*cuGetErrorString)(CUresult, const char **);
    CUresult (*cuDeviceGetCount)(int *);
    CUresult (*cuDeviceGet)(CUdevice *, int);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*cuDevicePrimaryCtxRelease)(CUdevice);
    CUresult (*cuCtxSetCurrent)(CUcontext);
    CUresult (*cuMemHostAlloc)(void **, size_t, unsigned);
    CUresult (*cuMemFreeHost)(void *);
    CUresult (*cuMemHostRegister)(void *, size_t, unsigned);
    CUresult (*cuMemHostUnregister)(void *);
    CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
    CUresult (*cuMemFree)(CUdeviceptr);
    CUresult (*cuMemGetInfo)(size_t *, size_t *);
    CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
    CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t);
    CUresult (*cuMemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
    CUresult (*cuMemcpyPeerAsync)(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t, CUstream);
    CUresult (*cuStreamCreate)(CUstream *, unsigned);
    CUresult (*cuStreamDestroy)(CUstream);
    CUresult (*cuStreamSynchronize)(CUstream);
    CUresult (*cuStreamWaitEvent)(CUstream, CUevent, unsigned);
    CUresult (*cuDeviceCanAccessPeer)(int *, CUdevice, CUdevice);
    CUresult (*cuCtxEnablePeerAccess)(CUcontext, unsigned);
    CUresult (*cuEventCreate)(CUevent *, unsigned);
    CUresult (*cuEventDestroy)(CUevent);
    CUresult (*cuEventRecord)(CUevent, CUstream);
    CUresult (*cuEventSynchronize)(CUevent);
    CUresult (*cuPointerGetAttribute)(void *, int, CUdeviceptr);
    CUresult (*cuMemGetAddressRange)(CUdeviceptr *, size_t *, CUdeviceptr);
    CUresult (*cuIpcOpenMemHandle)(CUdeviceptr *, CUipcMemHandle, unsigned);
    CUresult (*cuIpcCloseMemHandle)(CUdeviceptr);
    CUresult (*cuIpcGetMemHandle)(CUipcMemHandle *, CUdeviceptr);
    CUresult (*cuDeviceGetUuid)(CUuuid *, CUdevice);
} cu;

static pthread_once_t driver_once = PTHREAD_ONCE_INIT;
static int driver_status;
static char driver_message[512];

static void *driver_library;

static void load_driver(void)
{
    void *lib = driver_library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        driver_status = THAWCORE_ERR_NO_DEVICE;
        snprintf(driver_message, sizeof driver_message,
                 "CUDA driver not found (dlopen libcuda.so.1: %s); use the mock device on machines without a GPU",
                 dlerror());
        return;
    }
    static const struct { const char *name; size_t offset; } symbols[] = {
#define SYM(field, name) { name, offsetof(__typeof__(cu), field) }
        SYM(cuInit, "cuInit"),
        SYM(cuGetErrorString, "cuGetErrorString"),
        SYM(cuDeviceGetCount, "cuDeviceGetCount"),
        SYM(cuDeviceGet, "cuDeviceGet"),
        SYM(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"),
        SYM(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"),
        SYM(cuCtxSetCurrent, "cuCtxSetCurrent"),
        SYM(cuMemHostAlloc, "cuMemHostAlloc"),
        SYM(cuMemFreeHost, "cuMemFreeHost"),
        SYM(cuMemHostRegister, "cuMemHostRegister_v2"),
        SYM(cuMemHostUnregister, "cuMemHostUnregister"),
        SYM(cuMemAlloc, "cuMemAlloc_v2"),
        SYM(cuMemFree, "cuMemFree_v2"),
        SYM(cuMemGetInfo, "cuMemGetInfo_v2"),
        SYM(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"),
        SYM(cuMemcpyDtoH, "cuMemcpyDtoH_v2"),
        SYM(cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2"),
        SYM(cuMemcpyPeerAsync, "cuMemcpyPeerAsync"),
        SYM(cuStreamCreate, "cuStreamCreate"),
        SYM(cuStreamDestroy, "cuStreamDestroy_v2"),
        SYM(cuStreamSynchronize, "cuStreamSynchronize"),
        SYM(cuStreamWaitEvent, "cuStreamWaitEvent"),
        SYM(cuDeviceCanAccessPeer, "cuDeviceCanAccessPeer"),
        SYM(cuCtxEnablePeerAccess, "cuCtxEnablePeerAccess"),
        SYM(cuEventCreate, "cuEventCreate"),
        SYM(cuEventDestroy, "cuEventDestroy_v2"),
        SYM(cuEventRecord, "cuEventRecord"),
        SYM(cuEventSynchronize, "cuEventSynchronize"),
        SYM(cuPointerGetAttribute, "cuPointerGetAttribute"),
        SYM(cuMemGetAddressRange, "cuMemGetAddressRange_v2"),
        SYM(cuIpcOpenMemHandle, "cuIpcOpenMemHandle_v2"),
        SYM(cuIpcCloseMemHandle, "cuIpcCloseMemHandle"),
        SYM(cuIpcGetMemHandle, "cuIpcGetMemHandle"),
#undef SYM
    };
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        void *fn = dlsym(lib, symbols[i].name);
        if (!fn) {
            driver_status = THAWCORE_ERR_NO_DEVICE;
            snprintf(driver_message, sizeof driver_message,
                     "CUDA driver libcuda.so.1 lacks %s (driver too old?)", symbols[i].name);
            return;
        }
        *(void **)((char *)&cu + symbols[i].offset) = fn;
    }
    /* _v2 tells MIG instances apart (the first version gives each the whole GPU's UUID). */
    void *uuid = dlsym(lib, "cuDeviceGetUuid_v2");
    cu.cuDeviceGetUuid = uuid ? uuid : dlsym(lib, "cuDeviceGetUuid");
    CUresult r = cu.cuInit(0);
    if (r != CUDA_SUCCESS) {
        const char *text = "unknown error";
        cu.cuGetErrorString(r, &text);
        driver_status = r == CUDA_ERROR_NO_DEVICE ? THAWCORE_ERR_NO_DEVICE : THAWCORE_ERR_CUDA;
        snprintf(driver_message, sizeof driver_message, "cuInit failed: %s (CUresult %d)", text, r);
    }
}

static int load_driver_once(void)
{
    pthread_once(&driver_once, load_driver);
    if (driver_status)
        return thaw_fail(driver_status, "%s", driver_message);
    return 0;
}

int thaw_cuda_driver(void) { return load_driver_once(); }

void *thaw_cuda_symbol(const char *name) { return driver_library ? dlsym(driver_library, name) : NULL; }

int thaw_cuda_fail(int r, const char *what, int out_of_memory)
{
    const char *text = "unknown error";
    if (cu.cuGetErrorString)
        cu.cuGetErrorString(r, &text);
    int code = r == CUDA_ERROR_OUT_OF_MEMORY ? out_of_memory : THAWCORE_ERR_CUDA;
    return thaw_fail(code, "%s failed: %s (CUresult %d)", what, text, r);
}

static int cuda_fail(CUresult r, const char *what) { return thaw_cuda_fail(r, what, THAWCORE_ERR_OUT_OF_DEVICE_MEMORY); }

#define CU_CHECK(call, what)                        \
    do {                                            \
        CUresult r_ = (call);                       \
        if (r_ != CUDA_SUCCESS)                     \
            return cuda_fail(r_, what);             \
    } while (0)

typedef struct { CUdevice device; CUcontext context; } cuda_state;

static CUcontext context_of(thaw_device *dev) { return ((cuda_state *)dev->state)->context; }

static int cuda_bind_thread(thaw_device *dev)
{
    CU_CHECK(cu.cuCtxSetCurrent(context_of(dev)), "cuCtxSetCurrent");
    return 0;
}

/* Staging is ordinary page-aligned memory pinned with cuMemHostRegister, which was
 * measured faster to set up than cuMemHostAlloc (docs/BENCHMARKS.md);
 * THAWCORE_PINNED=alloc selects cuMemHostAlloc instead. A header before the buffer
 * records which one, so freeing needs no lookup. */
#define PINNED_HEADER 4096
enum { PINNED_REGISTERED = 1, PINNED_ALLOCATED = 2 };

static int use_host_alloc(void)
{
    const char *choice = getenv("THAWCORE_PINNED");
    return choice && strcmp(choice, "alloc") == 0;
}

static int cuda_host_alloc(thaw_device *dev, size_t length, void **out)
{
    (void)dev;
    const char *text = "unknown error";
    CUresult r;
    unsigned char *block = NULL;
    if (use_host_alloc()) {
        r = cu.cuMemHostAlloc((void **)&block, length + PINNED_HEADER, CU_MEMHOSTALLOC_PORTABLE);
        if (r == CUDA_SUCCESS)
            block[0] = PINNED_ALLOCATED;
    } else {
        if (posix_memalign((void **)&block, PINNED_HEADER, length + PINNED_HEADER) != 0)
            return thaw_fail(THAWCORE_ERR_OUT_OF_PINNED_MEMORY, "cannot allocate %zu bytes of staging memory", length);
        block[0] = PINNED_REGISTERED;
        r = cu.cuMemHostRegister(block + PINNED_HEADER, length, CU_MEMHOSTREGISTER_PORTABLE);
        if (r != CUDA_SUCCESS)
            free(block);
    }
    if (r != CUDA_SUCCESS) {
        cu.cuGetErrorString(r, &text);
        return thaw_fail(THAWCORE_ERR_OUT_OF_PINNED_MEMORY,
                         "cannot pin %zu bytes of staging memory: %s (is the memlock limit too low?)", length, text);
    }
    *out = block + PINNED_HEADER;
    return 0;
}

static void cuda_host_free(thaw_device *dev, void *host)
{
    (void)dev;
    unsigned char *block = (unsigned char *)host - PINNED_HEADER;
    if (block[0] == PINNED_ALLOCATED) {
        cu.cuMemFreeHost(block);
    } else {
        cu.cuMemHostUnregister(host);
        free(block);
    }
}

static int cuda_stream_create(thaw_device *dev, void **out)
{
    (void)dev;
    CU_CHECK(cu.cuStreamCreate((CUstream *)out, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    return 0;
}

static void cuda_stream_destroy(thaw_device *dev, void *stream) { (void)dev; cu.cuStreamDestroy(stream); }

static int cuda_event_create(thaw_device *dev, void **out)
{
    (void)dev;
    CU_CHECK(cu.cuEventCreate((CUevent *)out, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
    return 0;
}

static void cuda_event_destroy(thaw_device *dev, void *event) { (void)dev; cu.cuEventDestroy(event); }

static int cuda_copy_h2d_async(thaw_device *dev, uint64_t dst, const void *src, size_t length, void *stream)
{
    (void)dev;
    CU_CHECK(cu.cuMemcpyHtoDAsync(dst, src, length, stream), "cuMemcpyHtoDAsync");
    return 0;
}

static int cuda_copy_d2h(thaw_device *dev, void *dst, uint64_t src, size_t length)
{
    (void)dev;
    CU_CHECK(cu.cuMemcpyDtoH(dst, src, length), "cuMemcpyDtoH");
    return 0;
}

/* One device: cuMemcpyDtoDAsync. Two devices (a publisher on another GPU): cuMemcpyPeerAsync
 * between the contexts the two pointers belong to (in the pool, the one that opened them). */
static int cuda_copy_d2d_async(thaw_device *dev, uint64_t dst, uint64_t src, size_t length, void *stream)
{
    (void)dev;
    int src_ordinal = -1, dst_ordinal = -1;
    CU_CHECK(cu.cuPointerGetAttribute(&src_ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, src), "cuPointerGetAttribute(source device)");
    CU_CHECK(cu.cuPointerGetAttribute(&dst_ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, dst), "cuPointerGetAttribute(destination device)");
    if (src_ordinal == dst_ordinal) {
        CU_CHECK(cu.cuMemcpyDtoDAsync(dst, src, length, stream), "cuMemcpyDtoDAsync");
        return 0;
    }
    CUcontext src_context = NULL, dst_context = NULL;
    CU_CHECK(cu.cuPointerGetAttribute(&src_context, CU_POINTER_ATTRIBUTE_CONTEXT, src), "cuPointerGetAttribute(source context)");
    CU_CHECK(cu.cuPointerGetAttribute(&dst_context, CU_POINTER_ATTRIBUTE_CONTEXT, dst), "cuPointerGetAttribute(destination context)");
    CU_CHECK(cu.cuMemcpyPeerAsync(dst, dst_context, src, src_context, length, stream), "cuMemcpyPeerAsync");
    return 0;
}

static int cuda_event_record(thaw_device *dev, void *event, void *stream)
{
    (void)dev;
    CU_CHECK(cu.cuEventRecord(event, stream), "cuEventRecord");
    return 0;
}

static int cuda_event_wait(thaw_device *dev, void *event)
{
    (void)dev;
    CU_CHECK(cu.cuEventSynchronize(event), "cuEventSynchronize");
    return 0;
}

static int cuda_stream_wait(thaw_device *dev, void *stream)
{
    (void)dev;
    CU_CHECK(cu.cuStreamSynchronize(stream), "cuStreamSynchronize");
    return 0;
}

static int cuda_stream_wait_event(thaw_device *dev, void *stream, void *event)
{
    (void)dev;
    CU_CHECK(cu.cuStreamWaitEvent(stream, event, 0), "cuStreamWaitEvent");
    return 0;
}

/* Access from the current context to `to`'s memory; already enabled (by PyTorch, or an earlier
 * restore: the setting lives as long as the context) is fine. */
static int enable_access(CUcontext from, CUcontext to, int from_ordinal, int to_ordinal)
{
    CU_CHECK(cu.cuCtxSetCurrent(from), "cuCtxSetCurrent");
    CUresult r = cu.cuCtxEnablePeerAccess(to, 0);
    if (r != CUDA_SUCCESS && r != CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED)
        return thaw_fail_context(cuda_fail(r, "cuCtxEnablePeerAccess"), "enabling cuda:%d's access to cuda:%d", from_ordinal, to_ordinal);
    return 0;
}

static int cuda_enable_peer_access(thaw_device *dev, thaw_device *peer)
{
    cuda_state *a = dev->state, *b = peer->state;
    int can_ab = 0, can_ba = 0;
    CU_CHECK(cu.cuDeviceCanAccessPeer(&can_ab, a->device, b->device), "cuDeviceCanAccessPeer");
    CU_CHECK(cu.cuDeviceCanAccessPeer(&can_ba, b->device, a->device), "cuDeviceCanAccessPeer");
    if (!can_ab || !can_ba)
        return thaw_fail(THAWCORE_ERR_CUDA, "cuda:%d and cuda:%d cannot reach each other peer to peer (cuDeviceCanAccessPeer)",
                         dev->ordinal, peer->ordinal);
    int rc = enable_access(b->context, a->context, peer->ordinal, dev->ordinal);
    if (!rc)
        rc = enable_access(a->context, b->context, dev->ordinal, peer->ordinal);
    cu.cuCtxSetCurrent(a->context);
    return rc;
}

static int cuda_check_range(thaw_device *dev, uint64_t address, uint64_t length, uint64_t *allocation_out)
{
    CUdeviceptr start = 0;
    size_t size = 0;
    int ordinal = -1;
    if (cu.cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, address) != CUDA_SUCCESS ||
        cu.cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, address) != CUDA_SUCCESS ||
        cu.cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, address) != CUDA_SUCCESS)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION,
                         "destination 0x%llx is not CUDA device memory", (unsigned long long)address);
    if (ordinal != dev->ordinal)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION,
                         "destination 0x%llx is on cuda:%d, the restore targets cuda:%d",
                         (unsigned long long)address, ordinal, dev->ordinal);
    if (address + length > start + size)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION,
                         "destination 0x%llx+%llu runs past its allocation (0x%llx+%zu)",
                         (unsigned long long)address, (unsigned long long)length,
                         (unsigned long long)start, size);
    *allocation_out = start;
    return 0;
}

static int cuda_mem_alloc(thaw_device *dev, uint64_t length, uint64_t *out)
{
    int rc = cuda_bind_thread(dev);
    if (rc)
        return rc;
    CUresult r = cu.cuMemAlloc((CUdeviceptr *)out, length);
    if (r == CUDA_ERROR_OUT_OF_MEMORY) {
        size_t free_bytes = 0, total = 0;
        cu.cuMemGetInfo(&free_bytes, &total);
        return thaw_fail(THAWCORE_ERR_OUT_OF_DEVICE_MEMORY,
                         "cuda:%d is out of memory: %llu bytes requested, %zu free of %zu",
                         dev->ordinal, (unsigned long long)length, free_bytes, total);
    }
    CU_CHECK(r, "cuMemAlloc");
    return 0;
}

static int cuda_mem_free(thaw_device *dev, uint64_t address)
{
    int rc = cuda_bind_thread(dev);
    if (rc)
        return rc;
    CU_CHECK(cu.cuMemFree(address), "cuMemFree");
    return 0;
}

static int cuda_mem_info(thaw_device *dev, uint64_t *free_bytes, uint64_t *total_bytes)
{
    int rc = cuda_bind_thread(dev);
    if (rc)
        return rc;
    size_t f = 0, t = 0;
    CU_CHECK(cu.cuMemGetInfo(&f, &t), "cuMemGetInfo");
    *free_bytes = f;
    *total_bytes = t;
    return 0;
}

static int cuda_pin_host(thaw_device *dev, void *host, uint64_t length)
{
    (void)dev;
    CU_CHECK(cu.cuMemHostRegister(host, length, CU_MEMHOSTREGISTER_PORTABLE), "cuMemHostRegister");
    return 0;
}

/* A file mapping can only be registered read-only (the flagless call fails on it). */
static int cuda_pin_host_readonly(thaw_device *dev, const void *host, uint64_t length)
{
    (void)dev;
    CU_CHECK(cu.cuMemHostRegister((void *)host, length, CU_MEMHOSTREGISTER_READ_ONLY), "cuMemHostRegister(READ_ONLY)");
    return 0;
}

static int cuda_unpin_host(thaw_device *dev, void *host)
{
    (void)dev;
    CU_CHECK(cu.cuMemHostUnregister(host), "cuMemHostUnregister");
    return 0;
}

/* Any peer may hand over a handle: only the process owning an allocation can make one
 * (cuIpcGetMemHandle), so the peer's uid needs no further check here (docs/POOL.md). */
static int cuda_ipc_open(thaw_device *dev, const void *handle, uint32_t handle_length,
                         const thawcore_ipc_peer *peer, uint64_t *address_out, uint64_t *length_out)
{
    (void)peer;
    int rc = cuda_bind_thread(dev);
    if (rc)
        return rc;
    CUipcMemHandle h;
    if (handle_length != sizeof h)
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "a CUDA IPC handle is 64 bytes, not %u", handle_length);
    memcpy(&h, handle, sizeof h);
    CUdeviceptr opened = 0, start = 0;
    size_t size = 0;
    CUresult r = cu.cuIpcOpenMemHandle(&opened, h, 1 /* CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS */);
    if (r != CUDA_SUCCESS) {
        const char *text = "unknown error";
        cu.cuGetErrorString(r, &text);
        return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "cannot open the CUDA IPC handle: %s (CUresult %d)", text, r);
    }
    r = cu.cuMemGetAddressRange(&start, &size, opened);
    if (r != CUDA_SUCCESS || opened < start || opened - start >= size) {
        cu.cuIpcCloseMemHandle(opened);
        return r != CUDA_SUCCESS ? cuda_fail(r, "cuMemGetAddressRange of an opened IPC handle")
                                 : thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "an opened CUDA IPC handle lies outside its own address range");
    }
    *address_out = opened;
    *length_out = size - (opened - start);
    return 0;
}

static int cuda_ipc_close(thaw_device *dev, uint64_t address)
{
    int rc = cuda_bind_thread(dev);
    if (rc)
        return rc;
    CU_CHECK(cu.cuIpcCloseMemHandle(address), "cuIpcCloseMemHandle");
    return 0;
}

static int cuda_ipc_handle(thaw_device *dev, uint64_t address, void *handle_out, uint32_t capacity)
{
    int rc = cuda_bind_thread(dev);
    if (rc)
        return rc;
    if (capacity < sizeof(CUipcMemHandle))
        return thaw_fail(-EINVAL, "a CUDA IPC handle needs 64 bytes");
    CU_CHECK(cu.cuIpcGetMemHandle((CUipcMemHandle *)handle_out, address), "cuIpcGetMemHandle");
    return (int)sizeof(CUipcMemHandle);
}

static void cuda_close(thaw_device *dev)
{
    cuda_state *state = dev->state;
    cu.cuDevicePrimaryCtxRelease(state->device);
    free(state);
}

static const thaw_device_ops cuda_ops = {
    .name = "cuda",
    .bind_thread = cuda_bind_thread,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .stream_create = cuda_stream_create,
    .stream_destroy = cuda_stream_destroy,
    .event_create = cuda_event_create,
    .event_destroy = cuda_event_destroy,
    .copy_h2d_async = cuda_copy_h2d_async,
    .copy_d2h = cuda_copy_d2h,
    .copy_d2d_async = cuda_copy_d2d_async,
    .event_record = cuda_event_record,
    .event_wait = cuda_event_wait,
    .stream_wait = cuda_stream_wait,
    .stream_wait_event = cuda_stream_wait_event,
    .enable_peer_access = cuda_enable_peer_access,
    .check_range = cuda_check_range,
    .mem_alloc = cuda_mem_alloc,
    .mem_free = cuda_mem_free,
    .mem_info = cuda_mem_info,
    .pin_host = cuda_pin_host,
    .unpin_host = cuda_unpin_host,
    .pin_host_readonly = cuda_pin_host_readonly,
    .ipc_open = cuda_ipc_open,
    .ipc_close = cuda_ipc_close,
    .ipc_handle = cuda_ipc_handle,
    .close = cuda_close,
    .share = &thaw_share_ops_cuda,
};

int thaw_device_count_cuda(void)
{
    int rc = load_driver_once();
    if (rc)
        return rc;
    int count = 0;
    CU_CHECK(cu.cuDeviceGetCount(&count), "cuDeviceGetCount");
    return count;
}

int thaw_device_identity_cuda(int ordinal, char *out, uint32_t capacity)
{
    int count = thaw_device_count_cuda();
    if (count < 0)
        return count;
    if (ordinal < 0 || ordinal >= count)
        return thaw_fail(THAWCORE_ERR_NO_DEVICE, "no CUDA device %d (this machine has %d)", ordinal, count);
    if (!cu.cuDeviceGetUuid)
        return thaw_fail(THAWCORE_ERR_NO_DEVICE, "CUDA driver libcuda.so.1 lacks cuDeviceGetUuid (driver too old?)");
    CUdevice device;
    CUuuid id;
    CU_CHECK(cu.cuDeviceGet(&device, ordinal), "cuDeviceGet");
    CU_CHECK(cu.cuDeviceGetUuid(&id, device), "cuDeviceGetUuid");
    const unsigned char *b = id.bytes;
    /* nvidia-smi's spelling: GPU-8-4-4-4-12 hexadecimal digits. */
    int n = snprintf(out, capacity, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                     b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return n < (int)capacity ? n : thaw_fail(-ENOSPC, "a device identity needs %d bytes", n + 1);
}

int thaw_device_open_cuda(int ordinal, thaw_device *out)
{
    int count = thaw_device_count_cuda();
    if (count < 0)
        return count;
    if (ordinal < 0 || ordinal >= count)
        return thaw_fail(THAWCORE_ERR_NO_DEVICE, "no CUDA device %d (this machine has %d)", ordinal, count);
    cuda_state *state = calloc(1, sizeof *state);
    if (!state)
        return thaw_fail(-12, "out of host memory");
    CUresult r = cu.cuDeviceGet(&state->device, ordinal);
    if (r == CUDA_SUCCESS)
        r = cu.cuDevicePrimaryCtxRetain(&state->context, state->device);
    if (r != CUDA_SUCCESS) {
        free(state);
        return cuda_fail(r, "opening the CUDA device's primary context");
    }
    out->ops = &cuda_ops;
    out->state = state;
    out->ordinal = ordinal;
    return 0;
}
