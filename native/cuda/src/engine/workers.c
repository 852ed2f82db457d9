/* Work spread over threads: start and join workers, keep the first failure, throttle progress. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double thaw_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void thaw_first_failure_init(first_failure *f)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->lock, NULL);
    f->region = UINT32_MAX;
}

void thaw_first_failure_record(first_failure *f, int code, uint32_t region)
{
    pthread_mutex_lock(&f->lock);
    if (!f->code) {
        f->code = code;
        f->region = region;
        snprintf(f->text, sizeof f->text, "%s", thaw_error_text());
    }
    pthread_mutex_unlock(&f->lock);
    atomic_store(&f->failed, 1);
}

int thaw_first_failure_finish(first_failure *f)
{
    pthread_mutex_destroy(&f->lock);
    if (f->code)
        thaw_set_error_text(f->text);
    return f->code;
}

void thaw_run_workers(uint32_t count, void *(*worker)(void *), void *args, size_t arg_size, first_failure *f)
{
    pthread_t threads[MAX_THREADS];
    uint32_t started = 0;
    for (; started < count; started++) {
        if (pthread_create(&threads[started], NULL, worker, (char *)args + started * arg_size) != 0) {
            thaw_first_failure_record(f, thaw_fail(-EAGAIN, "cannot start worker thread %u", started), UINT32_MAX);
            break;
        }
    }
    for (uint32_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
}

void thaw_throttled_progress(atomic_llong *last_ms, thawcore_progress_fn progress, void *user,
                             uint64_t done, uint64_t total)
{
    if (!progress)
        return;
    long long now = (long long)(thaw_now_seconds() * 1000.0);
    long long last = atomic_load(last_ms);
    if (now - last >= 100 && atomic_compare_exchange_strong(last_ms, &last, now))
        progress(user, done, total);
}

uint64_t thaw_env_number(const char *name, uint64_t fallback, uint64_t min, uint64_t max)
{
    const char *text = getenv(name);
    if (!text || !*text)
        return fallback;
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    return errno || *end || text[0] == '-' || n < min || n > max ? fallback : (uint64_t)n;
}
