/* Starting a daemon from inside a host process (the CLI, or Python through libthaw) without
 * touching the host's signal handling: fork, setsid, fork, exec. Between fork and exec the
 * children call only async-signal-safe functions; everything they need (the environment
 * included) is prepared before. */
#define _GNU_SOURCE
#include "thaw_core.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* What a child tells the caller through the CLOEXEC pipe: one record per write (atomic). */
enum { REPORT_PID = 1, REPORT_SETSID = 2, REPORT_FORK = 3, REPORT_EXEC = 4, REPORT_DUP = 5, REPORT_CHDIR = 6 };
struct report { int32_t kind; int32_t value; };

static void report(int fd, int32_t kind, int32_t value)
{
    struct report r = { kind, value };
    while (write(fd, &r, sizeof r) < 0 && errno == EINTR) {
    }
}

/* Closes every inherited descriptor from 3 up except keep (the host may leak some without CLOEXEC). */
static void close_inherited(int keep)
{
#ifdef SYS_close_range
    if (keep > 3)
        syscall(SYS_close_range, 3u, (unsigned)keep - 1, 0u);
    syscall(SYS_close_range, (unsigned)keep + 1, ~0u, 0u);
#else
    (void)keep;
#endif
}

extern char **environ;

/* Whether the entry "NAME=value" names one of withheld (NULL-terminated; may be NULL). */
static int is_withheld(const char *entry, const char *const *withheld)
{
    const char *equals = strchr(entry, '=');
    size_t length = equals ? (size_t)(equals - entry) : strlen(entry);
    for (; withheld && *withheld; withheld++)
        if (strlen(*withheld) == length && memcmp(*withheld, entry, length) == 0)
            return 1;
    return 0;
}

/* The caller's environment less the withheld variables: an array of pointers into environ,
 * made before fork (malloc is not async-signal-safe). Free the array only. */
static char **environment_without(const char *const *withheld)
{
    size_t count = 0;
    while (environ && environ[count])
        count++;
    char **kept = malloc((count + 1) * sizeof *kept);
    if (!kept)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        if (!is_withheld(environ[i], withheld))
            kept[n++] = environ[i];
    kept[n] = NULL;
    return kept;
}

/* The grandchild: standard descriptors, the root as its directory (a daemon must not keep the
 * starter's directory, and its file system, busy), default signals, then the program. Never returns. */
static void become_program(char *const *argv, char *const *envp, int null_fd, int log_fd, int pipe_fd)
{
    if (dup2(null_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0) {
        report(pipe_fd, REPORT_DUP, errno);
        _exit(127);
    }
    if (chdir("/") < 0) {
        report(pipe_fd, REPORT_CHDIR, errno);
        _exit(127);
    }
    close_inherited(pipe_fd);
    /* The host's blocked signals and ignored dispositions would otherwise be inherited. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    static const int reset[] = { SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGQUIT, SIGUSR1, SIGUSR2 };
    for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++)
        sigaction(reset[i], &dfl, NULL);
    execve(argv[0], argv, envp);
    report(pipe_fd, REPORT_EXEC, errno);
    _exit(127);
}

/* The intermediate child: a new session, then the grandchild, whose pid it reports. */
static void become_session(char *const *argv, char *const *envp, int null_fd, int log_fd, int pipe_fd)
{
    if (setsid() < 0) {
        report(pipe_fd, REPORT_SETSID, errno);
        _exit(1);
    }
    pid_t pid = fork();
    if (pid < 0) {
        report(pipe_fd, REPORT_FORK, errno);
        _exit(1);
    }
    if (pid == 0)
        become_program(argv, envp, null_fd, log_fd, pipe_fd);
    report(pipe_fd, REPORT_PID, (int32_t)pid);
    _exit(0);
}

/* Reads the children's reports until both have closed the pipe (exec, or exit). */
static int collect(int fd, const char *program, int32_t *pid_out)
{
    int32_t pid = -1;
    struct report r;
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, &r, sizeof r);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (n != (ssize_t)sizeof r)
            return thaw_fail(-EIO, "cannot start %s: a short report from the starting process", program);
        if (r.kind == REPORT_PID)
            pid = r.value;
        else if (rc == 0) {
            const char *step = r.kind == REPORT_EXEC ? "exec" : r.kind == REPORT_SETSID ? "setsid"
                             : r.kind == REPORT_FORK ? "fork" : r.kind == REPORT_CHDIR ? "chdir /" : "redirect its output";
            rc = thaw_fail(-r.value, "cannot start %s: %s failed: %s", program, step, strerror(r.value));
        }
    }
    if (rc == 0 && pid <= 0)
        rc = thaw_fail(-ECHILD, "cannot start %s: the starting process exited without reporting", program);
    if (rc == 0 && pid_out)
        *pid_out = pid;
    return rc;
}

int thawcore_spawn_detached(const char *const *argv, const char *const *withheld, const char *log_path, int32_t *pid_out)
{
    thaw_clear_error();
    if (!argv || !argv[0] || argv[0][0] != '/')
        return thaw_fail(-EINVAL, "spawn: the program must be an absolute path, not %s", argv && argv[0] ? argv[0] : "(null)");
    if (!log_path)
        return thaw_fail(-EINVAL, "spawn: no log file given for %s", argv[0]);
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0)
        return thaw_fail(-errno, "spawn: cannot open /dev/null: %s", strerror(errno));
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (log_fd < 0) {
        int e = errno;
        close(null_fd);
        return thaw_fail(-e, "spawn: cannot open the log %s: %s", log_path, strerror(e));
    }
    char **envp = environment_without(withheld);
    int pipe_fds[2];
    if (!envp || pipe2(pipe_fds, O_CLOEXEC) < 0) {
        int e = envp ? errno : ENOMEM;
        free(envp);
        close(null_fd);
        close(log_fd);
        return thaw_fail(-e, "spawn: %s: %s", envp ? "pipe" : "the environment", strerror(e));
    }
    pid_t child = fork();
    if (child == 0) {
        close(pipe_fds[0]);
        become_session((char *const *)argv, envp, null_fd, log_fd, pipe_fds[1]);
    }
    int fork_errno = errno;
    free(envp);
    close(pipe_fds[1]);
    close(null_fd);
    close(log_fd);
    int rc = child < 0 ? thaw_fail(-fork_errno, "cannot start %s: fork failed: %s", argv[0], strerror(fork_errno))
                       : collect(pipe_fds[0], argv[0], pid_out);
    close(pipe_fds[0]);
    /* The intermediate child has exited (it closed its end); a host's SIGCHLD handler may
     * have reaped it already (ECHILD). */
    if (child > 0)
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {
        }
    return rc;
}
