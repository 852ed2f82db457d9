/* Probe behind the pool's shared host copies (docs/POOL.md): can a pool export pinned host
 * memory (cuMemCreate HOST_NUMA + POSIX descriptors) that a fresh client process imports and
 * copies from at the link's rate, so the client needs no IPC handle of its own memory?
 * Needs the CUDA toolkit's cuda.h (the GPU machine has it; this repository's core does not):
 *   gcc -O2 -pthread -o host_share_probe bench/host_share_probe.c -I$(dirname $(which nvcc))/../include -lcuda
 *   ./host_share_probe producer 16 1024 194            # 16 x 1 GiB chunks, 194 allocations
 *   PIPE=1 ./host_share_probe producer 60 256 194      # access granted chunk by chunk while copying
 * Figures: docs/BENCHMARKS.md, "Shared host copies". */
#define _GNU_SOURCE
#include <cuda.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define CK(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char *s_ = 0; cuGetErrorString(r_, &s_); \
    fprintf(stderr, "%s:%d %s -> %d %s\n", __FILE__, __LINE__, #x, (int)r_, s_ ? s_ : "?"); exit(3); } } while (0)
#define TRY(x) ({ CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char *s_ = 0; cuGetErrorString(r_, &s_); \
    printf("  try %s -> %d %s\n", #x, (int)r_, s_ ? s_ : "?"); } r_; })

static uint64_t word(uint64_t w) { return w * 0x9E3779B97F4A7C15ull ^ (w >> 7); }
static sigjmp_buf jump;
static void on_segv(int s) { (void)s; siglongjmp(jump, 1); }

static CUmemAllocationProp host_prop(int numa) {
    CUmemAllocationProp p; memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
    p.location.id = numa;
    p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    return p;
}

static int consumer(int chunks, size_t chunk, int allocs, int access_read_only) {
    double t0 = now();
    CK(cuInit(0)); CUdevice dev; CK(cuDeviceGet(&dev, 0)); CUcontext ctx;
    CK(cuDevicePrimaryCtxRetain(&ctx, dev)); CK(cuCtxSetCurrent(ctx));
    double t_init = now();
    size_t total = (size_t)chunks * chunk;
    /* destination: torch-like, one allocation per tensor */
    CUdeviceptr *dst = calloc(allocs, sizeof *dst); size_t *len = calloc(allocs, sizeof *len);
    size_t each = (total / allocs) & ~(size_t)4095, used = 0;
    for (int i = 0; i < allocs; i++) { len[i] = i == allocs - 1 ? total - used : each; used += len[i]; CK(cuMemAlloc(&dst[i], len[i])); }
    CK(cuCtxSynchronize());
    double t_alloc = now();
    /* import + map the pool's host chunks */
    CUdeviceptr va; CK(cuMemAddressReserve(&va, total, 0, 0, 0));
    CUmemGenericAllocationHandle *h = calloc(chunks, sizeof *h);
    double t_imp0 = now();
    for (int c = 0; c < chunks; c++) CK(cuMemImportFromShareableHandle(&h[c], (void *)(uintptr_t)(100 + c), CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    double t_imp = now();
    for (int c = 0; c < chunks; c++) CK(cuMemMap(va + (size_t)c * chunk, chunk, 0, h[c], 0));
    double t_map = now();
    CUmemAccessDesc d; memset(&d, 0, sizeof d); d.location.type = CU_MEM_LOCATION_TYPE_DEVICE; d.location.id = 0;
    d.flags = access_read_only ? CU_MEM_ACCESS_FLAGS_PROT_READ : CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CUresult ar = cuMemSetAccess(va, total, &d, 1);
    if (ar != CUDA_SUCCESS) { printf("  consumer: set access %s -> %d; retry RW\n", access_read_only ? "READ" : "RW", (int)ar);
        d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE; CK(cuMemSetAccess(va, total, &d, 1)); access_read_only = 0; }
    double t_acc = now();
    int nstreams[] = {1, 2, 4, 8}; size_t pieces[] = {16u << 20, 64u << 20};
    CUstream st[8]; for (int s = 0; s < 8; s++) CK(cuStreamCreate(&st[s], CU_STREAM_NON_BLOCKING));
    double first = 0;
    for (int rep = 0; rep < 2; rep++)
    for (int ns = 0; ns < 4; ns++) for (int pz = 0; pz < 2; pz++) {
        double a = now(); size_t off = 0; int k = 0;
        for (int i = 0; i < allocs; i++) for (size_t o = 0; o < len[i]; o += pieces[pz]) {
            size_t n = len[i] - o < pieces[pz] ? len[i] - o : pieces[pz];
            CK(cuMemcpyAsync(dst[i] + o, va + off + o, n, st[k++ % nstreams[ns]]));
        }
        (void)off;
        for (int s = 0; s < nstreams[ns]; s++) CK(cuStreamSynchronize(st[s]));
        double b = now();
        if (!first) first = b - a;
        printf("  copy rep%d streams=%d piece=%zuMiB: %.3f s %.2f GB/s\n", rep, nstreams[ns], pieces[pz] >> 20, b - a, total / (b - a) / 1e9);
        /* copies use per-allocation source offset: recompute below */
        (void)off;
    }
    /* the loop above used va+off+o with off=0 for every allocation: redo correctly once, timed */
    double a = now(); size_t off = 0; int k = 0;
    for (int i = 0; i < allocs; i++) { for (size_t o = 0; o < len[i]; o += 64u << 20) {
            size_t n = len[i] - o < (64u << 20) ? len[i] - o : (64u << 20);
            CK(cuMemcpyAsync(dst[i] + o, va + off + o, n, st[k++ % 4])); } off += len[i]; }
    for (int s = 0; s < 4; s++) CK(cuStreamSynchronize(st[s]));
    double b = now();
    printf("  copy placed streams=4 piece=64MiB: %.3f s %.2f GB/s\n", b - a, total / (b - a) / 1e9);
    /* verify samples */
    uint64_t *buf = malloc(1 << 20); long bad = 0; off = 0;
    for (int i = 0; i < allocs; i++) {
        size_t at[3] = {0, len[i] / 2 & ~(size_t)7, len[i] - (1 << 20)};
        for (int j = 0; j < 3; j++) { CK(cuMemcpyDtoH(buf, dst[i] + at[j], 1 << 20));
            for (size_t w = 0; w < (1 << 17); w++) if (buf[w] != word((off + at[j]) / 8 + w)) bad++; }
        off += len[i];
    }
    printf("  verify: %ld bad words of %d samples\n", bad, allocs * 3);
    /* can this client write into the pool's memory? */
    CUresult wr = cuMemcpyHtoD(va, buf, 4096);
    CK(cuCtxSynchronize());
    printf("  client write into shared host memory (access %s): %d\n", access_read_only ? "READ" : "RW", (int)wr);
    double u0 = now();
    CK(cuMemUnmap(va, total)); for (int c = 0; c < chunks; c++) CK(cuMemRelease(h[c])); CK(cuMemAddressFree(va, total));
    double u1 = now();
    printf("  consumer: init %.3f alloc %.3f import %.4f map %.4f access %.4f first-copy %.3f unmap %.4f s\n",
           t_init - t0, t_alloc - t_init, t_imp - t_imp0, t_map - t_imp, t_acc - t_map, first, u1 - u0);
    printf("  client path total (import+map+access+placed copy+unmap): %.3f s = %.2f GB/s\n",
           (t_acc - t_imp0) + (b - a) + (u1 - u0), total / ((t_acc - t_imp0) + (b - a) + (u1 - u0)) / 1e9);
    /* pinned ceiling of the same process */
    void *pin; CK(cuMemHostAlloc(&pin, 1u << 30, CU_MEMHOSTALLOC_PORTABLE));
    for (int r = 0; r < 3; r++) { double c0 = now();
        for (int i = 0; i < 16; i++) CK(cuMemcpyHtoDAsync(dst[i % allocs], pin, len[i % allocs] < (1u << 30) ? len[i % allocs] : (1u << 30), st[i % 4]));
        for (int s = 0; s < 4; s++) CK(cuStreamSynchronize(st[s]));
        double c1 = now(); size_t moved = 0; for (int i = 0; i < 16; i++) moved += len[i % allocs] < (1u << 30) ? len[i % allocs] : (1u << 30);
        printf("  pinned ceiling (cuMemHostAlloc, 4 streams): %.2f GB/s\n", moved / (c1 - c0) / 1e9); }
    return bad ? 4 : 0;
}


#include <pthread.h>
#include <sys/mman.h>
static volatile int ready_upto = 0; static CUdeviceptr g_va; static size_t g_chunk; static int g_chunks, g_ro;
static void *access_thread(void *arg) {
    (void)arg; CUcontext c; cuDevicePrimaryCtxRetain(&c, 0); cuCtxSetCurrent(c);
    CUmemAccessDesc d; memset(&d, 0, sizeof d); d.location.type = CU_MEM_LOCATION_TYPE_DEVICE; d.location.id = 0;
    d.flags = g_ro ? CU_MEM_ACCESS_FLAGS_PROT_READ : CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    for (int c2 = 0; c2 < g_chunks; c2++) { CK(cuMemSetAccess(g_va + (size_t)c2 * g_chunk, g_chunk, &d, 1)); __atomic_store_n(&ready_upto, c2 + 1, __ATOMIC_RELEASE); }
    return 0;
}
static int pipelined(int chunks, size_t chunk, int allocs) {
    CK(cuInit(0)); CUdevice dev; CK(cuDeviceGet(&dev, 0)); CUcontext ctx; CK(cuDevicePrimaryCtxRetain(&ctx, dev)); CK(cuCtxSetCurrent(ctx));
    size_t total = (size_t)chunks * chunk;
    CUdeviceptr *dst = calloc(allocs, sizeof *dst); size_t *len = calloc(allocs, sizeof *len);
    size_t each = (total / allocs) & ~(size_t)4095, used = 0;
    for (int i = 0; i < allocs; i++) { len[i] = i == allocs - 1 ? total - used : each; used += len[i]; CK(cuMemAlloc(&dst[i], len[i])); }
    CUstream st[4]; for (int s = 0; s < 4; s++) CK(cuStreamCreate(&st[s], CU_STREAM_NON_BLOCKING));
    CK(cuCtxSynchronize());
    /* can the client CPU-map the fd? */
    void *m = mmap(0, chunk, PROT_READ | PROT_WRITE, MAP_SHARED, 100, 0);
    printf("  pipelined: mmap of exported fd RW: %s\n", m == MAP_FAILED ? "refused" : "MAPPED");
    if (m != MAP_FAILED) munmap(m, chunk);
    double t0 = now();
    CK(cuMemAddressReserve(&g_va, total, 0, 0, 0));
    CUmemGenericAllocationHandle *h = calloc(chunks, sizeof *h);
    for (int c = 0; c < chunks; c++) { CK(cuMemImportFromShareableHandle(&h[c], (void *)(uintptr_t)(100 + c), CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
        CK(cuMemMap(g_va + (size_t)c * chunk, chunk, 0, h[c], 0)); }
    double t1 = now();
    g_chunk = chunk; g_chunks = chunks; g_ro = 1; pthread_t th; pthread_create(&th, 0, access_thread, 0);
    size_t off = 0; int k = 0; const size_t piece = 64u << 20;
    for (int i = 0; i < allocs; i++) { for (size_t o = 0; o < len[i]; o += piece) {
            size_t n = len[i] - o < piece ? len[i] - o : piece;
            int need = (int)((off + o + n + chunk - 1) / chunk);
            while (__atomic_load_n(&ready_upto, __ATOMIC_ACQUIRE) < need) ;
            CK(cuMemcpyAsync(dst[i] + o, g_va + off + o, n, st[k++ % 4])); } off += len[i]; }
    double t2 = now();
    for (int s = 0; s < 4; s++) CK(cuStreamSynchronize(st[s]));
    double t3 = now(); pthread_join(th, 0);
    uint64_t *buf = malloc(1 << 20); long bad = 0; off = 0;
    for (int i = 0; i < allocs; i++) { size_t at[3] = {0, len[i] / 2 & ~(size_t)7, len[i] - (1 << 20)};
        for (int j = 0; j < 3; j++) { CK(cuMemcpyDtoH(buf, dst[i] + at[j], 1 << 20));
            for (size_t w = 0; w < (1 << 17); w++) if (buf[w] != word((off + at[j]) / 8 + w)) bad++; } off += len[i]; }
    double u0 = now();
    CK(cuMemUnmap(g_va, total)); for (int c = 0; c < chunks; c++) CK(cuMemRelease(h[c])); CK(cuMemAddressFree(g_va, total));
    double u1 = now();
    printf("  pipelined %d x %zu MiB: import+map %.4f, enqueue done %.3f, copies done %.3f s -> %.2f GB/s (from import); unmap %.4f; bad %ld\n",
           chunks, chunk >> 20, t1 - t0, t2 - t0, t3 - t0, total / (t3 - t0) / 1e9, u1 - u0, bad);
    return bad ? 4 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "pipelined")) return pipelined(atoi(argv[2]), (size_t)atol(argv[3]) << 20, atoi(argv[4]));
    if (argc >= 6 && !strcmp(argv[1], "consumer")) return consumer(atoi(argv[2]), (size_t)atol(argv[3]) << 20, atoi(argv[4]), atoi(argv[5]));
    int chunks = argc > 2 ? atoi(argv[2]) : 16; size_t chunk = (size_t)(argc > 3 ? atol(argv[3]) : 1024) << 20;
    int allocs = argc > 4 ? atoi(argv[4]) : 194;
    if (chunks < 1 || chunks > 60) { /* the consumer finds them at 100.., clear of the exported ones */
        fprintf(stderr, "1 to 60 chunks\n");
        return 2;
    }
    CK(cuInit(0)); CUdevice dev; CK(cuDeviceGet(&dev, 0)); CUcontext ctx; CK(cuDevicePrimaryCtxRetain(&ctx, dev)); CK(cuCtxSetCurrent(ctx));
    int drv; cuDriverGetVersion(&drv); int numa = -1;
    CUresult nr = cuDeviceGetAttribute(&numa, CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, dev);
    printf("driver %d host numa id %d (rc %d)\n", drv, numa, (int)nr); if (numa < 0) numa = 0;
    CUmemAllocationProp p = host_prop(numa); size_t gran = 0;
    CK(cuMemGetAllocationGranularity(&gran, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM)); size_t rec = 0;
    CK(cuMemGetAllocationGranularity(&rec, &p, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    printf("granularity min %zu recommended %zu\n", gran, rec);
    size_t total = (size_t)chunks * chunk;
    CUmemGenericAllocationHandle *h = calloc(chunks, sizeof *h);
    double t0 = now();
    for (int c = 0; c < chunks; c++) CK(cuMemCreate(&h[c], chunk, &p, 0));
    double t1 = now();
    CUdeviceptr va; CK(cuMemAddressReserve(&va, total, 0, 0, 0));
    for (int c = 0; c < chunks; c++) CK(cuMemMap(va + (size_t)c * chunk, chunk, 0, h[c], 0));
    CUmemAccessDesc d[2]; memset(d, 0, sizeof d);
    d[0].location.type = CU_MEM_LOCATION_TYPE_DEVICE; d[0].location.id = 0; d[0].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    d[1].location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA; d[1].location.id = numa; d[1].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CUresult two = TRY(cuMemSetAccess(va, total, d, 2));
    if (two != CUDA_SUCCESS) { CK(cuMemSetAccess(va, total, d, 1)); TRY(cuMemSetAccess(va, total, &d[1], 1)); }
    double t2 = now();
    printf("producer: create %.3f s (%d x %zu MiB), map+access %.3f s\n", t1 - t0, chunks, chunk >> 20, t2 - t1);
    /* CPU write? (pread into it is how the pool fills) */
    signal(SIGSEGV, on_segv); signal(SIGBUS, on_segv);
    int cpu_ok = 0;
    if (!sigsetjmp(jump, 1)) { volatile uint64_t *q = (uint64_t *)(uintptr_t)va; q[0] = 1; cpu_ok = q[0] == 1; }
    printf("producer: CPU access to mapping: %s\n", cpu_ok ? "yes" : "no (fault)");
    double f0 = now();
    if (cpu_ok) { uint64_t *q = (uint64_t *)(uintptr_t)va; for (size_t w = 0; w < total / 8; w++) q[w] = word(w); }
    else { size_t blk = 64u << 20; uint64_t *tmp = malloc(blk);
        for (size_t o = 0; o < total; o += blk) { for (size_t w = 0; w < blk / 8; w++) tmp[w] = word(o / 8 + w); CK(cuMemcpyHtoD(va + o, tmp, blk)); } }
    printf("producer: filled in %.2f s (%s)\n", now() - f0, cpu_ok ? "CPU" : "cuMemcpy");
    int *fds = calloc(chunks, sizeof *fds);
    for (int c = 0; c < chunks; c++) CK(cuMemExportToShareableHandle(&fds[c], h[c], CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
    printf("producer: exported %d fds (first %d)\n", chunks, fds[0]); fflush(stdout);
    if (getenv("PIPE")) { for (int run = 0; run < 3; run++) { pid_t pid = fork();
        if (!pid) { for (int c = 0; c < chunks; c++) dup2(fds[c], 100 + c);
            char a[3][32]; snprintf(a[0], 32, "%d", chunks); snprintf(a[1], 32, "%zu", chunk >> 20); snprintf(a[2], 32, "%d", allocs);
            execl("/proc/self/exe", argv[0], "pipelined", a[0], a[1], a[2], (char *)0); _exit(127); }
        int stt; double c0 = now(); waitpid(pid, &stt, 0);
        printf("pipelined consumer run %d: exit %d wall %.3f s\n", run, WIFEXITED(stt) ? WEXITSTATUS(stt) : -WTERMSIG(stt), now() - c0); fflush(stdout); }
        return 0; }
    for (int ro = 1; ro >= 0; ro--) for (int run = 0; run < 2; run++) {
        pid_t pid = fork();
        if (!pid) { for (int c = 0; c < chunks; c++) dup2(fds[c], 100 + c);
            char a[4][32]; snprintf(a[0], 32, "%d", chunks); snprintf(a[1], 32, "%zu", chunk >> 20); snprintf(a[2], 32, "%d", allocs); snprintf(a[3], 32, "%d", ro);
            execl("/proc/self/exe", argv[0], "consumer", a[0], a[1], a[2], a[3], (char *)0); _exit(127); }
        int stt; double c0 = now(); waitpid(pid, &stt, 0);
        printf("consumer process (access %s, run %d): exit %d, wall %.3f s\n", ro ? "READ" : "RW", run, WIFEXITED(stt) ? WEXITSTATUS(stt) : -WTERMSIG(stt), now() - c0); fflush(stdout);
    }
    return 0;
}
