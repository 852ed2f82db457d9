/* A client's restore from the pool's shared host copy (docs/POOL.md, "Shared host copies"):
 * one thread maps the chunks the pool exported back to back and grants the device read access
 * chunk by chunk (CUDA: about 10 ms a GiB) while the lanes copy the chunks already granted, and the mapping is released on a thread of its own after the copies complete
 * (about 2 ms a GiB on the H200), so the restore returns as soon as its bytes have landed.
 * The pool never opens the client's memory, so the copies cost nothing per allocation. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"
#include "error.h"
#include "share.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SHARE_MAX_LENGTH (1ull << 46)

typedef struct {
    thawcore_engine *engine;
    const thaw_share_ops *ops;
    unsigned char *base;
    uint64_t reserved;
    uint32_t chunks;
    uint64_t *chunk_end;   /* end offset of each chunk */
    uint64_t *handles;
    const int32_t *fds;
    unsigned char *mapped;  /* each chunk: imported and mapped (released at the end) */
    unsigned char *ready;   /* each chunk: readable by the device */
    atomic_uint next_chunk; /* the next chunk a grant thread claims */
    double map_s;
    /* The grant thread's progress, read by the lanes' gate. */
    pthread_mutex_t lock;
    pthread_cond_t changed;
    uint32_t granted;
    int grant_error;
    char grant_message[512];
    double grant_s;
    double wait_s;
} share_mapping;

static void release_mapping(share_mapping *m)
{
    thawcore_engine *e = m->engine;
    e->dev.ops->bind_thread(&e->dev);
    for (uint32_t i = 0; i < m->chunks; i++) {
        if (!m->mapped[i])
            continue;
        uint64_t start = i ? m->chunk_end[i - 1] : 0;
        m->ops->release(&e->dev, m->base + start, m->chunk_end[i] - start, m->handles[i]);
    }
    if (m->base)
        m->ops->unreserve(&e->dev, m->base, m->reserved);
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->changed);
    free(m->chunk_end);
    free(m->handles);
    free(m->mapped);
    free(m->ready);
    free(m);
}

static void *release_main(void *arg)
{
    release_mapping(arg);
    return NULL;
}

void thaw_share_release_join(thawcore_engine *e, uint32_t below)
{
    uint32_t keep = below ? below - 1 : 0;
    while (e->share_release_count > keep) {
        pthread_join(e->share_release[0], NULL);
        e->share_release_count--;
        memmove(e->share_release, e->share_release + 1, e->share_release_count * sizeof e->share_release[0]);
    }
}

/* Maps and grants chunk by chunk, claimed in order by THAWCORE_SHARE_GRANTERS threads (default 1),
 * so the first copies start after one chunk's work, not all of it. */
static void *grant_main(void *arg)
{
    share_mapping *m = arg;
    thawcore_engine *e = m->engine;
    double started = thaw_now_seconds(), mapping = 0;
    int rc = e->dev.ops->bind_thread(&e->dev);
    while (!rc) {
        uint32_t i = atomic_fetch_add(&m->next_chunk, 1);
        if (i >= m->chunks)
            break;
        pthread_mutex_lock(&m->lock);
        int stop = m->grant_error != 0;
        pthread_mutex_unlock(&m->lock);
        if (stop)
            break;
        uint64_t start = i ? m->chunk_end[i - 1] : 0;
        double t = thaw_now_seconds();
        rc = m->ops->import_at(&e->dev, m->fds[i], m->base + start, m->chunk_end[i] - start, &m->handles[i]);
        int imported = rc == 0;
        if (rc)
            rc = thaw_fail_context(rc, "mapping chunk %u of the shared host copy", i);
        mapping += thaw_now_seconds() - t;
        if (!rc)
            rc = m->ops->grant_read(&e->dev, m->base + start, m->chunk_end[i] - start);
        pthread_mutex_lock(&m->lock);
        m->mapped[i] = (unsigned char)imported;
        if (!rc) {
            m->ready[i] = 1;
            while (m->granted < m->chunks && m->ready[m->granted])
                m->granted++;
        }
        pthread_cond_broadcast(&m->changed);
        pthread_mutex_unlock(&m->lock);
    }
    pthread_mutex_lock(&m->lock);
    if (rc && !m->grant_error) {
        m->grant_error = rc;
        snprintf(m->grant_message, sizeof m->grant_message, "%s", thawcore_last_error());
    }
    m->map_s += mapping;
    double lived = thaw_now_seconds() - started;
    if (lived > m->grant_s)
        m->grant_s = lived;
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static uint32_t grant_threads(uint32_t chunks)
{
    uint32_t want = (uint32_t)thaw_env_number("THAWCORE_SHARE_GRANTERS", 1, 1, 8);
    return want < chunks ? want : chunks;
}

/* The gate of the copy lanes: a piece goes out once every chunk under it is granted. */
static int wait_granted(void *context, uint64_t source_end, const atomic_int *stop)
{
    share_mapping *m = context;
    uint64_t end = source_end - (uint64_t)(uintptr_t)m->base;
    uint32_t need = 0;
    while (need < m->chunks && m->chunk_end[need] < end)
        need++;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    while (m->granted <= need && !m->grant_error && !atomic_load(stop))
        pthread_cond_wait(&m->changed, &m->lock);
    if (m->granted <= need)
        rc = m->grant_error ? thaw_fail(m->grant_error, "%s", m->grant_message) : THAWCORE_ERR_CANCELED;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

static int copy_shared(thaw_device *dev, uint64_t dst, const void *src, size_t length, void *stream)
{
    return dev->ops->share->copy_async(dev, dst, src, length, stream);
}

static void add_wait(void *context, double seconds)
{
    share_mapping *m = context;
    pthread_mutex_lock(&m->lock);
    m->wait_s += seconds;
    pthread_mutex_unlock(&m->lock);
}

/* Checks what the pool announced before anything is mapped: counts, sizes, every copy inside. */
static int check_announcement(const thaw_share_ops *ops, thaw_device *dev, const uint64_t *lengths, uint32_t chunks,
                              const thawcore_copy *copies, uint32_t count, uint64_t *total_out)
{
    if (chunks == 0 || chunks > THAWCORE_SHARE_MAX_CHUNKS)
        return thaw_fail(-EINVAL, "a shared host copy of %u chunks (1 to %u)", chunks, THAWCORE_SHARE_MAX_CHUNKS);
    uint64_t granularity = 0, total = 0;
    int rc = ops->granularity(dev, &granularity);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < chunks; i++) {
        if (lengths[i] == 0 || lengths[i] % granularity || lengths[i] > SHARE_MAX_LENGTH - total)
            return thaw_fail(-EINVAL, "chunk %u of the shared host copy has %llu bytes (a multiple of %llu, 64 TiB in all at most)",
                             i, (unsigned long long)lengths[i], (unsigned long long)granularity);
        total += lengths[i];
    }
    for (uint32_t i = 0; i < count; i++)
        if (copies[i].length && (!copies[i].device_address || copies[i].host_address > total ||
                                 copies[i].length > total - copies[i].host_address))
            return thaw_fail(THAWCORE_ERR_BAD_DESTINATION, "copy %u (%llu bytes at %llu) lies outside the shared copy of %llu bytes",
                             i, (unsigned long long)copies[i].length, (unsigned long long)copies[i].host_address,
                             (unsigned long long)total);
    *total_out = total;
    return 0;
}


static int sync_release(void)
{
    const char *mode = getenv("THAWCORE_SHARE_RELEASE");
    return mode && strcmp(mode, "sync") == 0;
}

int thawcore_engine_copy_from_share(thawcore_engine *e, const int32_t *fds, const uint64_t *lengths, uint32_t chunks,
                                    const thawcore_copy *copies, uint32_t count, thawcore_share_copy_stats *stats)
{
    thaw_clear_error();
    double started = thaw_now_seconds();
    int rc = 0;
    if (!e || !fds || !lengths || (count && !copies))
        rc = thaw_fail(-EINVAL, "missing argument");
    uint64_t total = 0;
    if (!rc)
        rc = e->dev.ops->bind_thread(&e->dev);
    if (!rc)
        rc = check_announcement(e->dev.ops->share, &e->dev, lengths, chunks, copies, count, &total);
    share_mapping *m = rc ? NULL : calloc(1, sizeof *m);
    thawcore_copy *placed = rc ? NULL : malloc(((size_t)count + 1) * sizeof *placed);
    if (!rc && m) {
        m->chunk_end = malloc((size_t)chunks * sizeof *m->chunk_end);
        m->handles = calloc(chunks, sizeof *m->handles);
        m->mapped = calloc(chunks, 1);
        m->ready = calloc(chunks, 1);
    }
    if (!rc && (!m || !placed || !m->chunk_end || !m->handles || !m->mapped || !m->ready))
        rc = thaw_fail(-ENOMEM, "out of host memory");
    if (rc) {
        if (m) {
            free(m->chunk_end);
            free(m->handles);
            free(m->mapped);
            free(m->ready);
        }
        free(m);
        free(placed);
        for (uint32_t i = 0; fds && i < chunks; i++)
            close(fds[i]); /* ours in every case */
        return rc;
    }
    m->engine = e;
    m->ops = e->dev.ops->share;
    m->chunks = chunks;
    m->reserved = total;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->changed, NULL);
    for (uint32_t i = 0; i < chunks; i++)
        m->chunk_end[i] = (i ? m->chunk_end[i - 1] : 0) + lengths[i];

    pthread_mutex_lock(&e->lock);
    thaw_share_release_join(e, THAW_SHARE_RELEASES); /* room for this one's release */
    void *base = NULL;
    rc = m->ops->reserve(&e->dev, m->reserved, &base);
    m->base = base;
    m->fds = fds;
    pthread_t granters[8];
    uint32_t granting = 0, wanted = grant_threads(chunks);
    while (!rc && granting < wanted && pthread_create(&granters[granting], NULL, grant_main, m) == 0)
        granting++;
    if (!rc && granting == 0)
        rc = thaw_fail(-EAGAIN, "cannot start the thread that grants access to the shared host copy");
    double t_copy = thaw_now_seconds();
    if (!rc) {
        for (uint32_t i = 0; i < count; i++)
            placed[i] = (thawcore_copy){ (uint64_t)(uintptr_t)m->base + copies[i].host_address, copies[i].device_address, copies[i].length };
        thaw_copy_gate gate = { m, wait_granted, copy_shared, add_wait };
        rc = thaw_copy_lanes(e, placed, count, &gate);
    }
    for (uint32_t g = 0; g < granting; g++)
        pthread_join(granters[g], NULL);
    for (uint32_t i = 0; i < chunks; i++)
        close(fds[i]); /* a mapping holds the memory; the descriptors are no longer needed */
    double copied = thaw_now_seconds() - t_copy;
    if (stats) {
        memset(stats, 0, sizeof *stats);
        stats->map_seconds = m->map_s;
        stats->grant_seconds = m->grant_s;
        stats->wait_seconds = e->lane_count ? m->wait_s / e->lane_count : 0;
        stats->copy_seconds = copied;
        stats->chunks = chunks;
        stats->lanes = e->lane_count;
    }
    /* After a failure no copy is in flight (the lanes waited for their streams): release now. */
    if (rc || sync_release() || pthread_create(&e->share_release[e->share_release_count], NULL, release_main, m) != 0)
        release_mapping(m);
    else
        e->share_release_count++;
    pthread_mutex_unlock(&e->lock);
    free(placed);
    if (stats)
        stats->seconds = thaw_now_seconds() - started;
    return rc;
}
