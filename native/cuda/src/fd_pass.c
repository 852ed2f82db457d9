/* Descriptors over the pool's Unix socket (SCM_RIGHTS): the pool's answer to a share request
 * carries the descriptors of its shared host copy. The managed runtime has no API for
 * ancillary data, so both ends of that one exchange are here. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "error.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Waits for events on fd until the deadline; 0 when ready. */
static int wait_for(int fd, short events, long long deadline, const char *what)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return thaw_fail(-ETIMEDOUT, "timed out %s", what);
        struct pollfd p = { .fd = fd, .events = events };
        int n = poll(&p, 1, (int)(left > 1000000 ? 1000000 : left));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return thaw_fail(-errno, "poll while %s: %s", what, strerror(errno));
    }
}

int thawcore_send_with_fds(int32_t sock, const void *data, uint64_t length, const int32_t *fds, uint32_t count, int32_t timeout_ms)
{
    thaw_clear_error();
    if (!data || length == 0 || (count && !fds) || count > THAWCORE_SHARE_MAX_CHUNKS)
        return thaw_fail(-EINVAL, "sending %u descriptors needs 1 to %u of them and at least one byte", count, THAWCORE_SHARE_MAX_CHUNKS);
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int) * THAWCORE_SHARE_MAX_CHUNKS)]; } control;
    uint64_t sent = 0;
    while (sent < length) {
        struct iovec iov = { (char *)data + sent, (size_t)(length - sent) };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
        if (sent == 0 && count) {
            memset(&control, 0, sizeof control);
            msg.msg_control = control.bytes;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * count);
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * count);
            memcpy(CMSG_DATA(c), fds, sizeof(int) * count);
        }
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (uint64_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            int rc = wait_for(sock, POLLOUT, deadline, "sending an answer with descriptors");
            if (rc)
                return rc;
            continue;
        }
        return thaw_fail(-errno, "sending an answer with descriptors: %s", strerror(errno));
    }
    return 0;
}

static void close_all(int32_t *fds, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        close(fds[i]);
}

/* Takes the descriptors of one received message into fds; -1 when they do not fit. */
static int take_descriptors(struct msghdr *msg, int32_t *fds, uint32_t capacity, uint32_t *count)
{
    int overflow = (msg->msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *got = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < n; i++) {
            if (*count < capacity)
                fds[(*count)++] = got[i];
            else {
                close(got[i]);
                overflow = 1;
            }
        }
    }
    return overflow ? -1 : 0;
}

int thawcore_receive_line_with_fds(int32_t sock, void *buffer, uint64_t capacity, uint64_t *length_out,
                                   int32_t *fds, uint32_t fd_capacity, uint32_t *fd_count, int32_t timeout_ms)
{
    thaw_clear_error();
    if (!buffer || capacity == 0 || !length_out || !fd_count || (fd_capacity && !fds) || fd_capacity > THAWCORE_SHARE_MAX_CHUNKS)
        return thaw_fail(-EINVAL, "missing argument");
    *fd_count = 0;
    *length_out = 0;
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    char *out = buffer;
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int) * THAWCORE_SHARE_MAX_CHUNKS)]; } control;
    /* Peek for the newline (a peek installs no descriptor), then take exactly the bytes peeked up
     * to it: never a byte of what follows the line. A peek stops after a message that carries
     * descriptors, so a line may come in parts; the descriptors must come with its first. */
    uint64_t got = 0;
    int whole = 0, rc = 0;
    while (!whole && !rc) {
        rc = wait_for(sock, POLLIN, deadline, "waiting for the pool's answer");
        if (rc)
            break;
        ssize_t n = recv(sock, out + got, (size_t)(capacity - got), MSG_PEEK | MSG_DONTWAIT);
        if (n == 0) {
            rc = thaw_fail(-ECONNRESET, "the pool closed the connection before answering");
            break;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                rc = thaw_fail(-errno, "reading the pool's answer: %s", strerror(errno));
            continue;
        }
        char *newline = memchr(out + got, '\n', (size_t)n);
        if (!newline && got + (uint64_t)n >= capacity) { /* left unread: the caller drops the connection */
            rc = thaw_fail(-EMSGSIZE, "the pool's answer is longer than %llu bytes", (unsigned long long)capacity);
            break;
        }
        uint64_t take = newline ? (uint64_t)(newline - (out + got)) + 1 : (uint64_t)n;
        whole = newline != NULL;
        for (uint64_t taken = 0; taken < take && !rc;) {
            struct iovec iov = { out + got + taken, (size_t)(take - taken) };
            struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes, .msg_controllen = sizeof control.bytes };
            ssize_t r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                rc = thaw_fail(r == 0 ? -ECONNRESET : -errno, "reading the pool's answer: %s", r == 0 ? "connection closed" : strerror(errno));
                break;
            }
            uint32_t before = *fd_count;
            if (take_descriptors(&msg, fds, fd_capacity, fd_count) != 0 || (got + taken > 0 && *fd_count != before))
                rc = thaw_fail(-EPROTO, "the pool's answer carried more descriptors than the %u expected, or carried them late", fd_capacity);
            taken += (uint64_t)r;
        }
        got += take;
    }
    if (rc) {
        close_all(fds, *fd_count);
        *fd_count = 0;
        return rc;
    }
    *length_out = got - 1;
    return 0;
}
