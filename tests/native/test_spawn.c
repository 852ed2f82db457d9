/* thawcore_spawn_detached: the program runs in its own session, not as our child, with stdin
 * from /dev/null, output in the log, / as its directory and the environment less the withheld
 * names; an exec failure comes back as -errno; no zombie is left. */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

static void sleep_ms(int ms)
{
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&t, NULL);
}

/* Waits up to ~10 s for the log to hold a line with "done". */
static int read_log(const char *path, char *text, size_t capacity)
{
    for (int i = 0; i < 1000; i++) {
        FILE *f = fopen(path, "r");
        if (f) {
            size_t n = fread(text, 1, capacity - 1, f);
            fclose(f);
            text[n] = 0;
            if (strstr(text, "done"))
                return 1;
        }
        sleep_ms(10);
    }
    return 0;
}

int main(void)
{
    char dir[] = "/tmp/thaw-spawn-test-XXXXXX";
    CHECK(mkdtemp(dir));
    char log_path[256];
    snprintf(log_path, sizeof log_path, "%s/log", dir);

    /* A leaked descriptor without CLOEXEC must not reach the program. */
    int leaked = open("/dev/null", O_RDONLY);
    CHECK(leaked >= 0);
    char script[1024];
    snprintf(script, sizeof script,
             "echo stdin=$(readlink /proc/self/fd/0); echo sid=$(cut -d' ' -f6 /proc/self/stat) pid=$$; "
             "test -e /proc/self/fd/%d && echo leaked; echo cwd=$(pwd -P); "
             "echo drop=${THAW_SPAWN_DROP-unset} keep=${THAW_SPAWN_DROP_NOT-unset} prefix=${THAW_SPAWN-unset}; echo done", leaked);
    const char *argv[] = { "/bin/sh", "-c", script, NULL };
    /* Only exact names are withheld: neither a longer name nor a name's prefix is. */
    CHECK(setenv("THAW_SPAWN_DROP", "gone", 1) == 0 && setenv("THAW_SPAWN_DROP_NOT", "kept", 1) == 0);
    CHECK(setenv("THAW_SPAWN", "kept-too", 1) == 0);
    const char *withheld[] = { "THAW_SPAWN_DRO", "THAW_SPAWN_DROP", "THAW_SPAWN_DROP_NOT_EITHER", NULL };
    CHECK(chdir(dir) == 0);
    int32_t pid = 0;
    CHECK(thawcore_spawn_detached(argv, withheld, log_path, &pid) == 0);
    CHECK(getenv("THAW_SPAWN_DROP") && strcmp(getenv("THAW_SPAWN_DROP"), "gone") == 0); /* ours is untouched */
    CHECK(pid > 0);
    /* The intermediate child was reaped, and the program is not our child. */
    CHECK(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD);

    char text[1024];
    CHECK(read_log(log_path, text, sizeof text));
    CHECK(strstr(text, "stdin=/dev/null"));
    /* A session of its own (led by the reaped intermediate child, so that it can never
     * acquire a terminal), and the pid reported is the program's. */
    int sid = 0, program = 0;
    const char *ids = strstr(text, "sid=");
    CHECK(ids && sscanf(ids, "sid=%d pid=%d", &sid, &program) == 2);
    CHECK(program == pid);
    CHECK(sid != getsid(0) && sid != pid);
    CHECK(!strstr(text, "leaked"));
    CHECK(strstr(text, "cwd=/\n"));
    CHECK(strstr(text, "drop=unset keep=kept prefix=kept-too\n"));
    struct stat st;
    CHECK(stat(log_path, &st) == 0 && (st.st_mode & 0777) == 0600);

    const char *missing[] = { "/nonexistent/thaw", "pool", NULL };
    CHECK(thawcore_spawn_detached(missing, NULL, log_path, &pid) == -ENOENT);
    CHECK(strstr(thawcore_last_error(), "/nonexistent/thaw") && strstr(thawcore_last_error(), "exec"));
    const char *relative[] = { "thaw", NULL };
    CHECK(thawcore_spawn_detached(relative, NULL, log_path, &pid) == -EINVAL);
    CHECK(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD);

    close(leaked);
    unlink(log_path);
    rmdir(dir);
    printf("spawn: ok\n");
    return T_EXIT_PASS;
}
