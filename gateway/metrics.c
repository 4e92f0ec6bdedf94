/*
 * metrics.c - counters behind GET /metrics, rendered in the Prometheus text
 * exposition format.
 *
 * Label sets are fixed tables so that no input can grow them: event families
 * are the topic levels of SPEC section 2 plus "other", HTTP statuses the ones
 * the server answers plus "other".
 */
#include "race2mqtt/metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const families[] = {
    "lap",  "event", "weather", "vsc",   "penalty", "damage", "fuel",
    "tire", "pit",   "track",   "reset", "remove",  "esc",    "other",
};
#define N_FAMILIES (sizeof families / sizeof families[0])

static const int statuses[] = {200, 204, 400, 401, 404, 405, 413, 500, 503};
#define N_STATUSES (sizeof statuses / sizeof statuses[0])

/* Upper bounds of the publish latency histogram, in microseconds. */
static const uint64_t latency_bounds_us[] = {250,   500,   1000,   2500,   5000,
                                             10000, 50000, 250000, 1000000};
#define N_BOUNDS (sizeof latency_bounds_us / sizeof latency_bounds_us[0])

static _Atomic uint64_t counters[METRIC_COUNTER_COUNT];
static _Atomic uint64_t events_in[N_FAMILIES];
static _Atomic uint64_t events_out[N_FAMILIES];
static _Atomic uint64_t http_by_status[N_STATUSES + 1];
static _Atomic uint64_t latency_buckets[N_BOUNDS + 1];
static _Atomic uint64_t latency_sum_us;

static size_t family_index(const char *family, size_t len)
{
    for (size_t i = 0; i + 1 < N_FAMILIES; i++) {
        if (strlen(families[i]) == len && memcmp(families[i], family, len) == 0)
            return i;
    }
    return N_FAMILIES - 1;
}

uint64_t metrics_get(enum metrics_counter c)
{
    return atomic_load_explicit(&counters[c], memory_order_relaxed);
}

void metrics_inc(enum metrics_counter c)
{
    atomic_fetch_add_explicit(&counters[c], 1, memory_order_relaxed);
}

void metrics_http_status(int status)
{
    size_t i = 0;
    while (i < N_STATUSES && statuses[i] != status)
        i++;
    atomic_fetch_add_explicit(&http_by_status[i], 1, memory_order_relaxed);
}

void metrics_event_in(const char *family, size_t len)
{
    atomic_fetch_add_explicit(&events_in[family_index(family, len)], 1, memory_order_relaxed);
}

void metrics_event_out(const char *family, size_t len)
{
    atomic_fetch_add_explicit(&events_out[family_index(family, len)], 1, memory_order_relaxed);
}

void metrics_publish_latency_us(uint64_t us)
{
    size_t i = 0;
    while (i < N_BOUNDS && us > latency_bounds_us[i])
        i++;
    atomic_fetch_add_explicit(&latency_buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&latency_sum_us, us, memory_order_relaxed);
}

/* A growable text buffer that remembers running out of memory. */
struct text {
    char *buf;
    size_t len, cap;
    bool oom;
};

__attribute__((format(printf, 2, 3))) static void put(struct text *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *nb = realloc(t->buf, cap);
        if (!nb) {
            t->oom = true;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
}

static uint64_t get(_Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

char *metrics_render(const struct metrics_gauges *g, size_t *len)
{
    struct text t = {.cap = 4096};
    t.buf = malloc(t.cap);
    if (!t.buf)
        return NULL;
    t.buf[0] = '\0';

    put(&t, "# HELP race2mqtt_events_in_total SmartRace events accepted and journaled.\n"
            "# TYPE race2mqtt_events_in_total counter\n");
    for (size_t i = 0; i < N_FAMILIES; i++)
        put(&t, "race2mqtt_events_in_total{family=\"%s\"} %llu\n", families[i],
            (unsigned long long)get(&events_in[i]));
    put(&t, "# HELP race2mqtt_events_out_total SmartRace events acknowledged by the broker.\n"
            "# TYPE race2mqtt_events_out_total counter\n");
    for (size_t i = 0; i < N_FAMILIES; i++)
        put(&t, "race2mqtt_events_out_total{family=\"%s\"} %llu\n", families[i],
            (unsigned long long)get(&events_out[i]));

    put(&t, "# HELP race2mqtt_http_responses_total HTTP responses by status.\n"
            "# TYPE race2mqtt_http_responses_total counter\n");
    for (size_t i = 0; i <= N_STATUSES; i++) {
        char code[8] = "other";
        if (i < N_STATUSES)
            snprintf(code, sizeof code, "%d", statuses[i]);
        put(&t, "race2mqtt_http_responses_total{status=\"%s\"} %llu\n", code,
            (unsigned long long)get(&http_by_status[i]));
    }

    put(&t,
        "# HELP race2mqtt_events_rejected_total Event bodies refused as malformed (4xx).\n"
        "# TYPE race2mqtt_events_rejected_total counter\n"
        "race2mqtt_events_rejected_total %llu\n"
        "# HELP race2mqtt_events_refused_total Events refused because the journal was full or "
        "failing (503).\n"
        "# TYPE race2mqtt_events_refused_total counter\n"
        "race2mqtt_events_refused_total %llu\n"
        "# HELP race2mqtt_journal_commits_total Group commits (write + fdatasync).\n"
        "# TYPE race2mqtt_journal_commits_total counter\n"
        "race2mqtt_journal_commits_total %llu\n"
        "# HELP race2mqtt_mqtt_publish_failed_total Publishes paho reported as failed (resent).\n"
        "# TYPE race2mqtt_mqtt_publish_failed_total counter\n"
        "race2mqtt_mqtt_publish_failed_total %llu\n"
        "# HELP race2mqtt_state_published_total Retained state messages published.\n"
        "# TYPE race2mqtt_state_published_total counter\n"
        "race2mqtt_state_published_total %llu\n"
        "# HELP race2mqtt_raceresult_passings_total RACE RESULT passings acknowledged by the "
        "broker.\n"
        "# TYPE race2mqtt_raceresult_passings_total counter\n"
        "race2mqtt_raceresult_passings_total %llu\n"
        "# HELP race2mqtt_raceresult_requests_total REST API requests answered.\n"
        "# TYPE race2mqtt_raceresult_requests_total counter\n"
        "race2mqtt_raceresult_requests_total %llu\n"
        "# HELP race2mqtt_raceresult_errors_total REST API requests that failed (network, "
        "timeout, HTTP error, invalid answer).\n"
        "# TYPE race2mqtt_raceresult_errors_total counter\n"
        "race2mqtt_raceresult_errors_total %llu\n"
        "# HELP race2mqtt_mqtt_stalls_total Times the broker closed several connections in a "
        "row before acknowledging anything (then a clean session is tried).\n"
        "# TYPE race2mqtt_mqtt_stalls_total counter\n"
        "race2mqtt_mqtt_stalls_total %llu\n"
        "# HELP race2mqtt_mqtt_clients_abandoned_total paho clients left unused after a "
        "publish failed on a broken socket (their in-flight state is unsafe).\n"
        "# TYPE race2mqtt_mqtt_clients_abandoned_total counter\n"
        "race2mqtt_mqtt_clients_abandoned_total %llu\n"
        "# HELP race2mqtt_raceresult_commands_total Decoder commands by outcome: ok (the API "
        "answered 2xx), error (answered with an error), ignored (retained, never run).\n"
        "# TYPE race2mqtt_raceresult_commands_total counter\n"
        "race2mqtt_raceresult_commands_total{result=\"ok\"} %llu\n"
        "race2mqtt_raceresult_commands_total{result=\"error\"} %llu\n"
        "race2mqtt_raceresult_commands_total{result=\"ignored\"} %llu\n",
        (unsigned long long)get(&counters[METRIC_EVENTS_REJECTED]),
        (unsigned long long)get(&counters[METRIC_EVENTS_REFUSED]),
        (unsigned long long)get(&counters[METRIC_JOURNAL_COMMITS]),
        (unsigned long long)get(&counters[METRIC_MQTT_PUBLISH_FAILED]),
        (unsigned long long)get(&counters[METRIC_STATE_PUBLISHED]),
        (unsigned long long)get(&counters[METRIC_RR_PASSINGS]),
        (unsigned long long)get(&counters[METRIC_RR_REQUESTS]),
        (unsigned long long)get(&counters[METRIC_RR_ERRORS]),
        (unsigned long long)get(&counters[METRIC_MQTT_STALLS]),
        (unsigned long long)get(&counters[METRIC_MQTT_CLIENTS_ABANDONED]),
        (unsigned long long)get(&counters[METRIC_RR_COMMANDS_OK]),
        (unsigned long long)get(&counters[METRIC_RR_COMMANDS_ERROR]),
        (unsigned long long)get(&counters[METRIC_RR_COMMANDS_IGNORED]));

    put(&t, "# HELP race2mqtt_publish_latency_seconds Journal commit to broker acknowledgement.\n"
            "# TYPE race2mqtt_publish_latency_seconds histogram\n");
    uint64_t cumulative = 0;
    for (size_t i = 0; i < N_BOUNDS; i++) {
        cumulative += get(&latency_buckets[i]);
        put(&t, "race2mqtt_publish_latency_seconds_bucket{le=\"%g\"} %llu\n",
            (double)latency_bounds_us[i] / 1e6, (unsigned long long)cumulative);
    }
    cumulative += get(&latency_buckets[N_BOUNDS]);
    put(&t,
        "race2mqtt_publish_latency_seconds_bucket{le=\"+Inf\"} %llu\n"
        "race2mqtt_publish_latency_seconds_sum %.6f\n"
        "race2mqtt_publish_latency_seconds_count %llu\n",
        (unsigned long long)cumulative, (double)get(&latency_sum_us) / 1e6,
        (unsigned long long)cumulative);

    put(&t,
        "# HELP race2mqtt_broker_connected 1 while connected to the MQTT broker.\n"
        "# TYPE race2mqtt_broker_connected gauge\n"
        "race2mqtt_broker_connected %d\n"
        "# HELP race2mqtt_mqtt_reconnects_total Reconnects to the broker since start.\n"
        "# TYPE race2mqtt_mqtt_reconnects_total counter\n"
        "race2mqtt_mqtt_reconnects_total %llu\n"
        "# HELP race2mqtt_mqtt_stalled 1 while the broker acknowledges nothing across "
        "reconnects.\n"
        "# TYPE race2mqtt_mqtt_stalled gauge\n"
        "race2mqtt_mqtt_stalled %d\n"
        "# HELP race2mqtt_queue_depth Events journaled but not yet acknowledged by the broker.\n"
        "# TYPE race2mqtt_queue_depth gauge\n"
        "race2mqtt_queue_depth %llu\n"
        "# HELP race2mqtt_journal_bytes Bytes held by the journal.\n"
        "# TYPE race2mqtt_journal_bytes gauge\n"
        "race2mqtt_journal_bytes %llu\n"
        "# HELP race2mqtt_journal_max_bytes Journal bound; above it events get 503.\n"
        "# TYPE race2mqtt_journal_max_bytes gauge\n"
        "race2mqtt_journal_max_bytes %llu\n"
        "# HELP race2mqtt_last_seq Sequence number of the last journaled event.\n"
        "# TYPE race2mqtt_last_seq gauge\n"
        "race2mqtt_last_seq %llu\n"
        "# HELP race2mqtt_http_streams Live page streams (GET /events) open now.\n"
        "# TYPE race2mqtt_http_streams gauge\n"
        "race2mqtt_http_streams %d\n",
        g->broker_connected, (unsigned long long)g->mqtt_reconnects, g->mqtt_stalled,
        (unsigned long long)g->queue_depth, (unsigned long long)g->journal_bytes,
        (unsigned long long)g->journal_max_bytes, (unsigned long long)g->last_seq, g->http_streams);

    put(&t,
        "# HELP race2mqtt_broker_server Position in mqtt.url of the broker connected to "
        "(1 = the first); 0 while disconnected.\n"
        "# TYPE race2mqtt_broker_server gauge\n"
        "race2mqtt_broker_server %d\n"
        "# HELP race2mqtt_broker_info The broker connection in use: its URL and MQTT "
        "protocol (absent while disconnected).\n"
        "# TYPE race2mqtt_broker_info gauge\n",
        g->broker_server);
    if (g->broker_url && g->broker_protocol) {
        put(&t, "race2mqtt_broker_info{url=\"");
        /* A label value escapes \\, " and newlines; the URL comes from the
         * configuration, which refuses user info in it. */
        for (const char *c = g->broker_url; *c; c++) {
            if (*c == '"' || *c == '\\')
                put(&t, "\\%c", *c);
            else if (*c == '\n')
                put(&t, "\\n");
            else
                put(&t, "%c", *c);
        }
        put(&t, "\",protocol=\"%s\"} 1\n", g->broker_protocol);
    }

    if (t.oom) {
        free(t.buf);
        return NULL;
    }
    *len = t.len;
    return t.buf;
}
