/* Device memory and IPC operations: thin, checked entry points onto the device backend. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "engine/engine.h"
#include "error.h"

#include <errno.h>

int thawcore_engine_check_destination(thawcore_engine *e, uint64_t address, uint64_t length,
                                      uint64_t *allocation_out)
{
    thaw_clear_error();
    if (!e)
        return thaw_fail(-EINVAL, "no engine");
    uint64_t allocation = 0;
    int rc = e->dev.ops->bind_thread(&e->dev);
    if (!rc)
        rc = e->dev.ops->check_range(&e->dev, address, length, &allocation);
    if (!rc && allocation_out)
        *allocation_out = allocation;
    return rc;
}

int thawcore_engine_device_alloc(thawcore_engine *e, uint64_t length, uint64_t *address_out)
{
    thaw_clear_error();
    if (!e || !address_out)
        return thaw_fail(-EINVAL, "missing argument");
    return e->dev.ops->mem_alloc(&e->dev, length, address_out);
}

int thawcore_engine_device_free(thawcore_engine *e, uint64_t address)
{
    thaw_clear_error();
    if (!e)
        return thaw_fail(-EINVAL, "no engine");
    return address ? e->dev.ops->mem_free(&e->dev, address) : 0;
}

int thawcore_engine_copy_to_host(thawcore_engine *e, void *host, uint64_t address, uint64_t length)
{
    thaw_clear_error();
    if (!e || (length && (!host || !address)))
        return thaw_fail(-EINVAL, "missing argument");
    int rc = e->dev.ops->bind_thread(&e->dev);
    return rc ? rc : e->dev.ops->copy_d2h(&e->dev, host, address, (size_t)length);
}

int thawcore_engine_device_memory(thawcore_engine *e, uint64_t *free_out, uint64_t *total_out)
{
    thaw_clear_error();
    if (!e || !free_out || !total_out)
        return thaw_fail(-EINVAL, "missing argument");
    return e->dev.ops->mem_info(&e->dev, free_out, total_out);
}

int thawcore_engine_pin_host(thawcore_engine *e, void *host, uint64_t length)
{
    thaw_clear_error();
    if (!e || !host)
        return thaw_fail(-EINVAL, "missing argument");
    int rc = e->dev.ops->bind_thread(&e->dev);
    return rc ? rc : e->dev.ops->pin_host(&e->dev, host, length);
}

int thawcore_engine_unpin_host(thawcore_engine *e, void *host)
{
    thaw_clear_error();
    if (!e || !host)
        return thaw_fail(-EINVAL, "missing argument");
    int rc = e->dev.ops->bind_thread(&e->dev);
    return rc ? rc : e->dev.ops->unpin_host(&e->dev, host);
}

int thawcore_engine_ipc_open(thawcore_engine *e, const void *handle, uint32_t handle_length,
                             const thawcore_ipc_peer *peer, uint64_t *address_out, uint64_t *length_out)
{
    thaw_clear_error();
    if (!e || !handle || !peer || !address_out || !length_out)
        return thaw_fail(-EINVAL, "missing argument");
    if (peer->struct_size < sizeof *peer)
        return thaw_fail(-EINVAL, "thawcore_ipc_peer of %u bytes is too small", peer->struct_size);
    return e->dev.ops->ipc_open(&e->dev, handle, handle_length, peer, address_out, length_out);
}

int thawcore_engine_ipc_close(thawcore_engine *e, uint64_t address)
{
    thaw_clear_error();
    if (!e)
        return thaw_fail(-EINVAL, "no engine");
    return e->dev.ops->ipc_close(&e->dev, address);
}

int thawcore_engine_ipc_handle(thawcore_engine *e, uint64_t address, void *handle_out, uint32_t handle_capacity)
{
    thaw_clear_error();
    if (!e || !handle_out)
        return thaw_fail(-EINVAL, "missing argument");
    return e->dev.ops->ipc_handle(&e->dev, address, handle_out, handle_capacity);
}
