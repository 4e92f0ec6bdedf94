/*
 * http.c - the SmartRace webhook server on libmicrohttpd.
 *
 * Routing (SPEC section 5): OPTIONS anywhere is a CORS preflight; GET serves
 * the live page (/, /api/state, /api/events, /events: behind http.token when
 * one is set) and /healthz, /readyz, /metrics (never behind it: monitoring
 * must not need a secret); POST anywhere else is a SmartRace event; every
 * other method is 405. Every answer carries Access-Control-Allow-Origin
 * because SmartRace runs in a webview that enforces CORS on the answer too.
 *
 * An event is answered 200 only once the journal has it on disk. The handler
 * journals it, suspends the connection and returns; the journal's flusher
 * calls http_committed(), which resumes every connection whose seq it covers,
 * and libmicrohttpd then calls the handler again to send the answer. Workers
 * therefore never sleep on fsync, and many requests share one fsync.
 *
 * Everything refused on the POST path, and every preflight, is told to the
 * board with the sender's address, so the page can answer "does the tablet
 * reach us, is CORS in the way, is the token wrong?".
 *
 * Bounds: connection limit and per-connection timeout (slow and idle clients),
 * body limit checked against Content-Length before reading and again while
 * reading (chunked bodies), libmicrohttpd's own per-connection memory limit
 * for headers.
 */
#include "race2mqtt/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "race2mqtt/board.h"
#include "race2mqtt/clock.h"
#include "race2mqtt/config.h"
#include "race2mqtt/fault.h"
#include "race2mqtt/ingest.h"
#include "race2mqtt/log.h"
#include "race2mqtt/metrics.h"
#include "race2mqtt/page.h"
#include "race2mqtt/sse.h"

#define DETAIL_MAX 256
#define FAILED_RANGES 16
#define ALLOWED_METHODS "POST, GET, OPTIONS"
#define DEFAULT_ALLOW_HEADERS "Content-Type, Authorization"
#define PREFLIGHT_MAX_AGE "86400"
#define ADDR_MAX 64
#define JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

/* One POSTed event from first byte to answer. */
struct request {
    char *body;
    size_t len, cap;
    bool too_large;
    bool submitted;
    int status; /* 200 or 503 once answered */
    uint64_t seq;
    struct MHD_Connection *conn;
    struct request *next; /* in http->waiting while suspended */
};

struct http {
    const struct config *cfg;
    struct ingest *in;
    struct board *board;
    struct sse *sse; /* NULL when http.max_streams is 0 */
    struct http_hooks hooks;
    struct MHD_Daemon *daemon;
    MHD_socket listen_fd;
    int port;

    pthread_mutex_t lock; /* protects what follows */
    pthread_cond_t idle;  /* signalled when `waiting` empties */
    struct request *waiting;
    uint64_t done_upto; /* every seq <= this has its commit verdict */
    struct {
        uint64_t first, last;
    } failed[FAILED_RANGES]; /* recent failed commits (rare: disk full) */
    size_t nfailed;
    _Atomic bool stopping; /* read by workers without the lock */
};

static void log_mhd(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    log_debug("http: %s", line);
}

static enum MHD_Result queue(struct http *h, struct MHD_Connection *conn, int status,
                             const char *type, const char *body, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(uintptr_t)body, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    if (type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN,
                            h->cfg->http.cors_origin);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, ALLOWED_METHODS);
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result r = MHD_queue_response(conn, (unsigned int)status, resp);
    MHD_destroy_response(resp);
    metrics_http_status(status);
    return r;
}

/* A json-c object as the answer (put here). */
static enum MHD_Result queue_object(struct http *h, struct MHD_Connection *conn,
                                    struct json_object *o)
{
    size_t len;
    const char *s = o ? json_object_to_json_string_length(o, JSON_FLAGS, &len) : NULL;
    enum MHD_Result r = s ? queue(h, conn, MHD_HTTP_OK, "application/json", s, len)
                          : queue(h, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "application/json",
                                  "{\"status\":\"error\",\"error\":\"out of memory\"}", 44);
    json_object_put(o);
    return r;
}

/* The peer's address as text, "" when unknown. */
static void client_addr(struct MHD_Connection *conn, char *out, size_t cap)
{
    out[0] = '\0';
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    if (!sa)
        return;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)cap);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        /* An IPv4 client on a dual-stack socket: show the address it knows. */
        if (IN6_IS_ADDR_V4MAPPED(a6))
            inet_ntop(AF_INET, &a6->s6_addr[12], out, (socklen_t)cap);
        else
            inet_ntop(AF_INET6, a6, out, (socklen_t)cap);
    }
}

/* {"status": status_word, key: text}; text is escaped by json-c. */
static enum MHD_Result queue_json(struct http *h, struct MHD_Connection *conn, int status,
                                  const char *status_word, const char *key, const char *text)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_string(status_word));
    if (key)
        json_object_object_add(o, key, json_object_new_string(text));
    size_t len;
    const char *s = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN, &len);
    enum MHD_Result r = queue(h, conn, status, "application/json", s, len);
    json_object_put(o);
    return r;
}

static enum MHD_Result queue_error(struct http *h, struct MHD_Connection *conn, int status,
                                   const char *reason)
{
    return queue_json(h, conn, status, "error", "error", reason);
}

/* An event refused: counted, shown on the page with its sender, answered. */
static enum MHD_Result refuse(struct http *h, struct MHD_Connection *conn, int status,
                              enum metrics_counter counter, const char *reason)
{
    char from[ADDR_MAX];
    client_addr(conn, from, sizeof from);
    metrics_inc(counter);
    board_refused(h->board, from, status, reason);
    return queue_error(h, conn, status, reason);
}

/* Request headers echoed into Allow-Headers must look like a header list. */
static bool header_list_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 512)
        return false;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_, ") == n;
}

static enum MHD_Result preflight(struct http *h, struct MHD_Connection *conn)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    const char *req_headers = MHD_lookup_connection_value(
        conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCESS_CONTROL_REQUEST_HEADERS);
    const char *pna = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                  "Access-Control-Request-Private-Network");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN,
                            h->cfg->http.cors_origin);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_HEADERS,
                            req_headers && header_list_ok(req_headers) ? req_headers
                                                                       : DEFAULT_ALLOW_HEADERS);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE);
    /* Chrome's Private Network Access: a page from a public origin may only
     * reach a LAN address when the preflight answer says so. */
    if (pna && strcasecmp(pna, "true") == 0)
        MHD_add_response_header(resp, "Access-Control-Allow-Private-Network", "true");
    if (strcmp(h->cfg->http.cors_origin, "*") != 0)
        MHD_add_response_header(resp, "Vary", "Origin");
    char from[ADDR_MAX];
    client_addr(conn, from, sizeof from);
    board_preflight(h->board, from,
                    MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN),
                    pna && strcasecmp(pna, "true") == 0);
    enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_NO_CONTENT, resp);
    MHD_destroy_response(resp);
    metrics_http_status(MHD_HTTP_NO_CONTENT);
    return r;
}

/* Constant-time comparison, so the token cannot be guessed by timing. */
static bool token_equal(const char *given, const char *want)
{
    size_t gl = strlen(given), wl = strlen(want);
    unsigned char diff = (unsigned char)(gl != wl);
    for (size_t i = 0; i < wl; i++)
        diff |= (unsigned char)(want[i] ^ (i < gl ? given[i] : 0));
    return diff == 0;
}

/* NULL when the request may pass, else why not ("missing" and "wrong" are
 * told apart: they are different mistakes in SmartRace's settings). */
static const char *unauthorized(struct http *h, struct MHD_Connection *conn)
{
    const char *want = h->cfg->http.token;
    if (!want)
        return NULL;
    const char *q = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "token");
    const char *auth =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    bool bearer = auth && strncasecmp(auth, "Bearer ", 7) == 0;
    if ((q && token_equal(q, want)) || (bearer && token_equal(auth + 7, want)))
        return NULL;
    if (!q && !bearer)
        return "missing token: add ?token=... to the URL or send Authorization: Bearer ...";
    return "wrong token: the ?token=... (or Bearer) given is not http.token";
}

struct clen_check {
    const char *first;
    bool conflict;
};

static enum MHD_Result count_content_length(void *cls, enum MHD_ValueKind kind, const char *key,
                                            const char *value)
{
    struct clen_check *cc = cls;
    (void)kind;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) != 0)
        return MHD_YES;
    if (!cc->first)
        cc->first = value;
    else if (strcmp(cc->first, value ? value : "") != 0)
        cc->conflict = true;
    return MHD_YES;
}

/* Paths that only answer GET: a POST there is a mistake, not an event. The
 * page's paths are not among them: "http://host:8080/events" is a URL a user
 * may well type into SmartRace, and every path but these takes events. */
static bool is_reserved(const char *url)
{
    return strcmp(url, "/healthz") == 0 || strcmp(url, "/readyz") == 0 ||
           strcmp(url, "/metrics") == 0;
}

/* 200 with resp (consumed), which must never come from a cache: a new
 * gateway version brings a new page, and a stream is live by nature. */
static enum MHD_Result queue_live(struct http *h, struct MHD_Connection *conn,
                                  struct MHD_Response *resp, const char *type)
{
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN,
                            h->cfg->http.cors_origin);
    enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    metrics_http_status(MHD_HTTP_OK);
    return r;
}

static enum MHD_Result queue_page(struct http *h, struct MHD_Connection *conn)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        page_html_len, (void *)(uintptr_t)page_html, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    return queue_live(h, conn, resp, "text/html; charset=utf-8");
}

/* ?limit=N of /api/events: 1..smartrace.keep_events, default all kept. */
static size_t event_limit(struct http *h, struct MHD_Connection *conn)
{
    size_t keep = (size_t)h->cfg->smartrace.keep_events;
    const char *q = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
    if (!q || !*q)
        return keep;
    char *end;
    unsigned long long n = strtoull(q, &end, 10);
    return *end == '\0' && n < keep ? (size_t)n : keep;
}

static enum MHD_Result open_stream(struct http *h, struct MHD_Connection *conn)
{
    struct MHD_Response *resp = h->sse && !h->stopping ? sse_open(h->sse, conn) : NULL;
    if (!resp) {
        char why[160];
        snprintf(why, sizeof why,
                 "too many live streams (http.max_streams = %d are open): poll /api/state",
                 h->cfg->http.max_streams);
        return queue_error(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE, why);
    }
    /* A reverse proxy must pass frames on as they come, not buffer them. */
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return queue_live(h, conn, resp, "text/event-stream");
}

/* The live page and its data; behind the token when one is set. */
static enum MHD_Result serve_page(struct http *h, struct MHD_Connection *conn, const char *url)
{
    bool page = strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0;
    bool known = page || strcmp(url, "/api/state") == 0 || strcmp(url, "/api/events") == 0 ||
                 strcmp(url, "/events") == 0;
    if (!known)
        return queue_error(h, conn, MHD_HTTP_NOT_FOUND,
                           "not found: GET serves /, /api/state, /api/events, /events, "
                           "/healthz, /readyz and /metrics; POST SmartRace events to any "
                           "other path");
    const char *why = unauthorized(h, conn);
    if (why)
        return queue_error(h, conn, MHD_HTTP_UNAUTHORIZED, why);
    if (page)
        return queue_page(h, conn);
    if (strcmp(url, "/api/state") == 0) {
        struct json_object *o = h->hooks.state ? h->hooks.state(h->hooks.ctx) : NULL;
        if (o)
            sse_stamp(o);
        return queue_object(h, conn, o);
    }
    if (strcmp(url, "/api/events") == 0)
        return queue_object(h, conn, board_events_json(h->board, event_limit(h, conn)));
    return open_stream(h, conn);
}

static enum MHD_Result serve_get(struct http *h, struct MHD_Connection *conn, const char *url)
{
    bool ready = h->hooks.ready && h->hooks.ready(h->hooks.ctx);
    if (strcmp(url, "/healthz") == 0)
        return queue_json(h, conn, MHD_HTTP_OK, "ok", NULL, NULL);
    if (strcmp(url, "/readyz") == 0)
        return ready ? queue_json(h, conn, MHD_HTTP_OK, "ready", "broker", "connected")
                     : queue_json(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready", "broker",
                                  "disconnected");
    if (strcmp(url, "/metrics") == 0) {
        size_t len = 0;
        char *text = h->hooks.metrics ? h->hooks.metrics(h->hooks.ctx, &len) : NULL;
        if (!text)
            return queue_error(h, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        enum MHD_Result r =
            queue(h, conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len);
        free(text);
        return r;
    }
    return serve_page(h, conn, url);
}

/* Has the journal already ruled on seq? Called with h->lock held. */
static bool verdict_locked(struct http *h, uint64_t seq, int *status)
{
    if (seq > h->done_upto)
        return false;
    *status = MHD_HTTP_OK;
    for (size_t i = 0; i < h->nfailed && i < FAILED_RANGES; i++) {
        if (seq >= h->failed[i].first && seq <= h->failed[i].last)
            *status = MHD_HTTP_SERVICE_UNAVAILABLE;
    }
    return true;
}

static enum MHD_Result answer(struct http *h, struct MHD_Connection *conn, struct request *r)
{
    if (r->status == MHD_HTTP_OK) {
        char body[64];
        int n = snprintf(body, sizeof body, "{\"status\":\"ok\",\"seq\":%llu}",
                         (unsigned long long)r->seq);
        return queue(h, conn, MHD_HTTP_OK, "application/json", body, (size_t)n);
    }
    return refuse(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE, METRIC_EVENTS_REFUSED,
                  h->stopping ? "shutting down before the event was stored"
                              : "the journal could not store the event");
}

/* The body is complete: journal it and wait for the commit without blocking. */
static enum MHD_Result submit(struct http *h, struct MHD_Connection *conn, struct request *r)
{
    r->submitted = true;
    if (r->too_large)
        return refuse(h, conn, MHD_HTTP_CONTENT_TOO_LARGE, METRIC_EVENTS_REJECTED,
                      "body larger than http.max_body");
    char detail[DETAIL_MAX] = "";
    enum ingest_result res =
        ingest_event(h->in, r->body ? r->body : "", r->len, &r->seq, detail, sizeof detail);
    free(r->body);
    r->body = NULL;
    switch (res) {
    case INGEST_OK:
        break;
    case INGEST_INVALID:
        return refuse(h, conn, MHD_HTTP_BAD_REQUEST, METRIC_EVENTS_REJECTED, detail);
    case INGEST_FULL:
    case INGEST_ERROR:
    default:
        /* ingest and the journal log the episode once; not every refusal. */
        return refuse(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE, METRIC_EVENTS_REFUSED, detail);
    }
    char from[ADDR_MAX];
    client_addr(conn, from, sizeof from);
    board_from(h->board, r->seq, from);

    pthread_mutex_lock(&h->lock);
    bool decided = verdict_locked(h, r->seq, &r->status);
    if (!decided) {
        r->conn = conn;
        r->next = h->waiting;
        h->waiting = r;
        /* Suspend while holding the lock, so http_committed() cannot resume a
         * connection that is not suspended yet. */
        MHD_suspend_connection(conn);
    }
    pthread_mutex_unlock(&h->lock);
    return decided ? answer(h, conn, r) : MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct http *h = cls;
    struct request *r = *con_cls;
    (void)version;

    if (r) {
        if (*upload_data_size > 0) {
            /* More body: keep it while it fits, else just count it as too large. */
            size_t n = *upload_data_size;
            *upload_data_size = 0;
            if (r->too_large || r->len + n > (size_t)h->cfg->http.max_body) {
                r->too_large = true;
                free(r->body);
                r->body = NULL;
                return MHD_YES;
            }
            if (r->len + n > r->cap) {
                size_t cap = r->cap ? r->cap : 2048;
                while (cap < r->len + n)
                    cap *= 2;
                char *nb = realloc(r->body, cap);
                if (!nb)
                    return MHD_NO;
                r->body = nb;
                r->cap = cap;
            }
            memcpy(r->body + r->len, upload_data, n);
            r->len += n;
            return MHD_YES;
        }
        if (!r->submitted) {
            if (fault_on("hang-http"))
                fault_hang();
            return submit(h, conn, r);
        }
        /* Resumed by http_committed(): the verdict is in. */
        return answer(h, conn, r);
    }

    if (strcmp(method, MHD_HTTP_METHOD_OPTIONS) == 0)
        return preflight(h, conn);
    if (strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0)
        return serve_get(h, conn, url);
    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
        return queue_error(h, conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                           "method not allowed: POST events, GET status, OPTIONS preflight");
    if (is_reserved(url))
        return refuse(h, conn, MHD_HTTP_METHOD_NOT_ALLOWED, METRIC_EVENTS_REJECTED,
                      "method not allowed: this path only answers GET");
    const char *why = unauthorized(h, conn);
    if (why)
        return refuse(h, conn, MHD_HTTP_UNAUTHORIZED, METRIC_EVENTS_REJECTED, why);
    /* Two Content-Length headers that disagree make the body's end ambiguous
     * (request smuggling behind a proxy): refuse (RFC 9112, 6.3). */
    struct clen_check cc = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, count_content_length, &cc);
    if (cc.conflict)
        return refuse(h, conn, MHD_HTTP_BAD_REQUEST, METRIC_EVENTS_REJECTED,
                      "conflicting Content-Length headers");
    const char *clen =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (clen) {
        char *end;
        unsigned long long n = strtoull(clen, &end, 10);
        if (*end == '\0' && n > (unsigned long long)h->cfg->http.max_body)
            return refuse(h, conn, MHD_HTTP_CONTENT_TOO_LARGE, METRIC_EVENTS_REJECTED,
                          "body larger than http.max_body");
    }
    if (h->stopping)
        return queue_error(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down");
    r = calloc(1, sizeof *r);
    if (!r)
        return MHD_NO;
    *con_cls = r;
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http *h = cls;
    struct request *r = *con_cls;
    (void)conn;
    (void)toe;
    if (!r)
        return;
    pthread_mutex_lock(&h->lock);
    for (struct request **pp = &h->waiting; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    if (!h->waiting)
        pthread_cond_broadcast(&h->idle);
    pthread_mutex_unlock(&h->lock);
    free(r->body);
    free(r);
    *con_cls = NULL;
}

void http_committed(struct http *h, uint64_t first, uint64_t last, bool ok)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    if (last > h->done_upto)
        h->done_upto = last;
    if (!ok) {
        h->failed[h->nfailed % FAILED_RANGES].first = first;
        h->failed[h->nfailed % FAILED_RANGES].last = last;
        h->nfailed++;
    }
    struct request **pp = &h->waiting;
    while (*pp) {
        struct request *r = *pp;
        if (r->seq <= last && verdict_locked(h, r->seq, &r->status)) {
            *pp = r->next;
            MHD_resume_connection(r->conn);
        } else {
            pp = &r->next;
        }
    }
    if (!h->waiting)
        pthread_cond_broadcast(&h->idle);
    pthread_mutex_unlock(&h->lock);
}

/* bind (an IPv4 or IPv6 address) and port as a socket address. With
 * loopback, the wildcards 0.0.0.0 and :: become the loopback address, where
 * this machine reaches the server. len may be NULL. 0, or -1 for no address. */
static int socket_address(const char *bind, int port, bool loopback, struct sockaddr_storage *ss,
                          socklen_t *len)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    if (inet_pton(AF_INET, loopback && strcmp(bind, "0.0.0.0") == 0 ? "127.0.0.1" : bind,
                  &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        if (len)
            *len = sizeof *sin;
        return 0;
    }
    if (inet_pton(AF_INET6, loopback && strcmp(bind, "::") == 0 ? "::1" : bind, &sin6->sin6_addr) ==
        1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        if (len)
            *len = sizeof *sin6;
        return 0;
    }
    return -1;
}

int http_start(struct http **out, const struct config *cfg, struct ingest *in, struct board *board,
               const struct http_hooks *hooks, char *err, size_t errlen)
{
    *out = NULL;
    struct http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->cfg = cfg;
    h->in = in;
    h->board = board;
    h->hooks = *hooks;
    h->listen_fd = MHD_INVALID_SOCKET;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->idle, NULL);

    struct sockaddr_storage ss;
    unsigned int flags =
        MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (socket_address(cfg->http.bind, cfg->http.port, false, &ss, NULL) != 0) {
        snprintf(err, errlen, "http.bind: not an IPv4 or IPv6 address: '%s'", cfg->http.bind);
        goto fail;
    }
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (cfg->http.max_streams > 0 && hooks->state) {
        struct sse_hooks sh = {.render = hooks->state, .ctx = hooks->ctx};
        h->sse = sse_new(cfg->http.max_streams, &sh);
        if (!h->sse) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        if (sse_start(h->sse, err, errlen) != 0)
            goto fail;
    }

    /* The logger goes first: libmicrohttpd logs with its own until it is set. */
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->http.port, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER,
        log_mhd, h, MHD_OPTION_SOCK_ADDR, &ss, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)cfg->http.max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned int)cfg->http.max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)cfg->http.timeout_s, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)cfg->http.threads, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_END);
    if (!h->daemon) {
        snprintf(err, errlen, "http: cannot listen on %s:%d (in use, or not an address here?)",
                 cfg->http.bind, cfg->http.port);
        goto fail;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : cfg->http.port;
    *out = h;
    return 0;
fail:
    sse_free(h->sse);
    pthread_cond_destroy(&h->idle);
    pthread_mutex_destroy(&h->lock);
    free(h);
    return -1;
}

int http_streams(struct http *h)
{
    return h ? sse_streams(h->sse) : 0;
}

int http_port(const struct http *h)
{
    return h->port;
}

/* Waits for events on fd until deadline (CLOCK_MONOTONIC ms): 0 or -1. */
static int probe_wait(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline)
            return -1;
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, (int)(deadline - now));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

int http_probe(const struct http *h, int timeout_ms)
{
    if (!h || !h->daemon)
        return -1;
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (socket_address(h->cfg->http.bind, h->port, true, &ss, &sslen) != 0)
        return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
    static const char ask[] = "GET /healthz HTTP/1.0\r\nUser-Agent: race2mqtt-watchdog\r\n\r\n";
    char got[64];
    size_t have = 0;
    int rc = -1;
    if (connect(fd, (struct sockaddr *)&ss, sslen) != 0 &&
        (errno != EINPROGRESS || probe_wait(fd, POLLOUT, deadline) != 0))
        goto out;
    int soerr = 0;
    socklen_t elen = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &elen) != 0 || soerr != 0 ||
        send(fd, ask, sizeof ask - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof ask - 1))
        goto out;
    /* The status line is enough: "HTTP/1.x 200". */
    while (have < 12) {
        if (probe_wait(fd, POLLIN, deadline) != 0)
            goto out;
        ssize_t n = recv(fd, got + have, sizeof got - have, 0);
        if (n <= 0) {
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            goto out;
        }
        have += (size_t)n;
    }
    rc = strncmp(got, "HTTP/1.", 7) == 0 && strncmp(got + 8, " 200", 4) == 0 ? 0 : -1;
out:
    close(fd);
    return rc;
}

void http_stop(struct http *h, int timeout_ms)
{
    if (!h)
        return;
    if (h->daemon) {
        /* No new connections; requests waiting for the journal finish first. */
        h->listen_fd = MHD_quiesce_daemon(h->daemon);
        pthread_mutex_lock(&h->lock);
        h->stopping = true;
        struct timespec until = realtime_in_us((uint64_t)timeout_ms * 1000);
        while (h->waiting && pthread_cond_timedwait(&h->idle, &h->lock, &until) == 0)
            ;
        /* Whatever is still waiting was not stored in time: 503, and
         * libmicrohttpd requires every connection resumed before it stops. */
        for (struct request *r = h->waiting; r; r = r->next) {
            r->status = MHD_HTTP_SERVICE_UNAVAILABLE;
            MHD_resume_connection(r->conn);
        }
        h->waiting = NULL;
        pthread_mutex_unlock(&h->lock);
        /* Live streams are suspended connections too: end them. */
        sse_close_all(h->sse);
        MHD_stop_daemon(h->daemon);
        h->daemon = NULL;
        if (h->listen_fd != MHD_INVALID_SOCKET)
            close(h->listen_fd);
        h->listen_fd = MHD_INVALID_SOCKET;
    }
}

void http_free(struct http *h)
{
    if (!h)
        return;
    http_stop(h, 0);
    sse_free(h->sse);
    pthread_cond_destroy(&h->idle);
    pthread_mutex_destroy(&h->lock);
    free(h);
}
