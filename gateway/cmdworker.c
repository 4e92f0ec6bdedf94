/*
 * cmdworker.c - decoder commands from MQTT to the REST cmd endpoint and back.
 *
 *   <base>/<device>/cmd  --paho--> queue --worker--> POST .../devices/{device}/cmd?command=
 *                                                      |
 *   <base>/<device>/cmd/response  <--------------------+--> Response Topic (MQTT 5)
 *
 * Why it is shaped like this:
 * - One worker thread, one FIFO: commands to one decoder run in the order they
 *   arrived (and so do all others, which keeps a decoder from seeing two
 *   commands at once from us).
 * - The queue holds CMDWORKER_QUEUE requests to execute and as many again
 *   that are only answered "queue full", so an overloaded gateway still says
 *   so to every requester; past that a request is dropped with a log line.
 * - A retained command is never executed: the broker replays it on every
 *   subscription. With MQTT 5 the subscription asks for Retain As Published,
 *   so a command published retained is recognisable even when it arrives live.
 * - Several replicas share one command stream through
 *   $share/<raceresult.command_group>/..., so each command runs once, but only
 *   where the broker really delivers shared subscriptions. RabbitMQ and NATS
 *   grant the SUBACK of a $share filter and deliver nothing; ejabberd closes
 *   the connection (reference/clustered-brokers.md). So after every connect
 *   the worker publishes a probe to a filter of its own in the group and
 *   subscribes the group only once the probe came back. If it does not, it
 *   says so once and partitions instead: a replica with raceresult.devices
 *   subscribes to those devices' cmd topics only, which needs no broker
 *   feature; disjoint lists run each command once.
 * - With raceresult.devices set, a command for any other device is ignored,
 *   and the wildcard subscription an earlier run may have left in the broker's
 *   copy of our session is removed.
 */
#include "race2mqtt/cmdworker.h"

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "race2mqtt/clock.h"
#include "race2mqtt/command.h"
#include "race2mqtt/config.h"
#include "race2mqtt/log.h"
#include "race2mqtt/metrics.h"
#include "race2mqtt/mqtt.h"
#include "race2mqtt/rest.h"
#include "race2mqtt/topic.h"

#define RING (2 * CMDWORKER_QUEUE)
#define DEVICE_MAX 256
#define BODY_MAX 4096 /* a request is a command and a transaction: small */
#define ERR_MAX 512
#define FILTER_MAX 600
/* The share probe: sent every PROBE_EVERY_MS (the first may overtake our
 * SUBSCRIBE on a broker that handles it asynchronously), given up after
 * PROBE_MS; connections lost during a probe before we call it refused. */
#define PROBE_MS 2000
#define PROBE_EVERY_MS 500
#define PROBE_CUTS 2

struct request {
    char device[DEVICE_MAX + 1];
    char *body;
    size_t len;
    bool retained;
    bool rejected; /* arrived with the queue full: answer, do not execute */
    char *response_topic;
    void *correlation;
    size_t correlation_len;
};

struct cmdworker {
    const struct config *cfg;
    struct rest_auth *auth;
    struct rest *rest;
    struct mqtt *m;
    pthread_t thread;
    bool running;
    _Atomic bool stop;
    char filter[FILTER_MAX];      /* for the log: what commands arrive on */
    char probe_topic[FILTER_MAX]; /* <mqtt.base_topic>/bridge/share_probe/<client id> */
    char probe_filter[2 * FILTER_MAX];
    bool share_failed; /* worker thread: the broker does not deliver $share */
    unsigned probe_cuts;

    pthread_mutex_t lock; /* protects the queue and the flags below */
    pthread_cond_t cond;
    struct request ring[RING];
    size_t head, count;
    bool subscribe;       /* connected: (re)subscribe on the worker thread */
    bool warned_full;
    uint64_t probe_nonce; /* the probe in flight, 0 for none */
    bool probe_seen;
};

static void request_free(struct request *r)
{
    free(r->body);
    free(r->response_topic);
    free(r->correlation);
    memset(r, 0, sizeof *r);
}

/* "<base>/<device>/cmd" -> device; false for any other topic. */
static bool device_of(const struct cmdworker *w, const char *topic, char *device, size_t cap)
{
    const char *base = w->cfg->raceresult.base_topic;
    size_t blen = strlen(base), tlen = strlen(topic);
    if (tlen < blen + 6 || strncmp(topic, base, blen) != 0 || topic[blen] != '/' ||
        strcmp(topic + tlen - 4, "/cmd") != 0)
        return false;
    const char *d = topic + blen + 1;
    size_t dlen = tlen - blen - 1 - 4;
    if (dlen == 0 || dlen >= cap || memchr(d, '/', dlen))
        return false;
    memcpy(device, d, dlen);
    device[dlen] = '\0';
    return true;
}

/* Whether the device of a cmd topic level is one of raceresult.devices (all
 * without a list); the level is the id as topic_level() writes it. */
static bool owns_device(const struct cmdworker *w, const char *level)
{
    const char *devices = w->cfg->raceresult.devices;
    if (!devices)
        return true;
    for (const char *s = devices; *s;) {
        size_t len = strcspn(s, ",");
        char mine[TOPIC_LEVEL_MAX + 1];
        topic_level(mine, s, len);
        if (strcmp(mine, level) == 0)
            return true;
        s += len + (s[len] == ',');
    }
    return false;
}

/* Our share probe came back: the payload says whether it is the current one. */
static void probe_arrived(struct cmdworker *w, const struct mqtt_message *msg)
{
    char text[32];
    snprintf(text, sizeof text, "%.*s", msg->len < sizeof text ? (int)msg->len : 0,
             (const char *)msg->payload);
    uint64_t nonce = strtoull(text, NULL, 16);
    pthread_mutex_lock(&w->lock);
    if (nonce != 0 && nonce == w->probe_nonce) {
        w->probe_seen = true;
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
}

void cmdworker_message(struct cmdworker *w, const struct mqtt_message *msg)
{
    struct request r = {0};
    if (strcmp(msg->topic, w->probe_topic) == 0) {
        probe_arrived(w, msg);
        return;
    }
    if (!device_of(w, msg->topic, r.device, sizeof r.device))
        return;
    if (!owns_device(w, r.device)) {
        log_debug("raceresult: command for %s ignored: not in raceresult.devices", r.device);
        return;
    }
    /* An empty message is how a retained command is cleared, not a request. */
    if (msg->len == 0)
        return;
    r.retained = msg->retained;
    r.len = msg->len <= BODY_MAX ? msg->len : BODY_MAX + 1; /* too long: refused later */
    r.body = malloc(r.len + 1);
    if (r.body) {
        memcpy(r.body, msg->payload, r.len < msg->len ? r.len : msg->len);
        r.body[r.len] = '\0';
    }
    if (msg->response_topic)
        r.response_topic = strdup(msg->response_topic);
    if (msg->correlation && (r.correlation = malloc(msg->correlation_len))) {
        memcpy(r.correlation, msg->correlation, msg->correlation_len);
        r.correlation_len = msg->correlation_len;
    }
    if (!r.body) {
        request_free(&r);
        return;
    }

    pthread_mutex_lock(&w->lock);
    if (w->count == RING) {
        if (!w->warned_full)
            log_warn("raceresult: command queue overflowing; dropping requests");
        w->warned_full = true;
        pthread_mutex_unlock(&w->lock);
        request_free(&r);
        return;
    }
    w->warned_full = false;
    r.rejected = w->count >= CMDWORKER_QUEUE;
    w->ring[(w->head + w->count) % RING] = r;
    w->count++;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

void cmdworker_connected(struct cmdworker *w)
{
    pthread_mutex_lock(&w->lock);
    w->subscribe = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void respond(struct cmdworker *w, const struct request *r, const struct command_result *res)
{
    size_t len;
    char *payload = command_response(res, &len);
    if (!payload)
        return;
    char topic[512];
    snprintf(topic, sizeof topic, "%s/%s/cmd/response", w->cfg->raceresult.base_topic, r->device);
    if (mqtt_publish(w->m, topic, payload, len, 1, false, 0) != 0)
        log_warn("raceresult: could not publish the answer to a command for %s", r->device);
    if (r->response_topic &&
        mqtt_publish_reply(w->m, r->response_topic, payload, len, r->correlation,
                           r->correlation_len) != 0)
        log_warn("raceresult: could not publish to a command's response topic");
    free(payload);
}

static void execute(struct cmdworker *w, const struct request *r)
{
    struct command_request req;
    struct command_result res = {.device = r->device};
    char err[ERR_MAX] = "";
    char *reply = NULL;
    struct rest_response resp = {0};

    if (r->retained) {
        /* Replayed by the broker on every subscription: never run it. */
        log_warn("raceresult: retained command for %s ignored (clear it with an empty "
                 "retained message)",
                 r->device);
        metrics_inc(METRIC_RR_COMMANDS_IGNORED);
        return;
    }
    if (r->len > BODY_MAX) {
        memset(&req, 0, sizeof req);
        snprintf(err, sizeof err, "request larger than %d bytes", BODY_MAX);
        res.error = err;
        goto answer;
    }
    int prc = command_parse(r->body, r->len, &req, err, sizeof err);
    res.transaction = req.transaction;
    if (prc != 0) {
        res.error = err;
        goto answer;
    }
    res.command = req.command;
    if (r->rejected) {
        res.error = "command queue full; try again later";
        goto answer;
    }
    if (!command_allowed(req.command, w->cfg->raceresult.commands_allowed)) {
        char name[COMMAND_MAX + 1];
        command_name(req.command, name, sizeof name);
        snprintf(err, sizeof err, "command %s is not allowed (raceresult.commands_allowed)", name);
        res.error = err;
        goto answer;
    }

    char *edev = rest_escape(w->rest, r->device);
    char *ecmd = rest_escape(w->rest, req.command);
    char path[1024];
    if (!edev || !ecmd ||
        snprintf(path, sizeof path, "/customers/%s/devices/%s/cmd?command=%s",
                 w->cfg->raceresult.customer_id, edev, ecmd) >= (int)sizeof path) {
        free(edev);
        free(ecmd);
        res.error = "command too long for a request";
        goto answer;
    }
    free(edev);
    free(ecmd);
    enum rest_result rr = rest_request(w->rest, "POST", path, &resp, err, sizeof err);
    if (rr != REST_OK) {
        res.error = err[0] ? err : rest_strerror(rr);
        goto answer;
    }
    res.http_status = resp.http_status;
    reply = command_reply(resp.body, resp.len);
    res.response = reply;
    if (resp.http_status >= 200 && resp.http_status < 300) {
        res.ok = true;
    } else {
        snprintf(err, sizeof err, "the API answered HTTP %ld", resp.http_status);
        res.error = err;
    }
answer:
    metrics_inc(res.ok ? METRIC_RR_COMMANDS_OK : METRIC_RR_COMMANDS_ERROR);
    log_info("raceresult: command %s for %s: %s%s%s", res.command ? res.command : "(none)",
             r->device, res.ok ? "ok" : "error", res.ok ? "" : ": ", res.ok ? "" : res.error);
    respond(w, r, &res);
    free(reply);
    rest_response_cleanup(&resp);
    command_request_cleanup(&req);
}

/* ---- subscriptions ---- */

/* <base>/<device>/cmd, with $share/<group>/ in front when shared. */
static void filter_for(const struct cmdworker *w, const char *device, bool shared, char *out)
{
    const struct config *cfg = w->cfg;
    char level[TOPIC_LEVEL_MAX + 1] = "+";
    if (strcmp(device, "+") != 0)
        topic_level(level, device, strlen(device)); /* as the poller names its topics */
    if (shared)
        snprintf(out, FILTER_MAX, "$share/%s/%s/%s/cmd", cfg->raceresult.command_group,
                 cfg->raceresult.base_topic, level);
    else
        snprintf(out, FILTER_MAX, "%s/%s/cmd", cfg->raceresult.base_topic, level);
}

/* Logs why $share is not used and partitions from now on; returns 0. */
static int share_refused(struct cmdworker *w, const char *why)
{
    const struct config *cfg = w->cfg;
    char plain[FILTER_MAX];
    filter_for(w, "+", false, plain);
    w->share_failed = true;
    if (cfg->raceresult.devices)
        log_error("raceresult: raceresult.command_group = %s, but the broker does not deliver "
                  "shared subscriptions (%s). Not using $share, which would receive nothing: "
                  "partitioned instead, commands for raceresult.devices (%s) only",
                  cfg->raceresult.command_group, why, cfg->raceresult.devices);
    else
        log_error("raceresult: raceresult.command_group = %s, but the broker does not deliver "
                  "shared subscriptions (%s). Not using $share, which would receive nothing: "
                  "commands on %s, so every replica runs every command; give each replica "
                  "its own raceresult.devices (README \"More than one machine\")",
                  cfg->raceresult.command_group, why, plain);
    return 0;
}

/*
 * Whether the broker delivers shared subscriptions: 1 yes, 0 no (logged, and
 * partitioning from now on), -1 not known (connection lost or stopping; try
 * again on the next connect). Worker thread.
 */
static int share_check(struct cmdworker *w)
{
    if (mqtt_shared_available(w->m) == 0)
        return share_refused(w, "its CONNACK says Shared Subscription Available = 0");
    if (mqtt_subscribe(w->m, w->probe_filter, 1) != 0)
        return -1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t nonce = ((uint64_t)ts.tv_nsec << 20 ^ (uint64_t)ts.tv_sec ^ (uint64_t)getpid()) | 1;
    char payload[32];
    int plen = snprintf(payload, sizeof payload, "%016" PRIx64, nonce);
    pthread_mutex_lock(&w->lock);
    w->probe_nonce = nonce;
    w->probe_seen = false;
    uint64_t start = mono_ms(), next = start;
    bool seen = false, up = true;
    while (!atomic_load(&w->stop)) {
        uint64_t now = mono_ms();
        if (now >= next && now < start + PROBE_MS) {
            pthread_mutex_unlock(&w->lock);
            mqtt_publish(w->m, w->probe_topic, payload, (size_t)plen, 1, false, 0);
            pthread_mutex_lock(&w->lock);
            next += PROBE_EVERY_MS;
        }
        seen = w->probe_seen;
        up = mqtt_is_connected(w->m);
        if (seen || !up || now >= start + PROBE_MS)
            break;
        uint64_t until_ms = next < start + PROBE_MS ? next : start + PROBE_MS;
        struct timespec until = realtime_in_us((until_ms - now) * 1000);
        pthread_cond_timedwait(&w->cond, &w->lock, &until);
    }
    w->probe_nonce = 0;
    pthread_mutex_unlock(&w->lock);
    uint64_t took = mono_ms() - start;
    if (up)
        mqtt_unsubscribe(w->m, w->probe_filter);
    if (seen) {
        w->probe_cuts = 0;
        log_info("raceresult: the broker delivers shared subscriptions (probe back in %" PRIu64
                 " ms)",
                 took);
        return 1;
    }
    if (atomic_load(&w->stop))
        return -1;
    if (!up) {
        /* ejabberd closes the connection on a $share subscribe. */
        if (++w->probe_cuts < PROBE_CUTS)
            return -1;
        share_refused(w, "it closed the connection each time we subscribed to $share");
        return -1;
    }
    char why[FILTER_MAX * 3 + 64];
    snprintf(why, sizeof why, "a probe published to %s did not come back through %s within %d ms",
             w->probe_topic, w->probe_filter, PROBE_MS);
    return share_refused(w, why);
}

/*
 * After every connect: the command subscriptions, shared or partitioned, and
 * none that would receive nothing or commands for someone else's devices.
 * Returns 0, or -1 to try again. Worker thread.
 */
static int subscribe_commands(struct cmdworker *w)
{
    const char *group = w->cfg->raceresult.command_group;
    const char *devices = w->cfg->raceresult.devices;
    bool shared = false;
    if (group && !w->share_failed) {
        int r = share_check(w);
        if (r < 0)
            return -1;
        shared = r == 1;
    }
    char filter[FILTER_MAX];
    if (devices) {
        /* Left in the session by a run without a list, or before partitioning. */
        filter_for(w, "+", false, filter);
        mqtt_unsubscribe(w->m, filter);
        if (group) {
            filter_for(w, "+", true, filter);
            mqtt_unsubscribe(w->m, filter);
        }
    }
    int rc = 0;
    size_t used = 0;
    for (const char *s = devices ? devices : "+"; *s;) {
        size_t len = strcspn(s, ",");
        char device[DEVICE_MAX + 1];
        snprintf(device, sizeof device, "%.*s", (int)len, s);
        s += len + (s[len] == ',');
        if (group) {
            /* The other form: a $share that receives nothing, or a plain
             * subscription that would run the group's commands twice. */
            filter_for(w, device, !shared, filter);
            mqtt_unsubscribe(w->m, filter);
        }
        filter_for(w, device, shared, filter);
        if (mqtt_subscribe(w->m, filter, 1) != 0)
            rc = -1;
        if (used < sizeof w->filter)
            used += (size_t)snprintf(w->filter + used, sizeof w->filter - used, "%s%s",
                                     used ? ", " : "", filter);
    }
    log_info("raceresult: decoder commands on %s", w->filter);
    return rc;
}

static void *run(void *arg)
{
    struct cmdworker *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!atomic_load(&w->stop)) {
        if (w->subscribe) {
            w->subscribe = false;
            pthread_mutex_unlock(&w->lock);
            /* The session usually keeps the subscription; renewing it is
             * harmless and covers a broker that lost it. */
            if (subscribe_commands(w) != 0) {
                pthread_mutex_lock(&w->lock);
                w->subscribe = mqtt_is_connected(w->m);
                continue;
            }
            pthread_mutex_lock(&w->lock);
            continue;
        }
        if (w->count == 0) {
            pthread_cond_wait(&w->cond, &w->lock);
            continue;
        }
        struct request r = w->ring[w->head];
        memset(&w->ring[w->head], 0, sizeof w->ring[w->head]);
        w->head = (w->head + 1) % RING;
        w->count--;
        pthread_mutex_unlock(&w->lock);
        execute(w, &r);
        request_free(&r);
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

struct cmdworker *cmdworker_new(const struct config *cfg, struct rest_auth *auth)
{
    struct cmdworker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->cfg = cfg;
    w->auth = auth;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    /* One probe topic per client id, so that only we are in its group; the
     * id may hold characters a topic level cannot, or '.', which NATS refuses. */
    int n = snprintf(w->probe_topic, sizeof w->probe_topic, "%s/bridge/share_probe/",
                     cfg->mqtt.base_topic);
    for (const char *c = cfg->mqtt.client_id; c && *c && n + 1 < (int)sizeof w->probe_topic; c++)
        w->probe_topic[n++] = isalnum((unsigned char)*c) || *c == '-' ? *c : '_';
    w->probe_topic[n] = '\0';
    snprintf(w->probe_filter, sizeof w->probe_filter, "$share/%s/%s",
             cfg->raceresult.command_group ? cfg->raceresult.command_group : "-", w->probe_topic);
    return w;
}

int cmdworker_start(struct cmdworker *w, struct mqtt *m, char *err, size_t errlen)
{
    w->m = m;
    if (rest_new(&w->rest, w->auth, err, errlen) != 0)
        return -1;
    rest_set_cancel(w->rest, &w->stop);
    if (pthread_create(&w->thread, NULL, run, w) != 0) {
        snprintf(err, errlen, "raceresult: cannot start the command worker");
        return -1;
    }
    w->running = true;
    return 0;
}

void cmdworker_stop(struct cmdworker *w)
{
    if (!w || !w->running)
        return;
    atomic_store(&w->stop, true);
    pthread_mutex_lock(&w->lock);
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    w->running = false;
    /* Whoever is still waiting hears that it will not run. */
    while (w->count > 0) {
        struct request *r = &w->ring[w->head];
        struct command_request req;
        char err[ERR_MAX];
        struct command_result res = {.device = r->device, .error = "the gateway is stopping"};
        if (!r->retained) {
            command_parse(r->body, r->len, &req, err, sizeof err);
            res.command = req.command[0] ? req.command : NULL;
            res.transaction = req.transaction;
            respond(w, r, &res);
            command_request_cleanup(&req);
        }
        request_free(r);
        w->head = (w->head + 1) % RING;
        w->count--;
    }
}

void cmdworker_free(struct cmdworker *w)
{
    if (!w)
        return;
    cmdworker_stop(w);
    while (w->count > 0) {
        request_free(&w->ring[w->head]);
        w->head = (w->head + 1) % RING;
        w->count--;
    }
    rest_free(w->rest);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
