/*
 * config.c - the gateway's configuration: defaults, the INI file, the
 * environment and secret files, in that order, into one struct config.
 *
 * Every key is one row of keys[] below: section, name, type, bounds, default,
 * whether it is secret, and a line of help. Nothing else in this file knows a
 * key by name except the few cross-key rules in config_validate(), so a row
 * added to the table is at once loadable from the file, overridable as
 * RACE2MQTT_<SECTION>_<KEY>, printed by --check-config and masked in the JSON
 * copy that goes to race2mqtt/bridge/info. Defaults are written as text and
 * go through the same parser as the file, so a default can never be a value
 * the file would refuse.
 *
 * The INI syntax is libinih's. Three of its habits are tamed here, in the
 * line reader we hand to ini_parse_stream():
 *  - A line longer than its fixed buffer (INI_MAX_LINE, 200 in Debian's
 *    build) is not an error in inih: the rest is parsed as a line of its own.
 *    The reader refuses such a line instead, naming its number.
 *  - An indented line after a key is a configparser-style continuation, and
 *    inih hands it to us as a new value of the previous key, so an indented
 *    "port = 9000" would silently become the previous key's value. The reader
 *    strips leading whitespace, which turns indentation into mere layout.
 *  - Debian builds inih without INI_HANDLER_LINENO, so the handler is not told
 *    its line. The reader counts lines, and inih calls the handler for a line
 *    before it reads the next, so the count is the handler's line. Errors that
 *    inih finds itself (a line with no '=') only show up as ini_parse_stream's
 *    return value, the first bad line; whichever error comes first is reported.
 *
 * Secrets (mqtt.password, http.token, raceresult.api_key) are never echoed:
 * a reason that would quote a value leaves it out for a secret key, secret
 * files are named by path only, and config_print / config_to_json show "***".
 * Values of other keys are quoted in errors, cut short and with control
 * characters replaced, because they may come from the environment.
 */
#include "race2mqtt/config.h"
#include "race2mqtt/jsonutil.h"
#include "race2mqtt/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(int) == sizeof(int32_t), "integer keys are stored as int32_t or int64_t");

#define KIB INT64_C(1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)

/* A value longer than this is refused; it bounds what the environment can feed us. */
#define VALUE_MAX 4096
/* Values quoted in errors are cut after this many bytes. */
#define QUOTE_MAX 120
/* A secret file holds at most this many bytes (after which it is not a secret but a mistake). */
#define SECRET_FILE_MAX 4096

enum key_type {
    KEY_STRING,    /* char *; empty means unset (NULL) unless KEY_REQUIRED */
    KEY_LIST,      /* char *; comma-separated names, stored as "a,b,c"; empty = NULL */
    KEY_INT,       /* int or wider integer field, in [min, max] */
    KEY_SIZE,      /* bytes: an integer with an optional K, M or G (1024-based) suffix */
    KEY_BOOL,      /* bool */
    KEY_AUTO_BOOL, /* int: 1, 0, or -1 for "auto" */
    KEY_CHOICE,    /* int: the value of one of choices[] */
};

enum {
    KEY_SECRET = 1u << 0,   /* never printed, never quoted in an error */
    KEY_REQUIRED = 1u << 1, /* a string that may not be empty */
    KEY_READABLE = 1u << 2, /* a path that must name a readable file */
};

struct choice {
    const char *name;
    int value;
};

/*
 * check: called after a value is stored; may normalise it in place; returns
 * NULL or the reason it is refused (a static string that never quotes the
 * value, so it is safe for secrets).
 */
struct key {
    const char *section;
    const char *name;
    enum key_type type;
    size_t offset;
    size_t size;
    const char *def; /* as it would be written in the file; NULL = unset */
    int64_t min, max;
    const struct choice *choices; /* KEY_CHOICE, ended by a NULL name */
    unsigned flags;
    const char *(*check)(void *field);
    const char *file_key; /* secret: the key in the same section naming a file that holds it */
    const char *help;
};

#define AT(member)                                                                                 \
    .offset = offsetof(struct config, member), .size = sizeof(((struct config *)0)->member)

static const char *check_mqtt_url(void *field);
static const char *check_http_url(void *field);
static const char *check_topic(void *field);
static const char *check_share_name(void *field);
static const char *check_url_safe(void *field);
/* Home Assistant drops a discovery topic whose node or object id has
 * anything else ("illegal discovery topic"). */
static const char *check_node_id(void *field)
{
    const char *s = *(char **)field;
    if (strlen(s) > 64)
        return "longer than 64 bytes";
    for (const char *p = s; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
            return "may contain only A-Z a-z 0-9 _ - (Home Assistant refuses other characters)";
    }
    return NULL;
}

static const char *check_qos(void *field);
static const char *check_level(void *field);
static const char *check_node_id(void *field);

static const struct choice start_choices[] = {
    {"file", CONFIG_RR_START_FILE},
    {"all", CONFIG_RR_START_ALL},
    {"new", CONFIG_RR_START_NEW},
    {NULL, 0},
};

static const struct choice protocol_choices[] = {
    {"auto", CONFIG_MQTT_AUTO},
    {"5", CONFIG_MQTT_5},
    {"3.1.1", CONFIG_MQTT_311},
    {NULL, 0},
};

/*
 * Decoder commands that only read state, start or stop timing and the upload
 * to the RACE RESULT cloud, or set the clock from GPS: nothing that deletes
 * passings (CLEARFILES, NEWFILE) or changes the decoder's setup.
 */
#define SAFE_COMMANDS                                                                              \
    "GETSTATUS,GETINFO,GETTIME,GETPROTOCOL,GETFILENO,PASSINGS,GETPASSINGCOUNT,"                    \
    "STARTOPERATION,STOPOPERATION,STARTUPLOAD,STOPUPLOAD,SETGPSTIME"

/* One key per row: the table reads better than one field per line. */
/* clang-format off */
static const struct key keys[] = {
    {.section = "mqtt", .name = "url", .type = KEY_STRING, AT(mqtt.url),
     .def = "mqtt://127.0.0.1:1883", .flags = KEY_REQUIRED, .check = check_mqtt_url,
     .help = "broker URL, mqtt://host:port or mqtts://host:port (TLS); a comma-separated "
             "list of up to 8 for failover, tried in order on every connect"},
    {.section = "mqtt", .name = "client_id", .type = KEY_STRING, AT(mqtt.client_id),
     .flags = KEY_REQUIRED,
     .help = "MQTT client id, stable so the broker keeps our session; default race2mqtt-<host>"},
    {.section = "mqtt", .name = "username", .type = KEY_STRING, AT(mqtt.username),
     .help = "broker user name; empty = anonymous"},
    {.section = "mqtt", .name = "password", .type = KEY_STRING, AT(mqtt.password),
     .flags = KEY_SECRET, .file_key = "password_file",
     .help = "broker password (secret); prefer password_file or RACE2MQTT_MQTT_PASSWORD"},
    {.section = "mqtt", .name = "password_file", .type = KEY_STRING, AT(mqtt.password_file),
     .help = "file whose content is the broker password (one trailing newline is dropped)"},
    {.section = "mqtt", .name = "ca_file", .type = KEY_STRING, AT(mqtt.ca_file),
     .flags = KEY_READABLE, .help = "PEM CA bundle to verify the broker; empty = system default"},
    {.section = "mqtt", .name = "cert_file", .type = KEY_STRING, AT(mqtt.cert_file),
     .flags = KEY_READABLE, .help = "PEM client certificate for TLS client authentication"},
    {.section = "mqtt", .name = "key_file", .type = KEY_STRING, AT(mqtt.key_file),
     .flags = KEY_READABLE, .help = "PEM private key of cert_file"},
    {.section = "mqtt", .name = "tls_verify", .type = KEY_BOOL, AT(mqtt.tls_verify),
     .def = "true", .help = "verify the broker's certificate and host name (mqtts:// only)"},
    {.section = "mqtt", .name = "protocol", .type = KEY_CHOICE, AT(mqtt.protocol),
     .def = "auto", .choices = protocol_choices,
     .help = "MQTT protocol version: auto (5, or 3.1.1 when the broker refuses 5), 5 or 3.1.1"},
    {.section = "mqtt", .name = "base_topic", .type = KEY_STRING, AT(mqtt.base_topic),
     .def = "race2mqtt", .flags = KEY_REQUIRED, .check = check_topic,
     .help = "topic prefix of the gateway's own topics (bridge/state, bridge/info)"},
    {.section = "mqtt", .name = "keepalive_s", .type = KEY_INT, AT(mqtt.keepalive_s), .def = "30",
     .min = 5, .max = 65535,
     .help = "MQTT keepalive in seconds; a broker that stops answering is noticed after "
             "about 2 to 3 times this (paho pings after one keepalive, gives up one later)"},
    {.section = "mqtt", .name = "max_inflight", .type = KEY_INT, AT(mqtt.max_inflight),
     .def = "256", .min = 1, .max = 65535,
     .help = "QoS 1/2 publishes awaiting the broker's acknowledgement at once"},
    {.section = "mqtt", .name = "session_expiry_s", .type = KEY_INT, AT(mqtt.session_expiry_s),
     .def = "86400", .min = 0, .max = INT32_MAX,
     .help = "MQTT 5 session expiry: how long the broker keeps subscriptions while we are away"},
    {.section = "mqtt", .name = "topic_dots", .type = KEY_BOOL, AT(mqtt.topic_dots),
     .def = "true",
     .help = "keep '.' in topic levels made from ids (event types, device ids); false turns "
             "it into '_', for brokers that refuse '.' in topics (NATS)"},

    {.section = "http", .name = "bind", .type = KEY_STRING, AT(http.bind), .def = "0.0.0.0",
     .flags = KEY_REQUIRED, .help = "address the SmartRace webhook server listens on"},
    {.section = "http", .name = "port", .type = KEY_INT, AT(http.port), .def = "8080", .min = 1,
     .max = 65535, .help = "TCP port of the webhook server"},
    {.section = "http", .name = "token", .type = KEY_STRING, AT(http.token), .flags = KEY_SECRET,
     .check = check_url_safe, .file_key = "token_file",
     .help = "ingest token (secret), sent as ?token=... or Bearer; empty = no token required"},
    {.section = "http", .name = "token_file", .type = KEY_STRING, AT(http.token_file),
     .help = "file whose content is the ingest token"},
    {.section = "http", .name = "max_body", .type = KEY_SIZE, AT(http.max_body), .def = "65536",
     .min = 1, .max = 16 * MIB, .help = "largest request body in bytes; larger gets 413"},
    {.section = "http", .name = "cors_origin", .type = KEY_STRING, AT(http.cors_origin),
     .def = "*", .flags = KEY_REQUIRED, .help = "Access-Control-Allow-Origin sent on every answer"},
    {.section = "http", .name = "max_connections", .type = KEY_INT, AT(http.max_connections),
     .def = "512", .min = 1, .max = 10000,
     .help = "simultaneous HTTP connections (an open connection costs ~4 KiB)"},
    {.section = "http", .name = "max_connections_per_ip", .type = KEY_INT,
     AT(http.max_connections_per_ip), .def = "0", .min = 0, .max = 10000,
     .help = "connections one address may hold; 0 = no per-address limit"},
    {.section = "http", .name = "timeout_s", .type = KEY_INT, AT(http.timeout_s), .def = "10",
     .min = 1, .max = 3600, .help = "a connection that sends nothing for this long is closed"},
    {.section = "http", .name = "threads", .type = KEY_INT, AT(http.threads), .def = "2",
     .min = 1, .max = 64, .help = "HTTP worker threads"},
    {.section = "http", .name = "max_streams", .type = KEY_INT, AT(http.max_streams), .def = "8",
     .min = 0, .max = 1000,
     .help = "live page streams (GET /events) open at once; more get 503 and the page polls; "
             "each holds a connection, so it must stay well below max_connections"},

    {.section = "smartrace", .name = "enabled", .type = KEY_BOOL, AT(smartrace.enabled),
     .def = "true", .help = "accept SmartRace webhooks"},
    {.section = "smartrace", .name = "base_topic", .type = KEY_STRING, AT(smartrace.base_topic),
     .def = "smartrace", .flags = KEY_REQUIRED, .check = check_topic,
     .help = "topic prefix of SmartRace events and state"},
    {.section = "smartrace", .name = "qos", .type = KEY_INT, AT(smartrace.qos), .def = "1",
     .min = 0, .max = 2, .check = check_qos,
     .help = "QoS of event topics: 1 or 2 (0 could lose events already answered 200)"},
    {.section = "smartrace", .name = "keep_events", .type = KEY_INT, AT(smartrace.keep_events),
     .def = "20", .min = 0, .max = 1000,
     .help = "last accepted raw events kept in memory for GET /api/events (at most 1 MiB); "
             "0 = none"},
    {.section = "smartrace", .name = "record", .type = KEY_STRING, AT(smartrace.record),
     .help = "append every accepted event with its arrival time to this file (JSON lines that "
             "race2mqtt-replay plays back); empty = off"},

    {.section = "raceresult", .name = "enabled", .type = KEY_AUTO_BOOL, AT(raceresult.enabled),
     .def = "auto", .help = "poll the RACE RESULT API: true, false, or auto = when api_key is set"},
    {.section = "raceresult", .name = "base_url", .type = KEY_STRING, AT(raceresult.base_url),
     .def = "https://rest.devices.raceresult.com", .flags = KEY_REQUIRED,
     .check = check_http_url, .help = "REST API base URL"},
    {.section = "raceresult", .name = "customer_id", .type = KEY_STRING,
     AT(raceresult.customer_id), .check = check_url_safe,
     .help = "RACE RESULT customer number (required when enabled)"},
    {.section = "raceresult", .name = "api_key", .type = KEY_STRING, AT(raceresult.api_key),
     .flags = KEY_SECRET, .file_key = "api_key_file",
     .help = "API key (secret); prefer api_key_file or RACE2MQTT_RACERESULT_API_KEY"},
    {.section = "raceresult", .name = "api_key_file", .type = KEY_STRING,
     AT(raceresult.api_key_file), .help = "file whose content is the API key"},
    {.section = "raceresult", .name = "devices", .type = KEY_LIST, AT(raceresult.devices),
     .help = "comma-separated device ids to poll; empty = every device of the customer"},
    {.section = "raceresult", .name = "poll_interval_ms", .type = KEY_INT,
     AT(raceresult.poll_interval_ms), .def = "1000", .min = 100, .max = 3600000,
     .help = "time between polls of the device list"},
    {.section = "raceresult", .name = "base_topic", .type = KEY_STRING,
     AT(raceresult.base_topic), .def = "raceresult", .flags = KEY_REQUIRED,
     .check = check_topic, .help = "topic prefix of passings, status and commands"},
    {.section = "raceresult", .name = "commands_allowed", .type = KEY_LIST,
     AT(raceresult.commands_allowed), .def = SAFE_COMMANDS,
     .help = "decoder commands accepted from MQTT; empty = none"},
    {.section = "raceresult", .name = "command_group", .type = KEY_STRING,
     AT(raceresult.command_group), .check = check_share_name,
     .help = "shared subscription group so replicas run each command once; empty = none"},
    {.section = "raceresult", .name = "amount", .type = KEY_INT, AT(raceresult.amount),
     .def = "1000", .min = 1, .max = 10000,
     .help = "detections per request, at most 10000 (the API's limit); a page is held "
             "with its payloads: 10000 peaks at ~24 MiB, 1000 at ~13 MiB"},
    {.section = "raceresult", .name = "start", .type = KEY_CHOICE, AT(raceresult.start),
     .def = "file", .choices = start_choices,
     .help = "a device without a cursor starts at: file (its current file), all, or new"},
    {.section = "raceresult", .name = "recheck_s", .type = KEY_INT, AT(raceresult.recheck_s),
     .def = "300", .min = 1, .max = 86400,
     .help = "ask a device whose counters did not move for detections at least this often"},
    {.section = "raceresult", .name = "connect_timeout_ms", .type = KEY_INT,
     AT(raceresult.connect_timeout_ms), .def = "5000", .min = 100, .max = 120000,
     .help = "time to connect to the API"},
    {.section = "raceresult", .name = "timeout_ms", .type = KEY_INT, AT(raceresult.timeout_ms),
     .def = "30000", .min = 500, .max = 600000, .help = "time for a whole API request"},
    {.section = "raceresult", .name = "max_response", .type = KEY_SIZE,
     AT(raceresult.max_response), .def = "64M", .min = 64 * KIB, .max = 1 * GIB,
     .help = "largest API answer accepted (10000 detections are about 10 MiB)"},
    {.section = "raceresult", .name = "ca_file", .type = KEY_STRING, AT(raceresult.ca_file),
     .flags = KEY_READABLE, .help = "PEM CA bundle to verify base_url; empty = system default"},

    {.section = "homeassistant", .name = "enabled", .type = KEY_BOOL,
     AT(homeassistant.enabled), .def = "true", .help = "publish Home Assistant MQTT discovery"},
    {.section = "homeassistant", .name = "prefix", .type = KEY_STRING, AT(homeassistant.prefix),
     .def = "homeassistant", .flags = KEY_REQUIRED, .check = check_topic,
     .help = "Home Assistant discovery prefix"},
    {.section = "homeassistant", .name = "node_id", .type = KEY_STRING,
     AT(homeassistant.node_id), .check = check_node_id,
     .help = "this gateway's id in discovery topics and unique ids; default: mqtt.client_id "
             "with other characters than A-Z a-z 0-9 _ - replaced by _"},
    {.section = "homeassistant", .name = "birth_delay_ms", .type = KEY_INT,
     AT(homeassistant.birth_delay_ms), .def = "3000", .min = 0, .max = 600000,
     .help = "after Home Assistant says online on <prefix>/status, wait this long, then "
             "publish every config and all state again"},
    {.section = "homeassistant", .name = "stale_after_s", .type = KEY_INT,
     AT(homeassistant.stale_after_s), .def = "0", .min = 0, .max = 31536000,
     .help = "remove a controller or decoder from Home Assistant when it was not seen for "
             "this long; 0 = keep it until it leaves the session or the device list"},

    {.section = "store", .name = "dir", .type = KEY_STRING, AT(store.dir), .def = "./var",
     .flags = KEY_REQUIRED, .help = "state directory: journal and cursors"},
    {.section = "store", .name = "max_bytes", .type = KEY_SIZE, AT(store.max_bytes),
     .def = "128M", .min = 1 * MIB, .max = 1024 * GIB,
     .help = "journal size bound; when full, webhooks get 503"},
    {.section = "store", .name = "segment_bytes", .type = KEY_SIZE, AT(store.segment_bytes),
     .def = "8M", .min = 64 * KIB, .max = 1 * GIB, .help = "journal segment file size"},
    {.section = "store", .name = "flush_timeout_ms", .type = KEY_INT,
     AT(store.flush_timeout_ms), .def = "5000", .min = 0, .max = 600000,
     .help = "on stop, how long to keep publishing the journal to the broker"},

    {.section = "log", .name = "level", .type = KEY_STRING, AT(log.level), .def = "info",
     .flags = KEY_REQUIRED, .check = check_level, .help = "error, warn, info or debug"},
};
/* clang-format on */

#define N_KEYS (sizeof keys / sizeof keys[0])

/* ---- value checks ---- */

#define MQTT_URLS_MAX 8 /* mqtt.c's MQTT_URIS */

/* One URL, or a comma-separated list of them (spaces around commas allowed). */
static const char *check_mqtt_url(void *field)
{
    const char *url = *(char **)field;
    int n = 0;
    for (const char *s = url;; s++) {
        size_t len = strcspn(s, ",");
        const char *b = s, *e = s + len;
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (++n > MQTT_URLS_MAX)
            return "lists more than 8 URLs";
        if (b == e)
            return "has an empty entry in its list";
        if (memchr(b, ' ', (size_t)(e - b)) || memchr(b, '\t', (size_t)(e - b)))
            return "has a space inside a URL";
        const char *host;
        if (strncmp(b, "mqtt://", 7) == 0)
            host = b + 7;
        else if (strncmp(b, "mqtts://", 8) == 0)
            host = b + 8;
        else
            return "must start with mqtt:// or mqtts:// (each URL of a list)";
        if (host >= e || *host == ':' || *host == '/')
            return "has no host name";
        /* paho would take user:password@ as part of the host and the URL is
         * logged and shown on the page: credentials have their own keys. */
        if (memchr(host, '@', strcspn(host, "/,")))
            return "must not contain user:password@; use mqtt.username and mqtt.password";
        s += len;
        if (*s == '\0')
            return NULL;
    }
}

/* Strips trailing slashes, because the REST client appends "/token" etc. */
static const char *check_http_url(void *field)
{
    char *url = *(char **)field;
    const char *host;
    if (strncmp(url, "https://", 8) == 0)
        host = url + 8;
    else if (strncmp(url, "http://", 7) == 0)
        host = url + 7;
    else
        return "must start with https:// or http://";
    size_t n = strlen(url);
    while (n > (size_t)(host - url) && url[n - 1] == '/')
        url[--n] = '\0';
    if (*host == '\0' || *host == ':' || *host == '/')
        return "has no host name";
    return NULL;
}

/* A topic prefix: levels that contain no wildcard, not empty at either end. */
static const char *check_topic(void *field)
{
    const char *t = *(char **)field;
    /* Topics are built as <base>/<family>/<64-byte level> into fixed buffers
     * (SMARTRACE_TOPIC_MAX = 320), so the base must leave room for the rest. */
    if (strlen(t) > 128)
        return "longer than 128 bytes";
    if (strpbrk(t, "+#"))
        return "must not contain the MQTT wildcards '+' or '#'";
    if (t[0] == '/' || t[strlen(t) - 1] == '/')
        return "must not start or end with '/'";
    if (strstr(t, "//"))
        return "must not contain an empty level ('//')";
    return NULL;
}

static const char *check_share_name(void *field)
{
    if (strpbrk(*(char **)field, "/+#"))
        return "must not contain '/', '+' or '#' (it is one topic level)";
    return NULL;
}

/* Typed into a URL by hand (SmartRace's webhook field, REST paths). */
static const char *check_url_safe(void *field)
{
    for (const char *p = *(char **)field; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr("-._~", *p))
            return "may contain only A-Z a-z 0-9 - . _ ~ (it goes into a URL)";
    }
    return NULL;
}

static const char *check_qos(void *field)
{
    if (*(int *)field == 0)
        return "0 is not allowed: QoS 0 could drop events already answered 200 (use 1 or 2)";
    return NULL;
}

static const char *check_level(void *field)
{
    enum log_level level;
    if (log_level_parse(*(char **)field, &level) != 0)
        return "must be one of: error, warn, info, debug";
    return NULL;
}

/* ---- parsing one value ---- */

static void *field_of(struct config *cfg, const struct key *k)
{
    return (char *)cfg + k->offset;
}

static const void *const_field_of(const struct config *cfg, const struct key *k)
{
    return (const char *)cfg + k->offset;
}

static void int_store(void *field, size_t size, int64_t v)
{
    if (size == sizeof(int64_t)) {
        memcpy(field, &v, sizeof v);
    } else {
        int32_t w = (int32_t)v;
        memcpy(field, &w, sizeof w);
    }
}

static int64_t int_load(const void *field, size_t size)
{
    if (size == sizeof(int64_t)) {
        int64_t v;
        memcpy(&v, field, sizeof v);
        return v;
    }
    int32_t w;
    memcpy(&w, field, sizeof w);
    return w;
}

/*
 * A value as it may appear in an error: at most QUOTE_MAX bytes, control
 * characters as '?', in quotes. Never called for a secret key.
 */
static const char *quoted(const char *value, char *buf, size_t len)
{
    char text[QUOTE_MAX + 1];
    size_t n = 0;
    for (; value[n] && n < QUOTE_MAX; n++)
        text[n] = iscntrl((unsigned char)value[n]) ? '?' : value[n];
    text[n] = '\0';
    snprintf(buf, len, "'%s'%s", text, value[n] ? "..." : "");
    return buf;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Decimal, sign allowed, nothing before or after; -1 if not a number, -2 if beyond int64. */
static int parse_int64(const char *s, int64_t *out, const char **end)
{
    const char *p = s + (*s == '-' || *s == '+');
    if (!isdigit((unsigned char)*p))
        return -1;
    char *e;
    errno = 0;
    long long v = strtoll(s, &e, 10);
    if (errno == ERANGE)
        return -2;
    *out = v;
    if (end)
        *end = e;
    else if (*e != '\0')
        return -1;
    return 0;
}

static int parse_size(const char *s, int64_t *out)
{
    static const struct {
        const char *suffix;
        int64_t unit;
    } units[] = {
        {"", 1},     {"K", KIB},   {"KB", KIB}, {"KiB", KIB}, {"M", MIB},
        {"MB", MIB}, {"MiB", MIB}, {"G", GIB},  {"GB", GIB},  {"GiB", GIB},
    };
    const char *end;
    int64_t v;
    int rc = parse_int64(s, &v, &end);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].suffix) == 0) {
            if (v > INT64_MAX / units[i].unit || v < INT64_MIN / units[i].unit)
                return -2;
            *out = v * units[i].unit;
            return 0;
        }
    }
    return -1;
}

/* Trims blanks around each item and refuses empty items and odd characters. */
bool config_list_has(const char *list, const char *item)
{
    size_t n = strlen(item);
    for (const char *s = list; s && *s;) {
        size_t len = strcspn(s, ",");
        if (len == n && memcmp(s, item, n) == 0)
            return true;
        s += len + (s[len] == ',');
    }
    return false;
}

static int normalise_list(const char *in, char *out, char *why, size_t whylen)
{
    size_t n = 0;
    const char *p = in;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *stop = p;
        while (stop > start && (stop[-1] == ' ' || stop[-1] == '\t'))
            stop--;
        if (stop == start) {
            snprintf(why, whylen, "empty item in the comma-separated list");
            return -1;
        }
        for (const char *c = start; c < stop; c++) {
            if (!isalnum((unsigned char)*c) && !strchr("._-", *c)) {
                snprintf(why, whylen, "list items may contain only A-Z a-z 0-9 . _ -");
                return -1;
            }
        }
        if (n > 0)
            out[n++] = ',';
        memcpy(out + n, start, (size_t)(stop - start));
        n += (size_t)(stop - start);
        if (*p == '\0')
            break;
        p++;
    }
    out[n] = '\0';
    return 0;
}

static int set_string(struct config *cfg, const struct key *k, const char *value, char *why,
                      size_t whylen)
{
    char **slot = field_of(cfg, k);
    char *copy = NULL;

    if (strlen(value) > VALUE_MAX) {
        snprintf(why, whylen, "longer than %d bytes", VALUE_MAX);
        return -1;
    }
    for (const char *p = value; *p; p++) {
        if (iscntrl((unsigned char)*p)) {
            snprintf(why, whylen, "contains a control character");
            return -1;
        }
    }
    /* Values end up in topics (which MQTT requires to be UTF-8) and in the
     * JSON of race2mqtt/bridge/info. Found by fuzz_config. */
    if (jsonutil_utf8_check((const unsigned char *)value, strlen(value)) != strlen(value)) {
        snprintf(why, whylen, "is not valid UTF-8");
        return -1;
    }
    if (k->type == KEY_LIST && *value) {
        copy = malloc(strlen(value) + 1);
        if (!copy || normalise_list(value, copy, why, whylen) != 0) {
            if (!copy)
                snprintf(why, whylen, "out of memory");
            free(copy);
            return -1;
        }
    } else if (*value) {
        copy = strdup(value);
        if (!copy) {
            snprintf(why, whylen, "out of memory");
            return -1;
        }
    } else if (k->flags & KEY_REQUIRED) {
        snprintf(why, whylen, "must not be empty");
        return -1;
    }
    free(*slot);
    *slot = copy;
    if (!copy)
        return 0;

    if ((k->flags & KEY_READABLE) && access(copy, R_OK) != 0) {
        char q[QUOTE_MAX + 8];
        snprintf(why, whylen, "cannot read %s: %s", quoted(copy, q, sizeof q), strerror(errno));
        return -1;
    }
    return 0;
}

/*
 * Parses `value` for key k into cfg. On error returns -1 with the reason in
 * why; the reason quotes the value only when k is not secret.
 */
static int key_set(struct config *cfg, const struct key *k, const char *value, char *why,
                   size_t whylen)
{
    void *field = field_of(cfg, k);
    char q[QUOTE_MAX + 8];
    int64_t v = 0;
    int rc;

    if (k->flags & KEY_SECRET)
        snprintf(q, sizeof q, "(value not shown)");
    else
        quoted(value, q, sizeof q);

    switch (k->type) {
    case KEY_STRING:
    case KEY_LIST:
        if (set_string(cfg, k, value, why, whylen) != 0)
            return -1;
        if (!*(char **)field || !k->check)
            return 0;
        break;
    case KEY_INT:
    case KEY_SIZE:
        rc = k->type == KEY_INT ? parse_int64(value, &v, NULL) : parse_size(value, &v);
        if (rc == -1) {
            snprintf(why, whylen, "%s: %s",
                     k->type == KEY_INT ? "not an integer"
                                        : "not a size (bytes, or a number with K, M or G)",
                     q);
            return -1;
        }
        if (rc == -2 || v < k->min || v > k->max) {
            snprintf(why, whylen, "out of range: %s (allowed %lld..%lld)", q, (long long)k->min,
                     (long long)k->max);
            return -1;
        }
        int_store(field, k->size, v);
        break;
    case KEY_BOOL: {
        bool b;
        if (parse_bool(value, &b) != 0) {
            snprintf(why, whylen, "not a boolean (true/false, yes/no, on/off, 1/0): %s", q);
            return -1;
        }
        *(bool *)field = b;
        break;
    }
    case KEY_AUTO_BOOL: {
        bool b;
        if (strcasecmp(value, "auto") == 0) {
            *(int *)field = -1;
        } else if (parse_bool(value, &b) == 0) {
            *(int *)field = b;
        } else {
            snprintf(why, whylen, "must be auto or a boolean (true/false, yes/no, on/off, 1/0): %s",
                     q);
            return -1;
        }
        break;
    }
    case KEY_CHOICE: {
        const struct choice *c = k->choices;
        while (c->name && strcmp(c->name, value) != 0)
            c++;
        if (!c->name) {
            char names[128] = "";
            for (c = k->choices; c->name; c++) {
                size_t n = strlen(names);
                snprintf(names + n, sizeof names - n, "%s%s", n ? ", " : "", c->name);
            }
            snprintf(why, whylen, "must be one of: %s; not %s", names, q);
            return -1;
        }
        *(int *)field = c->value;
        break;
    }
    }

    if (k->check) {
        const char *reason = k->check(field);
        if (reason) {
            snprintf(why, whylen, "%s", reason);
            return -1;
        }
    }
    return 0;
}

static const struct key *key_find(const char *section, const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    }
    return NULL;
}

static bool section_known(const char *section)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        if (strcmp(keys[i].section, section) == 0)
            return true;
    }
    return false;
}

/* ---- defaults and free ---- */

static char *default_client_id(void)
{
    char host[65] = "";
    char id[96];
    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "unknown");
    snprintf(id, sizeof id, "race2mqtt-%s", host);
    return strdup(id);
}

void config_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_KEYS; i++) {
        char why[512];
        if (keys[i].def && key_set(cfg, &keys[i], keys[i].def, why, sizeof why) != 0)
            log_error("config: built-in default of %s.%s refused: %s", keys[i].section,
                      keys[i].name, why);
    }
    cfg->mqtt.client_id = default_client_id();
}

void config_free(struct config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < N_KEYS; i++) {
        if (keys[i].type != KEY_STRING && keys[i].type != KEY_LIST)
            continue;
        char **slot = field_of(cfg, &keys[i]);
        if (*slot && (keys[i].flags & KEY_SECRET))
            explicit_bzero(*slot, strlen(*slot));
        free(*slot);
        *slot = NULL;
    }
}

/* ---- loading ---- */

/* Where a key's value came from, for error messages after the fact. */
struct origin {
    int line; /* > 0: line in the file */
    bool env; /* from RACE2MQTT_<SECTION>_<KEY> */
};

struct loader {
    struct config *cfg;
    const char *path;
    FILE *fp;
    int line;     /* lines handed to inih so far */
    int err_line; /* line of the first error found by the reader or handler; 0 = none */
    bool failed;
    char *err;
    size_t errlen;
    struct origin origin[N_KEYS];
};

static void fail(struct loader *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records the first error only: later ones are usually consequences. */
static void fail(struct loader *l, const char *fmt, ...)
{
    if (l->failed)
        return;
    l->failed = true;
    if (!l->err || l->errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->err, l->errlen, fmt, ap);
    va_end(ap);
}

static void env_name(const struct key *k, char *buf, size_t len)
{
    snprintf(buf, len, "RACE2MQTT_%s_%s", k->section, k->name);
    for (char *p = buf; *p; p++)
        *p = (char)toupper((unsigned char)*p);
}

/* An error about key k, located where its value came from. */
static void fail_key(struct loader *l, const struct key *k, const char *reason)
{
    const struct origin *o = &l->origin[k - keys];
    if (o->env) {
        char var[96];
        env_name(k, var, sizeof var);
        fail(l, "environment %s: %s", var, reason);
    } else if (o->line > 0) {
        fail(l, "%s:%d: %s.%s: %s", l->path, o->line, k->section, k->name, reason);
    } else {
        fail(l, "%s.%s: %s", k->section, k->name, reason);
    }
}

/*
 * ini_reader: fgets plus the limits described at the top of the file.
 * Returning NULL ends the parse, which we do at the first error.
 */
static char *read_line(char *str, int num, void *stream)
{
    struct loader *l = stream;
    if (l->failed || !fgets(str, num, l->fp))
        return NULL;
    l->line++;
    size_t n = strlen(str);
    if (n > 0 && str[n - 1] != '\n' && !feof(l->fp)) {
        l->err_line = l->line;
        fail(l, "%s:%d: line too long (inih reads at most %d characters per line)", l->path,
             l->line, num - 3);
        return NULL;
    }
    size_t lead = strspn(str, " \t");
    memmove(str, str + lead, n - lead + 1);
    return str;
}

static int on_value(void *user, const char *section, const char *name, const char *value)
{
    struct loader *l = user;
    char why[512];
    const struct key *k = key_find(section, name);

    if (l->failed)
        return 0;
    if (!k) {
        l->err_line = l->line;
        if (!*section)
            fail(l, "%s:%d: %s: key outside any section (put it under [mqtt], [http], ...)",
                 l->path, l->line, name);
        else if (!section_known(section))
            fail(l, "%s:%d: %s.%s: unknown section [%s]", l->path, l->line, section, name, section);
        else
            fail(l, "%s:%d: %s.%s: unknown key", l->path, l->line, section, name);
        return 0;
    }
    l->origin[k - keys] = (struct origin){.line = l->line};
    if (key_set(l->cfg, k, value, why, sizeof why) != 0) {
        l->err_line = l->line;
        fail_key(l, k, why);
        return 0;
    }
    return 1;
}

static int load_file(struct loader *l)
{
    l->fp = fopen(l->path, "re");
    if (!l->fp) {
        fail(l, "%s: cannot open: %s", l->path, strerror(errno));
        return -1;
    }
    int rc = ini_parse_stream(read_line, l, on_value, l);
    if (ferror(l->fp) && !l->failed)
        fail(l, "%s: read error", l->path);
    fclose(l->fp);
    l->fp = NULL;

    /* inih's own complaint (a line with no '=' or ']') came before ours. */
    if (rc > 0 && (l->err_line == 0 || rc < l->err_line)) {
        l->failed = false;
        fail(l, "%s:%d: syntax error: expected [section] or key = value", l->path, rc);
    }
    return l->failed ? -1 : 0;
}

extern char **environ;

/*
 * RACE2MQTT_<SECTION>_<KEY> variables that name a section of ours but no key
 * are mistakes (RACE2MQTT_MQTT_PASWORD would otherwise mean "no password" in
 * silence). Other RACE2MQTT_* names (RACE2MQTT_BIN of the tests) are not ours.
 */
static int check_env_names(struct loader *l)
{
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "RACE2MQTT_", 10) != 0)
            continue;
        size_t nlen = strcspn(*e, "=");
        const struct key *section_of = NULL;
        bool known = false;
        for (size_t i = 0; i < N_KEYS && !known; i++) {
            char var[96];
            env_name(&keys[i], var, sizeof var);
            if (strlen(var) == nlen && strncmp(var, *e, nlen) == 0)
                known = true;
            size_t slen = strlen(keys[i].section);
            if (nlen > 11 + slen && strncasecmp(*e + 10, keys[i].section, slen) == 0 &&
                (*e)[10 + slen] == '_')
                section_of = &keys[i];
        }
        if (!known && section_of) {
            fail(l, "environment %.*s: no such key in section [%s]", (int)(nlen < 80 ? nlen : 80),
                 *e, section_of->section);
            return -1;
        }
    }
    return 0;
}

static int load_env(struct loader *l)
{
    if (check_env_names(l) != 0)
        return -1;
    for (size_t i = 0; i < N_KEYS; i++) {
        char var[96], why[512];
        env_name(&keys[i], var, sizeof var);
        const char *value = getenv(var);
        if (!value)
            continue;
        l->origin[i] = (struct origin){.env = true};
        if (key_set(l->cfg, &keys[i], value, why, sizeof why) != 0) {
            fail_key(l, &keys[i], why);
            return -1;
        }
    }
    return 0;
}

/*
 * Reads a secret file into buf (SECRET_FILE_MAX + 1 bytes) and drops one
 * trailing "\n" or "\r\n". On error returns -1 with a reason in why that
 * never quotes the content.
 */
static int read_secret(const char *path, char *buf, char *why, size_t whylen)
{
    int rc = -1;
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        return -1;
    }
    for (;;) {
        ssize_t got = read(fd, buf + n, SECRET_FILE_MAX + 1 - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            snprintf(why, whylen, "%s", strerror(errno));
            goto out;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        if (n > SECRET_FILE_MAX) {
            snprintf(why, whylen, "larger than %d bytes", SECRET_FILE_MAX);
            goto out;
        }
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    if (n == 0)
        snprintf(why, whylen, "is empty");
    else if (memchr(buf, '\0', n))
        snprintf(why, whylen, "contains a NUL byte");
    else
        rc = 0;
out:
    close(fd);
    return rc;
}

static int load_secret_files(struct loader *l)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct key *k = &keys[i];
        if (!k->file_key)
            continue;
        const struct key *fk = key_find(k->section, k->file_key);
        const char *path = *(char **)field_of(l->cfg, fk);
        char **secret = field_of(l->cfg, k);
        char why[512], q[QUOTE_MAX + 8];
        if (!path)
            continue;
        if (*secret) {
            snprintf(why, sizeof why, "%s.%s is also set; set only one of them", k->section,
                     k->name);
            fail_key(l, fk, why);
            return -1;
        }
        char buf[SECRET_FILE_MAX + 1];
        int rc = read_secret(path, buf, why, sizeof why);
        if (rc == 0)
            rc = key_set(l->cfg, k, buf, why, sizeof why);
        explicit_bzero(buf, sizeof buf);
        if (rc != 0) {
            char msg[768];
            snprintf(msg, sizeof msg, "secret file %s: %s", quoted(path, q, sizeof q), why);
            fail_key(l, fk, msg);
            return -1;
        }
        l->origin[i] = l->origin[fk - keys];
    }
    return 0;
}

/* Rules that involve more than one key. */
static int config_validate(struct loader *l)
{
    struct config *cfg = l->cfg;
    const struct key *enabled = key_find("raceresult", "enabled");

    if (cfg->raceresult.enabled == -1) {
        cfg->raceresult.enabled = cfg->raceresult.api_key != NULL;
        if (cfg->raceresult.enabled && !cfg->raceresult.customer_id) {
            fail_key(l, key_find("raceresult", "api_key"),
                     "raceresult.customer_id is required when an API key is set "
                     "(or set raceresult.enabled = false)");
            return -1;
        }
    }
    if (cfg->raceresult.enabled == 1) {
        if (!cfg->raceresult.api_key) {
            fail_key(l, enabled, "RACE RESULT is enabled but raceresult.api_key is not set");
            return -1;
        }
        if (!cfg->raceresult.customer_id) {
            fail_key(l, enabled, "RACE RESULT is enabled but raceresult.customer_id is not set");
            return -1;
        }
    }

    if (!cfg->homeassistant.node_id) {
        char id[65];
        size_t n = 0;
        for (const char *p = cfg->mqtt.client_id; *p && n < sizeof id - 1; p++)
            id[n++] = isalnum((unsigned char)*p) || *p == '-' ? *p : '_';
        id[n] = '\0';
        cfg->homeassistant.node_id = strdup(n ? id : "race2mqtt");
        if (!cfg->homeassistant.node_id) {
            fail_key(l, key_find("homeassistant", "node_id"), "out of memory");
            return -1;
        }
    }

    /* Streams wait on open connections: half the slots stay for SmartRace. */
    if (cfg->http.max_streams > cfg->http.max_connections / 2) {
        /* The default follows a small max_connections; only an explicit
         * max_streams that leaves SmartRace too few slots is an error. */
        const struct key *k = key_find("http", "max_streams");
        if (!l->origin[k - keys].line && !l->origin[k - keys].env) {
            cfg->http.max_streams = cfg->http.max_connections / 2;
        } else {
            fail_key(l, k, "http.max_streams must be at most half of http.max_connections");
            return -1;
        }
    }

    if (cfg->store.max_bytes < cfg->store.segment_bytes) {
        const struct key *k = key_find("store", "max_bytes");
        if (!l->origin[k - keys].line && !l->origin[k - keys].env)
            k = key_find("store", "segment_bytes");
        fail_key(l, k, "store.max_bytes must be at least store.segment_bytes");
        return -1;
    }
    return 0;
}

int config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
    struct loader *l = calloc(1, sizeof *l);
    int rc = -1;

    config_defaults(cfg);
    if (err && errlen)
        err[0] = '\0';
    if (!l) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return -1;
    }
    l->cfg = cfg;
    l->path = path;
    l->err = err;
    l->errlen = errlen;

    if (path && load_file(l) != 0)
        goto out;
    if (load_env(l) != 0 || load_secret_files(l) != 0 || config_validate(l) != 0)
        goto out;
    rc = 0;
out:
    free(l);
    return rc;
}

/* ---- output ---- */

/* k's value as text; NULL for an unset string; "***" for a set secret. */
static const char *key_text(const struct config *cfg, const struct key *k, char *buf, size_t len)
{
    const void *field = const_field_of(cfg, k);
    switch (k->type) {
    case KEY_STRING:
    case KEY_LIST: {
        const char *s = *(char *const *)field;
        return s && (k->flags & KEY_SECRET) ? "***" : s;
    }
    case KEY_INT:
    case KEY_SIZE:
        snprintf(buf, len, "%lld", (long long)int_load(field, k->size));
        return buf;
    case KEY_BOOL:
        return *(const bool *)field ? "true" : "false";
    case KEY_AUTO_BOOL: {
        int v = *(const int *)field;
        return v < 0 ? "auto" : v ? "true" : "false";
    }
    case KEY_CHOICE:
        for (const struct choice *c = k->choices; c->name; c++) {
            if (c->value == *(const int *)field)
                return c->name;
        }
        snprintf(buf, len, "%d", *(const int *)field);
        return buf;
    }
    return NULL;
}

void config_print(const struct config *cfg, FILE *out)
{
    const char *section = NULL;
    fprintf(out, "# race2mqtt effective configuration (secrets shown as ***)\n");
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct key *k = &keys[i];
        char buf[32];
        if (!section || strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(out, "\n[%s]\n", section);
        }
        const char *text = key_text(cfg, k, buf, sizeof buf);
        fprintf(out, "# %s\n%s =%s%s\n", k->help, k->name, text ? " " : "", text ? text : "");
    }
}

struct json_object *config_to_json(const struct config *cfg)
{
    struct json_object *root = json_object_new_object();
    struct json_object *sec = NULL;
    const char *section = NULL;

    if (!root)
        return NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct key *k = &keys[i];
        const void *field = const_field_of(cfg, k);
        struct json_object *v = NULL;
        char buf[32];

        if (!section || strcmp(section, k->section) != 0) {
            section = k->section;
            sec = json_object_new_object();
            if (!sec || json_object_object_add(root, section, sec) != 0) {
                json_object_put(sec);
                json_object_put(root);
                return NULL;
            }
        }
        switch (k->type) {
        case KEY_INT:
        case KEY_SIZE:
            v = json_object_new_int64(int_load(field, k->size));
            break;
        case KEY_BOOL:
            v = json_object_new_boolean(*(const bool *)field);
            break;
        case KEY_AUTO_BOOL:
            if (*(const int *)field >= 0)
                v = json_object_new_boolean(*(const int *)field);
            else
                v = json_object_new_string("auto");
            break;
        default: {
            const char *text = key_text(cfg, k, buf, sizeof buf);
            v = text ? json_object_new_string(text) : NULL;
            break;
        }
        }
        json_object_object_add(sec, k->name, v);
    }
    return root;
}
