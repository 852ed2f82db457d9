/* The io mode AUTO picks (engine/io_policy.c): buffered when cached or when the file fits
 * in half the available memory, so the next restart is warm; direct only for an uncached
 * file too large to stay in page cache, or when the memory is unknown. */
#include "helpers.h"
#include "engine/engine.h"

#define GIB (1ull << 30)

int main(void)
{
    CHECK(thaw_pick_io_mode(1.0, 16 * GIB, 8 * GIB) == THAWCORE_IO_BUFFERED);  /* cached: never re-read from disk */
    CHECK(thaw_pick_io_mode(0.5, 16 * GIB, 0) == THAWCORE_IO_BUFFERED);
    CHECK(thaw_pick_io_mode(-1, 16 * GIB, 0) == THAWCORE_IO_BUFFERED);       /* residency unknown (tmpfs, pipes) */
    CHECK(thaw_pick_io_mode(0.0, 16 * GIB, 100 * GIB) == THAWCORE_IO_BUFFERED); /* fits: leave it cached */
    CHECK(thaw_pick_io_mode(0.0, 50 * GIB, 100 * GIB) == THAWCORE_IO_BUFFERED);
    CHECK(thaw_pick_io_mode(0.0, 50 * GIB + 1, 100 * GIB) == THAWCORE_IO_DIRECT); /* would evict itself */
    CHECK(thaw_pick_io_mode(0.49, 16 * GIB, 0) == THAWCORE_IO_DIRECT);        /* memory unknown: no cache pressure */
    CHECK(thaw_memory_available() > 0); /* Linux has MemAvailable since 3.14 */
    /* The rule can be switched for a measurement: always buffered, whatever the size. */
    setenv("THAWCORE_AUTO_IO", "buffered", 1);
    CHECK(thaw_pick_io_mode(0.0, 50 * GIB + 1, 100 * GIB) == THAWCORE_IO_BUFFERED);
    CHECK(thaw_pick_io_mode(0.49, 16 * GIB, 0) == THAWCORE_IO_BUFFERED);
    setenv("THAWCORE_AUTO_IO", "size", 1);
    CHECK(thaw_pick_io_mode(0.0, 50 * GIB + 1, 100 * GIB) == THAWCORE_IO_DIRECT);
    unsetenv("THAWCORE_AUTO_IO");
    puts("io_policy: ok");
    return T_EXIT_PASS;
}
