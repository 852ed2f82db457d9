/* The pool's shared host copies (docs/POOL.md, "Shared host copies"): one address range per
 * snapshot, reserved at once and backed chunk by chunk as a fill reaches it, so that creating
 * the memory runs ahead of the read instead of before it. Chunks are at least 256 MiB (the
 * first 32 MiB) and at most THAWCORE_SHARE_MAX_CHUNKS per copy, so one message carries all
 * their descriptors. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"
#include "error.h"
#include "share.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define SHARE_MIN_CHUNK (256ull << 20)
#define SHARE_MAX_LENGTH (1ull << 46) /* 64 TiB: past any host's memory, well inside size_t */

struct thawcore_share {
    thawcore_engine *engine;
    const thaw_share_ops *ops;
    unsigned char *base;
    uint64_t length;      /* asked */
    uint64_t reserved;    /* the chunks' lengths together */
    uint64_t first;       /* the first chunk's length: small, so a client's first copy starts soon */
    uint64_t chunk;       /* every other chunk's length but the last's */
    uint32_t chunk_count;
    uint64_t *handles;
    unsigned char *backed;
    pthread_mutex_t lock; /* backing is called from the fill's pinning thread, export from requests */
};

/* THAWCORE_SHARE_CHUNK_MIB sets the smallest chunk, for tests of many chunks in little memory. */
static uint64_t smallest_chunk(void)
{
    return thaw_env_number("THAWCORE_SHARE_CHUNK_MIB", SHARE_MIN_CHUNK >> 20, 1, 65536) << 20;
}

static uint64_t round_up(uint64_t n, uint64_t unit) { return (n + unit - 1) / unit * unit; }

/* A client grants its device access chunk by chunk and copies none of a chunk before its grant
 * (10 ms a GiB on the H200): a 256 MiB first chunk held every copy back 3 ms. THAWCORE_SHARE_FIRST_MIB
 * overrides the 32 MiB. */
static uint64_t first_chunk(void)
{
    return thaw_env_number("THAWCORE_SHARE_FIRST_MIB", 32, 1, 65536) << 20;
}

static uint64_t chunk_start(const thawcore_share *s, uint64_t i)
{
    return i == 0 ? 0 : s->first + (i - 1) * s->chunk;
}

static uint64_t chunk_of(const thawcore_share *s, uint64_t offset)
{
    return offset < s->first ? 0 : 1 + (offset - s->first) / s->chunk;
}

static uint64_t chunk_length(const thawcore_share *s, uint32_t i)
{
    return i + 1 < s->chunk_count ? (i == 0 ? s->first : s->chunk) : s->reserved - chunk_start(s, i);
}

int thawcore_share_create(thawcore_engine *e, uint64_t length, thawcore_share **out)
{
    thaw_clear_error();
    if (!e || !out || length == 0 || length > SHARE_MAX_LENGTH)
        return thaw_fail(-EINVAL, "a shared host copy of %llu bytes (1 byte to 64 TiB)", (unsigned long long)length);
    const thaw_share_ops *ops = e->dev.ops->share;
    uint64_t granularity = 0;
    int rc = e->dev.ops->bind_thread(&e->dev);
    if (!rc)
        rc = ops->granularity(&e->dev, &granularity);
    if (rc)
        return rc;
    thawcore_share *s = calloc(1, sizeof *s);
    if (!s)
        return thaw_fail(-ENOMEM, "out of host memory");
    s->engine = e;
    s->ops = ops;
    s->length = length;
    s->chunk = round_up(length / (THAWCORE_SHARE_MAX_CHUNKS - 1) + 1, granularity);
    if (s->chunk < smallest_chunk())
        s->chunk = round_up(smallest_chunk(), granularity);
    s->first = round_up(first_chunk(), granularity);
    if (s->first > s->chunk)
        s->first = s->chunk;
    s->chunk_count = length <= s->first ? 1 : (uint32_t)(1 + (length - s->first + s->chunk - 1) / s->chunk);
    uint64_t last = chunk_start(s, s->chunk_count - 1);
    s->reserved = last + round_up(length - last, granularity);
    s->handles = calloc(s->chunk_count, sizeof *s->handles);
    s->backed = calloc(s->chunk_count, 1);
    pthread_mutex_init(&s->lock, NULL);
    void *base = NULL;
    if (!s->handles || !s->backed)
        rc = thaw_fail(-ENOMEM, "out of host memory");
    else
        rc = ops->reserve(&e->dev, s->reserved, &base);
    if (rc) {
        thawcore_share_destroy(s);
        return rc;
    }
    s->base = base;
    *out = s;
    return 0;
}

void *thawcore_share_address(const thawcore_share *s) { return s ? s->base : NULL; }

uint32_t thawcore_share_chunks(const thawcore_share *s) { return s ? s->chunk_count : 0; }

int thawcore_share_back(thawcore_share *s, uint64_t offset, uint64_t length)
{
    thaw_clear_error();
    if (!s || offset > s->length || length > s->length - offset)
        return thaw_fail(-EINVAL, "backing %llu bytes at %llu of a shared copy of %llu", (unsigned long long)length,
                         (unsigned long long)offset, (unsigned long long)(s ? s->length : 0));
    if (length == 0)
        return 0;
    thawcore_engine *e = s->engine;
    int rc = e->dev.ops->bind_thread(&e->dev);
    pthread_mutex_lock(&s->lock);
    for (uint64_t i = chunk_of(s, offset); !rc && i <= chunk_of(s, offset + length - 1); i++) {
        if (s->backed[i])
            continue;
        rc = s->ops->create_at(&e->dev, s->base + chunk_start(s, i), chunk_length(s, (uint32_t)i), &s->handles[i]);
        if (rc)
            rc = thaw_fail_context(rc, "backing chunk %llu of a shared host copy", (unsigned long long)i);
        else
            s->backed[i] = 1;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int thawcore_share_export(thawcore_share *s, int *fds, uint64_t *lengths, uint32_t capacity)
{
    thaw_clear_error();
    if (!s || !fds || !lengths || capacity < s->chunk_count)
        return thaw_fail(-EINVAL, "exporting a shared copy needs room for %u descriptors", s ? s->chunk_count : 0);
    int rc = 0;
    uint32_t made = 0;
    pthread_mutex_lock(&s->lock);
    for (; made < s->chunk_count && !rc; made++) {
        if (!s->backed[made]) {
            rc = thaw_fail(-EINVAL, "chunk %u of the shared copy is not backed", made);
            break;
        }
        lengths[made] = chunk_length(s, made);
        rc = s->ops->export_fd(&s->engine->dev, s->handles[made], &fds[made]);
        if (rc)
            break;
    }
    pthread_mutex_unlock(&s->lock);
    if (rc)
        for (uint32_t i = 0; i < made; i++)
            close(fds[i]);
    return rc ? rc : (int)s->chunk_count;
}

void thawcore_share_destroy(thawcore_share *s)
{
    if (!s)
        return;
    thawcore_engine *e = s->engine;
    if (s->base) {
        e->dev.ops->bind_thread(&e->dev);
        for (uint32_t i = 0; i < s->chunk_count; i++)
            if (s->backed[i])
                s->ops->release(&e->dev, s->base + chunk_start(s, i), chunk_length(s, i), s->handles[i]);
        s->ops->unreserve(&e->dev, s->base, s->reserved);
    }
    pthread_mutex_destroy(&s->lock);
    free(s->handles);
    free(s->backed);
    free(s);
}
