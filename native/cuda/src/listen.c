/* A listening Unix socket bound in C, so that the managed runtime does not know its file:
 * .NET's Socket deletes the file it bound when closed (dotnet/runtime#45537), which would
 * delete a newer pool's socket bound at the same path after this one's was replaced. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "error.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int thawcore_unix_listen(const char *path, int32_t backlog, int32_t *fd_out)
{
    thaw_clear_error();
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    if (!path || !path[0] || strlen(path) >= sizeof address.sun_path)
        return thaw_fail(-ENAMETOOLONG, "socket path %s is empty or longer than %zu bytes", path ? path : "(null)",
                         sizeof address.sun_path - 1);
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return thaw_fail(-errno, "cannot make a socket for %s: %s", path, strerror(errno));
    if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, backlog > 0 ? backlog : 64) < 0) {
        int e = errno;
        close(fd);
        return thaw_fail(-e, "cannot listen on %s: %s", path, strerror(e));
    }
    *fd_out = fd;
    return 0;
}
