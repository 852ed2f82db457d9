/* Checks on paths that guard the per-user pool (docs/POOL.md, "Automatic mode"): lstat-based,
 * so a symbolic link is never followed into someone else's directory. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "error.h"

#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int check_private(const char *path, const struct stat *st)
{
    if (S_ISLNK(st->st_mode))
        return thaw_fail(-EPERM, "%s is a symbolic link, not a directory", path);
    if (!S_ISDIR(st->st_mode))
        return thaw_fail(-ENOTDIR, "%s is not a directory", path);
    if (st->st_uid != getuid())
        return thaw_fail(-EPERM, "%s belongs to uid %u, not to uid %u", path, (unsigned)st->st_uid, (unsigned)getuid());
    if (st->st_mode & 077)
        return thaw_fail(-EPERM, "%s has mode %04o: group or others may enter it (it must be 0700)", path,
                         (unsigned)(st->st_mode & 07777));
    return 0;
}

int thawcore_private_directory(const char *path, int create)
{
    thaw_clear_error();
    if (!path || path[0] != '/')
        return thaw_fail(-EINVAL, "a private directory must be an absolute path, not %s", path ? path : "(null)");
    if (create && mkdir(path, 0700) < 0 && errno != EEXIST)
        return thaw_fail(-errno, "cannot create %s: %s", path, strerror(errno));
    struct stat st;
    if (lstat(path, &st) < 0)
        return thaw_fail(-errno, "cannot inspect %s: %s", path, strerror(errno));
    return check_private(path, &st);
}

int thawcore_path_identity(const char *path, uint64_t *device_out, uint64_t *inode_out, uint64_t *changed_ns_out)
{
    thaw_clear_error();
    struct stat st;
    if (!path || lstat(path, &st) < 0)
        return thaw_fail(path ? -errno : -EINVAL, "cannot inspect %s: %s", path ? path : "(null)", strerror(errno));
    if (device_out)
        *device_out = (uint64_t)st.st_dev;
    if (inode_out)
        *inode_out = (uint64_t)st.st_ino;
    if (changed_ns_out)
        *changed_ns_out = (uint64_t)st.st_ctim.tv_sec * 1000000000u + (uint64_t)st.st_ctim.tv_nsec;
    return 0;
}

int thawcore_module_path(char *buffer, size_t capacity)
{
    thaw_clear_error();
    Dl_info info;
    if (!dladdr((void *)&thawcore_module_path, &info) || !info.dli_fname || !info.dli_fname[0])
        return thaw_fail(-ENOENT, "the core cannot tell which file it was loaded from");
    size_t length = strlen(info.dli_fname);
    if (buffer && capacity > 0) {
        size_t n = length < capacity - 1 ? length : capacity - 1;
        memcpy(buffer, info.dli_fname, n);
        buffer[n] = 0;
    }
    return (int)length;
}
