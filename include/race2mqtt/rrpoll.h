/*
 * rrpoll.h - polls the RACE RESULT devices REST API and publishes device status
 * and every passing, resuming exactly where it left off.
 *
 * One thread: every raceresult.poll_interval_ms it reads the device list,
 * publishes <base>/<device>/status and /availability (retained, on change and
 * after every reconnect), and asks for detections where a device's counters
 * moved (or at least every raceresult.recheck_s). Passings go out at QoS 1;
 * a device's cursor moves past a passing only once the broker acknowledged it
 * and every passing before it, and is then stored on disk.
 */
#ifndef RACE2MQTT_RRPOLL_H
#define RACE2MQTT_RRPOLL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct mqtt;
struct rest_auth;
struct rrpoll;

/* Publish tags of the poller carry this bit; the rest belong to the journal. */
#define RRPOLL_TAG_BIT (UINT64_C(1) << 63)

struct rr_device;

/* Who else wants to know what the poller sees (discovery, the page). Called
 * on the poller's thread: copy and return. Any member may be NULL. */
struct rrpoll_observer {
    void (*device)(void *ctx, const struct rr_device *d); /* each device of a list */
    void (*listed)(void *ctx);                            /* after a complete list */
    /* The status payload just published for a device (its topic level). */
    void (*status)(void *ctx, const char *level, const char *payload, size_t len);
    /* The last passing of a page, once the broker acknowledged the page. */
    void (*passing)(void *ctx, const char *level, const char *payload, size_t len);
    /* The device list request: ok, or failed with a one-line reason. */
    void (*api)(void *ctx, bool ok, const char *error);
    void *ctx;
};

/* cfg and auth are borrowed and must outlive the poller; obs (may be NULL)
 * is copied. NULL on no memory. */
struct rrpoll *rrpoll_new(const struct config *cfg, struct rest_auth *auth,
                          const struct rrpoll_observer *obs);

/* Creates <store.dir>/raceresult and starts the thread publishing through m. */
int rrpoll_start(struct rrpoll *p, struct mqtt *m, char *err, size_t errlen);

/* Stops the thread (an API request in progress is cancelled). Safe twice. */
void rrpoll_stop(struct rrpoll *p);
void rrpoll_free(struct rrpoll *p);

/* MQTT hand-offs (paho threads; they only record and signal). */
void rrpoll_connected(struct rrpoll *p);
void rrpoll_connection_lost(struct rrpoll *p);
void rrpoll_delivered(struct rrpoll *p, uint64_t tag);
void rrpoll_failed(struct rrpoll *p, uint64_t tag);

/* Publish every device's status and availability again (Home Assistant
 * restarted). Any thread. */
void rrpoll_republish(struct rrpoll *p);

#endif
