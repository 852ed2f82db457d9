#include "error.h"
#include "thaw_core.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

int thaw_fail(int code, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    return code;
}

/* Messages are cut at the buffer's end on purpose. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

int thaw_fail_context(int code, const char *format, ...)
{
    char inner[sizeof last_error];
    snprintf(inner, sizeof inner, "%s", last_error);
    va_list args;
    va_start(args, format);
    int n = vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    if (n >= 0 && (size_t)n < sizeof last_error)
        snprintf(last_error + n, sizeof last_error - (size_t)n, ": %s", inner);
    return code;
}

void thaw_set_error_text(const char *text)
{
    snprintf(last_error, sizeof last_error, "%s", text);
}

const char *thaw_error_text(void) { return last_error; }

void thaw_clear_error(void) { last_error[0] = '\0'; }

const char *thawcore_last_error(void) { return last_error; }

int thawcore_abi_version(void) { return THAWCORE_ABI_VERSION; }
