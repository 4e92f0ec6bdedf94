/*
 * config.h - the gateway's configuration: one INI file, environment overrides,
 * secrets from files.
 *
 * Every key lives in one table in config.c (section, name, type, bounds,
 * default, secret flag); loading, environment overrides, --check-config and the
 * redacted copy in race2mqtt/bridge/info all walk that table, so a key added
 * there is documented, overridable and masked everywhere at once.
 */
#ifndef RACE2MQTT_CONFIG_H
#define RACE2MQTT_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct json_object;

/* Where a device seen for the first time (no cursor yet) is read from. */
enum config_rr_start {
    CONFIG_RR_START_FILE, /* the beginning of its current file (default) */
    CONFIG_RR_START_ALL,  /* file 1: everything the API still has */
    CONFIG_RR_START_NEW,  /* only what arrives from now on */
};

/* MQTT protocol levels as paho numbers them. */
/* auto: MQTT 5, or 3.1.1 when the broker refuses 5 (mqtt.c). */
enum config_mqtt_protocol { CONFIG_MQTT_AUTO = 1, CONFIG_MQTT_311 = 4, CONFIG_MQTT_5 = 5 };

/*
 * All strings are heap copies owned by the struct (freed by config_free()).
 * Optional strings that are not set are NULL, never "".
 */
struct config {
    struct {
        char *url;        /* mqtt:// or mqtts:// */
        char *client_id;  /* default race2mqtt-<hostname> */
        char *username;
        char *password;   /* secret; also from password_file */
        char *password_file; /* path (not secret); its content becomes password */
        char *ca_file;
        char *cert_file;
        char *key_file;
        bool tls_verify;  /* verify the broker certificate (default true) */
        int protocol;     /* enum config_mqtt_protocol */
        char *base_topic; /* gateway's own topics, default race2mqtt */
        int keepalive_s;  /* default 30 */
        int max_inflight; /* QoS 1 publishes awaiting PUBACK, default 256 */
        int session_expiry_s; /* MQTT 5 session expiry, default 86400 */
        bool topic_dots;      /* keep '.' in topic levels made from ids (default true) */
    } mqtt;
    struct {
        char *bind;          /* default 0.0.0.0 */
        int port;            /* default 8080 */
        char *token;         /* secret; NULL = no token required */
        char *token_file;    /* path; its content becomes token */
        long max_body;       /* bytes, default 65536 */
        char *cors_origin;   /* default * */
        int max_connections; /* default 512 */
        int max_connections_per_ip; /* 0 = no per-address limit (default) */
        int timeout_s;       /* inactivity timeout, default 10 */
        int threads;         /* worker threads, default 2 */
        int max_streams;     /* GET /events streams at once, default 8 */
    } http;
    struct {
        bool enabled;     /* default true */
        char *base_topic; /* default smartrace */
        int qos;          /* event topics, 1 or 2 (default 1) */
        int keep_events;  /* raw events for GET /api/events, default 20 */
        char *record;     /* JSON lines of accepted events; NULL = off */
    } smartrace;
    struct {
        int enabled; /* -1 = auto (on when api_key set), 0, 1 */
        char *base_url;
        char *customer_id;
        char *api_key; /* secret */
        char *api_key_file; /* path; its content becomes api_key */
        char *devices; /* comma-separated, NULL = all */
        int poll_interval_ms;
        char *base_topic;
        char *commands_allowed; /* comma-separated command names, NULL = none */
        char *command_group;    /* NULL = plain subscription, else $share/<group>/... */
        int amount;            /* detections per request (default 1000), at most 10000 (the API's limit) */
        int start;             /* enum config_rr_start: where a device without a cursor starts */
        int recheck_s;         /* ask an idle device for detections at least this often */
        int connect_timeout_ms;
        int timeout_ms;        /* whole request */
        int64_t max_response;  /* bytes; larger answers are refused */
        char *ca_file;         /* PEM CA bundle for base_url; NULL = system store */
    } raceresult;
    struct {
        bool enabled;
        char *prefix;
        char *node_id;      /* [A-Za-z0-9_-]; derived from mqtt.client_id when unset */
        int birth_delay_ms; /* HA said online: republish after this long */
        int stale_after_s;  /* 0 = never forget a controller or decoder by age */
    } homeassistant;
    struct {
        char *dir;               /* default ./var */
        int64_t max_bytes;       /* journal bound, default 128 MiB; full -> 503 */
        int64_t segment_bytes;   /* journal segment size, default 8 MiB */
        int flush_timeout_ms;    /* clean stop: time to drain to the broker, default 5000 */
    } store;
    struct {
        char *level; /* error, warn, info, debug */
    } log;
};

/* Fills every field with its default (allocating default strings). */
void config_defaults(struct config *cfg);

/*
 * Loads `path` on top of the defaults, then applies RACE2MQTT_<SECTION>_<KEY>
 * environment overrides, then reads *_file secrets, resolves
 * raceresult.enabled = auto (to 1 or 0) and validates.
 * path may be NULL (defaults and environment only).
 * cfg is initialised here (config_defaults() first is not needed, and a cfg
 * that still holds a loaded configuration must be config_free()d first).
 * On failure returns -1 with a message naming file, line and key (or the
 * environment variable) in err; cfg is then still safe to config_free().
 * No message ever contains a secret's value.
 */
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);

/* Frees every string; the struct itself is the caller's. Safe twice. */
void config_free(struct config *cfg);

/* Prints the effective configuration as INI text, secrets masked as "***". */
void config_print(const struct config *cfg, FILE *out);

/* Whether a KEY_LIST value ("a,b,c" or NULL) holds item, exactly. */
bool config_list_has(const char *list, const char *item);

/* The effective configuration as JSON, secrets masked; caller puts it. */
struct json_object *config_to_json(const struct config *cfg);

#endif
