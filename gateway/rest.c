/*
 * rest.c - the RACE RESULT REST client on libcurl.
 *
 * What this file owns: the bearer token (fetch, reuse, renew, back off) and
 * one HTTP request at a time per struct rest, with the limits the vendor and
 * our own robustness ask for.
 *
 * Why it is shaped like this:
 * - The token lives in struct rest_auth behind a mutex, shared by every
 *   thread that calls the API; a token request is made while holding it, so
 *   two threads that both find the token expired make one request, not two.
 * - A 401 renews the token only if the token that failed is still the current
 *   one (generation check), then retries once: a token another thread already
 *   renewed is simply used.
 * - Refused token requests (401 for a wrong key, 406, 429, 5xx) start an
 *   exponential backoff with jitter shared by all callers, logged when it
 *   starts and when a token is granted again, not per attempt.
 * - Each curl handle belongs to the thread that owns its struct rest; it is
 *   reset before every request, and connection reuse is forbidden as well as
 *   asked against with "Connection: close".
 * - Nothing here logs a header, a token or the API key; curl's verbose mode is
 *   never switched on.
 */
#include "race2mqtt/rest.h"

#include <curl/curl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "race2mqtt/clock.h"
#include "race2mqtt/log.h"

#define TOKEN_MAX 1024
#define TOKEN_DEFAULT_TTL_S 7200
#define TOKEN_MARGIN_MAX_S 120 /* renew this long before expiry at most */
#define BACKOFF_MIN_MS 2000
#define BACKOFF_MAX_MS 300000
#define TOKEN_BODY_MAX 16384

struct rest_auth {
    pthread_mutex_t lock;
    struct rest_options opt; /* strings owned */
    char token[TOKEN_MAX + 1];
    bool have_token;
    uint64_t generation;     /* bumped on every new token */
    uint64_t expires_ms;     /* monotonic: renew from here on */
    uint64_t backoff_until_ms;
    uint64_t backoff_ms;
    bool refused;            /* currently in a refusal episode (logged once) */
};

struct rest {
    struct rest_auth *auth;
    CURL *curl;
    const _Atomic bool *cancel; /* set: abort the transfer in progress */
    char errbuf[CURL_ERROR_SIZE];
};

const char *rest_strerror(enum rest_result r)
{
    switch (r) {
    case REST_OK:
        return "ok";
    case REST_TIMEOUT:
        return "timed out";
    case REST_NETWORK:
        return "network error";
    case REST_TOO_BIG:
        return "answer too large";
    case REST_AUTH:
        return "not authorised (API key refused or token requests backing off)";
    case REST_NOMEM:
        return "out of memory";
    case REST_CANCELLED:
        return "cancelled";
    }
    return "unknown error";
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* curl_global_init is not thread-safe: once, before any handle exists. */
static void init_curl(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
}

struct rest_auth *rest_auth_new(const struct rest_options *opt)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init_curl);

    struct rest_auth *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->opt = *opt;
    a->opt.base_url = dup_or_null(opt->base_url);
    a->opt.api_key = dup_or_null(opt->api_key);
    a->opt.ca_file = dup_or_null(opt->ca_file);
    if (!a->opt.base_url || !a->opt.api_key || (opt->ca_file && !a->opt.ca_file)) {
        rest_auth_free(a);
        return NULL;
    }
    pthread_mutex_init(&a->lock, NULL);
    return a;
}

void rest_auth_free(struct rest_auth *a)
{
    if (!a)
        return;
    /* The key and the token are secrets: do not leave them in freed memory. */
    if (a->opt.api_key)
        explicit_bzero((char *)(uintptr_t)a->opt.api_key, strlen(a->opt.api_key));
    explicit_bzero(a->token, sizeof a->token);
    free((char *)(uintptr_t)a->opt.base_url);
    free((char *)(uintptr_t)a->opt.api_key);
    free((char *)(uintptr_t)a->opt.ca_file);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

void rest_auth_invalidate(struct rest_auth *a)
{
    pthread_mutex_lock(&a->lock);
    a->have_token = false;
    pthread_mutex_unlock(&a->lock);
}

int rest_new(struct rest **out, struct rest_auth *auth, char *err, size_t errlen)
{
    *out = NULL;
    struct rest *r = calloc(1, sizeof *r);
    if (!r || !(r->curl = curl_easy_init())) {
        free(r);
        snprintf(err, errlen, "raceresult: cannot create a curl handle");
        return -1;
    }
    r->auth = auth;
    *out = r;
    return 0;
}

void rest_set_cancel(struct rest *r, const _Atomic bool *cancel)
{
    r->cancel = cancel;
}

/* curl calls this often during a transfer; non-zero aborts it. */
static int on_progress(void *userp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    const struct rest *r = userp;
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return r->cancel && atomic_load(r->cancel) ? 1 : 0;
}

void rest_free(struct rest *r)
{
    if (!r)
        return;
    curl_easy_cleanup(r->curl);
    free(r);
}

void rest_response_cleanup(struct rest_response *resp)
{
    free(resp->body);
    resp->body = NULL;
    resp->len = 0;
    resp->http_status = 0;
}

char *rest_escape(struct rest *r, const char *s)
{
    char *e = curl_easy_escape(r->curl, s, 0);
    char *copy = e ? strdup(e) : NULL;
    curl_free(e);
    return copy;
}

/* The growing answer, capped. */
struct sink {
    char *buf;
    size_t len, cap, max;
    bool too_big;
};

static size_t on_data(char *data, size_t size, size_t nmemb, void *userp)
{
    struct sink *s = userp;
    size_t n = size * nmemb;
    if (s->len + n > s->max) {
        s->too_big = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 16384;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *nb = realloc(s->buf, cap);
        if (!nb)
            return 0;
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
    s->buf[s->len] = '\0';
    return n;
}

/*
 * One HTTP exchange. auth_header is "Authorization: Bearer ..." or
 * "apikey: ..." (a secret: only handed to curl). max_body caps the answer.
 */
static enum rest_result perform(struct rest *r, const char *method, const char *path_query,
                                const char *auth_header, size_t max_body,
                                struct rest_response *resp, char *err, size_t errlen)
{
    const struct rest_options *o = &r->auth->opt;
    enum rest_result result = REST_NOMEM;
    struct sink sink = {.max = max_body};
    struct curl_slist *headers = NULL;
    char url[2048];
    memset(resp, 0, sizeof *resp);

    if (snprintf(url, sizeof url, "%s%s", o->base_url, path_query) >= (int)sizeof url) {
        snprintf(err, errlen, "request URL too long");
        return REST_NETWORK;
    }
    struct curl_slist *h;
    if (!(h = curl_slist_append(headers, "Connection: close")) || !(headers = h) ||
        !(h = curl_slist_append(headers, "Accept: application/json")) || !(headers = h) ||
        !(h = curl_slist_append(headers, auth_header)) || !(headers = h))
        goto out;

    CURL *c = r->curl;
    curl_easy_reset(c);
    r->errbuf[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, o->timeout_ms);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_body);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (o->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, o->ca_file);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "race2mqtt/" RACE2MQTT_VERSION);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r->errbuf);
    if (r->cancel) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, r);
    }
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    }

    uint64_t t0 = mono_ms();
    CURLcode rc = curl_easy_perform(c);
    /* The header list holds the token: drop curl's pointer to it now. */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->http_status);
        resp->body = sink.buf ? sink.buf : strdup("");
        resp->len = sink.len;
        sink.buf = NULL;
        result = resp->body ? REST_OK : REST_NOMEM;
        log_debug("raceresult: %s %s -> %ld (%zu bytes, %llu ms)", method, path_query,
                  resp->http_status, resp->len, (unsigned long long)(mono_ms() - t0));
        goto out;
    }
    if (sink.too_big || rc == CURLE_FILESIZE_EXCEEDED)
        result = REST_TOO_BIG;
    else if (rc == CURLE_OPERATION_TIMEDOUT)
        result = REST_TIMEOUT;
    else if (rc == CURLE_OUT_OF_MEMORY)
        result = REST_NOMEM;
    else if (rc == CURLE_ABORTED_BY_CALLBACK)
        result = REST_CANCELLED;
    else
        result = REST_NETWORK;
    snprintf(err, errlen, "%s %s: %s%s%s", method, path_query,
             result == REST_TOO_BIG ? "answer larger than the limit" : curl_easy_strerror(rc),
             r->errbuf[0] && result != REST_TOO_BIG ? ": " : "",
             result != REST_TOO_BIG ? r->errbuf : "");
out:
    if (result != REST_OK && result != REST_NOMEM && err[0] == '\0')
        snprintf(err, errlen, "%s %s: %s", method, path_query, rest_strerror(result));
    if (result == REST_NOMEM && err[0] == '\0')
        snprintf(err, errlen, "out of memory");
    curl_slist_free_all(headers);
    free(sink.buf);
    return result;
}

/* Starts or extends a backoff after a refused token request; lock held. */
static void token_backoff(struct rest_auth *a, long status)
{
    a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (a->backoff_ms > BACKOFF_MAX_MS)
        a->backoff_ms = BACKOFF_MAX_MS;
    /* Jitter of up to a quarter, so replicas do not retry in step. */
    uint64_t jitter = (mono_ms() * 2654435761u) % (a->backoff_ms / 4 + 1);
    a->backoff_until_ms = mono_ms() + a->backoff_ms + jitter;
    if (!a->refused)
        log_warn("raceresult: token request refused (HTTP %ld)%s; backing off %llu s and "
                 "longer while it lasts",
                 status, status == 401 ? ": check raceresult.api_key" : "",
                 (unsigned long long)(a->backoff_ms / 1000));
    a->refused = true;
}

/* Parses {"access_token": ..., "expires_in": ...}; lock held. */
static int token_accept(struct rest_auth *a, const struct rest_response *resp)
{
    int rc = -1;
    struct json_object *o = json_tokener_parse(resp->body);
    struct json_object *tok, *ttl;
    if (!o || !json_object_is_type(o, json_type_object) ||
        !json_object_object_get_ex(o, "access_token", &tok) ||
        !json_object_is_type(tok, json_type_string))
        goto out;
    const char *t = json_object_get_string(tok);
    size_t n = strlen(t);
    /* It goes into a header line: printable ASCII only, bounded. */
    if (n == 0 || n > TOKEN_MAX || strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                             "0123456789-._~+/=") != n)
        goto out;
    int64_t ttl_s = TOKEN_DEFAULT_TTL_S;
    if (json_object_object_get_ex(o, "expires_in", &ttl) &&
        json_object_is_type(ttl, json_type_int) && json_object_get_int64(ttl) > 0)
        ttl_s = json_object_get_int64(ttl);
    /* Renew a little before expiry: a tenth of the lifetime, at most 2 min. */
    int64_t margin = ttl_s / 10 < TOKEN_MARGIN_MAX_S ? ttl_s / 10 : TOKEN_MARGIN_MAX_S;
    memcpy(a->token, t, n + 1);
    a->have_token = true;
    a->generation++;
    a->expires_ms = mono_ms() + (uint64_t)(ttl_s - margin) * 1000u;
    if (a->refused || a->generation == 1)
        log_info("raceresult: authenticated (token valid for %lld s)", (long long)ttl_s);
    a->refused = false;
    a->backoff_ms = 0;
    a->backoff_until_ms = 0;
    rc = 0;
out:
    json_object_put(o);
    return rc;
}

/*
 * Copies a valid token into header ("Authorization: Bearer ...") and its
 * generation into *gen, fetching one first if needed. stale_gen != 0 means
 * "the token of that generation was refused".
 */
static enum rest_result get_token(struct rest *r, uint64_t stale_gen, char *header, size_t cap,
                                  uint64_t *gen, char *err, size_t errlen)
{
    struct rest_auth *a = r->auth;
    enum rest_result result = REST_OK;
    pthread_mutex_lock(&a->lock);
    if (stale_gen != 0 && a->have_token && a->generation == stale_gen)
        a->have_token = false;
    if (!a->have_token || mono_ms() >= a->expires_ms) {
        if (mono_ms() < a->backoff_until_ms) {
            snprintf(err, errlen, "token requests refused; next try in %llu s",
                     (unsigned long long)((a->backoff_until_ms - mono_ms()) / 1000 + 1));
            result = REST_AUTH;
            goto out;
        }
        /* Config caps secrets at 4 KiB and refuses control characters, so the
         * key fits and cannot inject a header line. */
        char key_header[4096 + 16];
        snprintf(key_header, sizeof key_header, "apikey: %s", a->opt.api_key);
        struct rest_response resp;
        result = perform(r, "POST", "/token", key_header, TOKEN_BODY_MAX, &resp, err, errlen);
        explicit_bzero(key_header, sizeof key_header);
        if (result != REST_OK)
            goto out;
        if (resp.http_status != 200 || token_accept(a, &resp) != 0) {
            token_backoff(a, resp.http_status);
            snprintf(err, errlen, "token request answered HTTP %ld%s", resp.http_status,
                     resp.http_status == 200 ? " without a usable token" : "");
            result = REST_AUTH;
        }
        rest_response_cleanup(&resp);
        if (result != REST_OK)
            goto out;
    }
    snprintf(header, cap, "Authorization: Bearer %s", a->token);
    *gen = a->generation;
out:
    pthread_mutex_unlock(&a->lock);
    return result;
}

enum rest_result rest_request(struct rest *r, const char *method, const char *path_query,
                              struct rest_response *resp, char *err, size_t errlen)
{
    char header[TOKEN_MAX + 32];
    uint64_t gen = 0, stale = 0;
    enum rest_result result = REST_AUTH;
    err[0] = '\0';
    memset(resp, 0, sizeof *resp);
    for (int attempt = 0; attempt < 2; attempt++) {
        result = get_token(r, stale, header, sizeof header, &gen, err, errlen);
        if (result != REST_OK)
            break;
        result = perform(r, method, path_query, header, r->auth->opt.max_body, resp, err, errlen);
        if (result != REST_OK || resp->http_status != 401 || attempt == 1)
            break;
        /* The token was refused before its time (revoked, server restart):
         * renew it once and try again. */
        log_debug("raceresult: %s %s -> 401, renewing the token", method, path_query);
        rest_response_cleanup(resp);
        stale = gen;
    }
    explicit_bzero(header, sizeof header);
    return result;
}
