/*
 * fsync_probe.c - what one durable write costs on this disk, alone (a
 * program, not a test). The gateway makes every accepted event durable
 * before answering, so at a race's rate (events far apart, one fdatasync
 * each) this is the floor under its CPU per event and its answer latency.
 * bench/compare.sh prints it next to the gateway's numbers.
 *
 *   race2mqtt-fsync-probe [--dir DIR] [--n N] [--rate R] [--size BYTES]
 *
 * Four rounds of N operations, paced at R per second. Writes are of BYTES
 * each, followed by fdatasync, in a fresh file in DIR (default: the current
 * directory, i.e. the disk the journal would use):
 *   append    the file grows with every write (inode size changes each time)
 *   prealloc  the file was zero-filled first; writes overwrite in place
 *             (what the journal does: JOURNAL_PREALLOC_BYTES)
 *   sleep     no write at all: the cost of the pacing wake-up alone
 *   handoff   no write: the woken thread wakes a second one through a
 *             condition variable and waits for its answer, i.e. two thread
 *             hand-offs, what every step between the gateway's threads costs
 * and prints CPU per operation (user + system of this process) and latency
 * percentiles, plus one "RESULT key=value" line.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct round {
    const char *name;
    double cpu_us; /* per operation */
    double p50_ms, p99_ms, max_ms;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A regular file takes a write this small whole or fails. */
static int write_at(int fd, const char *buf, size_t len, off_t off)
{
    return pwrite(fd, buf, len, off) == (ssize_t)len ? 0 : -1;
}

/* The other side of the hand-off round: answers every ping. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long ping, pong;
    bool stop;
} hand = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, false};

static void *echo_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&hand.mu);
    for (;;) {
        while (hand.ping == hand.pong && !hand.stop)
            pthread_cond_wait(&hand.cv, &hand.mu);
        if (hand.stop)
            break;
        hand.pong = hand.ping;
        pthread_cond_broadcast(&hand.cv);
    }
    pthread_mutex_unlock(&hand.mu);
    return NULL;
}

static void handoff(void)
{
    pthread_mutex_lock(&hand.mu);
    long want = ++hand.ping;
    pthread_cond_broadcast(&hand.cv);
    while (hand.pong != want)
        pthread_cond_wait(&hand.cv, &hand.mu);
    pthread_mutex_unlock(&hand.mu);
}

/* mode: 0 append, 1 prealloc, 2 sleep only, 3 hand-off. Returns 0 or -1
 * (message printed). */
static int run_round(const char *dir, int mode, long n, double rate, size_t size, struct round *out,
                     double *lat)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/race2mqtt-fsync-probe.%ld.tmp", dir, (long)getpid());
    int fd = -1;
    char *buf = calloc(1, size);
    if (!buf)
        return -1;
    if (mode < 2) {
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            fprintf(stderr, "fsync-probe: %s: %s\n", path, strerror(errno));
            free(buf);
            return -1;
        }
        if (mode == 1) {
            for (long i = 0; i < n; i++) {
                if (write_at(fd, buf, size, (off_t)i * (off_t)size) != 0)
                    goto io;
            }
            if (fsync(fd) != 0)
                goto io;
        }
    }
    memset(buf, 'x', size);
    double t0 = now_s(), c0 = cpu_s();
    for (long i = 0; i < n; i++) {
        double due = t0 + (double)i / rate, t = now_s();
        if (due > t) {
            double d = due - t;
            struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
            nanosleep(&ts, NULL);
        }
        double a = now_s();
        if (mode == 3)
            handoff();
        else if (mode < 2 &&
                 (write_at(fd, buf, size, (off_t)i * (off_t)size) != 0 || fdatasync(fd) != 0))
            goto io;
        lat[i] = (now_s() - a) * 1e3;
    }
    out->cpu_us = (cpu_s() - c0) / (double)n * 1e6;
    qsort(lat, (size_t)n, sizeof *lat, cmp_double);
    out->p50_ms = lat[n / 2];
    out->p99_ms = lat[(n * 99) / 100];
    out->max_ms = lat[n - 1];
    if (fd >= 0) {
        close(fd);
        unlink(path);
    }
    free(buf);
    return 0;
io:
    fprintf(stderr, "fsync-probe: %s: %s\n", path, strerror(errno));
    close(fd);
    unlink(path);
    free(buf);
    return -1;
}

int main(int argc, char **argv)
{
    const char *dir = ".";
    long n = 2000;
    double rate = 200;
    long size = 1600;
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},  {"n", required_argument, NULL, 'n'},
        {"rate", required_argument, NULL, 'r'}, {"size", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "d:n:r:s:h", longopts, NULL)) != -1) {
        switch (o) {
        case 'd':
            dir = optarg;
            break;
        case 'n':
            n = strtol(optarg, NULL, 10);
            break;
        case 'r':
            rate = strtod(optarg, NULL);
            break;
        case 's':
            size = strtol(optarg, NULL, 10);
            break;
        default:
            fprintf(o == 'h' ? stdout : stderr,
                    "Usage: race2mqtt-fsync-probe [--dir DIR] [--n N] [--rate R] [--size BYTES]\n");
            return o == 'h' ? 0 : 2;
        }
    }
    if (n < 1 || n > 1000000 || rate <= 0 || rate > 100000 || size < 1 || size > (1 << 20)) {
        fprintf(stderr, "fsync-probe: n 1..1000000, rate 0..100000, size 1..1048576\n");
        return 2;
    }
    double *lat = calloc((size_t)n, sizeof *lat);
    if (!lat)
        return 1;
    struct round r[4] = {
        {.name = "append"}, {.name = "prealloc"}, {.name = "sleep"}, {.name = "handoff"}};
    pthread_t echo;
    if (pthread_create(&echo, NULL, echo_main, NULL) != 0)
        return 1;
    for (int m = 0; m < 4; m++) {
        if (run_round(dir, m, n, rate, (size_t)size, &r[m], lat) != 0)
            return 1;
    }
    pthread_mutex_lock(&hand.mu);
    hand.stop = true;
    pthread_cond_broadcast(&hand.cv);
    pthread_mutex_unlock(&hand.mu);
    pthread_join(echo, NULL);
    free(lat);
    printf("=== fdatasync alone: %ld writes of %ld bytes at %.0f/s in %s ===\n", n, size, rate,
           dir);
    for (int m = 0; m < 4; m++)
        printf("%-9s CPU %7.1f us/op   p50 %.3f  p99 %.3f  max %.3f ms\n", r[m].name, r[m].cpu_us,
               r[m].p50_ms, r[m].p99_ms, r[m].max_ms);
    double hop = (r[3].cpu_us - r[2].cpu_us) / 2;
    printf("one thread hand-off: %.1f us of CPU\n", hop);
    printf("RESULT fsync_append_cpu_us=%.1f fsync_prealloc_cpu_us=%.1f sleep_cpu_us=%.1f "
           "handoff_cpu_us=%.1f fsync_append_p50_ms=%.3f fsync_append_p99_ms=%.3f "
           "fsync_prealloc_p50_ms=%.3f fsync_prealloc_p99_ms=%.3f\n",
           r[0].cpu_us, r[1].cpu_us, r[2].cpu_us, hop, r[0].p50_ms, r[0].p99_ms, r[1].p50_ms,
           r[1].p99_ms);
    return 0;
}
