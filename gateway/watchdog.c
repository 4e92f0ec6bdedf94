/*
 * watchdog.c - READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 for systemd.
 *
 * One thread, started only when NOTIFY_SOCKET is set. It says READY=1 once
 * the broker has answered, or after READY_WAIT_MS without it: the journal
 * keeps every event while the broker is away, so a gateway whose broker is
 * late (a trackside box booting before the club's server) is up and useful,
 * and systemd must not count its start as failed.
 *
 * With WatchdogSec= (WATCHDOG_USEC) it checks the gateway three times per
 * watchdog period and pings only when the check passes: the publisher went
 * round its loop since the last check and the HTTP server answered its own
 * /healthz. One missed check is not a restart (systemd waits the whole
 * period); a thread that stays stuck is.
 */
#include "race2mqtt/watchdog.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "race2mqtt/clock.h"
#include "race2mqtt/log.h"

#define READY_WAIT_MS 10000
#define READY_POLL_MS 100
#define STATUS_PERIOD_MS 5000
#define CHECK_MIN_MS 50
#define CHECK_MAX_MS 10000
#define PROBE_MAX_MS 2000
#define STATUS_MAX 256

struct watchdog {
    struct watchdog_hooks hooks;
    uint64_t check_ms; /* 0: no watchdog, only READY and STATUS */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop; /* under lock */
    bool running;
};

/* Sleeps until deadline (CLOCK_MONOTONIC ms) or the stop; true on stop. */
static bool sleep_until(struct watchdog *w, uint64_t deadline)
{
    pthread_mutex_lock(&w->lock);
    while (!w->stop && mono_ms() < deadline) {
        struct timespec until = realtime_in_us((deadline - mono_ms()) * 1000);
        pthread_cond_timedwait(&w->cond, &w->lock, &until);
    }
    bool stop = w->stop;
    pthread_mutex_unlock(&w->lock);
    return stop;
}

static void notify(const char *what)
{
    int rc = sd_notify(0, what);
    if (rc < 0)
        log_debug("systemd: cannot notify (%s)", strerror(-rc));
}

static void *run(void *arg)
{
    struct watchdog *w = arg;
    char status[STATUS_MAX] = "", line[STATUS_MAX + 32], why[256];
    uint64_t start = mono_ms();
    uint64_t period = w->check_ms ? w->check_ms : STATUS_PERIOD_MS;
    uint64_t next = start + period; /* a check compares with the one before */
    int probe_ms = (int)(period / 2 < PROBE_MAX_MS ? period / 2 : PROBE_MAX_MS);
    bool ready = false;
    unsigned missed = 0;

    for (;;) {
        uint64_t wake =
            ready || next < mono_ms() + READY_POLL_MS ? next : mono_ms() + READY_POLL_MS;
        if (sleep_until(w, wake))
            break;
        uint64_t now = mono_ms();
        if (!ready && (w->hooks.ready(w->hooks.ctx) || now - start >= READY_WAIT_MS)) {
            w->hooks.status(w->hooks.ctx, status, sizeof status);
            snprintf(line, sizeof line, "READY=1\nSTATUS=%s", status);
            notify(line);
            log_info("systemd: ready (%s)", status);
            ready = true;
        }
        if (now < next)
            continue;
        next += period;
        if (next <= now)
            next = now + period; /* a long stall: no burst of catch-up checks */

        if (w->check_ms) {
            if (w->hooks.alive(w->hooks.ctx, probe_ms, why, sizeof why)) {
                notify("WATCHDOG=1");
                if (missed)
                    log_warn("watchdog: alive again after %u missed checks", missed);
                missed = 0;
            } else if (missed++ == 0) {
                log_error("watchdog: %s; no WATCHDOG=1 until it moves again, and systemd "
                          "restarts the gateway when WatchdogSec= passes without one",
                          why);
            }
        }
        if (ready) {
            char fresh[STATUS_MAX];
            w->hooks.status(w->hooks.ctx, fresh, sizeof fresh);
            if (strcmp(fresh, status) != 0) {
                memcpy(status, fresh, sizeof status);
                snprintf(line, sizeof line, "STATUS=%s", status);
                notify(line);
            }
        }
    }
    return NULL;
}

int watchdog_start(struct watchdog **out, const struct watchdog_hooks *hooks, char *err,
                   size_t errlen)
{
    *out = NULL;
    const char *sock = getenv("NOTIFY_SOCKET");
    if (!sock || !sock[0])
        return 0;
    struct watchdog *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->hooks = *hooks;
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0) {
        uint64_t ms = usec / 3000;
        w->check_ms = ms < CHECK_MIN_MS ? CHECK_MIN_MS : ms > CHECK_MAX_MS ? CHECK_MAX_MS : ms;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    if (pthread_create(&w->thread, NULL, run, w) != 0) {
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w);
        snprintf(err, errlen, "systemd: cannot start the notifier thread");
        return -1;
    }
    w->running = true;
    if (w->check_ms)
        log_info("systemd: watchdog every %llu ms, checked every %llu ms",
                 (unsigned long long)(usec / 1000), (unsigned long long)w->check_ms);
    *out = w;
    return 0;
}

void watchdog_stopping(struct watchdog *w)
{
    if (!w || !w->running)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    w->running = false;
    notify("STOPPING=1\nSTATUS=stopping: flushing to the broker");
}

void watchdog_free(struct watchdog *w)
{
    if (!w)
        return;
    watchdog_stopping(w);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
