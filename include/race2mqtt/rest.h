/*
 * rest.h - the RACE RESULT devices REST API client (libcurl; the only file
 * pair that knows curl).
 *
 * Authentication is shared: one struct rest_auth holds the bearer token for
 * the whole process (the passings poller and the command worker use the same
 * one), while each thread has its own struct rest with its own curl handle.
 * A token is reused until shortly before expires_in; a 401 fetches a new one
 * and retries the request once; refused token requests (406, 429, ...) put
 * every caller into a backoff instead of hammering the vendor.
 *
 * Every request carries "Connection: close" (the vendor blocks addresses that
 * keep connections open), connect and total timeouts, a cap on the answer's
 * size, and TLS verification. The API key and tokens never reach a log line.
 */
#ifndef RACE2MQTT_REST_H
#define RACE2MQTT_REST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rest_auth;
struct rest;

struct rest_options {
    const char *base_url;    /* e.g. https://rest.devices.raceresult.com, no trailing '/' */
    const char *api_key;     /* secret */
    const char *ca_file;     /* NULL = the system's CA store */
    long connect_timeout_ms;
    long timeout_ms;         /* whole request */
    size_t max_body;         /* larger answers fail with REST_TOO_BIG */
};

enum rest_result {
    REST_OK,        /* an HTTP answer arrived (any status: see http_status) */
    REST_TIMEOUT,   /* connect or total timeout */
    REST_NETWORK,   /* DNS, connect, TLS, reset, truncated transfer */
    REST_TOO_BIG,   /* answer above max_body */
    REST_AUTH,      /* no token: the API key was refused or token requests back off */
    REST_NOMEM,
    REST_CANCELLED, /* the cancel flag was set (shutdown) */
};

/* A short English reason for a result, never NULL. */
const char *rest_strerror(enum rest_result r);

/* The shared token. opt is copied (strings included). NULL on no memory. */
struct rest_auth *rest_auth_new(const struct rest_options *opt);
void rest_auth_free(struct rest_auth *auth);

/* Forgets the token (e.g. before a test expires it). Thread-safe. */
void rest_auth_invalidate(struct rest_auth *auth);

/* One thread's client. auth is borrowed and must outlive it. */
int rest_new(struct rest **out, struct rest_auth *auth, char *err, size_t errlen);
void rest_free(struct rest *r);

/* While *cancel is true, requests of r abort at once (for a prompt stop). */
void rest_set_cancel(struct rest *r, const _Atomic bool *cancel);

struct rest_response {
    long http_status;
    char *body;   /* NUL-terminated, owned: free with rest_response_cleanup() */
    size_t len;
};

void rest_response_cleanup(struct rest_response *resp);

/*
 * Performs METHOD base_url + path_query with the bearer token (fetched or
 * renewed as needed; a 401 answer renews it and retries once). On REST_OK the
 * answer is in resp whatever its status; otherwise resp is empty and err
 * holds a one-line reason (without secrets).
 */
enum rest_result rest_request(struct rest *r, const char *method, const char *path_query,
                              struct rest_response *resp, char *err, size_t errlen);

/* URL-encodes s for a query value; caller frees with free(). NULL on no memory. */
char *rest_escape(struct rest *r, const char *s);

#endif
