/*
 * hass.c - Home Assistant discovery on the broker, kept in step with the
 * gateway (zigbee2mqtt's homeassistant extension is the model: it reads the
 * gateway's state, only emits configs, clears what it no longer produces and
 * sends everything again when Home Assistant comes back).
 *
 * What is wanted:
 * - the gateway, always; the race, when SmartRace is enabled;
 * - every controller in the race state (ingest_controllers()): a controller
 *   removed from the session or forgotten by ui.reset leaves the state, and
 *   so its config is cleared;
 * - decoders from the poller's device list. With raceresult.devices set,
 *   every listed device. Without it the list is every device the customer
 *   owns, often hundreds idle for years, so a device is offered only once it
 *   is seen at work: connected, its counters moved, or a config of ours for
 *   it already on the broker (an earlier run offered it). A device that
 *   leaves the list is cleared.
 * - homeassistant.stale_after_s > 0: a controller without an event and a
 *   decoder without activity for that long are cleared (they come back with
 *   their next event or activity).
 *
 * Orphans: we subscribe to our own <prefix>/device/<node_id>/+/config. A
 * retained config there that we do not want is cleared. The decision about
 * a decoder waits for the first complete device list, since before it we do
 * not know which decoders exist.
 *
 * Threads: paho and the poller only copy into the fields under `lock` and
 * signal. The hass thread decides, and calls mqtt_publish() without holding
 * the lock (paho's own locks are never taken under ours).
 */
#include "race2mqtt/hass.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "race2mqtt/clock.h"
#include "race2mqtt/config.h"
#include "race2mqtt/discovery.h"
#include "race2mqtt/ingest.h"
#include "race2mqtt/log.h"
#include "race2mqtt/mqtt.h"
#include "race2mqtt/state.h"

#define TICK_MS 1000
#define TOPIC_MAX 512
#define NAME_MAX_BYTES 96  /* RR_NAME_MAX */
#define MAX_DECODERS 10000 /* as many as the poller tracks */
#define MAX_ORPHANS 1024   /* retained configs waiting for a decision */

struct entry {
    enum discovery_kind kind;
    char level[TOPIC_LEVEL_MAX + 1];
    char name[NAME_MAX_BYTES + 1];
    char model[16];
    bool present;    /* in the state / the latest device list */
    bool active;     /* decoder: seen at work (or adopted) */
    bool published;  /* config sent on this connection */
    bool on_broker;  /* a config of ours may be retained: clearing it is due when unwanted */
    uint64_t change; /* controller: seq of its last event; decoder: round last listed */
    uint64_t seen_ms;
    bool has_file, has_records;
    int64_t file, records;
};

struct table {
    struct entry *v;
    size_t n, cap;
};

/* One thing to do on the broker, copied out of the lock. */
struct action {
    enum discovery_kind kind;
    char level[TOPIC_LEVEL_MAX + 1];
    char name[NAME_MAX_BYTES + 1];
    char model[16];
    bool clear;
    char object_id[DISCOVERY_OBJECT_MAX]; /* an orphan's, when level does not apply */
};

struct hass {
    const struct config *cfg;
    struct ingest *in;
    struct hass_hooks hooks;
    struct mqtt *m;
    struct discovery_names names;
    char *page_url;
    char status_topic[TOPIC_MAX];
    char config_filter[TOPIC_MAX];
    pthread_t thread;
    bool running;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    bool connected_event;
    uint64_t birth_due_ms; /* 0: none */
    struct table ctrls, decs;
    uint64_t round; /* complete device lists seen */
    bool gateway_published, race_published;
    char (*orphans)[DISCOVERY_OBJECT_MAX];
    size_t norphans;
};

static struct entry *table_find(struct table *t, const char *level)
{
    for (size_t i = 0; i < t->n; i++) {
        if (strcmp(t->v[i].level, level) == 0)
            return &t->v[i];
    }
    return NULL;
}

/* The growable array v (n used, *cap allocated) with room for one more
 * element: v itself, or a larger copy; NULL (v untouched) on no memory. */
static void *grow(void *v, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return v;
    size_t ncap = *cap ? *cap * 2 : 16;
    void *nv = realloc(v, ncap * size);
    if (nv)
        *cap = ncap;
    return nv;
}

static struct entry *table_add(struct table *t, enum discovery_kind kind, const char *level,
                               size_t max)
{
    if (t->n == max || strlen(level) > TOPIC_LEVEL_MAX)
        return NULL;
    struct entry *v = grow(t->v, t->n, &t->cap, sizeof *v);
    if (!v)
        return NULL;
    t->v = v;
    struct entry *e = &t->v[t->n++];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    memcpy(e->level, level, strlen(level) + 1);
    return e;
}

static void table_remove(struct table *t, struct entry *e)
{
    size_t i = (size_t)(e - t->v);
    memmove(&t->v[i], &t->v[i + 1], (t->n - i - 1) * sizeof *e);
    t->n--;
}

struct hass *hass_new(const struct config *cfg, struct ingest *in, const struct hass_hooks *hooks,
                      const char *page_url)
{
    struct hass *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->cfg = cfg;
    h->in = cfg->smartrace.enabled ? in : NULL;
    if (hooks)
        h->hooks = *hooks;
    h->page_url = page_url ? strdup(page_url) : NULL;
    h->orphans = calloc(MAX_ORPHANS, sizeof *h->orphans);
    if ((page_url && !h->page_url) || !h->orphans) {
        free(h->page_url);
        free(h->orphans);
        free(h);
        return NULL;
    }
    h->names = (struct discovery_names){
        .prefix = cfg->homeassistant.prefix,
        .node_id = cfg->homeassistant.node_id,
        .bridge_base = cfg->mqtt.base_topic,
        .smartrace_base = cfg->smartrace.base_topic,
        .raceresult_base = cfg->raceresult.base_topic,
        .version = RACE2MQTT_VERSION,
        .page_url = h->page_url,
    };
    snprintf(h->status_topic, sizeof h->status_topic, "%s/status", cfg->homeassistant.prefix);
    snprintf(h->config_filter, sizeof h->config_filter, "%s/device/%s/+/config",
             cfg->homeassistant.prefix, cfg->homeassistant.node_id);
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    return h;
}

/* ---- hand-offs ---------------------------------------------------------- */

void hass_connected(struct hass *h)
{
    pthread_mutex_lock(&h->lock);
    h->connected_event = true;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

bool hass_message(struct hass *h, const struct mqtt_message *msg)
{
    char object_id[DISCOVERY_OBJECT_MAX];
    if (strcmp(msg->topic, h->status_topic) == 0) {
        if (h->cfg->homeassistant.enabled && msg->len == 6 &&
            memcmp(msg->payload, "online", 6) == 0) {
            pthread_mutex_lock(&h->lock);
            if (!h->birth_due_ms) {
                h->birth_due_ms = mono_ms() + (uint64_t)h->cfg->homeassistant.birth_delay_ms;
                if (!h->birth_due_ms)
                    h->birth_due_ms = 1;
            }
            pthread_cond_signal(&h->cond);
            pthread_mutex_unlock(&h->lock);
            log_info("homeassistant: Home Assistant is online; publishing discovery and state "
                     "again in %d ms",
                     h->cfg->homeassistant.birth_delay_ms);
        }
        return true;
    }
    if (!discovery_topic_object(&h->names, msg->topic, object_id, sizeof object_id))
        return false;
    /* Only retained, non-empty configs can be orphans: an empty one is a
     * removal, a live one is our own publish coming back (3.1.1). */
    if (!msg->retained || msg->len == 0)
        return true;
    pthread_mutex_lock(&h->lock);
    bool known = false;
    for (size_t i = 0; i < h->norphans && !known; i++)
        known = strcmp(h->orphans[i], object_id) == 0;
    if (!known && h->norphans < MAX_ORPHANS)
        memcpy(h->orphans[h->norphans++], object_id, strlen(object_id) + 1);
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
    return true;
}

void hass_decoder_seen(struct hass *h, const struct hass_decoder *d)
{
    uint64_t now = mono_ms();
    pthread_mutex_lock(&h->lock);
    struct entry *e = table_find(&h->decs, d->level);
    if (!e) {
        e = table_add(&h->decs, DISCOVERY_DECODER, d->level, MAX_DECODERS);
        if (e) {
            e->has_file = d->has_file_no;
            e->file = d->file_no;
            e->has_records = d->has_records;
            e->records = d->records;
        }
    }
    if (e) {
        bool moved = e->has_file != d->has_file_no || e->file != d->file_no ||
                     e->has_records != d->has_records || e->records != d->records;
        /* The poller cuts names on a UTF-8 boundary at this size already. */
        snprintf(e->name, sizeof e->name, "%s", d->name ? d->name : "");
        snprintf(e->model, sizeof e->model, "%s", d->model ? d->model : "");
        e->has_file = d->has_file_no;
        e->file = d->file_no;
        e->has_records = d->has_records;
        e->records = d->records;
        e->change = h->round + 1;
        if (d->connected || moved || h->cfg->raceresult.devices) {
            e->active = true;
            e->seen_ms = now;
        }
    }
    pthread_mutex_unlock(&h->lock);
}

void hass_decoders_listed(struct hass *h)
{
    pthread_mutex_lock(&h->lock);
    h->round++;
    for (size_t i = 0; i < h->decs.n; i++)
        h->decs.v[i].present = h->decs.v[i].change == h->round;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

/* ---- the thread --------------------------------------------------------- */

/* The controllers of the race state, copied without our lock held: the
 * publisher holds ingest's lock while it waits for paho, and paho's thread
 * may wait for our lock in hass_message(), so ours must never wait for
 * ingest's. */
struct ctrl_list {
    size_t n;
    struct {
        char level[TOPIC_LEVEL_MAX + 1];
        uint64_t change;
    } v[STATE_MAX_CONTROLLERS];
};

static void ctrl_copy(void *arg, const char *level, uint64_t change)
{
    struct ctrl_list *l = arg;
    if (l->n == STATE_MAX_CONTROLLERS || strlen(level) > TOPIC_LEVEL_MAX)
        return;
    memcpy(l->v[l->n].level, level, strlen(level) + 1);
    l->v[l->n++].change = change;
}

/* Under the lock: marks what is present, notes when it last changed. */
static void ctrl_sync(struct hass *h, const struct ctrl_list *l, uint64_t now)
{
    for (size_t i = 0; i < h->ctrls.n; i++)
        h->ctrls.v[i].present = false;
    for (size_t i = 0; i < l->n; i++) {
        struct entry *e = table_find(&h->ctrls, l->v[i].level);
        if (!e) {
            e = table_add(&h->ctrls, DISCOVERY_CONTROLLER, l->v[i].level, STATE_MAX_CONTROLLERS);
            if (!e)
                continue;
            e->seen_ms = now;
            e->change = l->v[i].change;
        }
        e->present = true;
        if (e->change != l->v[i].change) {
            e->change = l->v[i].change;
            e->seen_ms = now;
        }
    }
}

static bool stale(const struct hass *h, const struct entry *e, uint64_t now)
{
    uint64_t limit = (uint64_t)h->cfg->homeassistant.stale_after_s * 1000u;
    return limit > 0 && now - e->seen_ms > limit;
}

static bool wanted(const struct hass *h, const struct entry *e, uint64_t now)
{
    if (!h->cfg->homeassistant.enabled || !e->present || stale(h, e, now))
        return false;
    return e->kind == DISCOVERY_CONTROLLER || e->active;
}

struct actions {
    struct action *v;
    size_t n, cap;
};

static struct action *action_push(struct actions *a)
{
    struct action *v = grow(a->v, a->n, &a->cap, sizeof *v);
    if (!v)
        return NULL;
    a->v = v;
    struct action *x = &a->v[a->n++];
    memset(x, 0, sizeof *x);
    return x;
}

static void action_entry(struct actions *a, const struct entry *e, bool clear)
{
    struct action *x = action_push(a);
    if (!x)
        return;
    x->kind = e->kind;
    x->clear = clear;
    memcpy(x->level, e->level, sizeof x->level);
    memcpy(x->name, e->name, sizeof x->name);
    memcpy(x->model, e->model, sizeof x->model);
}

/* Publishes or clears entries of t as wanted; drops entries that are gone
 * and cleared. Under the lock: only records actions. */
static void plan_table(struct hass *h, struct table *t, struct actions *a, uint64_t now)
{
    for (size_t i = 0; i < t->n;) {
        struct entry *e = &t->v[i];
        if (wanted(h, e, now)) {
            if (!e->published)
                action_entry(a, e, false);
            e->published = e->on_broker = true;
        } else if (e->on_broker) {
            action_entry(a, e, true);
            e->published = e->on_broker = false;
        }
        /* Forget what is gone; a present but stale or idle decoder stays
         * known so that its activity can bring it back. */
        if (!e->present && !e->on_broker) {
            table_remove(t, e);
            continue;
        }
        i++;
    }
}

/* A retained config of ours: keep it, adopt it, clear it, or wait. */
static void plan_orphans(struct hass *h, struct actions *a, uint64_t now)
{
    size_t keep = 0;
    for (size_t i = 0; i < h->norphans; i++) {
        const char *obj = h->orphans[i];
        enum discovery_kind kind;
        char level[TOPIC_LEVEL_MAX + 1];
        bool clear = !discovery_parse_object(obj, &kind, level) || !h->cfg->homeassistant.enabled;
        bool wait = false;
        if (!clear) {
            struct entry *e;
            switch (kind) {
            case DISCOVERY_GATEWAY:
                break;
            case DISCOVERY_RACE:
                clear = !h->cfg->smartrace.enabled;
                break;
            case DISCOVERY_CONTROLLER:
                e = table_find(&h->ctrls, level);
                clear = !e || !wanted(h, e, now);
                break;
            case DISCOVERY_DECODER:
                if (h->cfg->raceresult.enabled != 1) {
                    clear = true;
                } else if (h->round == 0) {
                    wait = true;
                } else if ((e = table_find(&h->decs, level)) != NULL && e->present) {
                    /* Offered by an earlier run: keep offering it. */
                    if (!e->active) {
                        e->active = true;
                        e->seen_ms = now;
                    }
                    e->on_broker = true;
                } else {
                    clear = true;
                }
                break;
            }
        }
        if (wait) {
            memmove(h->orphans[keep++], obj, strlen(obj) + 1);
            continue;
        }
        if (clear) {
            struct action *x = action_push(a);
            if (x) {
                x->clear = true;
                snprintf(x->object_id, sizeof x->object_id, "%s", obj);
            }
        }
    }
    h->norphans = keep;
}

static void run_actions(struct hass *h, const struct actions *a, bool *refused)
{
    char topic[TOPIC_MAX], object_id[DISCOVERY_OBJECT_MAX];
    for (size_t i = 0; i < a->n; i++) {
        const struct action *x = &a->v[i];
        struct discovery_device d = {
            .kind = x->kind,
            .level = x->level[0] ? x->level : NULL,
            .name = x->name,
            .model = x->model[0] ? x->model : NULL,
        };
        if (x->object_id[0])
            snprintf(object_id, sizeof object_id, "%s", x->object_id);
        else if (!discovery_object_id(&d, object_id, sizeof object_id))
            continue;
        if (!discovery_topic(&h->names, object_id, topic, sizeof topic))
            continue;
        int rc;
        if (x->clear) {
            rc = mqtt_publish(h->m, topic, "", 0, 1, true, 0);
            if (rc == 0)
                log_info("homeassistant: removed %s", object_id);
        } else {
            size_t len = 0;
            char *text = discovery_config(&h->names, &d, &len);
            rc = text ? mqtt_publish(h->m, topic, text, len, 1, true, 0) : -1;
            if (rc == 0)
                log_debug("homeassistant: published %s (%zu bytes)", object_id, len);
            free(text);
        }
        if (rc != 0)
            *refused = true;
    }
}

/* The fixed devices as actions. */
static void plan_fixed(struct hass *h, struct actions *a)
{
    struct entry e = {.kind = DISCOVERY_GATEWAY};
    if (!h->gateway_published) {
        action_entry(a, &e, false);
        h->gateway_published = true;
    }
    if (h->cfg->smartrace.enabled && !h->race_published) {
        e.kind = DISCOVERY_RACE;
        action_entry(a, &e, false);
        h->race_published = true;
    }
}

static void mark_unpublished(struct hass *h)
{
    h->gateway_published = h->race_published = false;
    for (size_t i = 0; i < h->ctrls.n; i++)
        h->ctrls.v[i].published = false;
    for (size_t i = 0; i < h->decs.n; i++)
        h->decs.v[i].published = false;
}

static void *run(void *arg)
{
    struct hass *h = arg;
    struct actions a = {0};
    bool enabled = h->cfg->homeassistant.enabled;
    struct ctrl_list *ctrls = malloc(sizeof *ctrls);
    if (!ctrls) {
        log_error("homeassistant: out of memory; no discovery");
        return NULL;
    }

    pthread_mutex_lock(&h->lock);
    while (!h->stop) {
        uint64_t wait_ms = TICK_MS, t = mono_ms();
        if (h->birth_due_ms && h->birth_due_ms - t < wait_ms)
            wait_ms = h->birth_due_ms > t ? h->birth_due_ms - t : 0;
        if (!h->connected_event && wait_ms > 0) {
            struct timespec until = realtime_in_us(wait_ms * 1000);
            pthread_cond_timedwait(&h->cond, &h->lock, &until);
        }
        if (h->stop)
            break;
        uint64_t now = mono_ms();
        bool connected = h->connected_event;
        h->connected_event = false;
        bool birth = h->birth_due_ms && now >= h->birth_due_ms;
        if (birth)
            h->birth_due_ms = 0;
        if (connected || birth)
            mark_unpublished(h);
        pthread_mutex_unlock(&h->lock);

        if (connected) {
            if (enabled)
                mqtt_subscribe(h->m, h->status_topic, 0);
            mqtt_subscribe(h->m, h->config_filter, 0);
        }
        if (birth && h->hooks.republish)
            h->hooks.republish(h->hooks.ctx);

        if (h->in) {
            ctrls->n = 0;
            ingest_controllers(h->in, ctrl_copy, ctrls);
        }
        pthread_mutex_lock(&h->lock);
        if (h->in)
            ctrl_sync(h, ctrls, now);
        a.n = 0;
        if (mqtt_is_connected(h->m)) {
            if (enabled)
                plan_fixed(h, &a);
            plan_table(h, &h->ctrls, &a, now);
            plan_table(h, &h->decs, &a, now);
            plan_orphans(h, &a, now);
        }
        pthread_mutex_unlock(&h->lock);

        bool refused = false;
        run_actions(h, &a, &refused);

        pthread_mutex_lock(&h->lock);
        if (refused) /* the client refused one (queue full, link lost): all again */
            h->connected_event = mqtt_is_connected(h->m);
    }
    pthread_mutex_unlock(&h->lock);
    free(a.v);
    free(ctrls);
    return NULL;
}

int hass_start(struct hass *h, struct mqtt *m, char *err, size_t errlen)
{
    h->m = m;
    if (pthread_create(&h->thread, NULL, run, h) != 0) {
        snprintf(err, errlen, "homeassistant: cannot start thread");
        return -1;
    }
    h->running = true;
    return 0;
}

void hass_stop(struct hass *h)
{
    if (!h || !h->running)
        return;
    pthread_mutex_lock(&h->lock);
    h->stop = true;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->thread, NULL);
    h->running = false;
}

void hass_free(struct hass *h)
{
    if (!h)
        return;
    hass_stop(h);
    free(h->ctrls.v);
    free(h->decs.v);
    free(h->orphans);
    free(h->page_url);
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
    free(h);
}
