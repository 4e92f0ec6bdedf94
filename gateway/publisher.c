/*
 * publisher.c - the journal's one reader: durable records out to the broker.
 *
 * Invariants:
 * - Records go out in seq order; at most mqtt.max_inflight await a PUBACK.
 *   They sit in `window`, a ring ordered by seq.
 * - `acked` only moves past a record when it and every record before it were
 *   acknowledged. Only then is the record forgotten: the watermark is stored
 *   with the journal and segments are released up to min(acked, snapshot seq).
 * - Records are read ahead from the journal's memory as soon as they are
 *   appended, so the broker hears of an event while its fdatasync runs (the
 *   HTTP answer still waits for it). When the next record is already on disk
 *   (the publisher fell behind) or held back (the journal cannot write), the
 *   publisher reads the files from read_pos until it has caught up, then
 *   reads ahead again. A record whose batch then fails to be written is
 *   dropped from the window: its seq is burned, never resent.
 * - After every (re)connect everything in the window that is not acknowledged
 *   is sent again from the journal. paho's own session state cannot be
 *   trusted for this (it drops in-flight messages when the broker lost the
 *   session), so a broker outage costs a few duplicates with the same seq,
 *   never a loss.
 * - paho callbacks only append to `acks`/`fails` and signal; all decisions
 *   are made on this thread.
 */
#include "race2mqtt/publisher.h"

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "race2mqtt/clock.h"
#include "race2mqtt/config.h"
#include "race2mqtt/fault.h"
#include "race2mqtt/ingest.h"
#include "race2mqtt/journal.h"
#include "race2mqtt/log.h"
#include "race2mqtt/metrics.h"
#include "race2mqtt/mqtt.h"
#include "race2mqtt/smartrace.h"

#define TICK_MS 100
#define ACK_PERSIST_MS 100
#define RELEASE_MS 1000
/* Lap-driven retained state (controllers, standings) goes out at most this
 * often: a device joining mid-race needs the race as it is, not every
 * intermediate standings table, and at 200 laps per second one round per
 * event was 1.5 extra messages per event. A change of status, flag, weather,
 * VSC, event or track goes out at once, laps with it: light controllers
 * follow those topics live. */
#define STATE_MIN_INTERVAL_US 100000
/* Counters for dashboards: every few seconds is plenty, and only on change. */
#define STATS_INTERVAL_MS 5000

struct slot {
    uint64_t seq;
    struct journal_pos pos; /* valid when placed; a record read ahead is found on resend */
    bool placed;
    uint64_t sent_us;
    bool acked;
    bool needs_send; /* not sent on the current connection */
    char family[16];  /* for metrics: the topic level after the base */
};

/* Tags reported by paho (or seq ranges of failed commits, as pairs), handed
 * over under the lock. */
struct tag_list {
    uint64_t *v;
    size_t n, cap;
};

struct publisher {
    const struct config *cfg;
    struct journal *j;
    struct ingest *in;
    struct mqtt *m;

    pthread_t thread;
    bool running;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* Hand-off, under lock. */
    bool wake;
    bool want_acks; /* window full or draining: wake on every acknowledgement */
    bool connected_event;
    bool republish_event;
    bool stop;
    uint64_t stop_deadline_us;
    struct tag_list acks, fails;
    struct tag_list burned; /* first, last of each failed commit */

    /* Publisher thread only. */
    struct slot *window;
    size_t wcap, whead, wcount;
    uint64_t read_seq; /* the last record taken into the window */
    bool ahead;        /* reading ahead, not from read_pos */
    bool pos_valid;    /* read_pos is just after read_seq */
    struct journal_pos read_pos;
    char *buf, *sealed;
    size_t bufcap, sealedcap;
    bool connected;
    uint64_t persisted_acked;
    uint64_t last_persist_us, last_release_us, last_state_us;
    bool state_resync; /* a state publish was refused: send all of it again */
    char info_topic[256];
    char stats_topic[256];
    char last_stats[256];
    uint64_t last_stats_us;

    _Atomic uint64_t acked;
    _Atomic uint64_t rounds; /* times round the loop: the watchdog's sign of life */
    bool hang_fault;         /* test-only, see fault.h */
};

/* Appends under p->lock; on no memory the tag is dropped, which at worst
 * means a record is sent again after the next reconnect. */
static void tag_push(struct tag_list *l, uint64_t tag)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        uint64_t *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = tag;
}

void publisher_connected(struct publisher *p)
{
    pthread_mutex_lock(&p->lock);
    p->connected_event = true;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void publisher_connection_lost(struct publisher *p)
{
    publisher_wake(p);
}

/*
 * An acknowledgement only moves the watermark, which nobody waits for while
 * the window has room: it is collected on the next wake (a commit or the
 * tick) instead of costing a thread switch per message.
 */
void publisher_delivered(struct publisher *p, uint64_t tag)
{
    pthread_mutex_lock(&p->lock);
    tag_push(&p->acks, tag);
    if (p->want_acks)
        pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void publisher_commit_failed(struct publisher *p, uint64_t first, uint64_t last)
{
    pthread_mutex_lock(&p->lock);
    tag_push(&p->burned, first);
    tag_push(&p->burned, last);
    if (p->burned.n % 2)
        p->burned.n--; /* no memory for last: the pair is dropped, see drop_burned() */
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void publisher_failed(struct publisher *p, uint64_t tag)
{
    metrics_inc(METRIC_MQTT_PUBLISH_FAILED);
    pthread_mutex_lock(&p->lock);
    tag_push(&p->fails, tag);
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

struct publisher *publisher_new(const struct config *cfg, struct journal *j, struct ingest *in)
{
    struct publisher *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->cfg = cfg;
    p->j = j;
    p->in = in;
    p->hang_fault = fault_on("hang-publisher");
    p->wcap = (size_t)cfg->mqtt.max_inflight;
    p->window = calloc(p->wcap, sizeof *p->window);
    if (!p->window) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    snprintf(p->info_topic, sizeof p->info_topic, "%s/bridge/info", cfg->mqtt.base_topic);
    snprintf(p->stats_topic, sizeof p->stats_topic, "%s/bridge/stats", cfg->mqtt.base_topic);
    uint64_t acked = journal_acked(j);
    atomic_store(&p->acked, acked);
    p->persisted_acked = acked;
    p->read_seq = acked;
    p->pos_valid = true;
    journal_seek(j, acked, &p->read_pos);
    return p;
}

void publisher_republish(struct publisher *p)
{
    pthread_mutex_lock(&p->lock);
    p->republish_event = true;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void publisher_wake(struct publisher *p)
{
    pthread_mutex_lock(&p->lock);
    p->wake = true;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

uint64_t publisher_acked(struct publisher *p)
{
    return atomic_load(&p->acked);
}

static struct slot *slot_at(struct publisher *p, size_t i)
{
    return &p->window[(p->whead + i) % p->wcap];
}

/* The window is ordered by seq, so a binary search finds a tag's slot. */
static struct slot *slot_find(struct publisher *p, uint64_t seq)
{
    size_t lo = 0, hi = p->wcount;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        struct slot *s = slot_at(p, mid);
        if (s->seq == seq)
            return s;
        if (s->seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void state_publish(void *ctx, const char *topic, const char *payload, size_t len)
{
    struct publisher *p = ctx;
    /* Retained state is derived, not journaled: if this publish is lost with
     * the connection, the next connect publishes all of it again. */
    if (mqtt_publish(p->m, topic, payload ? payload : "", len, 1, true, 0) == 0)
        metrics_inc(METRIC_STATE_PUBLISHED);
    else
        p->state_resync = true;
}

/* Publishes changed state (or all of it after a refusal), rate limited. */
static void publish_state(struct publisher *p, uint64_t now)
{
    bool all = p->state_resync, race = false;
    if (!ingest_state_dirty(p->in, &race) && !all)
        return;
    if ((all || !race) && now - p->last_state_us < STATE_MIN_INTERVAL_US)
        return;
    p->state_resync = false;
    p->last_state_us = now;
    ingest_emit_state(p->in, all, state_publish, p);
}

static void publish_bridge(struct publisher *p)
{
    mqtt_publish(p->m, mqtt_state_topic(p->m), "online", 6, 1, true, 0);

    struct json_object *info = json_object_new_object();
    struct json_object *sources = json_object_new_object();
    json_object_object_add(info, "version", json_object_new_string(RACE2MQTT_VERSION));
    json_object_object_add(sources, "smartrace", json_object_new_boolean(p->cfg->smartrace.enabled));
    json_object_object_add(sources, "raceresult",
                           json_object_new_boolean(p->cfg->raceresult.enabled == 1));
    json_object_object_add(info, "sources", sources);
    json_object_object_add(info, "broker_connected", json_object_new_boolean(1));
    json_object_object_add(info, "config", config_to_json(p->cfg));
    size_t len;
    const char *text = json_object_to_json_string_length(info, JSON_C_TO_STRING_PLAIN, &len);
    mqtt_publish(p->m, p->info_topic, text, len, 1, true, 0);
    json_object_put(info);
}

/* <base>/bridge/stats when it changed (or always with force), at most
 * every STATS_INTERVAL_MS. events_accepted is the last seq: every event
 * ever accepted, across restarts; passings counts since this start. */
static void publish_stats(struct publisher *p, bool force)
{
    uint64_t now = mono_us();
    if (!force && now - p->last_stats_us < STATS_INTERVAL_MS * 1000u)
        return;
    struct journal_stats st;
    journal_get_stats(p->j, &st);
    uint64_t last = st.last_seq;
    uint64_t acked = atomic_load(&p->acked);
    char text[sizeof p->last_stats];
    int len = snprintf(text, sizeof text,
                       "{\"events_accepted\":%llu,\"queue_depth\":%llu,\"journal_bytes\":%llu,"
                       "\"passings\":%llu}",
                       (unsigned long long)last,
                       (unsigned long long)(last > acked ? last - acked : 0),
                       (unsigned long long)st.bytes,
                       (unsigned long long)metrics_get(METRIC_RR_PASSINGS));
    p->last_stats_us = now;
    if (len <= 0 || (size_t)len >= sizeof text || (!force && strcmp(text, p->last_stats) == 0))
        return;
    if (mqtt_publish(p->m, p->stats_topic, text, (size_t)len, 1, true, 0) == 0)
        memcpy(p->last_stats, text, (size_t)len + 1);
}

/* Everything retained that the publisher owns: bridge state, info, stats
 * and the whole race state. */
static void republish_all(struct publisher *p)
{
    publish_bridge(p);
    publish_stats(p, true);
    p->state_resync = false;
    p->last_state_us = mono_us();
    ingest_emit_state(p->in, true, state_publish, p);
}

/* Publishes one journal record; false when the client refused it. */
static bool send_record(struct publisher *p, struct slot *s, const struct journal_record *rec)
{
    size_t need = rec->payload_len + SMARTRACE_SEAL_EXTRA;
    if (need > p->sealedcap) {
        char *nb = realloc(p->sealed, need);
        if (!nb)
            return false;
        p->sealed = nb;
        p->sealedcap = need;
    }
    size_t len = smartrace_seal(p->sealed, p->sealedcap, rec->payload, rec->payload_len, rec->seq);
    if (mqtt_publish(p->m, rec->topic, p->sealed, len, p->cfg->smartrace.qos, false, rec->seq) != 0)
        return false;
    s->sent_us = mono_us();
    s->needs_send = false;
    return true;
}

static void set_family(struct publisher *p, struct slot *s, const char *topic)
{
    size_t base = strlen(p->cfg->smartrace.base_topic);
    const char *family = strncmp(topic, p->cfg->smartrace.base_topic, base) == 0 && topic[base] == '/'
                             ? topic + base + 1
                             : "other";
    size_t n = strcspn(family, "/");
    if (n >= sizeof s->family)
        n = sizeof s->family - 1;
    memcpy(s->family, family, n);
    s->family[n] = '\0';
}

/*
 * Sends again what this connection has not carried yet, in seq order. Returns
 * false when the client refused one: nothing newer may go out before it.
 */
static bool resend(struct publisher *p)
{
    /* Slots read ahead have no position yet: one search for the first, then
     * the files are read forward, as the window is in seq order. */
    struct journal_pos cur;
    bool have_cur = false;
    for (size_t i = 0; i < p->wcount && p->connected; i++) {
        struct slot *s = slot_at(p, i);
        if (s->acked || !s->needs_send)
            continue;
        struct journal_record rec;
        int rc;
        if (!s->placed) {
            if (!have_cur)
                journal_seek(p->j, s->seq - 1, &cur);
            have_cur = true;
            do {
                s->pos = cur;
                rc = journal_read(p->j, &cur, &rec, &p->buf, &p->bufcap);
            } while (rc == 1 && rec.seq < s->seq);
            s->placed = rc == 1 && rec.seq == s->seq;
            if (rc == 1 && rec.seq > s->seq)
                cur = s->pos; /* not on disk: the next slot starts here */
            if (!s->placed) {
                /* Not durable yet: still in memory, unless its commit failed. */
                rc = journal_read_ahead(p->j, s->seq - 1, &rec, &p->buf, &p->bufcap);
                if (rc != 1 || rec.seq != s->seq)
                    return false; /* nothing newer goes out first; the next pass retries */
            }
        } else {
            struct journal_pos pos = s->pos;
            if (journal_read(p->j, &pos, &rec, &p->buf, &p->bufcap) != 1 || rec.seq != s->seq) {
                log_error("publisher: cannot re-read seq %llu from the journal",
                          (unsigned long long)s->seq);
                continue;
            }
        }
        if (!send_record(p, s, &rec))
            return false; /* refused: kept as needs_send, retried on the next pass */
    }
    return p->connected;
}

/* The next record after read_seq: read ahead, or from the files while the
 * journal says so. 1, or 0 when there is none (or an error, logged). */
static int next_record(struct publisher *p, struct journal_record *rec, bool *placed,
                       struct journal_pos *at)
{
    bool tried_ahead = p->ahead;
    for (;;) {
        if (p->ahead) {
            int rc = journal_read_ahead(p->j, p->read_seq, rec, &p->buf, &p->bufcap);
            if (rc == 1) {
                p->pos_valid = false;
                *placed = false;
                return 1;
            }
            if (rc != JOURNAL_AHEAD_ON_DISK && rc != JOURNAL_AHEAD_HELD)
                return 0;
            if (!p->pos_valid)
                journal_ahead_pos(p->j, p->read_seq, &p->read_pos);
            p->pos_valid = true;
            p->ahead = false;
        }
        *at = p->read_pos;
        int rc = journal_read(p->j, &p->read_pos, rec, &p->buf, &p->bufcap);
        if (rc == 1) {
            *placed = true;
            return 1;
        }
        /* Caught up with the files: memory is next, once per call (a held
         * record makes the journal say "files" again). */
        if (rc != 0 || tried_ahead)
            return 0;
        p->ahead = tried_ahead = true;
    }
}

/* Reads and sends new records while the window has room. */
static void fill(struct publisher *p)
{
    while (p->connected && p->wcount < p->wcap) {
        struct journal_pos at = {0, 0};
        struct journal_record rec;
        bool placed;
        if (next_record(p, &rec, &placed, &at) != 1)
            return;
        p->read_seq = rec.seq;
        struct slot *s = slot_at(p, p->wcount);
        memset(s, 0, sizeof *s);
        s->seq = rec.seq;
        s->pos = at;
        s->placed = placed;
        s->needs_send = true;
        set_family(p, s, rec.topic);
        p->wcount++;
        if (!send_record(p, s, &rec))
            return; /* refused: kept as needs_send, retried on the next pass */
    }
}

/* Records of a failed commit are gone from the journal: never resent, and
 * the watermark may pass them. (A pair lost to no memory leaves its slots
 * to be re-read on the next reconnect, which fails with a log line.) */
static void drop_burned(struct publisher *p, const struct tag_list *burned)
{
    for (size_t k = 0; k + 1 < burned->n; k += 2) {
        for (size_t i = 0; i < p->wcount; i++) {
            struct slot *s = slot_at(p, i);
            if (s->seq >= burned->v[k] && s->seq <= burned->v[k + 1]) {
                s->acked = true;
                s->needs_send = false;
            }
        }
    }
}

static void apply_acks(struct publisher *p, const struct tag_list *acks,
                       const struct tag_list *fails)
{
    uint64_t now = mono_us();
    for (size_t i = 0; i < acks->n; i++) {
        struct slot *s = slot_find(p, acks->v[i]);
        if (s && !s->acked) {
            s->acked = true;
            metrics_publish_latency_us(now - s->sent_us);
            metrics_event_out(s->family, strlen(s->family));
        }
    }
    for (size_t i = 0; i < fails->n; i++) {
        struct slot *s = slot_find(p, fails->v[i]);
        if (s && !s->acked)
            s->needs_send = true;
    }
    /* Move the watermark over the acknowledged prefix. */
    uint64_t acked = atomic_load(&p->acked);
    while (p->wcount > 0 && slot_at(p, 0)->acked) {
        acked = slot_at(p, 0)->seq;
        p->whead = (p->whead + 1) % p->wcap;
        p->wcount--;
    }
    atomic_store(&p->acked, acked);
}

/* Stores the watermark, then lets the journal forget what both it and the
 * state snapshot (written by ingest's own thread) cover. */
static void housekeeping(struct publisher *p, bool force)
{
    uint64_t now = mono_us();
    uint64_t acked = atomic_load(&p->acked);
    if (acked != p->persisted_acked && (force || now - p->last_persist_us >= ACK_PERSIST_MS * 1000)) {
        journal_set_acked(p->j, acked);
        p->persisted_acked = acked;
        p->last_persist_us = now;
    }
    if (force || now - p->last_release_us >= RELEASE_MS * 1000) {
        uint64_t saved = ingest_saved_seq(p->in);
        journal_release(p->j, saved < p->persisted_acked ? saved : p->persisted_acked);
        p->last_release_us = now;
    }
}

static bool drained(struct publisher *p)
{
    struct journal_stats st;
    journal_get_stats(p->j, &st);
    return p->wcount == 0 && atomic_load(&p->acked) >= st.last_seq;
}

static void *run(void *arg)
{
    struct publisher *p = arg;
    struct tag_list acks = {0}, fails = {0}, burned = {0};

    /* Asked before taking the lock: ingest appends under its own lock and
     * then wakes us (journal on_append), so ingest's lock is never taken
     * inside ours. */
    bool state_due = false;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        if (!p->wake && !p->connected_event && !p->republish_event && !p->stop && p->fails.n == 0 &&
            p->burned.n == 0 && (p->acks.n == 0 || !p->want_acks)) {
            /* Sleep until the next tick, or sooner when a state round is due. */
            struct timespec until =
                realtime_in_us(state_due ? STATE_MIN_INTERVAL_US : TICK_MS * 1000);
            pthread_cond_timedwait(&p->cond, &p->lock, &until);
        }
        /* Take the hand-off and work without the lock. */
        struct tag_list t = p->acks;
        p->acks = acks;
        acks = t;
        p->acks.n = 0;
        t = p->fails;
        p->fails = fails;
        fails = t;
        p->fails.n = 0;
        t = p->burned;
        p->burned = burned;
        burned = t;
        p->burned.n = 0;
        bool reconnected = p->connected_event;
        bool republish = p->republish_event;
        bool stopping = p->stop;
        uint64_t deadline = p->stop_deadline_us;
        p->connected_event = p->republish_event = false;
        p->wake = false;
        pthread_mutex_unlock(&p->lock);

        if (reconnected) {
            p->connected = mqtt_is_connected(p->m);
            for (size_t i = 0; i < p->wcount; i++)
                slot_at(p, i)->needs_send = !slot_at(p, i)->acked;
            if (p->connected) {
                republish_all(p);
                if (p->wcount > 0)
                    log_info("publisher: resending %zu unacknowledged events from seq %llu",
                             p->wcount, (unsigned long long)slot_at(p, 0)->seq);
            }
        } else if (p->connected && !mqtt_is_connected(p->m)) {
            p->connected = false;
        } else if (republish && p->connected) {
            republish_all(p);
        }

        drop_burned(p, &burned);
        apply_acks(p, &acks, &fails);
        acks.n = fails.n = burned.n = 0;
        if (p->connected) {
            if (resend(p))
                fill(p);
            publish_state(p, mono_us());
            publish_stats(p, false);
        }
        if (p->hang_fault && p->read_seq > 0)
            fault_hang();
        housekeeping(p, false);
        atomic_fetch_add(&p->rounds, 1);

        if (stopping && (drained(p) || mono_us() >= deadline))
            break;
        state_due = p->connected && (p->state_resync || ingest_state_dirty(p->in, NULL));
        pthread_mutex_lock(&p->lock);
        p->want_acks = stopping || p->wcount == p->wcap;
    }
    free(acks.v);
    free(fails.v);
    free(burned.v);
    if (!drained(p))
        log_warn("publisher: stopping with events not yet acknowledged; they stay in the "
                 "journal and go out after the next start");
    housekeeping(p, true);
    return NULL;
}

uint64_t publisher_rounds(struct publisher *p)
{
    return atomic_load(&p->rounds);
}

int publisher_start(struct publisher *p, struct mqtt *m, char *err, size_t errlen)
{
    p->m = m;
    if (pthread_create(&p->thread, NULL, run, p) != 0) {
        snprintf(err, errlen, "publisher: cannot start thread");
        return -1;
    }
    p->running = true;
    return 0;
}

void publisher_stop(struct publisher *p, int timeout_ms)
{
    if (!p || !p->running)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    p->stop_deadline_us = mono_us() + (uint64_t)timeout_ms * 1000u;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    p->running = false;
}

void publisher_free(struct publisher *p)
{
    if (!p)
        return;
    publisher_stop(p, 0);
    free(p->acks.v);
    free(p->fails.v);
    free(p->burned.v);
    free(p->window);
    free(p->buf);
    free(p->sealed);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
