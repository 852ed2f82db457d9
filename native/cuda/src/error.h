/* Per-thread error messages: every failing core call leaves one for its caller. */
#ifndef THAW_ERROR_H
#define THAW_ERROR_H

#include <stddef.h>

/* Formats the calling thread's message and returns code, so that failure paths
 * read `return thaw_fail(-EIO, "...", ...);`. */
int thaw_fail(int code, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* Puts context in front of the calling thread's current message: "context: message". */
int thaw_fail_context(int code, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* Copies another thread's message (a worker's) into the calling thread's. */
void thaw_set_error_text(const char *text);
const char *thaw_error_text(void);
void thaw_clear_error(void);

#endif
