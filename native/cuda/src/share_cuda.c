/* Shared host copies on CUDA (share.h): host memory of the GPU's NUMA node made with the
 * driver's virtual memory management (cuMemCreate, CU_MEM_LOCATION_TYPE_HOST_NUMA), exported
 * as POSIX descriptors. Measured on the H200 (docs/BENCHMARKS.md): a client that imports it
 * copies at the pinned ceiling (55.2 GB/s) into any number of allocations; its grant of read
 * access costs about 10 ms a GiB, so grants run chunk by chunk ahead of the copies.
 * The driver is the one device_cuda.c opened (device_cuda.h); these entry points are looked up
 * in it on first use. */
#define _GNU_SOURCE
#include "share.h"
#include "device_cuda.h"
#include "error.h"
#include "thaw_core.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef int CUresult;
typedef uint64_t CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct { int type; int id; } CUmemLocation;
typedef struct {
    int type;
    int requestedHandleTypes;
    CUmemLocation location;
    void *win32HandleMetaData;
    struct { unsigned char compressionType, gpuDirectRDMACapable; unsigned short usage; unsigned char reserved[4]; } allocFlags;
} CUmemAllocationProp;
typedef struct { CUmemLocation location; int flags; } CUmemAccessDesc;

enum {
    CU_MEM_ALLOCATION_TYPE_PINNED = 1,
    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1,
    CU_MEM_LOCATION_TYPE_DEVICE = 1,
    CU_MEM_LOCATION_TYPE_HOST_NUMA = 3,
    CU_MEM_ACCESS_FLAGS_PROT_READ = 1,
    CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3,
    CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0,
    CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID = 134,
};

static struct {
    CUresult (*cuDeviceGetCount)(int *);
    CUresult (*cuDeviceGetAttribute)(int *, int, int);
    CUresult (*cuMemGetAllocationGranularity)(size_t *, const CUmemAllocationProp *, int);
    CUresult (*cuMemAddressReserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
    CUresult (*cuMemAddressFree)(CUdeviceptr, size_t);
    CUresult (*cuMemCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
    CUresult (*cuMemRelease)(CUmemGenericAllocationHandle);
    CUresult (*cuMemMap)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
    CUresult (*cuMemUnmap)(CUdeviceptr, size_t);
    CUresult (*cuMemSetAccess)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
    CUresult (*cuMemExportToShareableHandle)(void *, CUmemGenericAllocationHandle, int, unsigned long long);
    CUresult (*cuMemImportFromShareableHandle)(CUmemGenericAllocationHandle *, void *, int);
    CUresult (*cuMemcpyAsync)(CUdeviceptr, CUdeviceptr, size_t, void *);
} vmm;

static pthread_once_t vmm_once = PTHREAD_ONCE_INIT;
static char vmm_missing[256];

static void load_vmm(void)
{
    static const struct { const char *name; size_t offset; } symbols[] = {
#define SYM(field, name) { name, offsetof(__typeof__(vmm), field) }
        SYM(cuDeviceGetCount, "cuDeviceGetCount"),
        SYM(cuDeviceGetAttribute, "cuDeviceGetAttribute"),
        SYM(cuMemGetAllocationGranularity, "cuMemGetAllocationGranularity"),
        SYM(cuMemAddressReserve, "cuMemAddressReserve"),
        SYM(cuMemAddressFree, "cuMemAddressFree"),
        SYM(cuMemCreate, "cuMemCreate"),
        SYM(cuMemRelease, "cuMemRelease"),
        SYM(cuMemMap, "cuMemMap"),
        SYM(cuMemUnmap, "cuMemUnmap"),
        SYM(cuMemSetAccess, "cuMemSetAccess"),
        SYM(cuMemExportToShareableHandle, "cuMemExportToShareableHandle"),
        SYM(cuMemImportFromShareableHandle, "cuMemImportFromShareableHandle"),
        SYM(cuMemcpyAsync, "cuMemcpyAsync"),
#undef SYM
    };
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        void *fn = thaw_cuda_symbol(symbols[i].name);
        if (!fn) {
            snprintf(vmm_missing, sizeof vmm_missing, "the CUDA driver lacks %s (shared host copies need CUDA 12.2 or later)",
                     symbols[i].name);
            return;
        }
        *(void **)((char *)&vmm + symbols[i].offset) = fn;
    }
}

static int vmm_ready(void)
{
    int rc = thaw_cuda_driver();
    if (rc)
        return rc;
    pthread_once(&vmm_once, load_vmm);
    return vmm_missing[0] ? thaw_fail(THAWCORE_ERR_NO_DEVICE, "%s", vmm_missing) : 0;
}

/* Out of memory here is out of host memory: shared copies are pinned host memory. */
static int vmm_fail(CUresult r, const char *what) { return thaw_cuda_fail(r, what, THAWCORE_ERR_OUT_OF_PINNED_MEMORY); }

#define VMM_CHECK(call, what)            \
    do {                                 \
        CUresult r_ = (call);            \
        if (r_ != 0)                     \
            return vmm_fail(r_, what);   \
    } while (0)

static int host_numa_node(thaw_device *dev)
{
    int numa = -1;
    if (vmm.cuDeviceGetAttribute(&numa, CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, dev->ordinal) != 0 || numa < 0)
        numa = 0; /* a machine without NUMA: node 0 */
    return numa;
}

static CUmemAllocationProp host_memory(thaw_device *dev)
{
    CUmemAllocationProp p;
    memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    p.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
    p.location.id = host_numa_node(dev);
    return p;
}

static int cuda_granularity(thaw_device *dev, uint64_t *out)
{
    int rc = vmm_ready();
    if (rc)
        return rc;
    CUmemAllocationProp p = host_memory(dev);
    size_t g = 0;
    VMM_CHECK(vmm.cuMemGetAllocationGranularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM), "cuMemGetAllocationGranularity");
    *out = g ? g : 4096;
    return 0;
}

static int cuda_reserve(thaw_device *dev, uint64_t length, void **out)
{
    (void)dev;
    int rc = vmm_ready();
    if (rc)
        return rc;
    CUdeviceptr va = 0;
    VMM_CHECK(vmm.cuMemAddressReserve(&va, (size_t)length, 0, 0, 0), "cuMemAddressReserve");
    *out = (void *)(uintptr_t)va;
    return 0;
}

static void cuda_unreserve(thaw_device *dev, void *at, uint64_t length)
{
    (void)dev;
    vmm.cuMemAddressFree((CUdeviceptr)(uintptr_t)at, (size_t)length);
}

static int cuda_create_at(thaw_device *dev, void *at, uint64_t length, uint64_t *handle_out)
{
    int rc = vmm_ready();
    if (rc)
        return rc;
    CUmemAllocationProp p = host_memory(dev);
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr va = (CUdeviceptr)(uintptr_t)at;
    VMM_CHECK(vmm.cuMemCreate(&h, (size_t)length, &p, 0), "cuMemCreate (host memory to share)");
    CUresult r = vmm.cuMemMap(va, (size_t)length, 0, h, 0);
    if (r != 0) {
        vmm.cuMemRelease(h);
        return vmm_fail(r, "cuMemMap (host memory to share)");
    }
    /* The CPU fills it; every device of the node may copy from it (the pool serves them all). */
    enum { MAX_ACCESS = 65 };
    CUmemAccessDesc access[MAX_ACCESS];
    int devices = 0;
    if (vmm.cuDeviceGetCount(&devices) != 0 || devices < 1)
        devices = 1;
    if (devices > MAX_ACCESS - 1)
        devices = MAX_ACCESS - 1;
    size_t n = 0;
    access[n++] = (CUmemAccessDesc){ { CU_MEM_LOCATION_TYPE_HOST_NUMA, p.location.id }, CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    for (int d = 0; d < devices; d++)
        access[n++] = (CUmemAccessDesc){ { CU_MEM_LOCATION_TYPE_DEVICE, d }, CU_MEM_ACCESS_FLAGS_PROT_READ };
    r = vmm.cuMemSetAccess(va, (size_t)length, access, n);
    if (r != 0) /* a device that cannot reach this node's memory: at least the pool's own */
        r = vmm.cuMemSetAccess(va, (size_t)length, (CUmemAccessDesc[]){ access[0],
                               { { CU_MEM_LOCATION_TYPE_DEVICE, dev->ordinal }, CU_MEM_ACCESS_FLAGS_PROT_READ } }, 2);
    if (r != 0) {
        vmm.cuMemUnmap(va, (size_t)length);
        vmm.cuMemRelease(h);
        return vmm_fail(r, "cuMemSetAccess (host memory to share)");
    }
    *handle_out = h;
    return 0;
}

static int cuda_export_fd(thaw_device *dev, uint64_t handle, int *fd_out)
{
    (void)dev;
    int fd = -1;
    VMM_CHECK(vmm.cuMemExportToShareableHandle(&fd, (CUmemGenericAllocationHandle)handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
              "cuMemExportToShareableHandle");
    *fd_out = fd;
    return 0;
}

static int cuda_import_at(thaw_device *dev, int fd, void *at, uint64_t length, uint64_t *handle_out)
{
    (void)dev;
    int rc = vmm_ready();
    if (rc)
        return rc;
    CUmemGenericAllocationHandle h = 0;
    VMM_CHECK(vmm.cuMemImportFromShareableHandle(&h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
              "cuMemImportFromShareableHandle");
    CUresult r = vmm.cuMemMap((CUdeviceptr)(uintptr_t)at, (size_t)length, 0, h, 0);
    if (r != 0) {
        vmm.cuMemRelease(h);
        return vmm_fail(r, "cuMemMap (a shared host copy; is the chunk as large as announced?)");
    }
    *handle_out = h;
    return 0;
}

static int cuda_grant_read(thaw_device *dev, void *at, uint64_t length)
{
    CUmemAccessDesc read = { { CU_MEM_LOCATION_TYPE_DEVICE, dev->ordinal }, CU_MEM_ACCESS_FLAGS_PROT_READ };
    VMM_CHECK(vmm.cuMemSetAccess((CUdeviceptr)(uintptr_t)at, (size_t)length, &read, 1), "cuMemSetAccess (read a shared host copy)");
    return 0;
}

static void cuda_release(thaw_device *dev, void *at, uint64_t length, uint64_t handle)
{
    (void)dev;
    vmm.cuMemUnmap((CUdeviceptr)(uintptr_t)at, (size_t)length);
    if (handle != THAW_SHARE_NO_HANDLE)
        vmm.cuMemRelease((CUmemGenericAllocationHandle)handle);
}

static int cuda_copy_async(thaw_device *dev, uint64_t dst, const void *src, size_t length, void *stream)
{
    (void)dev;
    /* The generic copy: the driver knows the range as host memory it mapped (measured at the ceiling). */
    VMM_CHECK(vmm.cuMemcpyAsync((CUdeviceptr)dst, (CUdeviceptr)(uintptr_t)src, length, stream), "cuMemcpyAsync (from a shared host copy)");
    return 0;
}

const thaw_share_ops thaw_share_ops_cuda = {
    .granularity = cuda_granularity,
    .reserve = cuda_reserve,
    .unreserve = cuda_unreserve,
    .create_at = cuda_create_at,
    .export_fd = cuda_export_fd,
    .import_at = cuda_import_at,
    .grant_read = cuda_grant_read,
    .release = cuda_release,
    .copy_async = cuda_copy_async,
};
