/*
 * metrics.h - process-wide counters for GET /metrics (Prometheus text format).
 *
 * Counters are lock-free atomics so that any thread can count without
 * contention; gauges that belong to a module (queue depth, connection state)
 * are passed in when rendering instead of being copied here.
 */
#ifndef RACE2MQTT_METRICS_H
#define RACE2MQTT_METRICS_H

#include <stddef.h>
#include <stdint.h>

enum metrics_counter {
    METRIC_EVENTS_REJECTED, /* SmartRace bodies answered 4xx */
    METRIC_EVENTS_REFUSED,  /* answered 503: journal full or failing */
    METRIC_JOURNAL_COMMITS,
    METRIC_MQTT_PUBLISH_FAILED,
    METRIC_STATE_PUBLISHED,
    METRIC_RR_PASSINGS,            /* RACE RESULT passings acknowledged by the broker */
    METRIC_RR_REQUESTS,            /* REST API requests answered (any HTTP status) */
    METRIC_RR_ERRORS,              /* REST requests failed: network, timeout, non-2xx, bad JSON */
    METRIC_MQTT_STALLS,            /* connections in a row closed before any acknowledgement */
    METRIC_MQTT_CLIENTS_ABANDONED, /* paho clients left alone after a write error */
    METRIC_RR_COMMANDS_OK,         /* decoder commands the API answered 2xx */
    METRIC_RR_COMMANDS_ERROR,      /* answered with an error: refused, API failed, ... */
    METRIC_RR_COMMANDS_IGNORED,    /* retained commands, never run */
    METRIC_COUNTER_COUNT
};

/* HTTP status classes counted for the metrics page. */
void metrics_http_status(int status);
void metrics_inc(enum metrics_counter c);
uint64_t metrics_get(enum metrics_counter c);

/*
 * Events by family: the topic level after the smartrace base ("lap", "event",
 * "other", ...). in = journaled, out = acknowledged by the broker.
 */
void metrics_event_in(const char *family, size_t len);
void metrics_event_out(const char *family, size_t len);

/* Publish latency (journal commit to PUBACK), in microseconds. */
void metrics_publish_latency_us(uint64_t us);

struct metrics_gauges {
    int broker_connected;
    uint64_t mqtt_reconnects;
    int mqtt_stalled;     /* 1 while the broker acknowledges nothing across reconnects */
    uint64_t queue_depth; /* journaled, not yet acknowledged */
    uint64_t journal_bytes;
    uint64_t journal_max_bytes;
    uint64_t last_seq;
    int http_streams;            /* live page streams open (GET /events) */
    int broker_server;           /* 1 + place in mqtt.url of the connection, 0 while down */
    const char *broker_url;      /* that URL, NULL while down */
    const char *broker_protocol; /* "5" or "3.1.1" */
};

/* Renders everything as Prometheus text; caller frees. NULL on no memory. */
char *metrics_render(const struct metrics_gauges *g, size_t *len);

#endif
