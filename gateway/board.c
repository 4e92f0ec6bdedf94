/*
 * board.c - the gateway's inputs as the page shows them (see board.h).
 *
 * Why it exists: the hardest minute with SmartRace's data interface is the
 * first one. Does the tablet reach us at all, is CORS in the way, is the token
 * wrong, which events are switched on? The board keeps just enough to answer
 * that from the page: counts per event type, the last event and its sender,
 * the last refusals with the reason we answered, the last preflight.
 *
 * Copies only, under one mutex held for a few copies at a time: callers are
 * ingest's tap (under ingest's lock, so it must stay quick), HTTP workers and
 * the poller. Nothing here does I/O. The raw event ring is the one thing of
 * size: at most keep_events bodies and BOARD_RING_BYTES in all, oldest out
 * first.
 */
#include "race2mqtt/board.h"

#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "race2mqtt/ingest.h"

#define TYPE_MAX 64
#define ADDR_MAX 64 /* an IPv6 address in text is at most 45 */
#define REASON_MAX 200
#define ORIGIN_MAX 128
#define NAME_MAX_ 64
#define TEXT_MAX 64

struct refusal {
    int64_t at_ms;
    int status;
    char from[ADDR_MAX];
    char reason[REASON_MAX];
};

struct raw_event {
    uint64_t seq;
    int64_t at_ms;
    char type[TYPE_MAX];
    char *body;
    size_t len;
};

struct device {
    char level[NAME_MAX_];
    char name[NAME_MAX_];
    char type[TEXT_MAX];
    bool connected;
    bool has_file, has_records, has_battery;
    int64_t file, records;
    double battery;
    bool listed;        /* in the list being read now */
    int64_t passing_ms; /* 0: none seen */
    char transponder[TEXT_MAX];
    char passing_time[TEXT_MAX];
};

struct board {
    pthread_mutex_t lock;
    uint64_t accepted, refused;

    struct {
        char name[TYPE_MAX];
        uint64_t n;
    } types[BOARD_TYPES];
    size_t ntypes;
    uint64_t other_types;

    bool has_last;
    uint64_t last_seq;
    int64_t last_ms;
    char last_type[TYPE_MAX];
    char last_from[ADDR_MAX];

    struct refusal refusals[BOARD_REFUSALS];
    size_t nrefusals; /* ever; the newest is at (nrefusals - 1) % BOARD_REFUSALS */

    bool has_preflight;
    int64_t preflight_ms;
    char preflight_from[ADDR_MAX];
    char preflight_origin[ORIGIN_MAX];
    bool preflight_pna;

    struct raw_event *ring; /* keep slots; oldest at ring_first */
    size_t keep, ring_first, ring_count, ring_bytes;

    int api_ok; /* -1: not asked yet */
    int64_t api_ok_ms, api_error_ms;
    char api_error[REASON_MAX];
    struct device devices[BOARD_DEVICES];
    size_t ndevices;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Copies s into dst[cap], cut on a UTF-8 boundary (json-c refuses no bytes,
 * but a page should not show half a character). */
static void copy_text(char *dst, size_t cap, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, s, n);
    dst[n] = '\0';
}

struct board *board_new(int keep_events)
{
    struct board *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->keep = keep_events < 0 ? 0 : (size_t)keep_events;
    if (b->keep > BOARD_KEEP_MAX)
        b->keep = BOARD_KEEP_MAX;
    if (b->keep && !(b->ring = calloc(b->keep, sizeof *b->ring))) {
        free(b);
        return NULL;
    }
    b->api_ok = -1;
    pthread_mutex_init(&b->lock, NULL);
    return b;
}

void board_free(struct board *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->ring_count; i++)
        free(b->ring[(b->ring_first + i) % b->keep].body);
    free(b->ring);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

/* ---- SmartRace ---- */

static void count_type(struct board *b, const char *type)
{
    for (size_t i = 0; i < b->ntypes; i++) {
        if (strcmp(b->types[i].name, type) == 0) {
            b->types[i].n++;
            return;
        }
    }
    if (b->ntypes == BOARD_TYPES || strlen(type) >= TYPE_MAX) {
        b->other_types++;
        return;
    }
    copy_text(b->types[b->ntypes].name, TYPE_MAX, type);
    b->types[b->ntypes++].n = 1;
}

static void ring_drop_oldest(struct board *b)
{
    struct raw_event *e = &b->ring[b->ring_first];
    b->ring_bytes -= e->len;
    free(e->body);
    e->body = NULL;
    b->ring_first = (b->ring_first + 1) % b->keep;
    b->ring_count--;
}

static void ring_push(struct board *b, const struct ingest_accepted *a)
{
    if (!b->keep || a->len > BOARD_RING_BYTES)
        return;
    char *copy = malloc(a->len + 1);
    if (!copy)
        return; /* the page shows one event less; nothing else depends on it */
    memcpy(copy, a->body, a->len);
    copy[a->len] = '\0';
    while (b->ring_count && (b->ring_count == b->keep || b->ring_bytes + a->len > BOARD_RING_BYTES))
        ring_drop_oldest(b);
    struct raw_event *e = &b->ring[(b->ring_first + b->ring_count) % b->keep];
    e->seq = a->seq;
    e->at_ms = a->at_ms;
    copy_text(e->type, sizeof e->type, a->type);
    e->body = copy;
    e->len = a->len;
    b->ring_count++;
    b->ring_bytes += a->len;
}

void board_accepted(struct board *b, const struct ingest_accepted *a)
{
    pthread_mutex_lock(&b->lock);
    b->accepted++;
    count_type(b, a->type ? a->type : "");
    b->has_last = true;
    b->last_seq = a->seq;
    b->last_ms = a->at_ms;
    copy_text(b->last_type, sizeof b->last_type, a->type);
    b->last_from[0] = '\0';
    ring_push(b, a);
    pthread_mutex_unlock(&b->lock);
}

void board_from(struct board *b, uint64_t seq, const char *from)
{
    pthread_mutex_lock(&b->lock);
    /* A later event already took the "last" slot: its worker names its own. */
    if (b->has_last && b->last_seq == seq)
        copy_text(b->last_from, sizeof b->last_from, from);
    pthread_mutex_unlock(&b->lock);
}

void board_refused(struct board *b, const char *from, int status, const char *reason)
{
    pthread_mutex_lock(&b->lock);
    b->refused++;
    struct refusal *r = &b->refusals[b->nrefusals++ % BOARD_REFUSALS];
    r->at_ms = now_ms();
    r->status = status;
    copy_text(r->from, sizeof r->from, from);
    copy_text(r->reason, sizeof r->reason, reason);
    pthread_mutex_unlock(&b->lock);
}

void board_preflight(struct board *b, const char *from, const char *origin, bool private_network)
{
    pthread_mutex_lock(&b->lock);
    b->has_preflight = true;
    b->preflight_ms = now_ms();
    copy_text(b->preflight_from, sizeof b->preflight_from, from);
    copy_text(b->preflight_origin, sizeof b->preflight_origin, origin);
    b->preflight_pna = private_network;
    pthread_mutex_unlock(&b->lock);
}

/* ---- RACE RESULT ---- */

static struct device *device_find(struct board *b, const char *level, bool create)
{
    for (size_t i = 0; i < b->ndevices; i++) {
        if (strcmp(b->devices[i].level, level) == 0)
            return &b->devices[i];
    }
    if (!create || b->ndevices == BOARD_DEVICES || strlen(level) >= NAME_MAX_)
        return NULL;
    struct device *d = &b->devices[b->ndevices++];
    memset(d, 0, sizeof *d);
    copy_text(d->level, sizeof d->level, level);
    return d;
}

void board_rr_device(struct board *b, const struct board_device *in)
{
    pthread_mutex_lock(&b->lock);
    struct device *d = device_find(b, in->level, true);
    if (d) {
        copy_text(d->name, sizeof d->name, in->name);
        copy_text(d->type, sizeof d->type, in->type);
        d->connected = in->connected;
        d->has_file = in->has_file;
        d->file = in->file;
        d->has_records = in->has_records;
        d->records = in->records;
        d->listed = true;
    }
    pthread_mutex_unlock(&b->lock);
}

void board_rr_listed(struct board *b)
{
    pthread_mutex_lock(&b->lock);
    size_t n = 0;
    for (size_t i = 0; i < b->ndevices; i++) {
        if (!b->devices[i].listed)
            continue;
        b->devices[i].listed = false;
        if (n != i)
            b->devices[n] = b->devices[i];
        n++;
    }
    b->ndevices = n;
    pthread_mutex_unlock(&b->lock);
}

static struct json_object *parse_object(const char *payload, size_t len)
{
    struct json_tokener *tok = json_tokener_new_ex(16);
    struct json_object *o = tok ? json_tokener_parse_ex(tok, payload, (int)len) : NULL;
    json_tokener_free(tok);
    if (o && !json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        o = NULL;
    }
    return o;
}

void board_rr_status(struct board *b, const char *level, const char *payload, size_t len)
{
    /* Parsed before the lock: the payload carries the device's raw record. */
    struct json_object *o = parse_object(payload, len), *v;
    bool has = o && json_object_object_get_ex(o, "battery", &v) &&
               (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double));
    double battery = has ? json_object_get_double(v) : 0;
    json_object_put(o);
    pthread_mutex_lock(&b->lock);
    struct device *d = device_find(b, level, false);
    if (d) {
        d->has_battery = has;
        d->battery = battery;
    }
    pthread_mutex_unlock(&b->lock);
}

/* A member as text: strings as they are, numbers as printed; "" when absent. */
static void member_text(struct json_object *o, const char *key, char *dst, size_t cap)
{
    struct json_object *v;
    dst[0] = '\0';
    if (json_object_object_get_ex(o, key, &v) && v && !json_object_is_type(v, json_type_object) &&
        !json_object_is_type(v, json_type_array))
        copy_text(dst, cap, json_object_get_string(v));
}

void board_rr_passing(struct board *b, const char *level, const char *payload, size_t len)
{
    struct json_object *o = parse_object(payload, len);
    char transponder[TEXT_MAX], when[TEXT_MAX];
    member_text(o, "transponder", transponder, sizeof transponder);
    member_text(o, "time", when, sizeof when);
    json_object_put(o);
    pthread_mutex_lock(&b->lock);
    struct device *d = device_find(b, level, false);
    if (d) {
        d->passing_ms = now_ms();
        memcpy(d->transponder, transponder, sizeof d->transponder);
        memcpy(d->passing_time, when, sizeof d->passing_time);
    }
    pthread_mutex_unlock(&b->lock);
}

void board_rr_api(struct board *b, bool ok, const char *error)
{
    pthread_mutex_lock(&b->lock);
    b->api_ok = ok;
    if (ok) {
        b->api_ok_ms = now_ms();
    } else {
        b->api_error_ms = now_ms();
        copy_text(b->api_error, sizeof b->api_error, error);
    }
    pthread_mutex_unlock(&b->lock);
}

/* ---- rendering ---- */

static struct json_object *text_or_null(const char *s)
{
    return s[0] ? json_object_new_string(s) : NULL;
}

static struct json_object *ms_or_null(int64_t ms)
{
    return ms ? json_object_new_int64(ms) : NULL;
}

struct json_object *board_smartrace_json(struct board *b)
{
    struct json_object *o = json_object_new_object();
    struct json_object *types = json_object_new_object();
    struct json_object *refusals = json_object_new_array();
    if (!o || !types || !refusals) {
        json_object_put(o);
        json_object_put(types);
        json_object_put(refusals);
        return NULL;
    }
    pthread_mutex_lock(&b->lock);
    json_object_object_add(o, "accepted", json_object_new_uint64(b->accepted));
    json_object_object_add(o, "refused", json_object_new_uint64(b->refused));
    struct json_object *last = NULL;
    if (b->has_last && (last = json_object_new_object())) {
        json_object_object_add(last, "at_ms", json_object_new_int64(b->last_ms));
        json_object_object_add(last, "type", json_object_new_string(b->last_type));
        json_object_object_add(last, "from", text_or_null(b->last_from));
        json_object_object_add(last, "seq", json_object_new_uint64(b->last_seq));
    }
    json_object_object_add(o, "last_event", last);
    for (size_t i = 0; i < b->ntypes; i++)
        json_object_object_add(types, b->types[i].name, json_object_new_uint64(b->types[i].n));
    if (b->other_types)
        json_object_object_add(types, "other", json_object_new_uint64(b->other_types));
    json_object_object_add(o, "by_type", types);
    size_t nref = b->nrefusals < BOARD_REFUSALS ? b->nrefusals : BOARD_REFUSALS;
    for (size_t i = 0; i < nref; i++) {
        const struct refusal *r = &b->refusals[(b->nrefusals - 1 - i) % BOARD_REFUSALS];
        struct json_object *e = json_object_new_object();
        if (!e)
            break;
        json_object_object_add(e, "at_ms", json_object_new_int64(r->at_ms));
        json_object_object_add(e, "from", text_or_null(r->from));
        json_object_object_add(e, "status", json_object_new_int(r->status));
        json_object_object_add(e, "reason", json_object_new_string(r->reason));
        json_object_array_add(refusals, e);
    }
    json_object_object_add(o, "refusals", refusals);
    struct json_object *pf = NULL;
    if (b->has_preflight && (pf = json_object_new_object())) {
        json_object_object_add(pf, "at_ms", json_object_new_int64(b->preflight_ms));
        json_object_object_add(pf, "from", text_or_null(b->preflight_from));
        json_object_object_add(pf, "origin", text_or_null(b->preflight_origin));
        json_object_object_add(pf, "private_network", json_object_new_boolean(b->preflight_pna));
    }
    json_object_object_add(o, "last_preflight", pf);
    pthread_mutex_unlock(&b->lock);
    return o;
}

static struct json_object *device_json(const struct device *d)
{
    struct json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "device", json_object_new_string(d->level));
    json_object_object_add(o, "name", text_or_null(d->name));
    json_object_object_add(o, "type", text_or_null(d->type));
    json_object_object_add(o, "connected", json_object_new_boolean(d->connected));
    struct json_object *battery = NULL;
    if (d->has_battery)
        battery = d->battery == (double)(int64_t)d->battery
                      ? json_object_new_int64((int64_t)d->battery)
                      : json_object_new_double(d->battery);
    json_object_object_add(o, "battery", battery);
    json_object_object_add(o, "file", d->has_file ? json_object_new_int64(d->file) : NULL);
    json_object_object_add(o, "records", d->has_records ? json_object_new_int64(d->records) : NULL);
    json_object_object_add(o, "last_passing_ms", ms_or_null(d->passing_ms));
    json_object_object_add(o, "last_transponder", text_or_null(d->transponder));
    json_object_object_add(o, "last_passing_time", text_or_null(d->passing_time));
    return o;
}

struct json_object *board_raceresult_json(struct board *b)
{
    struct json_object *o = json_object_new_object();
    struct json_object *api = json_object_new_object();
    struct json_object *devices = json_object_new_array();
    if (!o || !api || !devices) {
        json_object_put(o);
        json_object_put(api);
        json_object_put(devices);
        return NULL;
    }
    pthread_mutex_lock(&b->lock);
    json_object_object_add(api, "ok", b->api_ok < 0 ? NULL : json_object_new_boolean(b->api_ok));
    json_object_object_add(api, "last_ok_ms", ms_or_null(b->api_ok_ms));
    json_object_object_add(api, "last_error", text_or_null(b->api_error));
    json_object_object_add(api, "last_error_ms", ms_or_null(b->api_error_ms));
    for (size_t i = 0; i < b->ndevices; i++) {
        struct json_object *d = device_json(&b->devices[i]);
        if (d)
            json_object_array_add(devices, d);
    }
    pthread_mutex_unlock(&b->lock);
    json_object_object_add(o, "api", api);
    json_object_object_add(o, "devices", devices);
    return o;
}

struct json_object *board_events_json(struct board *b, size_t limit)
{
    struct json_object *o = json_object_new_object();
    struct json_object *arr = json_object_new_array();
    if (!o || !arr) {
        json_object_put(o);
        json_object_put(arr);
        return NULL;
    }
    pthread_mutex_lock(&b->lock);
    size_t n = limit < b->ring_count ? limit : b->ring_count;
    for (size_t i = b->ring_count - n; i < b->ring_count; i++) {
        const struct raw_event *e = &b->ring[(b->ring_first + i) % b->keep];
        struct json_object *x = json_object_new_object();
        if (!x)
            break;
        json_object_object_add(x, "seq", json_object_new_uint64(e->seq));
        json_object_object_add(x, "at_ms", json_object_new_int64(e->at_ms));
        json_object_object_add(x, "type", json_object_new_string(e->type));
        /* Accepted bodies parsed once already, within SmartRace's depth bound. */
        struct json_object *body = json_tokener_parse(e->body);
        json_object_object_add(x, "body", body ? body : json_object_new_string(e->body));
        json_object_array_add(arr, x);
    }
    pthread_mutex_unlock(&b->lock);
    json_object_object_add(o, "events", arr);
    return o;
}
