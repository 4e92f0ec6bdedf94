/*
 * log.c - one line per event on stderr.
 *
 * A line is formatted into a local buffer and written with a single write(2),
 * so lines from different threads never interleave, and no lock is held while
 * formatting. The level is an atomic so that -v and log.level can change it
 * while threads run.
 *
 * Under journald (stderr is the stream named in JOURNAL_STREAM) a line is
 * "<N>message": journald takes N as the syslog priority and stamps the time
 * itself, so ours would only be said twice.
 */
#include "race2mqtt/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Atomic int current_level = LOG_LEVEL_INFO;
static _Atomic bool to_journal;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
/* LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG of syslog.h. */
static const char *const journal_prefixes[] = {"<3>", "<4>", "<6>", "<7>"};

bool log_detect_journal(void)
{
    /* JOURNAL_STREAM is "device:inode" of the stream systemd connected; it is
     * inherited by children whose stderr may be anything, so it only counts
     * when it is our stderr. */
    const char *env = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    bool yes = env && sscanf(env, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
               (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
    atomic_store(&to_journal, yes);
    return yes;
}

void log_set_level(enum log_level level)
{
    atomic_store(&current_level, (int)level);
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load(&current_level);
}

int log_level_parse(const char *name, enum log_level *out)
{
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
        if (name && strcmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if ((int)level > atomic_load(&current_level))
        return;

    char line[1024];
    size_t n;
    if (atomic_load(&to_journal)) {
        n = (size_t)snprintf(line, sizeof line, "%s", journal_prefixes[level]);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %-5s ", ts.tv_nsec / 1000000,
                              level_names[level]);
    }

    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    /* A longer message is cut, never split over two lines. */
    if (m < 0)
        m = 0;
    n += (size_t)m < sizeof line - n - 1 ? (size_t)m : sizeof line - n - 2;
    line[n++] = '\n';

    ssize_t off = 0;
    while (off < (ssize_t)n) {
        ssize_t w = write(STDERR_FILENO, line + off, n - (size_t)off);
        if (w <= 0)
            break;
        off += w;
    }
}
