/*
 * main.c - race2mqtt: SmartRace webhooks (and later RACE RESULT) to MQTT.
 *
 * The data flow, in start order:
 *
 *   config -> log -> journal -> ingest (state restored) -> MQTT + publisher
 *          -> RACE RESULT poller -> HTTP (last: input is accepted only once
 *             every output exists)
 *
 *   POST body --http--> ingest --append--> journal --commit--> http answers 200
 *                                              \--> publisher --QoS 1--> broker
 *   REST API --rest--> rrpoll --QoS 1--> broker --PUBACK--> cursor on disk
 *   broker --<base>/<dev>/cmd--> cmdworker --rest--> cmd endpoint --> response
 *   race state + device list --> hass --> <prefix>/device/<node>/.../config
 *   accepted events, refusals, devices --> board --> GET /, /api/state, /events
 *   publisher loop + HTTP /healthz --> watchdog --> systemd (READY, WATCHDOG)
 *
 * Shutdown runs the exact reverse: stop accepting, drain to the broker within
 * store.flush_timeout_ms, say "offline", close the journal (which keeps the
 * rest for the next start).
 *
 * Signals are blocked in every thread and taken with sigwait() here, so no
 * code runs in signal context at all.
 */
#include <errno.h>
#include <getopt.h>
#include <ifaddrs.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <json-c/json.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "race2mqtt/board.h"
#include "race2mqtt/cmdworker.h"
#include "race2mqtt/config.h"
#include "race2mqtt/hass.h"
#include "race2mqtt/http.h"
#include "race2mqtt/ingest.h"
#include "race2mqtt/journal.h"
#include "race2mqtt/log.h"
#include "race2mqtt/metrics.h"
#include "race2mqtt/mqtt.h"
#include "race2mqtt/publisher.h"
#include "race2mqtt/raceresult.h"
#include "race2mqtt/recording.h"
#include "race2mqtt/rest.h"
#include "race2mqtt/rrpoll.h"
#include "race2mqtt/topic.h"
#include "race2mqtt/watchdog.h"

#define DEFAULT_CONFIG "config/race2mqtt.conf"
#define EXIT_CONFIG 2
#define HTTP_DRAIN_MS 2000
#define MQTT_OFFLINE_MS 2000

struct gateway {
    struct config cfg;
    struct journal *journal;
    struct ingest *ingest;
    struct publisher *publisher;
    struct mqtt *mqtt;
    struct rest_auth *rest_auth;
    struct rrpoll *rrpoll;
    struct cmdworker *cmdworker;
    struct hass *hass;
    struct board *board;
    struct recorder *recorder; /* smartrace.record; NULL = off */
    bool record_failing;       /* a recording problem is logged when it starts, not per event */
    struct http *_Atomic http;
    struct watchdog *watchdog; /* NULL unless systemd asked for notifications */
    uint64_t watched_rounds;   /* publisher_rounds() at the watchdog's last check */
    uint64_t started_ms;
    char lan_url[128]; /* what to type into SmartRace */
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: race2mqtt [-c FILE] [-v] [--check-config]\n"
            "Bridges SmartRace webhooks and RACE RESULT decoders to an MQTT broker.\n\n"
            "  -c, --config FILE   configuration file (default: " DEFAULT_CONFIG " if it exists)\n"
            "  -v, --verbose       log at debug level\n"
            "      --check-config  validate, print the effective configuration (secrets\n"
            "                      masked) and exit\n"
            "  -h, --help          show this help and exit\n"
            "  -V, --version       show the version and exit\n\n"
            "Environment variables RACE2MQTT_<SECTION>_<KEY> override the file,\n"
            "e.g. RACE2MQTT_MQTT_URL=mqtt://broker:1883 RACE2MQTT_HTTP_PORT=9000.\n"
            "Exit status: 0 after a clean stop, 1 on a runtime error, 2 on a configuration "
            "error.\n");
}

/* Journal flusher thread: wake the publisher, answer the waiting requests. */
static void on_commit(void *ctx, uint64_t first, uint64_t last, bool ok)
{
    struct gateway *g = ctx;
    metrics_inc(METRIC_JOURNAL_COMMITS);
    if (g->publisher) {
        if (!ok)
            publisher_commit_failed(g->publisher, first, last);
        publisher_wake(g->publisher);
    }
    http_committed(atomic_load(&g->http), first, last, ok);
}

/* journal_append(), under ingest's lock: the publisher may read it ahead. */
static void on_append(void *ctx)
{
    struct gateway *g = ctx;
    if (g->publisher)
        publisher_wake(g->publisher);
}

/* paho's callbacks, routed by tag: the poller's carry RRPOLL_TAG_BIT. */
static void mqtt_connected(void *ctx)
{
    struct gateway *g = ctx;
    publisher_connected(g->publisher);
    if (g->rrpoll)
        rrpoll_connected(g->rrpoll);
    if (g->cmdworker)
        cmdworker_connected(g->cmdworker);
    hass_connected(g->hass);
}

static void mqtt_message(void *ctx, const struct mqtt_message *msg)
{
    struct gateway *g = ctx;
    if (hass_message(g->hass, msg))
        return;
    if (g->cmdworker)
        cmdworker_message(g->cmdworker, msg);
}

/* Home Assistant restarted: everything retained once more. */
static void republish_retained(void *ctx)
{
    struct gateway *g = ctx;
    publisher_republish(g->publisher);
    if (g->rrpoll)
        rrpoll_republish(g->rrpoll);
}

/* The poller's device list, for discovery. */
static void decoder_seen(void *ctx, const struct rr_device *d)
{
    struct gateway *g = ctx;
    struct hass_decoder hd = {
        .level = d->level,
        .name = d->name,
        .model = rr_device_type_name(d->type),
        .connected = d->connected,
        .has_file_no = d->has_file_no,
        .has_records = d->has_records,
        .file_no = d->file_no,
        .records = d->records,
    };
    hass_decoder_seen(g->hass, &hd);
    struct board_device bd = {
        .level = d->level,
        .name = d->name,
        .type = hd.model,
        .connected = d->connected,
        .has_file = d->has_file_no,
        .has_records = d->has_records,
        .file = d->file_no,
        .records = d->records,
    };
    board_rr_device(g->board, &bd);
}

static void decoders_listed(void *ctx)
{
    struct gateway *g = ctx;
    hass_decoders_listed(g->hass);
    board_rr_listed(g->board);
}

static void decoder_status(void *ctx, const char *level, const char *payload, size_t len)
{
    struct gateway *g = ctx;
    board_rr_status(g->board, level, payload, len);
}

static void decoder_passing(void *ctx, const char *level, const char *payload, size_t len)
{
    struct gateway *g = ctx;
    board_rr_passing(g->board, level, payload, len);
}

static void decoder_api(void *ctx, bool ok, const char *error)
{
    struct gateway *g = ctx;
    board_rr_api(g->board, ok, error);
}

/* ingest, under its lock, in seq order: only hand-offs here. */
static void event_accepted(void *ctx, const struct ingest_accepted *a)
{
    struct gateway *g = ctx;
    board_accepted(g->board, a);
    if (!g->recorder)
        return;
    /* Under ingest's lock, so the lines are in seq order. */
    if (recorder_append(g->recorder, (uint64_t)a->at_ms, a->body, a->len) != 0) {
        if (!g->record_failing)
            log_warn("recording %s: cannot append seq %llu: %s", g->cfg.smartrace.record,
                     (unsigned long long)a->seq, strerror(errno));
        g->record_failing = true;
    } else if (g->record_failing) {
        log_info("recording %s: appending again", g->cfg.smartrace.record);
        g->record_failing = false;
    }
}

static void mqtt_lost(void *ctx, const char *cause)
{
    struct gateway *g = ctx;
    (void)cause;
    publisher_connection_lost(g->publisher);
    if (g->rrpoll)
        rrpoll_connection_lost(g->rrpoll);
}

static void mqtt_delivered(void *ctx, uint64_t tag)
{
    struct gateway *g = ctx;
    if (tag & RRPOLL_TAG_BIT) {
        if (g->rrpoll)
            rrpoll_delivered(g->rrpoll, tag);
    } else {
        publisher_delivered(g->publisher, tag);
    }
}

static void mqtt_failed(void *ctx, uint64_t tag)
{
    struct gateway *g = ctx;
    if (tag & RRPOLL_TAG_BIT) {
        if (g->rrpoll)
            rrpoll_failed(g->rrpoll, tag);
    } else {
        publisher_failed(g->publisher, tag);
    }
}

static bool broker_ready(void *ctx)
{
    struct gateway *g = ctx;
    return mqtt_is_connected(g->mqtt);
}

/* The journal's numbers, and how many of its events the broker has not
 * acknowledged yet: /metrics, /api/state and the systemd status say both. */
static uint64_t journal_backlog(const struct gateway *g, struct journal_stats *st)
{
    journal_get_stats(g->journal, st);
    uint64_t acked = publisher_acked(g->publisher);
    return st->last_seq > acked ? st->last_seq - acked : 0;
}

static char *render_metrics(void *ctx, size_t *len)
{
    struct gateway *g = ctx;
    struct journal_stats st;
    uint64_t waiting = journal_backlog(g, &st);
    struct metrics_gauges gauges = {
        .broker_connected = mqtt_is_connected(g->mqtt),
        .mqtt_reconnects = mqtt_reconnects(g->mqtt),
        .mqtt_stalled = mqtt_stalled(g->mqtt),
        .queue_depth = waiting,
        .journal_bytes = st.bytes,
        .journal_max_bytes = st.max_bytes,
        .last_seq = st.last_seq,
        .http_streams = http_streams(atomic_load(&g->http)),
        .broker_server = mqtt_server_index(g->mqtt),
        .broker_url = mqtt_server(g->mqtt),
        .broker_protocol = mqtt_protocol(g->mqtt),
    };
    return metrics_render(&gauges, len);
}

/* The watchdog's thread: the publisher went round and HTTP answers. */
static bool gateway_alive(void *ctx, int budget_ms, char *why, size_t cap)
{
    struct gateway *g = ctx;
    uint64_t rounds = publisher_rounds(g->publisher);
    if (rounds == g->watched_rounds) {
        snprintf(why, cap, "the publisher thread has not gone round its loop since the last check");
        return false;
    }
    g->watched_rounds = rounds;
    struct http *h = atomic_load(&g->http);
    if (h && http_probe(h, budget_ms) != 0) {
        snprintf(why, cap, "the HTTP server did not answer its own GET /healthz within %d ms",
                 budget_ms);
        return false;
    }
    return true;
}

static void gateway_status(void *ctx, char *line, size_t cap)
{
    struct gateway *g = ctx;
    struct journal_stats st;
    uint64_t waiting = journal_backlog(g, &st);
    const char *server = mqtt_server(g->mqtt);
    int n = mqtt_is_connected(g->mqtt)
                ? snprintf(line, cap, "broker connected (%s, MQTT %s)", server ? server : "?",
                           mqtt_protocol(g->mqtt))
                : snprintf(line, cap, "broker not connected (%s)", g->cfg.mqtt.url);
    if (n > 0 && (size_t)n < cap)
        snprintf(line + n, cap - (size_t)n, "; last event seq %llu, %llu waiting in the journal",
                 (unsigned long long)st.last_seq, (unsigned long long)waiting);
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void add(json_object *o, const char *key, json_object *v)
{
    json_object_object_add(o, key, v);
}

/* GET /api/state and each /events frame, without now_ms (see
 * README "GET /api/state"). Any HTTP worker and the stream thread. */
static json_object *render_state(void *ctx)
{
    struct gateway *g = ctx;
    json_object *o = json_object_new_object();
    add(o, "api", json_object_new_int(1));

    json_object *gw = json_object_new_object();
    add(gw, "version", json_object_new_string(RACE2MQTT_VERSION));
    add(gw, "started_ms", json_object_new_int64((int64_t)g->started_ms));
    add(gw, "node_id", json_object_new_string(g->cfg.homeassistant.node_id));
    add(o, "gateway", gw);

    struct journal_stats st;
    uint64_t waiting = journal_backlog(g, &st);
    uint64_t since = mqtt_connected_since_ms(g->mqtt);
    json_object *b = json_object_new_object();
    /* config refuses user info in the URL: nothing secret in it. */
    add(b, "url", json_object_new_string(g->cfg.mqtt.url));
    const char *server = mqtt_server(g->mqtt);
    add(b, "server", server ? json_object_new_string(server) : NULL);
    add(b, "protocol", json_object_new_string(mqtt_protocol(g->mqtt)));
    add(b, "connected", json_object_new_boolean(since != 0));
    add(b, "connected_since_ms", since ? json_object_new_int64((int64_t)since) : NULL);
    add(b, "reconnects", json_object_new_int64((int64_t)mqtt_reconnects(g->mqtt)));
    add(b, "stalled", json_object_new_boolean(mqtt_stalled(g->mqtt)));
    add(b, "queue_depth", json_object_new_int64((int64_t)waiting));
    add(b, "journal_bytes", json_object_new_int64((int64_t)st.bytes));
    add(b, "journal_max_bytes", json_object_new_int64((int64_t)st.max_bytes));
    add(o, "broker", b);

    json_object *sr = board_smartrace_json(g->board);
    if (!sr)
        sr = json_object_new_object();
    add(sr, "enabled", json_object_new_boolean(g->cfg.smartrace.enabled));
    add(sr, "url", json_object_new_string(g->lan_url));
    add(sr, "token_required", json_object_new_boolean(g->cfg.http.token != NULL));
    add(sr, "cors_origin", json_object_new_string(g->cfg.http.cors_origin));
    add(o, "smartrace", sr);
    add(o, "race", ingest_view(g->ingest));

    json_object *rr = board_raceresult_json(g->board);
    if (!rr)
        rr = json_object_new_object();
    add(rr, "enabled", json_object_new_boolean(g->cfg.raceresult.enabled == 1));
    add(o, "raceresult", rr);
    return o;
}

/* mkdir -p for the state directory. */
static int make_dirs(const char *path, char *err, size_t errlen)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        snprintf(err, errlen, "store.dir: path too long");
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "store.dir: cannot create %.300s: %s", buf, strerror(errno));
                return -1;
            }
            *p = c;
            if (c == '\0')
                return 0;
        }
    }
}

/* The address a tablet on the LAN would use: the bind address, or for
 * 0.0.0.0 the first non-loopback IPv4 address of this machine. */
static void lan_address(const struct config *cfg, char *out, size_t cap)
{
    snprintf(out, cap, "%s", cfg->http.bind);
    if (strcmp(cfg->http.bind, "0.0.0.0") != 0 && strcmp(cfg->http.bind, "::") != 0)
        return;
    snprintf(out, cap, "127.0.0.1");
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) != 0)
        return;
    for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
            continue;
        const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)i->ifa_addr;
        if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127)
            continue;
        inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t)cap);
        break;
    }
    freeifaddrs(ifs);
}

/* host and port of the broker URL, for the mosquitto_sub hint. */
static void broker_host_port(const char *url, char *host, size_t cap, int *port)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    *port = strncmp(url, "mqtts", 5) == 0 ? 8883 : 1883;
    size_t n = strcspn(p, ":/");
    snprintf(host, cap, "%.*s", (int)n, p);
    if (p[n] == ':')
        *port = atoi(p + n + 1);
}

/* addr: the LAN address a tablet would use (lan_address()). */
static void print_banner(const struct gateway *g, const char *addr)
{
    char host[256];
    int bport;
    broker_host_port(g->cfg.mqtt.url, host, sizeof host, &bport);
    log_info("race2mqtt %s is running", RACE2MQTT_VERSION);
    if (g->cfg.raceresult.enabled == 1)
        log_info("RACE RESULT: passings on %s/<device>/passing, status on %s/<device>/status",
                 g->cfg.raceresult.base_topic, g->cfg.raceresult.base_topic);
    if (g->cfg.smartrace.enabled)
        log_info("SmartRace: Settings -> Data interface -> URL: http://%s:%d/%s", addr,
                 g->cfg.http.port, g->cfg.http.token ? "?token=<your http.token>" : "");
    log_info("watch the events: mosquitto_sub -h %s -p %d -t '%s/#' -v", host, bport,
             g->cfg.smartrace.base_topic);
}

static int run(struct gateway *g, const sigset_t *signals)
{
    char err[512] = "";
    int status = 1;

    if (make_dirs(g->cfg.store.dir, err, sizeof err) != 0)
        goto out;
    char jdir[PATH_MAX];
    snprintf(jdir, sizeof jdir, "%s/journal", g->cfg.store.dir);
    struct journal_options jopt = {
        .dir = jdir,
        .max_bytes = (uint64_t)g->cfg.store.max_bytes,
        .segment_bytes = (uint64_t)g->cfg.store.segment_bytes,
        .prealloc_bytes = JOURNAL_PREALLOC_BYTES,
        .on_commit = on_commit,
        .on_append = on_append,
        .ctx = g,
    };
    if (journal_open(&g->journal, &jopt, err, sizeof err) != 0)
        goto out;

    g->started_ms = wall_ms();
    if (g->cfg.smartrace.record && g->cfg.smartrace.record[0]) {
        g->recorder = recorder_open(g->cfg.smartrace.record, err, sizeof err);
        if (!g->recorder)
            goto out;
        log_info("recording every accepted event to %s", g->cfg.smartrace.record);
    }
    g->board = board_new(g->cfg.smartrace.keep_events);
    struct ingest_tap tap = {.accepted = event_accepted, .ctx = g};
    g->ingest = g->board ? ingest_new(&g->cfg, g->journal, &tap) : NULL;
    if (!g->ingest) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    if (ingest_restore(g->ingest, err, sizeof err) != 0 ||
        ingest_start(g->ingest, err, sizeof err) != 0)
        goto out;

    g->publisher = publisher_new(&g->cfg, g->journal, g->ingest);
    if (!g->publisher) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    if (g->cfg.raceresult.enabled == 1) {
        struct rest_options ropt = {
            .base_url = g->cfg.raceresult.base_url,
            .api_key = g->cfg.raceresult.api_key,
            .ca_file = g->cfg.raceresult.ca_file,
            .connect_timeout_ms = g->cfg.raceresult.connect_timeout_ms,
            .timeout_ms = g->cfg.raceresult.timeout_ms,
            .max_body = (size_t)g->cfg.raceresult.max_response,
        };
        g->rest_auth = rest_auth_new(&ropt);
        struct rrpoll_observer obs = {
            .device = decoder_seen,
            .listed = decoders_listed,
            .status = decoder_status,
            .passing = decoder_passing,
            .api = decoder_api,
            .ctx = g,
        };
        g->rrpoll = g->rest_auth ? rrpoll_new(&g->cfg, g->rest_auth, &obs) : NULL;
        g->cmdworker = g->rest_auth ? cmdworker_new(&g->cfg, g->rest_auth) : NULL;
        if (!g->rrpoll || !g->cmdworker) {
            snprintf(err, sizeof err, "out of memory");
            goto out;
        }
    }
    char addr[64];
    lan_address(&g->cfg, addr, sizeof addr);
    snprintf(g->lan_url, sizeof g->lan_url, "http://%s:%d/", addr, g->cfg.http.port);
    struct hass_hooks hh = {.republish = republish_retained, .ctx = g};
    g->hass = hass_new(&g->cfg, g->ingest, &hh, g->cfg.smartrace.enabled ? g->lan_url : NULL);
    if (!g->hass) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    struct mqtt_callbacks cb = {
        .on_connected = mqtt_connected,
        .on_connection_lost = mqtt_lost,
        .on_delivered = mqtt_delivered,
        .on_failed = mqtt_failed,
        .on_message = mqtt_message,
        .ctx = g,
    };
    if (mqtt_new(&g->mqtt, &g->cfg, &cb, err, sizeof err) != 0 ||
        publisher_start(g->publisher, g->mqtt, err, sizeof err) != 0 ||
        (g->rrpoll && rrpoll_start(g->rrpoll, g->mqtt, err, sizeof err) != 0) ||
        (g->cmdworker && cmdworker_start(g->cmdworker, g->mqtt, err, sizeof err) != 0) ||
        hass_start(g->hass, g->mqtt, err, sizeof err) != 0 ||
        mqtt_start(g->mqtt, err, sizeof err) != 0)
        goto out;

    if (g->cfg.smartrace.enabled) {
        struct http_hooks hooks = {
            .ready = broker_ready,
            .metrics = render_metrics,
            .state = render_state,
            .ctx = g,
        };
        struct http *h;
        if (http_start(&h, &g->cfg, g->ingest, g->board, &hooks, err, sizeof err) != 0)
            goto out;
        atomic_store(&g->http, h);
    }
    print_banner(g, addr);
    struct watchdog_hooks wh = {
        .alive = gateway_alive,
        .ready = broker_ready,
        .status = gateway_status,
        .ctx = g,
    };
    if (watchdog_start(&g->watchdog, &wh, err, sizeof err) != 0)
        goto out;

    int sig = 0;
    while (sigwait(signals, &sig) == 0 && sig != SIGTERM && sig != SIGINT)
        ;
    watchdog_stopping(g->watchdog);
    log_info("stopping on %s: accepting no more events, flushing to the broker (up to %d ms)",
             sig == SIGINT ? "SIGINT" : "SIGTERM", g->cfg.store.flush_timeout_ms);
    status = 0;

out:
    if (err[0])
        log_error("%s", err);
    /* The reverse of the start order. */
    watchdog_free(g->watchdog);
    g->watchdog = NULL;
    http_stop(atomic_load(&g->http), HTTP_DRAIN_MS);
    hass_stop(g->hass);
    cmdworker_stop(g->cmdworker);
    rrpoll_stop(g->rrpoll);
    publisher_stop(g->publisher, g->cfg.store.flush_timeout_ms);
    mqtt_stop(g->mqtt, MQTT_OFFLINE_MS);
    ingest_stop(g->ingest);
    journal_close(g->journal);
    g->journal = NULL;
    http_free(atomic_exchange(&g->http, NULL));
    hass_free(g->hass);
    cmdworker_free(g->cmdworker);
    rrpoll_free(g->rrpoll);
    rest_auth_free(g->rest_auth);
    publisher_free(g->publisher);
    mqtt_free(g->mqtt);
    ingest_free(g->ingest);
    board_free(g->board);
    recorder_close(g->recorder);
    if (status == 0)
        log_info("stopped cleanly");
    return status;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"verbose", no_argument, NULL, 'v'},
        {"check-config", no_argument, NULL, 'C'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    bool verbose = false, check = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:vhV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'v':
            verbose = true;
            break;
        case 'C':
            check = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("race2mqtt %s\n", RACE2MQTT_VERSION);
            return 0;
        default:
            usage(stderr);
            return EXIT_CONFIG;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "race2mqtt: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return EXIT_CONFIG;
    }
    if (!path && access(DEFAULT_CONFIG, R_OK) == 0)
        path = DEFAULT_CONFIG;

    /* Before any thread exists, so that every thread inherits the mask. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* A file size limit (ulimit -f) must fail a journal write, which answers
     * 503, not kill the process with everything it holds. */
    signal(SIGXFSZ, SIG_IGN);

    static struct gateway g;
    char err[512];
    bool journald = log_detect_journal();
    if (config_load(&g.cfg, path, err, sizeof err) != 0) {
        fprintf(stderr, "%srace2mqtt: %s\n", journald ? "<3>" : "", err);
        config_free(&g.cfg);
        return EXIT_CONFIG;
    }
    if (check) {
        printf("# race2mqtt %s: configuration OK (%s)\n", RACE2MQTT_VERSION,
               path ? path : "defaults and environment only");
        config_print(&g.cfg, stdout);
        config_free(&g.cfg);
        return 0;
    }
    topic_keep_dots(g.cfg.mqtt.topic_dots); /* before any topic is made */
    enum log_level level = LOG_LEVEL_INFO;
    log_level_parse(g.cfg.log.level, &level);
    log_set_level(verbose ? LOG_LEVEL_DEBUG : level);
    log_info("race2mqtt %s starting (config: %s)", RACE2MQTT_VERSION,
             path ? path : "defaults and environment");

    int status = run(&g, &signals);
    config_free(&g.cfg);
    return status;
}
