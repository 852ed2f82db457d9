/* thawcore_private_directory refuses symbolic links, other modes and non-directories;
 * thawcore_path_identity tells two files apart; thawcore_module_path names the core. */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <sys/stat.h>

int main(void)
{
    char base[] = "/tmp/thaw-paths-test-XXXXXX";
    CHECK(mkdtemp(base));
    char dir[256], link[256], file[256];
    snprintf(dir, sizeof dir, "%s/private", base);
    snprintf(link, sizeof link, "%s/link", base);
    snprintf(file, sizeof file, "%s/file", base);

    CHECK(thawcore_private_directory(dir, 0) == -ENOENT);
    CHECK(thawcore_private_directory(dir, 1) == 0);
    struct stat st;
    CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);
    CHECK(thawcore_private_directory(dir, 1) == 0);  /* existing and fine */

    CHECK(chmod(dir, 0777) == 0);
    CHECK(thawcore_private_directory(dir, 1) == -EPERM);
    CHECK(strstr(thawcore_last_error(), dir) && strstr(thawcore_last_error(), "0777"));
    CHECK(chmod(dir, 0700) == 0);

    CHECK(symlink(dir, link) == 0);
    CHECK(thawcore_private_directory(link, 1) == -EPERM);
    CHECK(strstr(thawcore_last_error(), "symbolic link"));

    FILE *f = fopen(file, "w");
    CHECK(f);
    fclose(f);
    CHECK(thawcore_private_directory(file, 1) == -ENOTDIR);
    CHECK(thawcore_private_directory("relative", 1) == -EINVAL);

    uint64_t dev_a, ino_a, dev_b, ino_b, changed_a, changed_b;
    CHECK(thawcore_path_identity(file, &dev_a, &ino_a, &changed_a) == 0);
    CHECK(thawcore_path_identity(dir, &dev_b, &ino_b, &changed_b) == 0);
    CHECK(ino_a != ino_b && changed_a > 0);
    CHECK(thawcore_path_identity(link, &dev_b, &ino_b, NULL) == 0 && ino_a != ino_b);  /* the link itself */
    CHECK(thawcore_path_identity(base, NULL, NULL, NULL) == 0);
    char absent[300];
    snprintf(absent, sizeof absent, "%s/absent", base);
    CHECK(thawcore_path_identity(absent, NULL, NULL, NULL) == -ENOENT);

    char sock[300];
    snprintf(sock, sizeof sock, "%s/listen.sock", base);
    int32_t fd = -1;
    CHECK(thawcore_unix_listen(sock, 4, &fd) == 0 && fd >= 0);
    struct stat sst;
    CHECK(lstat(sock, &sst) == 0 && S_ISSOCK(sst.st_mode));
    int32_t second = -1;
    CHECK(thawcore_unix_listen(sock, 4, &second) == -EADDRINUSE);  /* never replaces a socket */
    close(fd);
    unlink(sock);

    char self[4096];
    int n = thawcore_module_path(self, sizeof self);
    CHECK(n > 0 && strstr(self, "libthawcore"));

    unlink(file);
    unlink(link);
    rmdir(dir);
    rmdir(base);
    printf("paths: ok\n");
    return T_EXIT_PASS;
}
