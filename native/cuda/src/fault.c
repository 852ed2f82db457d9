#include "fault.h"
#include "thaw_core.h"

#include <stdatomic.h>

static atomic_int armed_kind;
static atomic_llong armed_after;
static atomic_llong hits;
static atomic_llong fired;

int thawcore_fault_inject(int32_t kind, int64_t after)
{
    atomic_store(&armed_kind, THAWCORE_FAULT_NONE);
    int64_t previously_fired = atomic_exchange(&fired, 0);
    atomic_store(&hits, 0);
    atomic_store(&armed_after, after);
    if (after >= 0)
        atomic_store(&armed_kind, kind);
    return (int)previously_fired;
}

int thaw_fault_hit(int kind)
{
    if (atomic_load_explicit(&armed_kind, memory_order_relaxed) != kind)
        return 0;
    if (atomic_fetch_add(&hits, 1) != atomic_load(&armed_after))
        return 0;
    atomic_fetch_add(&fired, 1);
    return 1;
}
