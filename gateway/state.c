/*
 * state.c - the race as it is now, for the retained <base>/state/... topics.
 *
 * Owns: status, weather, vsc (plain strings), the current event and the active
 * track (JSON), one record per controller, the standings (computed, or the
 * official result), the light flag, and the list of controller topics that
 * must be deleted on the broker. Everything is a copy: no json_object of an
 * event is ever kept, because event trees belong to the thread that parsed
 * them and json-c reference counts are not atomic.
 *
 * Inputs are parsed SmartRace events (see smartrace.c for their wire format).
 * Values the app may send as numbers or numeric strings go through
 * smartrace_int(); a member of the wrong type is ignored, and an event whose
 * defining member is unusable (a lap without "lap", a fuel update without
 * "fuel") changes nothing at all, so a garbled event cannot create a controller.
 *
 * The payloads are a contract (README "What it publishes"): every JSON topic
 * has a fixed set of members of fixed types, null for what is not known, so
 * that templates and light controllers never meet a missing key.
 *
 * Decisions where SmartRace says nothing:
 * - event.start begins a new event: lap counters, lap times and standings are
 *   cleared (controllers stay, with names, fuel, tires, penalties), and an
 *   official result from the previous event is dropped. ui.reset goes further
 *   and forgets the controllers (their retained topics are deleted).
 * - Standings count only controllers that completed a lap; order is lap count
 *   descending, then the time the count was reached (event time; an event
 *   without time sorts after those with one), then seq. After event.end they
 *   are the official result until the next event.start or ui.reset; later lap
 *   events still update the controllers but not the standings.
 * - Computed and official standings have one entry shape (struct standing).
 *   The official result sends ids (controller_id as an integer, driver_id,
 *   car_id), not names: names, colours and the last lap come from the
 *   controller records as they are at event.end (the result is a picture of
 *   that moment), laps and best lap from the result, falling back to the
 *   record where the result lacks them. Members the result adds beyond the
 *   documented ones are not copied (the raw result is on <base>/event/end).
 *   gap, pitstops, retired and disqualified are null in computed standings:
 *   a time gap needs the leader's crossing time of every lap, which is not kept.
 * - Controllers are keyed by their topic level, so ids that sanitise alike
 *   share one record, as they share one retained topic.
 *
 * The flag (<base>/state/flag) is for lights. It follows the phase of the
 * event: the latest known status since the last event.start or ui.reset, with
 * event.end counting as "ended":
 *
 *   phase                         flag
 *   no event (start, ui.reset)    none
 *   event.start, no status yet    start
 *   prepare_for_start, starting   start
 *   restarting                    start   (lights count down again after a
 *                                          suspension: cars must not go yet)
 *   jumpstart                     jumpstart
 *   running                       green, or yellow while vsc is "deployed"
 *   suspended                     red     (whatever the VSC)
 *   ended, event.end              checkered
 *
 * A status the table does not know leaves the phase (and the flag) as it was:
 * a light should not go dark or green on a name a later app version adds.
 * VSC only matters while running; it is the same vsc as <base>/state/vsc.
 *
 * Bounds: STATE_MAX_CONTROLLERS records (events for further ids are ignored),
 * strings cut at STATE_STR_MAX bytes on a UTF-8 boundary, official results at
 * STATE_MAX_CONTROLLERS entries, STATE_MAX_DELETIONS pending deletions.
 */
#include "race2mqtt/state.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "race2mqtt/smartrace.h"
#include "race2mqtt/topic.h"

#define STATE_STR_MAX 128
#define STATE_ID_MAX (TOPIC_LEVEL_MAX * 4 + 1)
#define STATE_MAX_DELETIONS (STATE_MAX_CONTROLLERS * 4)
/* 2: official results as standings entries, and the flag phase. 1 still loads. */
#define STATE_SNAPSHOT_VERSION 2
/* A snapshot nests an event's data (at most SMARTRACE_MAX_DEPTH) a few levels down. */
#define STATE_SNAPSHOT_DEPTH (SMARTRACE_MAX_DEPTH + 8)
#define STATE_JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

enum {
    D_STATUS = 1u << 0,
    D_WEATHER = 1u << 1,
    D_VSC = 1u << 2,
    D_EVENT = 1u << 3,
    D_TRACK = 1u << 4,
    D_STANDINGS = 1u << 5,
    D_FLAG = 1u << 6,
    D_ALL = (1u << 7) - 1,
};

/* What the flag follows (see the table at the top); PH_NONE is zero. */
enum state_phase {
    PH_NONE,
    PH_EVENT,
    PH_PREPARE_FOR_START,
    PH_STARTING,
    PH_JUMPSTART,
    PH_RUNNING,
    PH_SUSPENDED,
    PH_RESTARTING,
    PH_ENDED,
};

/* name: the SmartRace status (also the snapshot's spelling); flag: its light. */
static const struct {
    const char *name;
    const char *flag;
} state_phases[] = {
    [PH_NONE] = {"none", "none"},
    [PH_EVENT] = {"event", "start"},
    [PH_PREPARE_FOR_START] = {"prepare_for_start", "start"},
    [PH_STARTING] = {"starting", "start"},
    [PH_JUMPSTART] = {"jumpstart", "jumpstart"},
    [PH_RUNNING] = {"running", "green"},
    [PH_SUSPENDED] = {"suspended", "red"},
    [PH_RESTARTING] = {"restarting", "start"},
    [PH_ENDED] = {"ended", "checkered"},
};

#define STATE_NPHASES (sizeof state_phases / sizeof state_phases[0])

struct opt_int {
    bool set;
    int64_t v;
};

struct opt_bool {
    bool set;
    bool v;
};

/* Strings are "" when unknown. */
struct ctrl {
    char level[TOPIC_LEVEL_MAX + 1];
    char id[STATE_ID_MAX];
    struct opt_int laps, last, best, fuel, penalty, updated;
    struct opt_int lap_time; /* event time at which laps was reached */
    uint64_t lap_seq;        /* seq of that event, the tie-break */
    bool in_pit;
    char damage[STATE_STR_MAX + 1];
    char tire[STATE_STR_MAX + 1];
    char driver[STATE_STR_MAX + 1];
    char car[STATE_STR_MAX + 1];
    char color_bg[STATE_STR_MAX + 1];
    char color_text[STATE_STR_MAX + 1];
    int position;       /* 0: not in the standings */
    uint64_t event_seq; /* seq of its last event; not in the snapshot */
    bool dirty;
};

/* One entry of the standings, computed or official; strings "" when unknown. */
struct standing {
    int position;
    char id[STATE_ID_MAX];
    int64_t laps;
    struct opt_int best, last, pitstops;
    struct opt_bool retired, disqualified;
    bool has_gap; /* the leader's gap is "", a value */
    char gap[STATE_STR_MAX + 1];
    char driver[STATE_STR_MAX + 1];
    char car[STATE_STR_MAX + 1];
    char color_bg[STATE_STR_MAX + 1];
    char color_text[STATE_STR_MAX + 1];
};

struct state {
    char *base;
    char *topic; /* scratch for full topic names */
    size_t topic_cap;
    uint64_t seq;
    char status[STATE_STR_MAX + 1];
    char weather[8];
    char vsc[16];
    struct json_object *event; /* owned */
    struct json_object *track; /* owned */
    enum state_phase phase;
    const char *flag; /* state_phases[].flag or "yellow", as last derived; a change marks D_FLAG */
    bool official;    /* the standings are result[], from event.end */
    size_t nresult;
    struct standing result[STATE_MAX_CONTROLLERS];
    size_t nctrl;
    struct ctrl ctrl[STATE_MAX_CONTROLLERS];
    size_t ndeleted;
    char deleted[STATE_MAX_DELETIONS][TOPIC_LEVEL_MAX + 1];
    unsigned dirty;
};

/* Copies s[0..len) (stopping at a NUL) into dst[cap], cut on a UTF-8 boundary. */
static void state_copy_str(char *dst, size_t cap, const char *s, size_t len)
{
    const char *nul = memchr(s, '\0', len);
    if (nul)
        len = (size_t)(nul - s);
    if (len > cap - 1) {
        len = cap - 1;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    memcpy(dst, s, len);
    dst[len] = '\0';
}

/* Sets dst from a string member of obj; false (dst untouched) if it is not one. */
static bool state_member_str(struct json_object *obj, const char *key, char *dst, size_t cap)
{
    struct json_object *v;
    if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
        return false;
    state_copy_str(dst, cap, json_object_get_string(v), (size_t)json_object_get_string_len(v));
    return true;
}

static bool state_member_int(struct json_object *obj, const char *key, int64_t *out)
{
    struct json_object *v;
    return json_object_object_get_ex(obj, key, &v) && smartrace_int(v, out);
}

static struct json_object *state_opt_json(struct opt_int o)
{
    return o.set ? json_object_new_int64(o.v) : NULL;
}

static struct json_object *state_str_json(const char *s)
{
    return s[0] ? json_object_new_string(s) : NULL;
}

struct state *state_new(const char *base_topic)
{
    struct state *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->base = strdup(base_topic ? base_topic : "");
    st->topic_cap =
        strlen(st->base ? st->base : "") + sizeof "/state/controller/" + TOPIC_LEVEL_MAX + 1;
    st->topic = malloc(st->topic_cap);
    if (!st->base || !st->topic) {
        state_free(st);
        return NULL;
    }
    st->flag = state_phases[PH_NONE].flag;
    return st;
}

/* Drops everything but base and topic. */
static void state_clear(struct state *st)
{
    json_object_put(st->event);
    json_object_put(st->track);
    char *base = st->base, *topic = st->topic;
    size_t topic_cap = st->topic_cap;
    memset(st, 0, sizeof *st);
    st->base = base;
    st->topic = topic;
    st->topic_cap = topic_cap;
    st->flag = state_phases[PH_NONE].flag;
}

void state_free(struct state *st)
{
    if (!st)
        return;
    state_clear(st);
    free(st->base);
    free(st->topic);
    free(st);
}

uint64_t state_seq(const struct state *st)
{
    return st->seq;
}

static void state_delete_level(struct state *st, const char *level)
{
    for (size_t i = 0; i < st->ndeleted; i++) {
        if (strcmp(st->deleted[i], level) == 0)
            return;
    }
    /* Full only when nobody emits for a long time: forget the oldest. */
    if (st->ndeleted == STATE_MAX_DELETIONS) {
        memmove(st->deleted[0], st->deleted[1], sizeof st->deleted[0] * (STATE_MAX_DELETIONS - 1));
        st->ndeleted--;
    }
    memcpy(st->deleted[st->ndeleted++], level, strlen(level) + 1);
}

static void state_undelete_level(struct state *st, const char *level)
{
    for (size_t i = 0; i < st->ndeleted; i++) {
        if (strcmp(st->deleted[i], level) == 0) {
            memmove(st->deleted[i], st->deleted[i + 1],
                    sizeof st->deleted[0] * (st->ndeleted - i - 1));
            st->ndeleted--;
            return;
        }
    }
}

static struct ctrl *state_ctrl_find(struct state *st, const char *level)
{
    for (size_t i = 0; i < st->nctrl; i++) {
        if (strcmp(st->ctrl[i].level, level) == 0)
            return &st->ctrl[i];
    }
    return NULL;
}

static struct ctrl *state_ctrl_get(struct state *st, const struct sr_event *ev)
{
    struct ctrl *c = state_ctrl_find(st, ev->controller_level);
    if (c || st->nctrl == STATE_MAX_CONTROLLERS)
        return c;
    c = &st->ctrl[st->nctrl++];
    memset(c, 0, sizeof *c);
    memcpy(c->level, ev->controller_level, sizeof c->level);
    state_copy_str(c->id, sizeof c->id, ev->controller_id, strlen(ev->controller_id));
    state_undelete_level(st, c->level);
    return c;
}

static void state_ctrl_remove(struct state *st, struct ctrl *c)
{
    size_t i = (size_t)(c - st->ctrl);
    state_delete_level(st, c->level);
    memmove(&st->ctrl[i], &st->ctrl[i + 1], sizeof st->ctrl[0] * (st->nctrl - i - 1));
    st->nctrl--;
    st->dirty |= D_STANDINGS;
}

static void state_clear_laps(struct state *st)
{
    for (size_t i = 0; i < st->nctrl; i++) {
        struct ctrl *c = &st->ctrl[i];
        c->laps.set = c->last.set = c->best.set = c->lap_time.set = false;
        c->lap_seq = 0;
        c->dirty = true;
    }
    st->official = false;
    st->nresult = 0;
    st->dirty |= D_STANDINGS;
}

/* driver_data, car_data, controller_data: SmartRace adds them to most
 * per-controller events. */
static void state_ctrl_enrich(struct ctrl *c, struct json_object *d)
{
    struct json_object *o;
    if (json_object_object_get_ex(d, "driver_data", &o))
        state_member_str(o, "name", c->driver, sizeof c->driver);
    if (json_object_object_get_ex(d, "car_data", &o))
        state_member_str(o, "name", c->car, sizeof c->car);
    if (json_object_object_get_ex(d, "controller_data", &o)) {
        state_member_str(o, "color_bg", c->color_bg, sizeof c->color_bg);
        state_member_str(o, "color_text", c->color_text, sizeof c->color_text);
    }
}

static void state_apply_controller(struct state *st, const struct sr_event *ev, uint64_t seq)
{
    struct json_object *d = json_object_is_type(ev->data, json_type_object) ? ev->data : NULL;
    struct json_object *v;
    int64_t n = 0;
    char text[STATE_STR_MAX + 1];

    if (!ev->has_controller)
        return;
    /* Validate the member that defines the event before touching anything. */
    switch (ev->kind) {
    case SR_KIND_LAP:
        if (!state_member_int(d, "lap", &n) || n < 0)
            return;
        break;
    case SR_KIND_FUEL:
        if (!state_member_int(d, "fuel", &n))
            return;
        break;
    case SR_KIND_PENALTY:
        if (!state_member_int(d, "penalty", &n))
            return;
        break;
    case SR_KIND_DAMAGE:
        if (!state_member_str(d, "damage", text, sizeof text) || !text[0])
            return;
        break;
    case SR_KIND_TIRE:
        if (!state_member_str(d, "tire", text, sizeof text) || !text[0])
            return;
        break;
    default:
        break;
    }

    if (ev->kind == SR_KIND_REMOVE) {
        struct ctrl *gone = state_ctrl_find(st, ev->controller_level);
        if (gone)
            state_ctrl_remove(st, gone);
        return;
    }
    struct ctrl *c = state_ctrl_get(st, ev);
    if (!c)
        return;
    switch (ev->kind) {
    case SR_KIND_LAP: {
        if (!c->laps.set || c->laps.v != n) {
            c->lap_time.set = ev->has_time;
            c->lap_time.v = ev->time_ms;
            c->lap_seq = seq;
        }
        c->laps.set = true;
        c->laps.v = n;
        int64_t ms;
        if (json_object_object_get_ex(d, "laptime_raw", &v) && smartrace_int(v, &ms) && ms >= 0) {
            c->last.set = true;
            c->last.v = ms;
            /* 0 is what the app sends when it has no time; never a best lap. */
            if (ms > 0 && (!c->best.set || ms < c->best.v)) {
                c->best.set = true;
                c->best.v = ms;
            }
        }
        if (!st->official)
            st->dirty |= D_STANDINGS;
        break;
    }
    case SR_KIND_FUEL:
        c->fuel.set = true;
        c->fuel.v = n;
        break;
    case SR_KIND_PENALTY:
        c->penalty.set = true;
        c->penalty.v = n;
        break;
    case SR_KIND_DAMAGE:
        memcpy(c->damage, text, sizeof c->damage);
        break;
    case SR_KIND_TIRE:
        memcpy(c->tire, text, sizeof c->tire);
        break;
    case SR_KIND_PIT_ENTER:
        c->in_pit = true;
        break;
    case SR_KIND_PIT_LEAVE:
        c->in_pit = false;
        break;
    default:
        break;
    }
    if (d)
        state_ctrl_enrich(c, d);
    if (ev->has_time) {
        c->updated.set = true;
        c->updated.v = ev->time_ms;
    }
    c->event_seq = seq;
    c->dirty = true;
}

static void state_set_str(struct state *st, char *dst, size_t cap, const char *s, unsigned mark)
{
    char tmp[STATE_STR_MAX + 1];
    state_copy_str(tmp, cap < sizeof tmp ? cap : sizeof tmp, s, strlen(s));
    if (strcmp(dst, tmp) != 0) {
        memcpy(dst, tmp, strlen(tmp) + 1);
        st->dirty |= mark;
    }
}

static void state_apply_weather(struct state *st, const struct sr_event *ev)
{
    struct json_object *v = ev->data;
    /* The app sends a bare string; an object with "weather" or "new" is
     * accepted in case a later version wraps it like change_status. */
    if (json_object_is_type(v, json_type_object) && !json_object_object_get_ex(v, "weather", &v) &&
        !json_object_object_get_ex(ev->data, "new", &v))
        return;
    if (!json_object_is_type(v, json_type_string))
        return;
    const char *s = json_object_get_string(v);
    if (strcmp(s, "dry") == 0 || strcmp(s, "wet") == 0)
        state_set_str(st, st->weather, sizeof st->weather, s, D_WEATHER);
}

static void state_apply_start(struct state *st, const struct sr_event *ev)
{
    struct json_object *d = ev->data;
    if (d && !json_object_is_type(d, json_type_object))
        return;
    struct json_object *e = json_object_new_object();
    if (!e)
        return;
    char type[STATE_STR_MAX + 1];
    int64_t n;
    if (state_member_str(d, "type", type, sizeof type))
        json_object_object_add(e, "type", json_object_new_string(type));
    if (state_member_int(d, "laps", &n))
        json_object_object_add(e, "laps", json_object_new_int64(n));
    if (state_member_int(d, "duration", &n))
        json_object_object_add(e, "duration", json_object_new_int64(n));
    if (ev->has_time)
        json_object_object_add(e, "start_time", json_object_new_int64(ev->time_ms));
    json_object_put(st->event);
    st->event = e;
    st->dirty |= D_EVENT;
    st->phase = PH_EVENT;
    state_clear_laps(st);
}

/* The id of a result entry as the string state keeps; false if unusable. */
static bool state_result_id(struct json_object *entry, char *out, size_t cap)
{
    struct json_object *v;
    if (!json_object_object_get_ex(entry, "controller_id", &v))
        return false;
    if (json_object_is_type(v, json_type_string)) {
        state_copy_str(out, cap, json_object_get_string(v), (size_t)json_object_get_string_len(v));
        return out[0] != '\0';
    }
    if (json_object_is_type(v, json_type_int)) {
        const char *s = json_object_to_json_string_ext(v, STATE_JSON_FLAGS);
        return s && snprintf(out, cap, "%s", s) > 0;
    }
    return false;
}

static struct ctrl *state_ctrl_by_id(struct state *st, const char *id)
{
    for (size_t i = 0; i < st->nctrl; i++) {
        if (strcmp(st->ctrl[i].id, id) == 0)
            return &st->ctrl[i];
    }
    return NULL;
}

/* What a standings entry takes from a controller record. */
static void state_standing_names(struct standing *s, const struct ctrl *c)
{
    s->last = c->last;
    memcpy(s->driver, c->driver, sizeof s->driver);
    memcpy(s->car, c->car, sizeof s->car);
    memcpy(s->color_bg, c->color_bg, sizeof s->color_bg);
    memcpy(s->color_text, c->color_text, sizeof s->color_text);
}

/* A flag of the result: JSON true/false, or 0/1 as some backends write them. */
static struct opt_bool state_result_bool(struct json_object *entry, const char *key)
{
    struct opt_bool b = {false, false};
    struct json_object *v;
    int64_t n;
    if (!json_object_object_get_ex(entry, key, &v))
        return b;
    if (json_object_is_type(v, json_type_boolean)) {
        b.set = true;
        b.v = json_object_get_boolean(v);
    } else if (json_object_is_type(v, json_type_int) && smartrace_int(v, &n) &&
               (n == 0 || n == 1)) {
        b.set = true;
        b.v = n == 1;
    }
    return b;
}

/*
 * One entry of event.end's result at position -> out, in the shape of the
 * computed standings (see the top of the file); false, out undefined, if it
 * has no usable controller_id.
 */
static bool state_result_entry(struct state *st, struct json_object *entry, int64_t position,
                               struct standing *out)
{
    int64_t n;
    memset(out, 0, sizeof *out);
    if (position <= 0 || position > INT32_MAX || !state_result_id(entry, out->id, sizeof out->id))
        return false;
    out->position = (int)position;
    const struct ctrl *c = state_ctrl_by_id(st, out->id);
    if (c) {
        state_standing_names(out, c);
        out->laps = c->laps.set ? c->laps.v : 0;
        out->best = c->best;
    }
    if (state_member_int(entry, "laps", &n) && n >= 0)
        out->laps = n;
    /* 0 is "no time", as in lap events. */
    if (state_member_int(entry, "best_laptime", &n) && n > 0) {
        out->best.set = true;
        out->best.v = n;
    }
    if (state_member_int(entry, "pitstops", &n) && n >= 0) {
        out->pitstops.set = true;
        out->pitstops.v = n;
    }
    out->has_gap = state_member_str(entry, "gap", out->gap, sizeof out->gap);
    out->retired = state_result_bool(entry, "retired");
    out->disqualified = state_result_bool(entry, "disqualified");
    return true;
}

struct state_result {
    int64_t position;
    size_t index;              /* order in the result: the tie-break of equal positions */
    struct json_object *entry; /* borrowed from the event */
};

static int state_result_cmp(const void *a, const void *b)
{
    const struct state_result *x = a, *y = b;
    if (x->position != y->position)
        return x->position < y->position ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* data.result {"1": {...}, "2": {...}} -> result[], best position first */
static void state_apply_result(struct state *st, struct json_object *result)
{
    struct state_result rows[STATE_MAX_CONTROLLERS];
    size_t n = 0;
    struct json_object_iterator it = json_object_iter_begin(result);
    struct json_object_iterator end = json_object_iter_end(result);
    for (; !json_object_iter_equal(&it, &end) && n < STATE_MAX_CONTROLLERS;
         json_object_iter_next(&it)) {
        struct json_object *key = json_object_new_string(json_object_iter_peek_name(&it));
        int64_t pos;
        bool ok = key && smartrace_int(key, &pos) && pos > 0;
        json_object_put(key);
        struct json_object *entry = json_object_iter_peek_value(&it);
        if (!ok || !json_object_is_type(entry, json_type_object))
            continue;
        rows[n].position = pos;
        rows[n].index = n;
        rows[n].entry = entry;
        n++;
    }
    qsort(rows, n, sizeof rows[0], state_result_cmp);

    st->nresult = 0;
    for (size_t i = 0; i < n; i++) {
        if (state_result_entry(st, rows[i].entry, rows[i].position, &st->result[st->nresult]))
            st->nresult++;
    }
    st->official = true;
    st->dirty |= D_STANDINGS;
}

static void state_apply_end(struct state *st, const struct sr_event *ev)
{
    struct json_object *d = ev->data, *result;
    if (d && !json_object_is_type(d, json_type_object))
        return;
    st->phase = PH_ENDED;
    if (!st->event) {
        st->event = json_object_new_object();
        char type[STATE_STR_MAX + 1];
        if (st->event && state_member_str(d, "type", type, sizeof type))
            json_object_object_add(st->event, "type", json_object_new_string(type));
    }
    if (st->event && ev->has_time) {
        json_object_object_add(st->event, "end_time", json_object_new_int64(ev->time_ms));
        st->dirty |= D_EVENT;
    }
    if (json_object_object_get_ex(d, "result", &result) &&
        json_object_is_type(result, json_type_object))
        state_apply_result(st, result);
}

static void state_apply_track(struct state *st, const struct sr_event *ev)
{
    struct json_object *copy = NULL;
    if (!json_object_is_type(ev->data, json_type_object))
        return;
    /* Kept as sent (a deep copy), so new members reach subscribers too. */
    if (json_object_deep_copy(ev->data, &copy, NULL) != 0)
        return;
    json_object_put(st->track);
    st->track = copy;
    st->dirty |= D_TRACK;
}

static void state_apply_reset(struct state *st)
{
    for (size_t i = 0; i < st->nctrl; i++)
        state_delete_level(st, st->ctrl[i].level);
    st->nctrl = 0;
    st->official = false;
    st->nresult = 0;
    st->dirty |= D_STANDINGS;
    st->phase = PH_NONE;
}

/* A status the table does not know leaves the phase (see the top of the file). */
static void state_phase_from_status(struct state *st, const char *status)
{
    /* PH_NONE and PH_EVENT are the gateway's, not statuses SmartRace sends. */
    for (size_t i = PH_PREPARE_FOR_START; i < STATE_NPHASES; i++) {
        if (strcmp(state_phases[i].name, status) == 0) {
            st->phase = (enum state_phase)i;
            return;
        }
    }
}

static const char *state_flag(const struct state *st)
{
    if (st->phase == PH_RUNNING && strcmp(st->vsc, "deployed") == 0)
        return "yellow";
    return state_phases[st->phase].flag;
}

void state_apply(struct state *st, const struct sr_event *ev, uint64_t seq)
{
    if (!st || !ev || !ev->type)
        return;
    /* Already in the state (a journal replay overlapping the snapshot). */
    if (seq <= st->seq)
        return;
    st->seq = seq;
    switch (ev->kind) {
    case SR_KIND_STATUS: {
        struct json_object *v;
        if (json_object_object_get_ex(ev->data, "new", &v) &&
            json_object_is_type(v, json_type_string) && json_object_get_string_len(v) > 0) {
            state_set_str(st, st->status, sizeof st->status, json_object_get_string(v), D_STATUS);
            state_phase_from_status(st, json_object_get_string(v));
        }
        break;
    }
    case SR_KIND_WEATHER_CHANGE:
        state_apply_weather(st, ev);
        break;
    case SR_KIND_VSC_DEPLOYED:
        state_set_str(st, st->vsc, sizeof st->vsc, "deployed", D_VSC);
        break;
    case SR_KIND_VSC_RETRACTED:
        state_set_str(st, st->vsc, sizeof st->vsc, "retracted", D_VSC);
        break;
    case SR_KIND_EVENT_START:
        state_apply_start(st, ev);
        break;
    case SR_KIND_EVENT_END:
        state_apply_end(st, ev);
        break;
    case SR_KIND_TRACK:
        state_apply_track(st, ev);
        break;
    case SR_KIND_RESET:
        state_apply_reset(st);
        break;
    case SR_KIND_LAP:
    case SR_KIND_FUEL:
    case SR_KIND_PENALTY:
    case SR_KIND_DAMAGE:
    case SR_KIND_TIRE:
    case SR_KIND_PIT_ENTER:
    case SR_KIND_PIT_LEAVE:
    case SR_KIND_REMOVE:
        state_apply_controller(st, ev, seq);
        break;
    case SR_KIND_WEATHER_FORECAST:
    case SR_KIND_ESC:
    case SR_KIND_OTHER:
        break;
    }
    const char *flag = state_flag(st);
    if (strcmp(flag, st->flag) != 0) {
        st->flag = flag;
        st->dirty |= D_FLAG;
    }
}

static int state_standing_cmp(const void *a, const void *b)
{
    const struct ctrl *x = *(const struct ctrl *const *)a;
    const struct ctrl *y = *(const struct ctrl *const *)b;
    if (x->laps.v != y->laps.v)
        return x->laps.v > y->laps.v ? -1 : 1;
    int64_t tx = x->lap_time.set ? x->lap_time.v : INT64_MAX;
    int64_t ty = y->lap_time.set ? y->lap_time.v : INT64_MAX;
    if (tx != ty)
        return tx < ty ? -1 : 1;
    return (x->lap_seq > y->lap_seq) - (x->lap_seq < y->lap_seq);
}

/* Computed standings, best first; returns how many. */
static size_t state_standings(struct state *st, struct ctrl *out[STATE_MAX_CONTROLLERS])
{
    size_t n = 0;
    for (size_t i = 0; i < st->nctrl; i++) {
        if (st->ctrl[i].laps.set)
            out[n++] = &st->ctrl[i];
    }
    qsort(out, n, sizeof out[0], state_standing_cmp);
    return n;
}

/* Gives every controller its position; a change marks it for emission. */
static void state_positions(struct state *st)
{
    int pos[STATE_MAX_CONTROLLERS] = {0};
    if (st->official) {
        for (size_t i = 0; i < st->nresult; i++) {
            const struct standing *r = &st->result[i];
            for (size_t j = 0; j < st->nctrl; j++) {
                if (strcmp(st->ctrl[j].id, r->id) == 0 && pos[j] == 0)
                    pos[j] = r->position;
            }
        }
    } else {
        struct ctrl *order[STATE_MAX_CONTROLLERS];
        size_t n = state_standings(st, order);
        for (size_t i = 0; i < n; i++)
            pos[order[i] - st->ctrl] = (int)i + 1;
    }
    for (size_t j = 0; j < st->nctrl; j++) {
        if (st->ctrl[j].position != pos[j]) {
            st->ctrl[j].position = pos[j];
            st->ctrl[j].dirty = true;
        }
    }
}

/* position: c's own, or as the page computed it (state_view()). */
static struct json_object *state_ctrl_json(const struct ctrl *c, int position)
{
    struct json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "controller_id", json_object_new_string(c->id));
    json_object_object_add(o, "position", position ? json_object_new_int(position) : NULL);
    json_object_object_add(o, "laps", json_object_new_int64(c->laps.set ? c->laps.v : 0));
    json_object_object_add(o, "last_lap_ms", state_opt_json(c->last));
    json_object_object_add(o, "best_lap_ms", state_opt_json(c->best));
    json_object_object_add(o, "fuel", state_opt_json(c->fuel));
    json_object_object_add(o, "in_pit", json_object_new_boolean(c->in_pit));
    json_object_object_add(o, "penalty", state_opt_json(c->penalty));
    json_object_object_add(o, "damage", state_str_json(c->damage));
    json_object_object_add(o, "tire", state_str_json(c->tire));
    json_object_object_add(o, "driver", state_str_json(c->driver));
    json_object_object_add(o, "car", state_str_json(c->car));
    json_object_object_add(o, "color_bg", state_str_json(c->color_bg));
    json_object_object_add(o, "color_text", state_str_json(c->color_text));
    json_object_object_add(o, "updated", state_opt_json(c->updated));
    return o;
}

static struct json_object *state_opt_bool_json(struct opt_bool b)
{
    return b.set ? json_object_new_boolean(b.v) : NULL;
}

/* One standings entry, the same members for computed and official ones; NULL
 * on no memory, else the caller puts it. */
static struct json_object *state_standing_json(const struct standing *s, bool official)
{
    struct json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "position", json_object_new_int(s->position));
    json_object_object_add(o, "controller_id", json_object_new_string(s->id));
    json_object_object_add(o, "laps", json_object_new_int64(s->laps));
    json_object_object_add(o, "best_lap_ms", state_opt_json(s->best));
    json_object_object_add(o, "last_lap_ms", state_opt_json(s->last));
    json_object_object_add(o, "driver", state_str_json(s->driver));
    json_object_object_add(o, "car", state_str_json(s->car));
    json_object_object_add(o, "color_bg", state_str_json(s->color_bg));
    json_object_object_add(o, "color_text", state_str_json(s->color_text));
    json_object_object_add(o, "gap", s->has_gap ? json_object_new_string(s->gap) : NULL);
    json_object_object_add(o, "pitstops", state_opt_json(s->pitstops));
    json_object_object_add(o, "retired", state_opt_bool_json(s->retired));
    json_object_object_add(o, "disqualified", state_opt_bool_json(s->disqualified));
    json_object_object_add(o, "official", json_object_new_boolean(official));
    return o;
}

/* The standings payload (or the official result in a snapshot); caller puts it. */
static struct json_object *state_standings_json(struct state *st)
{
    struct ctrl *order[STATE_MAX_CONTROLLERS];
    size_t n = st->official ? st->nresult : state_standings(st, order);
    struct json_object *arr = json_object_new_array_ext((int)n);
    if (!arr)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        struct standing computed;
        const struct standing *s = &computed;
        if (st->official) {
            s = &st->result[i];
        } else {
            memset(&computed, 0, sizeof computed);
            computed.position = (int)i + 1;
            memcpy(computed.id, order[i]->id, sizeof computed.id);
            computed.laps = order[i]->laps.v;
            computed.best = order[i]->best;
            state_standing_names(&computed, order[i]);
        }
        struct json_object *o = state_standing_json(s, st->official);
        if (!o || json_object_array_add(arr, o) != 0) {
            json_object_put(o);
            json_object_put(arr);
            return NULL;
        }
    }
    return arr;
}

/* The event payload: always these members, null when unknown. A snapshot's
 * event is only known to be an object, so each member is checked here. */
static struct json_object *state_event_json(struct json_object *event)
{
    static const char *const ints[] = {"laps", "duration", "start_time", "end_time"};
    struct json_object *o = json_object_new_object(), *v;
    if (!o)
        return NULL;
    json_object_object_add(o, "type",
                           json_object_object_get_ex(event, "type", &v) &&
                                   json_object_is_type(v, json_type_string)
                               ? json_object_get(v)
                               : NULL);
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        bool ok =
            json_object_object_get_ex(event, ints[i], &v) && json_object_is_type(v, json_type_int);
        json_object_object_add(o, ints[i], ok ? json_object_get(v) : NULL);
    }
    return o;
}

static const char *state_topic(struct state *st, const char *suffix, const char *level)
{
    snprintf(st->topic, st->topic_cap, "%s/state/%s%s%s", st->base, suffix, level ? "/" : "",
             level ? level : "");
    return st->topic;
}

static void state_emit_json(struct state *st, const char *suffix, const char *level,
                            struct json_object *o, state_emit_fn fn, void *ctx)
{
    size_t len;
    const char *text = json_object_to_json_string_length(o, STATE_JSON_FLAGS, &len);
    if (text)
        fn(ctx, state_topic(st, suffix, level), text, len);
}

static void state_emit_str(struct state *st, const char *suffix, const char *s, state_emit_fn fn,
                           void *ctx)
{
    fn(ctx, state_topic(st, suffix, NULL), s, strlen(s));
}

void state_emit(struct state *st, bool all, state_emit_fn fn, void *ctx)
{
    unsigned mark = all ? D_ALL : st->dirty;

    if (mark & D_STANDINGS)
        state_positions(st);
    if ((mark & D_STATUS) && st->status[0])
        state_emit_str(st, "status", st->status, fn, ctx);
    if ((mark & D_WEATHER) && st->weather[0])
        state_emit_str(st, "weather", st->weather, fn, ctx);
    if ((mark & D_VSC) && st->vsc[0])
        state_emit_str(st, "vsc", st->vsc, fn, ctx);
    if (mark & D_FLAG)
        state_emit_str(st, "flag", st->flag, fn, ctx);
    if ((mark & D_EVENT) && st->event) {
        struct json_object *o = state_event_json(st->event);
        if (o)
            state_emit_json(st, "event", NULL, o, fn, ctx);
        json_object_put(o);
    }
    if ((mark & D_TRACK) && st->track)
        state_emit_json(st, "track", NULL, st->track, fn, ctx);
    for (size_t i = 0; i < st->ndeleted; i++)
        fn(ctx, state_topic(st, "controller", st->deleted[i]), NULL, 0);
    st->ndeleted = 0;
    for (size_t i = 0; i < st->nctrl; i++) {
        struct ctrl *c = &st->ctrl[i];
        if (!all && !c->dirty)
            continue;
        struct json_object *o = state_ctrl_json(c, c->position);
        if (o)
            state_emit_json(st, "controller", c->level, o, fn, ctx);
        json_object_put(o);
        c->dirty = false;
    }
    if (mark & D_STANDINGS) {
        struct json_object *o = state_standings_json(st);
        if (o)
            state_emit_json(st, "standings", NULL, o, fn, ctx);
        json_object_put(o);
    }
    st->dirty = 0;
}

/* A controller with the position the page shows for it. */
struct placed {
    const struct ctrl *c;
    int position; /* 0: not in the standings */
};

/* Page order: placed controllers by position, then the others by id. */
static int state_view_cmp(const void *a, const void *b)
{
    const struct placed *x = a, *y = b;
    if ((x->position == 0) != (y->position == 0))
        return x->position == 0 ? 1 : -1;
    if (x->position != y->position)
        return x->position < y->position ? -1 : 1;
    return strcmp(x->c->id, y->c->id);
}

static struct json_object *state_view_str(const char *s)
{
    return s[0] ? json_object_new_string(s) : NULL;
}

struct json_object *state_view(struct state *st)
{
    struct json_object *o = json_object_new_object();
    struct json_object *standings = state_standings_json(st);
    struct json_object *ctrls = json_object_new_array_ext((int)st->nctrl);
    if (!o || !standings || !ctrls)
        goto fail;
    json_object_object_add(o, "seq", json_object_new_uint64(st->seq));
    json_object_object_add(o, "status", state_view_str(st->status));
    json_object_object_add(o, "flag", json_object_new_string(st->flag));
    json_object_object_add(o, "weather", state_view_str(st->weather));
    json_object_object_add(o, "vsc", state_view_str(st->vsc));
    json_object_object_add(o, "event", st->event ? state_event_json(st->event) : NULL);
    json_object_object_add(o, "track", st->track ? json_object_get(st->track) : NULL);
    json_object_object_add(o, "standings", standings);
    standings = NULL;

    /* Positions as the standings just computed them, without touching the
     * controllers' own (state_emit() owns those and their marks). */
    int pos[STATE_MAX_CONTROLLERS] = {0};
    struct json_object *arr = json_object_object_get(o, "standings");
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        struct json_object *e = json_object_array_get_idx(arr, i);
        const char *id = json_object_get_string(json_object_object_get(e, "controller_id"));
        for (size_t j = 0; id && j < st->nctrl; j++) {
            if (pos[j] == 0 && strcmp(st->ctrl[j].id, id) == 0)
                pos[j] = json_object_get_int(json_object_object_get(e, "position"));
        }
    }
    struct placed order[STATE_MAX_CONTROLLERS];
    for (size_t j = 0; j < st->nctrl; j++)
        order[j] = (struct placed){&st->ctrl[j], pos[j]};
    qsort(order, st->nctrl, sizeof order[0], state_view_cmp);
    for (size_t j = 0; j < st->nctrl; j++) {
        struct json_object *c = state_ctrl_json(order[j].c, order[j].position);
        if (!c || json_object_array_add(ctrls, c) != 0) {
            json_object_put(c);
            goto fail;
        }
    }
    json_object_object_add(o, "controllers", ctrls);
    return o;
fail:
    json_object_put(standings);
    json_object_put(ctrls);
    json_object_put(o);
    return NULL;
}

bool state_dirty(const struct state *st)
{
    if (st->dirty || st->ndeleted)
        return true;
    for (size_t i = 0; i < st->nctrl; i++) {
        if (st->ctrl[i].dirty)
            return true;
    }
    return false;
}

bool state_race_dirty(const struct state *st)
{
    return (st->dirty & ~(unsigned)D_STANDINGS) || st->ndeleted;
}

void state_controllers(const struct state *st, state_controller_fn fn, void *ctx)
{
    for (size_t i = 0; i < st->nctrl; i++)
        fn(ctx, st->ctrl[i].level, st->ctrl[i].event_seq);
}

/* ---- snapshot ---------------------------------------------------------- */

static void state_save_opt(struct json_object *o, const char *key, struct opt_int v)
{
    json_object_object_add(o, key, state_opt_json(v));
}

char *state_save(const struct state *st)
{
    char *text = NULL;
    struct json_object *root = json_object_new_object();
    struct json_object *ctrls = json_object_new_array();
    struct json_object *deleted = json_object_new_array();
    if (!root || !ctrls || !deleted) {
        json_object_put(ctrls);
        json_object_put(deleted);
        goto done;
    }
    json_object_object_add(root, "version", json_object_new_int(STATE_SNAPSHOT_VERSION));
    json_object_object_add(root, "seq", json_object_new_uint64(st->seq));
    json_object_object_add(root, "status", state_str_json(st->status));
    json_object_object_add(root, "weather", state_str_json(st->weather));
    json_object_object_add(root, "vsc", state_str_json(st->vsc));
    /* Shared, not copied: root is put below, before anyone else sees them. */
    json_object_object_add(root, "event", json_object_get(st->event));
    json_object_object_add(root, "track", json_object_get(st->track));
    json_object_object_add(root, "phase", json_object_new_string(state_phases[st->phase].name));
    if (st->official) {
        struct json_object *arr = json_object_new_array_ext((int)st->nresult);
        if (!arr || json_object_object_add(root, "official", arr) != 0) {
            json_object_put(arr);
            json_object_put(ctrls);
            json_object_put(deleted);
            goto done;
        }
        for (size_t i = 0; i < st->nresult; i++) {
            struct json_object *o = state_standing_json(&st->result[i], true);
            if (!o || json_object_array_add(arr, o) != 0) {
                json_object_put(o);
                json_object_put(ctrls);
                json_object_put(deleted);
                goto done;
            }
        }
    }
    json_object_object_add(root, "controllers", ctrls);
    json_object_object_add(root, "deleted", deleted);
    for (size_t i = 0; i < st->nctrl; i++) {
        const struct ctrl *c = &st->ctrl[i];
        struct json_object *o = json_object_new_object();
        if (!o || json_object_array_add(ctrls, o) != 0) {
            json_object_put(o);
            goto done;
        }
        json_object_object_add(o, "level", json_object_new_string(c->level));
        json_object_object_add(o, "controller_id", json_object_new_string(c->id));
        state_save_opt(o, "laps", c->laps);
        state_save_opt(o, "last_lap_ms", c->last);
        state_save_opt(o, "best_lap_ms", c->best);
        state_save_opt(o, "fuel", c->fuel);
        state_save_opt(o, "penalty", c->penalty);
        state_save_opt(o, "updated", c->updated);
        state_save_opt(o, "lap_time", c->lap_time);
        json_object_object_add(o, "lap_seq", json_object_new_uint64(c->lap_seq));
        json_object_object_add(o, "in_pit", json_object_new_boolean(c->in_pit));
        json_object_object_add(o, "damage", state_str_json(c->damage));
        json_object_object_add(o, "tire", state_str_json(c->tire));
        json_object_object_add(o, "driver", state_str_json(c->driver));
        json_object_object_add(o, "car", state_str_json(c->car));
        json_object_object_add(o, "color_bg", state_str_json(c->color_bg));
        json_object_object_add(o, "color_text", state_str_json(c->color_text));
    }
    for (size_t i = 0; i < st->ndeleted; i++)
        json_object_array_add(deleted, json_object_new_string(st->deleted[i]));
    const char *s = json_object_to_json_string_ext(root, STATE_JSON_FLAGS);
    if (s)
        text = strdup(s);
done:
    json_object_put(root);
    return text;
}

static bool state_load_u64(struct json_object *v, uint64_t *out)
{
    if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0)
        return false;
    *out = json_object_get_uint64(v);
    return true;
}

/* A nullable integer member; a member of any other type makes the snapshot invalid. */
static bool state_load_opt(struct json_object *o, const char *key, struct opt_int *out)
{
    struct json_object *v = NULL;
    json_object_object_get_ex(o, key, &v);
    out->set = false;
    if (!v)
        return true;
    if (!json_object_is_type(v, json_type_int))
        return false;
    out->set = true;
    out->v = json_object_get_int64(v);
    return true;
}

static bool state_load_str(struct json_object *o, const char *key, char *dst, size_t cap)
{
    struct json_object *v = NULL;
    json_object_object_get_ex(o, key, &v);
    dst[0] = '\0';
    if (!v)
        return true;
    if (!json_object_is_type(v, json_type_string))
        return false;
    state_copy_str(dst, cap, json_object_get_string(v), (size_t)json_object_get_string_len(v));
    return true;
}

/* A topic level as state_emit() would have made it. */
static bool state_level_ok(struct json_object *v)
{
    char level[TOPIC_LEVEL_MAX + 1];
    if (!json_object_is_type(v, json_type_string))
        return false;
    const char *s = json_object_get_string(v);
    size_t len = (size_t)json_object_get_string_len(v);
    if (len == 0 || len > TOPIC_LEVEL_MAX)
        return false;
    topic_level(level, s, len);
    return strcmp(level, s) == 0;
}

static bool state_load_ctrl(struct state *st, struct json_object *o)
{
    struct json_object *v;
    if (!json_object_is_type(o, json_type_object) || st->nctrl == STATE_MAX_CONTROLLERS)
        return false;
    if (!json_object_object_get_ex(o, "level", &v) || !state_level_ok(v) ||
        state_ctrl_find(st, json_object_get_string(v)))
        return false;
    struct ctrl *c = &st->ctrl[st->nctrl];
    memset(c, 0, sizeof *c);
    memcpy(c->level, json_object_get_string(v), (size_t)json_object_get_string_len(v) + 1);
    if (!json_object_object_get_ex(o, "controller_id", &v) ||
        !json_object_is_type(v, json_type_string))
        return false;
    state_copy_str(c->id, sizeof c->id, json_object_get_string(v),
                   (size_t)json_object_get_string_len(v));
    if (!state_load_opt(o, "laps", &c->laps) || !state_load_opt(o, "last_lap_ms", &c->last) ||
        !state_load_opt(o, "best_lap_ms", &c->best) || !state_load_opt(o, "fuel", &c->fuel) ||
        !state_load_opt(o, "penalty", &c->penalty) || !state_load_opt(o, "updated", &c->updated) ||
        !state_load_opt(o, "lap_time", &c->lap_time))
        return false;
    if (json_object_object_get_ex(o, "lap_seq", &v) && !state_load_u64(v, &c->lap_seq))
        return false;
    if (json_object_object_get_ex(o, "in_pit", &v)) {
        if (!json_object_is_type(v, json_type_boolean))
            return false;
        c->in_pit = json_object_get_boolean(v);
    }
    if (!state_load_str(o, "damage", c->damage, sizeof c->damage) ||
        !state_load_str(o, "tire", c->tire, sizeof c->tire) ||
        !state_load_str(o, "driver", c->driver, sizeof c->driver) ||
        !state_load_str(o, "car", c->car, sizeof c->car) ||
        !state_load_str(o, "color_bg", c->color_bg, sizeof c->color_bg) ||
        !state_load_str(o, "color_text", c->color_text, sizeof c->color_text))
        return false;
    c->dirty = true;
    st->nctrl++;
    return true;
}

/* A member that must be of type t or null/absent; *out gets a reference. */
static bool state_load_obj(struct json_object *root, const char *key, enum json_type t,
                           struct json_object **out)
{
    struct json_object *v = NULL;
    json_object_object_get_ex(root, key, &v);
    if (v && !json_object_is_type(v, t))
        return false;
    *out = json_object_get(v);
    return true;
}

static bool state_load_bool(struct json_object *o, const char *key, struct opt_bool *out)
{
    struct json_object *v = NULL;
    json_object_object_get_ex(o, key, &v);
    out->set = false;
    if (!v)
        return true;
    if (!json_object_is_type(v, json_type_boolean))
        return false;
    out->set = true;
    out->v = json_object_get_boolean(v);
    return true;
}

/* A version 2 official entry, as state_standing_json() wrote it. */
static bool state_load_standing(struct json_object *o, struct standing *s)
{
    struct json_object *v;
    struct opt_int n;
    memset(s, 0, sizeof *s);
    if (!json_object_is_type(o, json_type_object) || !state_load_opt(o, "position", &n) || !n.set ||
        n.v <= 0 || n.v > INT32_MAX)
        return false;
    s->position = (int)n.v;
    if (!state_load_str(o, "controller_id", s->id, sizeof s->id) || !s->id[0])
        return false;
    if (!state_load_opt(o, "laps", &n) || !n.set || n.v < 0)
        return false;
    s->laps = n.v;
    if (!state_load_opt(o, "best_lap_ms", &s->best) ||
        !state_load_opt(o, "last_lap_ms", &s->last) ||
        !state_load_opt(o, "pitstops", &s->pitstops) ||
        !state_load_bool(o, "retired", &s->retired) ||
        !state_load_bool(o, "disqualified", &s->disqualified) ||
        !state_load_str(o, "driver", s->driver, sizeof s->driver) ||
        !state_load_str(o, "car", s->car, sizeof s->car) ||
        !state_load_str(o, "color_bg", s->color_bg, sizeof s->color_bg) ||
        !state_load_str(o, "color_text", s->color_text, sizeof s->color_text) ||
        !state_load_str(o, "gap", s->gap, sizeof s->gap))
        return false;
    s->has_gap = json_object_object_get_ex(o, "gap", &v) && v;
    return true;
}

/*
 * The official result; needs the controllers loaded. Version 1 kept the
 * entries as SmartRace sent them (plus "position"): they are converted as
 * event.end would, unusable ones dropped as event.end drops them.
 */
static bool state_load_official(struct state *st, struct json_object *root, int64_t version)
{
    struct json_object *arr = NULL;
    json_object_object_get_ex(root, "official", &arr);
    if (!arr)
        return true;
    if (!json_object_is_type(arr, json_type_array))
        return false;
    size_t n = json_object_array_length(arr);
    if (version >= 2 && n > STATE_MAX_CONTROLLERS)
        return false;
    for (size_t i = 0; i < n && st->nresult < STATE_MAX_CONTROLLERS; i++) {
        struct json_object *e = json_object_array_get_idx(arr, i);
        struct standing *s = &st->result[st->nresult];
        int64_t pos;
        if (version >= 2) {
            if (!state_load_standing(e, s))
                return false;
            st->nresult++;
        } else if (json_object_is_type(e, json_type_object) &&
                   state_member_int(e, "position", &pos) && state_result_entry(st, e, pos, s)) {
            st->nresult++;
        }
    }
    st->official = true;
    return true;
}

/* The phase of a snapshot without one (version 1), from what it has. */
static enum state_phase state_phase_guess(struct state *st)
{
    if (st->official || json_object_object_get_ex(st->event, "end_time", NULL))
        return PH_ENDED;
    st->phase = st->event ? PH_EVENT : PH_NONE;
    state_phase_from_status(st, st->status);
    return st->phase;
}

static bool state_load_phase(struct state *st, struct json_object *root)
{
    struct json_object *v;
    if (!json_object_object_get_ex(root, "phase", &v) || !v) {
        st->phase = state_phase_guess(st);
        return true;
    }
    if (!json_object_is_type(v, json_type_string))
        return false;
    for (size_t i = 0; i < STATE_NPHASES; i++) {
        if (strcmp(state_phases[i].name, json_object_get_string(v)) == 0) {
            st->phase = (enum state_phase)i;
            return true;
        }
    }
    return false;
}

/* Fills the empty st from a parsed snapshot; false if anything is off. */
static bool state_load_root(struct state *st, struct json_object *root)
{
    struct json_object *v;
    if (!json_object_is_type(root, json_type_object))
        return false;
    if (!json_object_object_get_ex(root, "version", &v) || !json_object_is_type(v, json_type_int))
        return false;
    int64_t version = json_object_get_int64(v);
    if (version < 1 || version > STATE_SNAPSHOT_VERSION)
        return false;
    if (!json_object_object_get_ex(root, "seq", &v) || !state_load_u64(v, &st->seq))
        return false;
    if (!state_load_str(root, "status", st->status, sizeof st->status) ||
        !state_load_str(root, "weather", st->weather, sizeof st->weather) ||
        !state_load_str(root, "vsc", st->vsc, sizeof st->vsc))
        return false;
    if (!state_load_obj(root, "event", json_type_object, &st->event) ||
        !state_load_obj(root, "track", json_type_object, &st->track))
        return false;
    if (json_object_object_get_ex(root, "controllers", &v)) {
        if (!json_object_is_type(v, json_type_array))
            return false;
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++) {
            if (!state_load_ctrl(st, json_object_array_get_idx(v, i)))
                return false;
        }
    }
    if (json_object_object_get_ex(root, "deleted", &v)) {
        if (!json_object_is_type(v, json_type_array) ||
            json_object_array_length(v) > STATE_MAX_DELETIONS)
            return false;
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++) {
            struct json_object *s = json_object_array_get_idx(v, i);
            if (!state_level_ok(s))
                return false;
            state_delete_level(st, json_object_get_string(s));
        }
    }
    if (!state_load_official(st, root, version) || !state_load_phase(st, root))
        return false;
    st->flag = state_flag(st);
    st->dirty = D_ALL;
    return true;
}

int state_load(struct state *st, const char *text, size_t len)
{
    int rc = -1;
    struct json_object *root = NULL;
    struct json_tokener *tok = NULL;
    struct state *tmp = NULL;

    if (!st || !text || len == 0 || len > INT32_MAX || memchr(text, '\0', len))
        goto done;
    tok = json_tokener_new_ex(STATE_SNAPSHOT_DEPTH);
    tmp = calloc(1, sizeof *tmp);
    if (!tok || !tmp)
        goto done;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    root = json_tokener_parse_ex(tok, text, (int)len);
    if (!root || json_tokener_get_parse_end(tok) != len)
        goto done;
    if (!state_load_root(tmp, root)) {
        state_clear(tmp);
        goto done;
    }
    /* Swap contents, keeping st's own base and topic buffer. */
    char *base = st->base, *topic = st->topic;
    size_t topic_cap = st->topic_cap;
    state_clear(st);
    *st = *tmp;
    st->base = base;
    st->topic = topic;
    st->topic_cap = topic_cap;
    rc = 0;
done:
    free(tmp);
    json_object_put(root);
    if (tok) /* json-c 0.16 crashes on json_tokener_free(NULL) */
        json_tokener_free(tok);
    return rc;
}
