/*
 * http.h - the SmartRace webhook server (libmicrohttpd; the only file pair that
 * knows it). SPEC section 5: POST on any path is an event, OPTIONS is a CORS
 * preflight; GET serves the live page (/, /api/state, /api/events, /events)
 * and /healthz, /readyz and /metrics.
 *
 * An event is answered only after the journal made it durable: the request's
 * connection is suspended until http_committed() covers its seq, so a worker
 * thread never sleeps on fsync.
 */
#ifndef RACE2MQTT_HTTP_H
#define RACE2MQTT_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct board;
struct config;
struct ingest;
struct json_object;
struct http;

struct http_hooks {
    bool (*ready)(void *ctx);                 /* broker connected */
    char *(*metrics)(void *ctx, size_t *len); /* Prometheus text, caller frees */
    /* GET /api/state without "now_ms" (caller puts it); any HTTP worker and
     * the live stream thread. */
    struct json_object *(*state)(void *ctx);
    void *ctx;
};

/* Starts listening. cfg, in, board and hooks' ctx must outlive the server.
 * The board learns refusals, preflights and senders from here. */
int http_start(struct http **out, const struct config *cfg, struct ingest *in, struct board *board,
               const struct http_hooks *hooks, char *err, size_t errlen);

/* The journal committed (ok) or dropped (!ok) seqs first..last. Any thread. */
void http_committed(struct http *h, uint64_t first, uint64_t last, bool ok);

/* Live page streams open now; 0 for NULL. Any thread. */
int http_streams(struct http *h);

/* The port actually bound (useful with port 0). */
int http_port(const struct http *h);

/*
 * Asks the server's own GET /healthz over a fresh connection to its bind
 * address (loopback for 0.0.0.0 and ::). 0 when 200 came back within
 * timeout_ms, -1 otherwise: a server whose threads hang answers nothing.
 * For the watchdog thread; blocks up to timeout_ms.
 */
int http_probe(const struct http *h, int timeout_ms);

/*
 * Stops accepting, lets requests waiting for the journal finish (bounded by
 * timeout_ms; the rest get 503) and closes every connection. http_committed()
 * stays safe to call until http_free(). Safe twice and with NULL.
 */
void http_stop(struct http *h, int timeout_ms);

/* Frees a stopped server (stops it first if needed). NULL is fine. */
void http_free(struct http *h);

#endif
