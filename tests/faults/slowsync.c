/*
 * slowsync.c - LD_PRELOAD: a slow disk for the integration tests. Every
 * fdatasync() of a journal segment ("seg-*.log") first sleeps, so that the
 * time between an event being queued and being durable is long and known:
 * the tests can then see what goes out before the disk has it (the
 * publisher reads ahead) and kill the gateway inside that window.
 *
 *   R2M_SLOWSYNC_MS=N   sleep N ms before each segment fdatasync
 *
 * The real fdatasync still runs afterwards: nothing is simulated but time.
 * Without the variable this library does nothing.
 */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int (*real_fdatasync)(int);
static long delay_ms;

__attribute__((constructor)) static void slowsync_init(void)
{
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *ms = getenv("R2M_SLOWSYNC_MS");
    delay_ms = ms ? strtol(ms, NULL, 10) : 0;
}

static int is_segment(int fd)
{
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    const char *base = strrchr(path, '/');
    return base && strncmp(base + 1, "seg-", 4) == 0;
}

int fdatasync(int fd)
{
    if (delay_ms > 0 && is_segment(fd)) {
        struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0)
            ;
    }
    return real_fdatasync(fd);
}
