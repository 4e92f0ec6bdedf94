/*
 * watchdog.h - systemd's service notifications (sd_notify(3)): READY=1 once
 * the gateway is up, STATUS= with a one-line summary, WATCHDOG=1 only while
 * the threads it watches make progress, STOPPING=1 when it stops.
 *
 * Without NOTIFY_SOCKET in the environment (not started by systemd with
 * Type=notify) nothing is sent and no thread is started.
 */
#ifndef RACE2MQTT_WATCHDOG_H
#define RACE2MQTT_WATCHDOG_H

#include <stdbool.h>
#include <stddef.h>

struct watchdog;

struct watchdog_hooks {
    /* Everything watched made progress since the last call, found out
     * within budget_ms. When not, why names what stood still (for the log).
     * The watchdog's thread. */
    bool (*alive)(void *ctx, int budget_ms, char *why, size_t cap);
    /* The broker answered: READY=1 waits for it (for a while, see .c). */
    bool (*ready)(void *ctx);
    /* The STATUS= line, without "STATUS=". */
    void (*status)(void *ctx, char *line, size_t cap);
    void *ctx;
};

/* Starts the notifier when systemd asked for one; *out stays NULL (and 0 is
 * returned) when it did not. hooks' ctx must outlive watchdog_stopping(). */
int watchdog_start(struct watchdog **out, const struct watchdog_hooks *hooks, char *err,
                   size_t errlen);

/* Says STOPPING=1 and ends the thread: no more pings while the gateway
 * drains (TimeoutStopSec= covers that). Safe with NULL and twice. */
void watchdog_stopping(struct watchdog *w);

void watchdog_free(struct watchdog *w);

#endif
