/*
 * rrpoll.c - RACE RESULT devices: status and passings from the REST API to MQTT.
 *
 * One thread does everything, in rounds of raceresult.poll_interval_ms:
 *
 *   GET /customers/{cid}/devices            -> status + availability (retained)
 *   for each device whose counters moved:
 *     GET .../devices/{dev}/detections?fromFile=F&fromDetection=N&amount=K
 *                                           -> passings (QoS 1) -> cursor
 *
 * Invariants:
 * - A device's cursor (file, next number) moves past a passing only when the
 *   broker acknowledged it and every passing before it in the page (the
 *   acknowledged prefix), and is on disk (cursor_save) before the next page is
 *   asked for. A crash or a broker outage therefore re-publishes at most one
 *   page, with the same ids, and never skips one.
 * - Nothing is fetched while the broker is disconnected: a passing is only
 *   worth fetching when it can be acknowledged.
 * - A customer may own hundreds of devices that have been idle for years: the
 *   device list's counters (FileNo, RecordsCount; Data.FileNumber,
 *   Data.PassingNo) decide who is asked for detections, with a slow safety net
 *   (raceresult.recheck_s). Connected or not does not matter: a TrackBox
 *   uploads in bursts over mobile data and looks offline in between.
 * - Errors back off per device (and for the device list) with jitter, and are
 *   logged when a device or the API becomes unreachable and when it is back.
 */
#include "race2mqtt/rrpoll.h"

#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "race2mqtt/clock.h"
#include "race2mqtt/config.h"
#include "race2mqtt/cursor.h"
#include "race2mqtt/log.h"
#include "race2mqtt/metrics.h"
#include "race2mqtt/mqtt.h"
#include "race2mqtt/raceresult.h"
#include "race2mqtt/rest.h"

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 60000
#define PAGE_ACK_TIMEOUT_MS 30000
#define PAGES_PER_ROUND 20 /* then status gets its turn again */
#define MAX_DEVICES 10000  /* a bound on what an API answer can make us track */
#define BEHIND_RECHECK_S 5 /* counters say more than the API gave: ask again this soon */
#define ERR_MAX 512

struct device {
    char id[RR_ID_MAX + 1];
    char level[TOPIC_LEVEL_MAX + 1];
    char *status_key; /* last published status, without raw (changes every poll) */
    int availability; /* published: -1 none, 0 offline, 1 online */
    bool republish;   /* after a reconnect: status and availability again */
    bool has_cursor;
    struct cursor cur;
    bool seen; /* counters at the last complete fetch */
    bool seen_has_file, seen_has_records;
    int64_t seen_file, seen_records;
    bool more; /* the last page was full: ask again at once */
    uint64_t recheck_ms;
    uint64_t backoff_until_ms, backoff_ms;
    bool failing;
};

struct rrpoll {
    const struct config *cfg;
    struct rest_auth *auth;
    struct rest *rest;
    struct mqtt *m;
    struct rrpoll_observer obs;
    pthread_t thread;
    bool running;
    _Atomic bool stop;

    pthread_mutex_t lock; /* protects the hand-off below */
    pthread_cond_t cond;
    bool connected_event;
    bool republish_event;
    uint32_t page_gen; /* tags of other generations are stale */
    uint8_t *acked;    /* one flag per passing of the page in flight */
    size_t page_n;
    size_t outstanding;
    size_t wake_at; /* the poller waits for outstanding <= wake_at */
    bool page_failed;

    /* Poller thread only. */
    struct device *devs;
    size_t ndevs, capdevs;
    char dir[PATH_MAX];
    char list_path[512];
    bool api_failing;
    uint64_t api_backoff_until_ms, api_backoff_ms;
};

/* Doubles *ms within [MIN, MAX] and returns the deadline with up to 25% jitter. */
static uint64_t backoff(uint64_t *ms)
{
    *ms = *ms ? *ms * 2 : BACKOFF_MIN_MS;
    if (*ms > BACKOFF_MAX_MS)
        *ms = BACKOFF_MAX_MS;
    uint64_t now = mono_ms();
    return now + *ms + (now * 2654435761u) % (*ms / 4 + 1);
}

/* ---- hand-offs from paho ---- */

static void page_ack(struct rrpoll *p, uint64_t tag, bool ok)
{
    uint32_t gen = (uint32_t)(tag >> 32) & 0x7fffffffu;
    size_t i = (size_t)(tag & 0xffffffffu);
    pthread_mutex_lock(&p->lock);
    if (p->acked && gen == (p->page_gen & 0x7fffffffu) && i < p->page_n) {
        if (!ok) {
            p->page_failed = true;
        } else if (!p->acked[i]) {
            p->acked[i] = 1;
            p->outstanding--;
            metrics_inc(METRIC_RR_PASSINGS);
        }
        if (!ok || p->outstanding <= p->wake_at)
            pthread_cond_signal(&p->cond);
    }
    pthread_mutex_unlock(&p->lock);
}

void rrpoll_delivered(struct rrpoll *p, uint64_t tag)
{
    page_ack(p, tag, true);
}

void rrpoll_failed(struct rrpoll *p, uint64_t tag)
{
    page_ack(p, tag, false);
}

void rrpoll_connected(struct rrpoll *p)
{
    pthread_mutex_lock(&p->lock);
    p->connected_event = true;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void rrpoll_republish(struct rrpoll *p)
{
    pthread_mutex_lock(&p->lock);
    p->republish_event = true;
    pthread_mutex_unlock(&p->lock);
}

void rrpoll_connection_lost(struct rrpoll *p)
{
    pthread_mutex_lock(&p->lock);
    if (p->acked)
        p->page_failed = true; /* the unacknowledged rest is fetched again */
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

/* Sleeps up to ms, woken early by stop or a reconnect. */
static void nap(struct rrpoll *p, uint64_t ms)
{
    struct timespec until = realtime_in_us(ms * 1000);
    pthread_mutex_lock(&p->lock);
    while (!atomic_load(&p->stop) && !p->connected_event &&
           pthread_cond_timedwait(&p->cond, &p->lock, &until) == 0)
        ;
    pthread_mutex_unlock(&p->lock);
}

/* ---- devices ---- */

static struct device *device_get(struct rrpoll *p, const struct rr_device *rd)
{
    /* The request names raceresult.devices; a replica that partitions the
     * decoders must not touch another's even if the API lists more. */
    const char *only = p->cfg->raceresult.devices;
    if (only && !config_list_has(only, rd->id))
        return NULL;
    for (size_t i = 0; i < p->ndevs; i++) {
        if (strcmp(p->devs[i].id, rd->id) == 0)
            return &p->devs[i];
    }
    if (p->ndevs == MAX_DEVICES)
        return NULL;
    if (p->ndevs == p->capdevs) {
        size_t cap = p->capdevs ? p->capdevs * 2 : 16;
        struct device *nd = realloc(p->devs, cap * sizeof *nd);
        if (!nd)
            return NULL;
        p->devs = nd;
        p->capdevs = cap;
    }
    struct device *d = &p->devs[p->ndevs++];
    memset(d, 0, sizeof *d);
    snprintf(d->id, sizeof d->id, "%s", rd->id);
    snprintf(d->level, sizeof d->level, "%s", rd->level);
    d->availability = -1;
    return d;
}

/* Device logs name the sanitised level: an id from the API is untrusted text. */
static void device_fail(struct device *d, const char *why)
{
    metrics_inc(METRIC_RR_ERRORS);
    if (!d->failing)
        log_warn("raceresult: device %s: %s; retrying with backoff", d->level, why);
    else
        log_debug("raceresult: device %s: %s", d->level, why);
    d->failing = true;
    d->backoff_until_ms = backoff(&d->backoff_ms);
}

static void device_ok(struct device *d)
{
    if (d->failing)
        log_info("raceresult: device %s: reachable again", d->level);
    d->failing = false;
    d->backoff_ms = 0;
    d->backoff_until_ms = 0;
}

static void api_fail(struct rrpoll *p, const char *why)
{
    metrics_inc(METRIC_RR_ERRORS);
    if (!p->api_failing)
        log_warn("raceresult: API unreachable: %s; retrying with backoff", why);
    else
        log_debug("raceresult: device list: %s", why);
    p->api_failing = true;
    p->api_backoff_until_ms = backoff(&p->api_backoff_ms);
    if (p->obs.api)
        p->obs.api(p->obs.ctx, false, why);
}

static void api_ok(struct rrpoll *p)
{
    if (p->api_failing)
        log_info("raceresult: API reachable again");
    p->api_failing = false;
    p->api_backoff_ms = 0;
    p->api_backoff_until_ms = 0;
    if (p->obs.api)
        p->obs.api(p->obs.ctx, true, NULL);
}

static int publish_text(struct rrpoll *p, const struct device *d, const char *leaf,
                        const char *payload, size_t len)
{
    char topic[512];
    snprintf(topic, sizeof topic, "%s/%s/%s", p->cfg->raceresult.base_topic, d->level, leaf);
    return mqtt_publish(p->m, topic, payload, len, 1, true, 0);
}

/* The status without "raw": raw carries clocks that change on every poll. */
static char *status_key(const char *payload)
{
    struct json_object *o = json_tokener_parse(payload);
    char *key = NULL;
    if (o && json_object_is_type(o, json_type_object)) {
        json_object_object_del(o, "raw");
        key = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    }
    json_object_put(o);
    return key;
}

static void publish_status(struct rrpoll *p, struct device *d, const struct rr_device *rd)
{
    size_t len;
    char *payload = rr_status_payload(rd, &len);
    char *key = payload ? status_key(payload) : NULL;
    if (key && (d->republish || !d->status_key || strcmp(key, d->status_key) != 0) &&
        publish_text(p, d, "status", payload, len) == 0) {
        if (p->obs.status)
            p->obs.status(p->obs.ctx, d->level, payload, len);
        free(d->status_key);
        d->status_key = key;
        key = NULL;
    }
    int online = rd->connected ? 1 : 0;
    if ((d->republish || d->availability != online) &&
        publish_text(p, d, "availability", online ? "online" : "offline", online ? 6 : 7) == 0)
        d->availability = online;
    d->republish = false;
    free(key);
    free(payload);
}

/* ---- passings ---- */

/* Where a device without a stored cursor starts (raceresult.start). */
static struct cursor first_cursor(const struct rrpoll *p, const struct rr_device *rd)
{
    struct cursor c = {.file = 1, .next_no = 1};
    if (p->cfg->raceresult.start == CONFIG_RR_START_ALL || !rd->has_file_no || rd->file_no < 1)
        return c;
    c.file = rd->file_no;
    if (p->cfg->raceresult.start == CONFIG_RR_START_NEW && rd->has_records && rd->records >= 0)
        c.next_no = rd->records + 1;
    return c;
}

static bool ensure_cursor(struct rrpoll *p, struct device *d, const struct rr_device *rd)
{
    if (d->has_cursor)
        return true;
    char err[ERR_MAX];
    int rc = cursor_load(p->dir, d->level, &d->cur, err, sizeof err);
    if (rc < 0) {
        /* Guessing could skip passings: leave it to the operator. */
        device_fail(d, err);
        return false;
    }
    if (rc == 0) {
        d->cur = first_cursor(p, rd);
        if (cursor_save(p->dir, d->level, &d->cur, err, sizeof err) != 0) {
            device_fail(d, err);
            return false;
        }
        log_info("raceresult: device %s: new, reading from file %lld passing %lld", d->level,
                 (long long)d->cur.file, (long long)d->cur.next_no);
    }
    d->has_cursor = true;
    return true;
}

static bool due(const struct device *d, const struct rr_device *rd, uint64_t now)
{
    if (now < d->backoff_until_ms)
        return false;
    if (!d->has_cursor || d->more || !d->seen || now >= d->recheck_ms)
        return true;
    /* Without a file number the counters cannot tell us it changed (a record
     * count alone repeats when a new file reaches the old count): ask every
     * round. */
    if (!rd->has_file_no)
        return true;
    return rd->has_file_no != d->seen_has_file || rd->file_no != d->seen_file ||
           rd->has_records != d->seen_has_records || rd->records != d->seen_records;
}

static bool at_or_after(const struct rr_passing *x, const struct cursor *c)
{
    return x->file > c->file || (x->file == c->file && x->no >= c->next_no);
}

/*
 * Publishes items[0..n) in order with at most mqtt.max_inflight awaiting
 * acknowledgement, and returns how many from the start were acknowledged
 * (all of them, unless the connection or the broker failed on the way).
 */
static size_t publish_page(struct rrpoll *p, struct device *d, struct rr_passing *const *items,
                           size_t n)
{
    char topic[512];
    snprintf(topic, sizeof topic, "%s/%s/passing", p->cfg->raceresult.base_topic, d->level);
    size_t window = (size_t)p->cfg->mqtt.max_inflight;
    uint8_t *acked = calloc(n ? n : 1, 1);
    if (!acked)
        return 0;

    pthread_mutex_lock(&p->lock);
    uint32_t gen = ++p->page_gen & 0x7fffffffu;
    p->acked = acked;
    p->page_n = n;
    p->outstanding = 0;
    p->wake_at = 0;
    p->page_failed = false;
    pthread_mutex_unlock(&p->lock);

    uint64_t deadline = mono_ms() + PAGE_ACK_TIMEOUT_MS;
    for (size_t i = 0; i <= n; i++) {
        /* Wait only for a full window, and then until half of it is
         * acknowledged: page_ack() wakes the poller at that mark, not on
         * every PUBACK. A wake-up per PUBACK cost a futex call and often a
         * thread switch per passing (measured: 0.30-0.35 context switches
         * per passing, 0.10-0.20 with the mark). i == n: wait for the last
         * acknowledgement. */
        pthread_mutex_lock(&p->lock);
        p->wake_at = i == n ? 0 : window / 2;
        if (i == n || p->outstanding >= window) {
            while (p->outstanding > p->wake_at && !p->page_failed && !atomic_load(&p->stop)) {
                struct timespec until = realtime_in_us(100 * 1000);
                pthread_cond_timedwait(&p->cond, &p->lock, &until);
                if (mono_ms() >= deadline)
                    p->page_failed = true;
            }
        }
        bool bail = p->page_failed || atomic_load(&p->stop) || i == n;
        if (!bail)
            p->outstanding++;
        pthread_mutex_unlock(&p->lock);
        if (bail)
            break;

        uint64_t tag = RRPOLL_TAG_BIT | (uint64_t)gen << 32 | (uint64_t)i;
        if (mqtt_publish(p->m, topic, items[i]->payload, items[i]->payload_len, 1, false, tag) !=
            0) {
            pthread_mutex_lock(&p->lock);
            p->outstanding--;
            p->page_failed = true;
            pthread_mutex_unlock(&p->lock);
            break;
        }
        deadline = mono_ms() + PAGE_ACK_TIMEOUT_MS;
    }

    /* Retire the page: acknowledgements still on their way are now stale. */
    pthread_mutex_lock(&p->lock);
    size_t k = 0;
    while (k < n && acked[k])
        k++;
    p->page_gen++;
    p->acked = NULL;
    p->page_n = 0;
    pthread_mutex_unlock(&p->lock);
    free(acked);
    if (k > 0 && p->obs.passing)
        p->obs.passing(p->obs.ctx, d->level, items[k - 1]->payload, items[k - 1]->payload_len);
    return k;
}

/* Fetches and publishes one page; false when the device should wait. */
static bool fetch_page(struct rrpoll *p, struct device *d)
{
    char err[ERR_MAX] = "";
    char path[1024];
    bool ok = false;
    struct rr_passing_list list = {0};
    struct rr_passing **fresh = NULL;
    struct rest_response resp = {0};
    char *esc = rest_escape(p->rest, d->id);
    if (!esc)
        return false;
    snprintf(path, sizeof path,
             "/customers/%s/devices/%s/detections?fromFile=%lld&fromDetection=%lld&amount=%d",
             p->cfg->raceresult.customer_id, esc, (long long)d->cur.file, (long long)d->cur.next_no,
             p->cfg->raceresult.amount);
    free(esc);

    enum rest_result res = rest_request(p->rest, "GET", path, &resp, err, sizeof err);
    if (res == REST_OK)
        metrics_inc(METRIC_RR_REQUESTS);
    if (res == REST_CANCELLED)
        goto out;
    if (res != REST_OK) {
        device_fail(d, err);
        goto out;
    }
    if (resp.http_status != 200) {
        snprintf(err, sizeof err, "detections answered HTTP %ld", resp.http_status);
        device_fail(d, err);
        goto out;
    }
    /* The payloads are built here, before the first is published: a page
     * found invalid halfway is refused whole. */
    enum rr_error perr = rr_parse_detections(resp.body, resp.len, d->id, &list, err, sizeof err);
    rest_response_cleanup(&resp); /* the list holds all that is needed */
    if (perr != RR_OK) {
        char why[ERR_MAX + 64];
        snprintf(why, sizeof why, "invalid detections: %s", err[0] ? err : rr_strerror(perr));
        device_fail(d, why);
        goto out;
    }
    device_ok(d);
    if (list.skipped > 0)
        log_warn("raceresult: device %s: %zu detection records without file and number skipped",
                 d->level, list.skipped);

    /* Keep what lies at or after the cursor, in strictly increasing order. */
    fresh = calloc(list.count ? list.count : 1, sizeof *fresh);
    if (!fresh)
        goto out;
    size_t n = 0;
    struct cursor last = d->cur;
    for (size_t i = 0; i < list.count; i++) {
        struct rr_passing *x = &list.items[i];
        if (!at_or_after(x, &last))
            continue;
        fresh[n++] = x;
        last.file = x->file;
        last.next_no = x->no + 1;
    }
    size_t k = publish_page(p, d, fresh, n);
    if (k > 0) {
        d->cur.file = fresh[k - 1]->file;
        d->cur.next_no = fresh[k - 1]->no + 1;
        if (cursor_save(p->dir, d->level, &d->cur, err, sizeof err) != 0) {
            /* The passings went out; without a stored cursor they go out again. */
            log_error("raceresult: device %s: %s", d->level, err);
            d->backoff_until_ms = backoff(&d->backoff_ms);
            goto out;
        }
    }
    /* A full page means more may wait; one with nothing new cannot be trusted
     * to move on, so it ends the round. */
    d->more = n > 0 && k == n && list.count + list.skipped >= (size_t)p->cfg->raceresult.amount;
    ok = k == n;
    if (n > 0)
        log_debug("raceresult: device %s: %zu of %zu passings acknowledged, next %lld/%lld",
                  d->level, k, n, (long long)d->cur.file, (long long)d->cur.next_no);
out:
    free(fresh);
    rr_passing_list_cleanup(&list);
    rest_response_cleanup(&resp);
    return ok;
}

static void fetch_device(struct rrpoll *p, struct device *d, const struct rr_device *rd)
{
    if (!ensure_cursor(p, d, rd))
        return;
    d->more = true;
    for (int page = 0; page < PAGES_PER_ROUND && d->more; page++) {
        if (atomic_load(&p->stop) || !mqtt_is_connected(p->m) || !fetch_page(p, d))
            return;
    }
    if (!d->more) {
        /* Caught up with what the list showed: wait for the counters to move.
         * If the cursor is still behind them (an empty page where the list
         * promises records), look again soon rather than after recheck_s. */
        d->seen = true;
        d->seen_has_file = rd->has_file_no;
        d->seen_file = rd->file_no;
        d->seen_has_records = rd->has_records;
        d->seen_records = rd->records;
        bool behind =
            rd->has_file_no &&
            (d->cur.file < rd->file_no ||
             (d->cur.file == rd->file_no && rd->has_records && d->cur.next_no <= rd->records));
        uint64_t wait_s = behind && p->cfg->raceresult.recheck_s > BEHIND_RECHECK_S
                              ? BEHIND_RECHECK_S
                              : (uint64_t)p->cfg->raceresult.recheck_s;
        d->recheck_ms = mono_ms() + wait_s * 1000u;
    }
}

/* One round: the device list, then the detections that are due. */
static void poll_round(struct rrpoll *p)
{
    char err[ERR_MAX] = "";
    struct rest_response resp = {0};
    struct rr_device_list list = {0};
    if (mono_ms() < p->api_backoff_until_ms)
        return;
    enum rest_result res = rest_request(p->rest, "GET", p->list_path, &resp, err, sizeof err);
    if (res == REST_OK)
        metrics_inc(METRIC_RR_REQUESTS);
    if (res == REST_CANCELLED)
        goto out;
    if (res != REST_OK) {
        api_fail(p, err);
        goto out;
    }
    if (resp.http_status != 200) {
        snprintf(err, sizeof err, "device list answered HTTP %ld", resp.http_status);
        api_fail(p, err);
        goto out;
    }
    enum rr_error perr = rr_parse_devices(resp.body, resp.len, &list, err, sizeof err);
    if (perr != RR_OK) {
        char why[ERR_MAX + 64];
        snprintf(why, sizeof why, "invalid device list: %s", err[0] ? err : rr_strerror(perr));
        api_fail(p, why);
        goto out;
    }
    api_ok(p);
    rest_response_cleanup(&resp);

    /* Every device and its status first, then the passings: a long backlog
     * on one decoder must not keep the others' status (or the page's device
     * list) waiting. The observer hears of a device before its status. */
    uint64_t now = mono_ms();
    for (size_t i = 0; i < list.count && !atomic_load(&p->stop); i++) {
        struct device *d = device_get(p, &list.devices[i]);
        if (!d)
            continue;
        if (p->obs.device)
            p->obs.device(p->obs.ctx, &list.devices[i]);
        publish_status(p, d, &list.devices[i]);
    }
    for (size_t i = 0; i < list.count && !atomic_load(&p->stop); i++) {
        struct device *d = device_get(p, &list.devices[i]);
        if (d && mqtt_is_connected(p->m) && due(d, &list.devices[i], now))
            fetch_device(p, d, &list.devices[i]);
    }
    if (p->obs.listed && !atomic_load(&p->stop))
        p->obs.listed(p->obs.ctx);
out:
    rr_device_list_cleanup(&list);
    rest_response_cleanup(&resp);
}

static bool anyone_behind(const struct rrpoll *p)
{
    for (size_t i = 0; i < p->ndevs; i++) {
        if (p->devs[i].more && !p->devs[i].failing)
            return true;
    }
    return false;
}

static void *run(void *arg)
{
    struct rrpoll *p = arg;
    while (!atomic_load(&p->stop)) {
        pthread_mutex_lock(&p->lock);
        bool reconnected = p->connected_event || p->republish_event;
        p->connected_event = p->republish_event = false;
        pthread_mutex_unlock(&p->lock);
        if (!mqtt_is_connected(p->m)) {
            /* Nothing is fetched that could not be acknowledged. */
            nap(p, 500);
            continue;
        }
        if (reconnected) {
            for (size_t i = 0; i < p->ndevs; i++)
                p->devs[i].republish = true;
        }
        uint64_t t0 = mono_ms();
        poll_round(p);
        uint64_t spent = mono_ms() - t0;
        uint64_t interval = (uint64_t)p->cfg->raceresult.poll_interval_ms;
        if (!anyone_behind(p) && spent < interval)
            nap(p, interval - spent);
    }
    return NULL;
}

struct rrpoll *rrpoll_new(const struct config *cfg, struct rest_auth *auth,
                          const struct rrpoll_observer *obs)
{
    struct rrpoll *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->cfg = cfg;
    p->auth = auth;
    if (obs)
        p->obs = *obs;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    return p;
}

/* ?deviceIDs=a,b with every id URL-encoded, or "" for all devices. */
static int build_list_path(struct rrpoll *p, char *err, size_t errlen)
{
    int n = snprintf(p->list_path, sizeof p->list_path, "/customers/%s/devices",
                     p->cfg->raceresult.customer_id);
    const char *ids = p->cfg->raceresult.devices;
    for (const char *s = ids; s && *s;) {
        size_t len = strcspn(s, ",");
        char id[RR_ID_MAX + 1];
        snprintf(id, sizeof id, "%.*s", (int)len, s);
        char *esc = rest_escape(p->rest, id);
        if (!esc)
            return -1;
        n += snprintf(p->list_path + n, sizeof p->list_path - (size_t)n, "%s%s",
                      s == ids ? "?deviceIDs=" : ",", esc);
        free(esc);
        s += len + (s[len] == ',');
        if ((size_t)n >= sizeof p->list_path) {
            snprintf(err, errlen, "raceresult.devices: too many ids for one request");
            return -1;
        }
    }
    return 0;
}

int rrpoll_start(struct rrpoll *p, struct mqtt *m, char *err, size_t errlen)
{
    p->m = m;
    snprintf(p->dir, sizeof p->dir, "%s/raceresult", p->cfg->store.dir);
    if (mkdir(p->dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "raceresult: cannot create %s: %s", p->dir, strerror(errno));
        return -1;
    }
    if (rest_new(&p->rest, p->auth, err, errlen) != 0)
        return -1;
    rest_set_cancel(p->rest, &p->stop);
    if (build_list_path(p, err, errlen) != 0)
        return -1;
    if (pthread_create(&p->thread, NULL, run, p) != 0) {
        snprintf(err, errlen, "raceresult: cannot start the poller thread");
        return -1;
    }
    p->running = true;
    log_info("raceresult: polling customer %s every %d ms", p->cfg->raceresult.customer_id,
             p->cfg->raceresult.poll_interval_ms);
    return 0;
}

void rrpoll_stop(struct rrpoll *p)
{
    if (!p || !p->running)
        return;
    atomic_store(&p->stop, true);
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    p->running = false;
}

void rrpoll_free(struct rrpoll *p)
{
    if (!p)
        return;
    rrpoll_stop(p);
    for (size_t i = 0; i < p->ndevs; i++)
        free(p->devs[i].status_key);
    free(p->devs);
    rest_free(p->rest);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
