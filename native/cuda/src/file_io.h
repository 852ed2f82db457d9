/* Whole-buffer pread/pwrite with EINTR retried, O_DIRECT opening, and the
 * page-cache residency probe that picks buffered or direct reads. */
#ifndef THAW_FILE_IO_H
#define THAW_FILE_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Reads up to length bytes at offset; returns bytes read (< length only at end
 * of file) or -errno. */
ssize_t thaw_pread_full(int fd, void *buffer, size_t length, uint64_t offset);
/* Writes all of length bytes at offset; returns 0 or -errno. */
int thaw_pwrite_full(int fd, const void *buffer, size_t length, uint64_t offset);

/* Opens path read-only, O_DIRECT when direct is set and the file system takes it.
 * *direct_used says which it got. Returns fd or -errno (message set). */
int thaw_open_for_read(const char *path, int direct, int *direct_used);

/* Fraction (0..1) of [offset, offset+length) of fd resident in page cache; -1 when unknown. */
double thaw_page_cache_residency(int fd, uint64_t offset, uint64_t length);

#endif
