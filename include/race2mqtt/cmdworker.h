/*
 * cmdworker.h - runs decoder commands that arrive over MQTT against the RACE
 * RESULT REST API, one at a time, in the order received, and publishes the
 * answers (SPEC section 3, "Commands").
 *
 * The MQTT side only hands requests over (cmdworker_message() copies and
 * queues); the worker thread owns its curl handle and shares the token with
 * the passings poller. The queue is bounded: requests beyond it are answered
 * with an error, not dropped in silence.
 */
#ifndef RACE2MQTT_CMDWORKER_H
#define RACE2MQTT_CMDWORKER_H

#include <stddef.h>

struct config;
struct mqtt;
struct mqtt_message;
struct rest_auth;
struct cmdworker;

/* Requests executed at most this many ahead; this many more get "queue full". */
#define CMDWORKER_QUEUE 32

/* cfg and auth are borrowed and must outlive the worker. NULL on no memory. */
struct cmdworker *cmdworker_new(const struct config *cfg, struct rest_auth *auth);

/* Starts the worker thread, which publishes through m. */
int cmdworker_start(struct cmdworker *w, struct mqtt *m, char *err, size_t errlen);

/* Answers what is still queued with an error, cancels a request in progress,
 * stops the thread. Safe twice. */
void cmdworker_stop(struct cmdworker *w);
void cmdworker_free(struct cmdworker *w);

/* MQTT hand-offs (paho threads): (re)subscribe after a connect; a message. */
void cmdworker_connected(struct cmdworker *w);
void cmdworker_message(struct cmdworker *w, const struct mqtt_message *msg);

#endif
