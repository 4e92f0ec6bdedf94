/*
 * mqtt.h - the gateway's one MQTT connection (paho MQTTAsync underneath; this
 * is the only file pair that knows paho).
 *
 * The connection has a stable client id and a persistent session, reconnects
 * by itself with backoff (a fresh paho client each time: paho keeps nothing
 * in flight across a reconnect, callers resend), and carries a last will (<base>/bridge/state =
 * "offline", retained). Callbacks run on paho's threads and must only hand off:
 * copy what they need, signal, return.
 */
#ifndef RACE2MQTT_MQTT_H
#define RACE2MQTT_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct mqtt;

/* An incoming message as handed to on_message; every pointer is valid only
 * during the call (copy what you keep). */
struct mqtt_message {
    const char *topic;
    const void *payload;
    size_t len;
    int qos;
    bool retained;              /* set by the broker (MQTT 5: as published) */
    const char *response_topic; /* MQTT 5 Response Topic, NUL-terminated, or NULL */
    const void *correlation;    /* MQTT 5 Correlation Data, or NULL */
    size_t correlation_len;
};

struct mqtt_callbacks {
    /* Connected, first time or after a reconnect. */
    void (*on_connected)(void *ctx);
    /* The connection is gone; cause is a short text (may be empty). */
    void (*on_connection_lost)(void *ctx, const char *cause);
    /* The broker acknowledged the publish tagged tag (QoS 1: PUBACK). */
    void (*on_delivered)(void *ctx, uint64_t tag);
    /* The publish tagged tag will not be acknowledged on this connection. */
    void (*on_failed)(void *ctx, uint64_t tag);
    /* A message arrived on a subscription. */
    void (*on_message)(void *ctx, const struct mqtt_message *msg);
    void *ctx;
};

/*
 * Creates the client from cfg->mqtt (cfg must outlive it). Nothing connects
 * yet. Returns 0, or -1 with a reason in err.
 */
int mqtt_new(struct mqtt **out, const struct config *cfg, const struct mqtt_callbacks *cb,
             char *err, size_t errlen);

/* Starts connecting in the background and returns at once; retries forever. */
int mqtt_start(struct mqtt *m, char *err, size_t errlen);

/*
 * Queues one publish. tag != 0 comes back through on_delivered or on_failed;
 * tag 0 asks for no report. Returns 0, or -1 when the client refused it (not
 * connected, queue full): the caller keeps the message and tries later.
 */
int mqtt_publish(struct mqtt *m, const char *topic, const void *payload, size_t len, int qos,
                 bool retain, uint64_t tag);

/*
 * Like mqtt_publish() without a report, plus MQTT 5 Correlation Data
 * (ignored with 3.1.1). For answers on a request's Response Topic.
 */
int mqtt_publish_reply(struct mqtt *m, const char *topic, const void *payload, size_t len,
                       const void *correlation, size_t correlation_len);

/*
 * Subscribes filter at qos on the current connection. With MQTT 5 the
 * subscription asks for Retain As Published, so that a live retained message
 * is recognisable. Call it after every (re)connect. Returns 0 or -1.
 */
int mqtt_subscribe(struct mqtt *m, const char *filter, int qos);

/* Removes a subscription (e.g. one an earlier run left in the session). */
int mqtt_unsubscribe(struct mqtt *m, const char *filter);

bool mqtt_is_connected(struct mqtt *m);

/*
 * The broker of the current connection, as paho was given it
 * ("tcp://host:1883"), and its place in mqtt.url (1 = the first); NULL and 0
 * while disconnected.
 */
const char *mqtt_server(struct mqtt *m);
int mqtt_server_index(struct mqtt *m);

/* "5" or "3.1.1": the protocol of the current connection, or of the next. */
const char *mqtt_protocol(struct mqtt *m);

/*
 * What the broker said in its CONNACK about shared subscriptions: 1 available,
 * 0 not, -1 not said (MQTT 3.1.1). A claim, not proof: see cmdworker.c.
 */
int mqtt_shared_available(struct mqtt *m);

/* When the current connection was made (Unix ms), 0 while disconnected. */
uint64_t mqtt_connected_since_ms(struct mqtt *m);

/* Reconnects since start (the first connect not counted). */
uint64_t mqtt_reconnects(struct mqtt *m);

/*
 * True while the broker has closed several connections in a row before
 * acknowledging any of our events or passings (see mqtt.c); false again at
 * the first acknowledgement.
 */
bool mqtt_stalled(struct mqtt *m);

/* The bridge state topic, <mqtt.base_topic>/bridge/state. */
const char *mqtt_state_topic(const struct mqtt *m);

/*
 * Clean stop: publishes "offline" (retained) and waits up to timeout_ms for the
 * broker to take it, then disconnects. Safe when never connected, and twice.
 */
void mqtt_stop(struct mqtt *m, int timeout_ms);

/* Frees the client; stops it first if needed. NULL is fine. */
void mqtt_free(struct mqtt *m);

#endif
