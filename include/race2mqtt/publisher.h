/*
 * publisher.h - drains the journal to the broker and keeps retained state
 * published.
 *
 * One thread reads durable journal records in seq order and publishes them at
 * the configured QoS, at most mqtt.max_inflight at a time. A record is
 * forgotten (acked watermark, segment release) only when it and every record
 * before it were acknowledged. After every (re)connect it publishes "online",
 * the bridge info and all retained state, then resends everything not yet
 * acknowledged.
 */
#ifndef RACE2MQTT_PUBLISHER_H
#define RACE2MQTT_PUBLISHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>


struct config;
struct journal;
struct ingest;
struct mqtt;
struct publisher;

/* All arguments are borrowed and must outlive the publisher. NULL on no memory. */
struct publisher *publisher_new(const struct config *cfg, struct journal *j, struct ingest *in);

/* MQTT hand-offs (paho threads; they only record and signal). Tags are the
 * journal seqs this publisher published with. */
void publisher_connected(struct publisher *p);
void publisher_connection_lost(struct publisher *p);
void publisher_delivered(struct publisher *p, uint64_t tag);
void publisher_failed(struct publisher *p, uint64_t tag);
/* The journal could not write seqs first..last (on_commit !ok): any of them
 * read ahead are dropped, not resent. Any thread; only hands off. */
void publisher_commit_failed(struct publisher *p, uint64_t first, uint64_t last);

/* Starts the thread that publishes through m (borrowed). */
int publisher_start(struct publisher *p, struct mqtt *m, char *err, size_t errlen);

/* New durable records may be readable (journal commit). Any thread, cheap. */
void publisher_wake(struct publisher *p);

/*
 * Waits up to timeout_ms until every durable record is acknowledged, then
 * stops the thread and saves the state snapshot. Safe twice.
 */
void publisher_stop(struct publisher *p, int timeout_ms);
void publisher_free(struct publisher *p);

/* Publish the bridge topics and all retained state again, as after a
 * reconnect but without resending events (Home Assistant restarted). Any
 * thread. */
void publisher_republish(struct publisher *p);

/* Highest seq such that it and all before it are acknowledged. */
uint64_t publisher_acked(struct publisher *p);

/* How often the thread went round its loop (at least every 100 ms while it
 * lives): the watchdog pings only while this moves. Any thread. */
uint64_t publisher_rounds(struct publisher *p);

#endif
