/*
 * test_state.c - the retained smartrace/state/... topics: what each event does
 * to them, standings order, official results, reset/remove deletions,
 * snapshots, dirty vs full emission, bounds and malformed input.
 *
 * Events go through smartrace_parse() so that the state sees exactly what the
 * gateway will give it; emitted payloads are parsed and compared by member.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "race2mqtt/smartrace.h"
#include "race2mqtt/state.h"

#define BASE "smartrace"
#define MAX_EMITS 512

struct emitted {
    char *topic;
    char *payload; /* NULL: deletion */
    size_t len;
};

struct capture {
    size_t n;
    struct emitted e[MAX_EMITS];
};

static void capture_fn(void *ctx, const char *topic, const char *payload, size_t len)
{
    struct capture *c = ctx;
    assert_true(c->n < MAX_EMITS);
    struct emitted *e = &c->e[c->n++];
    e->topic = strdup(topic);
    e->payload = NULL;
    e->len = len;
    if (payload) {
        e->payload = malloc(len + 1);
        memcpy(e->payload, payload, len);
        e->payload[len] = '\0';
        assert_int_equal(strlen(e->payload), len);
    } else {
        assert_int_equal(len, 0);
    }
}

static void capture_clear(struct capture *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->e[i].topic);
        free(c->e[i].payload);
    }
    c->n = 0;
}

static void emit(struct state *st, bool all, struct capture *c)
{
    capture_clear(c);
    state_emit(st, all, capture_fn, c);
}

/* The last emission for topic (BASE "/state/" suffix), or NULL. */
static const struct emitted *find(const struct capture *c, const char *suffix)
{
    char topic[256];
    snprintf(topic, sizeof topic, BASE "/state/%s", suffix);
    const struct emitted *hit = NULL;
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->e[i].topic, topic) == 0)
            hit = &c->e[i];
    }
    return hit;
}

static const char *payload_of(const struct capture *c, const char *suffix)
{
    const struct emitted *e = find(c, suffix);
    if (!e)
        fail_msg("nothing emitted on %s", suffix);
    if (!e->payload)
        fail_msg("%s was deleted", suffix);
    return e->payload;
}

/* Parsed JSON of the emission on suffix; caller puts. */
static struct json_object *json_of(const struct capture *c, const char *suffix)
{
    struct json_object *o = json_tokener_parse(payload_of(c, suffix));
    if (!o)
        fail_msg("%s: not JSON: %s", suffix, payload_of(c, suffix));
    return o;
}

static int64_t int_member(struct json_object *o, const char *key)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_int))
        fail_msg("%s is not an integer in %s", key, json_object_to_json_string(o));
    return json_object_get_int64(v);
}

static const char *str_member(struct json_object *o, const char *key)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_string))
        fail_msg("%s is not a string in %s", key, json_object_to_json_string(o));
    return json_object_get_string(v);
}

static void apply(struct state *st, uint64_t seq, const char *body)
{
    struct sr_event ev;
    char detail[128];
    if (smartrace_parse(body, strlen(body), &ev, detail, sizeof detail) != SR_OK)
        fail_msg("bad test body (%s): %s", detail, body);
    state_apply(st, &ev, seq);
    smartrace_event_cleanup(&ev);
}

static void applyf(struct state *st, uint64_t seq, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void applyf(struct state *st, uint64_t seq, const char *fmt, ...)
{
    char body[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof body);
    apply(st, seq, body);
}

static void lap(struct state *st, uint64_t seq, int64_t time, const char *id, int lap_no,
                int laptime)
{
    applyf(st, seq,
           "{\"time\":%lld,\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":"
           "\"%s\",\"lap\":%d,\"laptime_raw\":%d,\"driver_data\":{\"name\":\"drv%s\"}}}",
           (long long)time, id, lap_no, laptime, id);
}

static int setup(void **state)
{
    struct state *st = state_new(BASE);
    assert_non_null(st);
    struct capture *c = calloc(1, sizeof *c);
    assert_non_null(c);
    void **pair = calloc(2, sizeof *pair);
    pair[0] = st;
    pair[1] = c;
    *state = pair;
    return 0;
}

static int teardown(void **state)
{
    void **pair = *state;
    state_free(pair[0]);
    capture_clear(pair[1]);
    free(pair[1]);
    free(pair);
    return 0;
}

#define ST ((struct state *)((void **)*state)[0])
#define CAP ((struct capture *)((void **)*state)[1])

/* ---- plain topics ---------------------------------------------------------- */

static void test_status(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    emit(st, true, c);
    assert_null(find(c, "status")); /* nothing known yet */

    apply(st, 1,
          "{\"event_type\":\"event.change_status\",\"event_data\":{\"old\":\"starting\","
          "\"new\":\"running\"}}");
    assert_true(state_dirty(st));
    emit(st, false, c);
    assert_string_equal(payload_of(c, "status"), "running");
    assert_string_equal(payload_of(c, "flag"), "green");
    assert_int_equal(c->n, 2);
    assert_false(state_dirty(st));

    apply(st, 2, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"suspended\"}}");
    emit(st, false, c);
    assert_string_equal(payload_of(c, "status"), "suspended");

    /* the same status again is no change */
    apply(st, 3, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"suspended\"}}");
    assert_false(state_dirty(st));
}

/* Which changes the publisher sends at once (race level) and which it may
 * hold back for a moment (laps, and what moves one controller). */
static void test_race_dirty(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    lap(st, 1, 1000, "1", 1, 9000);
    assert_true(state_dirty(st));
    assert_false(state_race_dirty(st));
    apply(st, 2, "{\"event_type\":\"event.pit.enter\",\"event_data\":\"1\"}");
    assert_false(state_race_dirty(st));
    emit(st, false, c);
    assert_false(state_dirty(st));
    const char *race[] = {
        "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"running\"}}",
        "{\"event_type\":\"race.vsc_deployed\"}",
        "{\"event_type\":\"events.weather_change\",\"event_data\":\"wet\"}",
        "{\"event_type\":\"ui.remove_car_from_session\",\"event_data\":\"1\"}",
    };
    for (size_t i = 0; i < sizeof race / sizeof race[0]; i++) {
        apply(st, 3 + i, race[i]);
        assert_true(state_race_dirty(st));
        emit(st, false, c);
        assert_false(state_race_dirty(st));
        assert_false(state_dirty(st));
    }
}

static void test_weather(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    apply(st, 1, "{\"event_type\":\"events.weather_change\",\"event_data\":\"wet\"}");
    emit(st, false, c);
    assert_string_equal(payload_of(c, "weather"), "wet");
    apply(st, 2, "{\"event_type\":\"events.weather_change\",\"event_data\":{\"weather\":\"dry\"}}");
    emit(st, false, c);
    assert_string_equal(payload_of(c, "weather"), "dry");
    apply(st, 3, "{\"event_type\":\"events.weather_change\",\"event_data\":{\"new\":\"wet\"}}");
    emit(st, false, c);
    assert_string_equal(payload_of(c, "weather"), "wet");
    /* forecasts and nonsense leave it */
    apply(st, 4, "{\"event_type\":\"events.weather_update\",\"event_data\":\"about_to_dry_up\"}");
    apply(st, 5, "{\"event_type\":\"events.weather_change\",\"event_data\":\"foggy\"}");
    apply(st, 6, "{\"event_type\":\"events.weather_change\",\"event_data\":3}");
    apply(st, 7, "{\"event_type\":\"events.weather_change\"}");
    assert_false(state_dirty(st));
    emit(st, true, c);
    assert_string_equal(payload_of(c, "weather"), "wet");
}

static void test_vsc(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    apply(st, 1, "{\"event_type\":\"race.vsc_deployed\"}");
    emit(st, false, c);
    assert_string_equal(payload_of(c, "vsc"), "deployed");
    apply(st, 2, "{\"event_type\":\"race.vsc_retracted\",\"event_data\":null}");
    emit(st, false, c);
    assert_string_equal(payload_of(c, "vsc"), "retracted");
    apply(st, 3, "{\"event_type\":\"cu.send_esc_command\"}");
    assert_false(state_dirty(st));
}

static void test_event(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    apply(st, 1,
          "{\"time\":1000,\"event_type\":\"event.start\",\"event_data\":{\"type\":\"race\","
          "\"laps\":\"50\"}}");
    emit(st, false, c);
    struct json_object *e = json_of(c, "event");
    assert_string_equal(str_member(e, "type"), "race");
    assert_int_equal(int_member(e, "laps"), 50);
    assert_int_equal(int_member(e, "start_time"), 1000);
    assert_null(test_member(e, "duration")); /* always there, null when unknown */
    assert_null(test_member(e, "end_time"));
    json_object_put(e);

    apply(st, 2,
          "{\"time\":\"2000\",\"event_type\":\"event.start\",\"event_data\":{\"type\":"
          "\"qualifying\",\"duration\":\"600\"}}");
    emit(st, false, c);
    e = json_of(c, "event");
    assert_string_equal(str_member(e, "type"), "qualifying");
    assert_int_equal(int_member(e, "duration"), 600);
    assert_int_equal(int_member(e, "start_time"), 2000);
    assert_null(test_member(e, "laps"));
    json_object_put(e);

    apply(st, 3,
          "{\"time\":9000,\"event_type\":\"event.end\",\"event_data\":{\"type\":"
          "\"qualifying\"}}");
    emit(st, false, c);
    e = json_of(c, "event");
    assert_int_equal(int_member(e, "end_time"), 9000);
    assert_int_equal(int_member(e, "duration"), 600);
    json_object_put(e);

    /* event.start without data still starts an event */
    apply(st, 4, "{\"time\":10000,\"event_type\":\"event.start\"}");
    emit(st, false, c);
    e = json_of(c, "event");
    assert_int_equal(int_member(e, "start_time"), 10000);
    assert_null(test_member(e, "type"));
    assert_null(test_member(e, "end_time"));
    json_object_put(e);
}

static void test_track(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    const char *data = "{\"id\":7,\"name\":\"Demo \\/ Ring\",\"length\":\"\",\"pitstop_delta\":"
                       "\"25000\",\"track_svg\":null,\"x_new\":[1,{\"a\":2.50}]}";
    applyf(st, 1, "{\"event_type\":\"util.set_active_track\",\"event_data\":%s}", data);
    emit(st, false, c);
    struct json_object *got = json_of(c, "track");
    struct json_object *want = json_tokener_parse(data);
    assert_true(json_object_equal(got, want));
    assert_string_equal(str_member(got, "name"), "Demo / Ring");
    json_object_put(got);
    json_object_put(want);
    /* not an object: ignored */
    apply(st, 2, "{\"event_type\":\"util.set_active_track\",\"event_data\":\"Monza\"}");
    assert_false(state_dirty(st));
}

/* ---- controllers ------------------------------------------------------------- */

static void test_controller_laps(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    apply(st, 1,
          "{\"time\":1000,\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":\"2\","
          "\"lap\":1,\"laptime_raw\":10500,\"driver_data\":{\"name\":\"Ann\"},\"car_data\":{"
          "\"name\":\"BMW M1\"},\"controller_data\":{\"color_bg\":\"rgb(1, 2, 3)\","
          "\"color_text\":\"#fff\"}}}");
    emit(st, false, c);
    struct json_object *o = json_of(c, "controller/2");
    assert_string_equal(str_member(o, "controller_id"), "2");
    assert_int_equal(int_member(o, "laps"), 1);
    assert_int_equal(int_member(o, "last_lap_ms"), 10500);
    assert_int_equal(int_member(o, "best_lap_ms"), 10500);
    assert_int_equal(int_member(o, "position"), 1);
    assert_string_equal(str_member(o, "driver"), "Ann");
    assert_string_equal(str_member(o, "car"), "BMW M1");
    assert_string_equal(str_member(o, "color_bg"), "rgb(1, 2, 3)");
    assert_string_equal(str_member(o, "color_text"), "#fff");
    assert_int_equal(int_member(o, "updated"), 1000);
    assert_false(json_object_get_boolean(test_member(o, "in_pit")));
    assert_null(test_member(o, "fuel"));
    assert_null(test_member(o, "penalty"));
    assert_null(test_member(o, "damage"));
    assert_null(test_member(o, "tire"));
    json_object_put(o);

    /* numbers as strings; best is the minimum, last the latest */
    apply(st, 2,
          "{\"time\":\"2000\",\"event_type\":\"ui.lap_update\",\"event_data\":{"
          "\"controller_id\":\"2\",\"lap\":\"2\",\"laptime_raw\":\"9800\"}}");
    apply(st, 3,
          "{\"time\":3000,\"event_type\":\"ui.lap_update\",\"event_data\":{"
          "\"controller_id\":\"2\",\"lap\":3,\"laptime_raw\":11000}}");
    emit(st, false, c);
    o = json_of(c, "controller/2");
    assert_int_equal(int_member(o, "laps"), 3);
    assert_int_equal(int_member(o, "last_lap_ms"), 11000);
    assert_int_equal(int_member(o, "best_lap_ms"), 9800);
    assert_int_equal(int_member(o, "updated"), 3000);
    assert_string_equal(str_member(o, "driver"), "Ann"); /* kept when not re-sent */
    json_object_put(o);

    /* an integer controller id is the same controller */
    apply(st, 4,
          "{\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":2,"
          "\"lap\":4,\"laptime_raw\":9700}}");
    emit(st, false, c);
    o = json_of(c, "controller/2");
    assert_int_equal(int_member(o, "laps"), 4);
    assert_int_equal(int_member(o, "best_lap_ms"), 9700);
    assert_int_equal(int_member(o, "updated"), 3000); /* no time: unchanged */
    json_object_put(o);
}

static void test_controller_other_events(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    apply(st, 1,
          "{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":\"3\","
          "\"fuel\":\"50\"}}");
    apply(st, 2,
          "{\"event_type\":\"race.penalty_update\",\"event_data\":{\"controller_id\":\"3\","
          "\"penalty\":10,\"car_data\":{\"name\":\"Porsche\"}}}");
    apply(st, 3,
          "{\"event_type\":\"race.damage_update\",\"event_data\":{\"controller_id\":\"3\","
          "\"damage\":\"engine\"}}");
    apply(st, 4,
          "{\"event_type\":\"events.tire_change\",\"event_data\":{\"controller_id\":\"3\","
          "\"tire\":\"wet\"}}");
    apply(st, 5, "{\"event_type\":\"event.pit.enter\",\"event_data\":\"3\"}");
    emit(st, false, c);
    struct json_object *o = json_of(c, "controller/3");
    assert_int_equal(int_member(o, "fuel"), 50);
    assert_int_equal(int_member(o, "penalty"), 10);
    assert_string_equal(str_member(o, "damage"), "engine");
    assert_string_equal(str_member(o, "tire"), "wet");
    assert_string_equal(str_member(o, "car"), "Porsche");
    assert_true(json_object_get_boolean(test_member(o, "in_pit")));
    assert_int_equal(int_member(o, "laps"), 0);
    assert_null(test_member(o, "position")); /* no lap yet: not in the standings */
    json_object_put(o);
    /* not in computed standings without a lap, so they did not change */
    assert_null(find(c, "standings"));
    emit(st, true, c);
    o = json_of(c, "standings");
    assert_int_equal(json_object_array_length(o), 0);
    json_object_put(o);

    apply(st, 6, "{\"event_type\":\"event.pit.leave\",\"event_data\":3}");
    apply(st, 7,
          "{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":3,"
          "\"fuel\":-1}}");
    apply(st, 8,
          "{\"event_type\":\"race.damage_update\",\"event_data\":{\"controller_id\":\"3\","
          "\"damage\":\"none\"}}");
    apply(st, 9,
          "{\"event_type\":\"race.penalty_update\",\"event_data\":{\"controller_id\":\"3\","
          "\"penalty\":\"0\"}}");
    emit(st, false, c);
    o = json_of(c, "controller/3");
    assert_false(json_object_get_boolean(test_member(o, "in_pit")));
    assert_int_equal(int_member(o, "fuel"), -1);
    assert_string_equal(str_member(o, "damage"), "none");
    assert_int_equal(int_member(o, "penalty"), 0);
    json_object_put(o);
}

static void test_controller_topic_is_sanitised(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    apply(st, 1,
          "{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":\"a/+#\","
          "\"fuel\":1}}");
    emit(st, false, c);
    struct json_object *o = json_of(c, "controller/a___");
    assert_string_equal(str_member(o, "controller_id"), "a/+#");
    json_object_put(o);
    for (size_t i = 0; i < c->n; i++)
        assert_null(strpbrk(c->e[i].topic, "+#"));
}

/* ---- standings ----------------------------------------------------------------- */

static void check_order(struct capture *c, const char *const *ids, size_t n)
{
    struct json_object *arr = json_of(c, "standings");
    assert_true(json_object_is_type(arr, json_type_array));
    if (json_object_array_length(arr) != n)
        fail_msg("standings: %s", json_object_to_json_string(arr));
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(arr, i);
        if (strcmp(str_member(e, "controller_id"), ids[i]) != 0)
            fail_msg("position %zu: %s", i + 1, json_object_to_json_string(arr));
        assert_int_equal(int_member(e, "position"), (int64_t)i + 1);
    }
    json_object_put(arr);
}

static void test_standings_order(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    /* lap 1: B crosses first (earlier time) although A's event came first */
    lap(st, 1, 1100, "A", 1, 11000);
    lap(st, 2, 1000, "B", 1, 10000);
    lap(st, 3, 1200, "C", 1, 12000);
    emit(st, false, c);
    check_order(c, (const char *const[]){"B", "A", "C"}, 3);
    struct json_object *arr = json_of(c, "standings");
    struct json_object *first = json_object_array_get_idx(arr, 0);
    assert_int_equal(int_member(first, "laps"), 1);
    assert_int_equal(int_member(first, "best_lap_ms"), 10000);
    assert_int_equal(int_member(first, "last_lap_ms"), 10000);
    assert_string_equal(str_member(first, "driver"), "drvB");
    json_object_put(arr);

    /* C does two more laps: more laps wins whatever the time */
    lap(st, 4, 2000, "C", 2, 9000);
    lap(st, 5, 3000, "C", 3, 9000);
    lap(st, 6, 2100, "A", 2, 9000);
    emit(st, false, c);
    check_order(c, (const char *const[]){"C", "A", "B"}, 3);
    /* positions reach the controller topics, and only changed ones are sent */
    struct json_object *o = json_of(c, "controller/B");
    assert_int_equal(int_member(o, "position"), 3);
    json_object_put(o);

    /* B reaches lap 2 at the same time as A: the earlier seq (A) stays ahead */
    lap(st, 7, 2100, "B", 2, 9000);
    emit(st, false, c);
    check_order(c, (const char *const[]){"C", "A", "B"}, 3);
    assert_null(find(c, "controller/C")); /* position unchanged: not re-sent */

    /* a repeated lap count (the same lap sent twice) keeps when it was reached */
    lap(st, 8, 9000, "A", 2, 9000);
    emit(st, false, c);
    check_order(c, (const char *const[]){"C", "A", "B"}, 3);
}

/* The documented entry of smartrace/state/standings (README "What it
 * publishes"); keep the two in sync. */
enum { T_NULL = 1, T_INT = 2, T_STR = 4, T_BOOL = 8 };

static const struct {
    const char *key;
    unsigned types;
} standing_schema[] = {
    {"position", T_INT},
    {"controller_id", T_STR},
    {"laps", T_INT},
    {"best_lap_ms", T_INT | T_NULL},
    {"last_lap_ms", T_INT | T_NULL},
    {"driver", T_STR | T_NULL},
    {"car", T_STR | T_NULL},
    {"color_bg", T_STR | T_NULL},
    {"color_text", T_STR | T_NULL},
    {"gap", T_STR | T_NULL},
    {"pitstops", T_INT | T_NULL},
    {"retired", T_BOOL | T_NULL},
    {"disqualified", T_BOOL | T_NULL},
    {"official", T_BOOL},
};

#define NSCHEMA (sizeof standing_schema / sizeof standing_schema[0])

static unsigned type_bit(struct json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_null:
        return T_NULL;
    case json_type_int:
        return T_INT;
    case json_type_string:
        return T_STR;
    case json_type_boolean:
        return T_BOOL;
    default:
        return 0;
    }
}

/* Every member documented, of a documented type, and nothing else. */
static void check_standing_schema(struct json_object *e)
{
    if (!json_object_is_type(e, json_type_object))
        fail_msg("standings entry is not an object: %s", json_object_to_json_string(e));
    if ((size_t)json_object_object_length(e) != NSCHEMA)
        fail_msg("standings entry has %d members: %s", json_object_object_length(e),
                 json_object_to_json_string(e));
    for (size_t i = 0; i < NSCHEMA; i++) {
        struct json_object *v = test_member(e, standing_schema[i].key);
        if (!(type_bit(v) & standing_schema[i].types))
            fail_msg("%s has type %s in %s", standing_schema[i].key,
                     json_type_to_name(json_object_get_type(v)), json_object_to_json_string(e));
    }
}

static void check_standings_schema(struct json_object *arr, bool official)
{
    assert_true(json_object_is_type(arr, json_type_array));
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        struct json_object *e = json_object_array_get_idx(arr, i);
        check_standing_schema(e);
        assert_int_equal(json_object_get_boolean(test_member(e, "official")), official);
    }
}

static void test_official_result(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    lap(st, 1, 1000, "1", 1, 5000);
    lap(st, 2, 1100, "3", 1, 5000);
    lap(st, 3, 1200, "3", 2, 5000);
    emit(st, false, c);
    check_order(c, (const char *const[]){"3", "1"}, 2);

    apply(st, 4,
          "{\"time\":5000,\"event_type\":\"event.end\",\"event_data\":{\"type\":\"race\","
          "\"result\":{"
          "\"2\":{\"controller_id\":3,\"laps\":2,\"best_laptime\":4900,\"gap\":\"+1\"},"
          "\"10\":{\"controller_id\":\"9\",\"laps\":0},"
          "\"1\":{\"controller_id\":1,\"laps\":\"3\",\"best_laptime\":4915,\"gap\":\"\","
          "\"driver_id\":2,\"car_id\":39,\"x\":{\"y\":[1]}},"
          "\"bogus\":{\"controller_id\":7},\"3\":\"not an object\","
          "\"4\":{\"laps\":1},\"5\":{\"controller_id\":[1]}}}}");
    emit(st, false, c);
    struct json_object *arr = json_of(c, "standings");
    check_standings_schema(arr, true);
    assert_int_equal(json_object_array_length(arr), 3);
    struct json_object *e0 = json_object_array_get_idx(arr, 0);
    assert_int_equal(int_member(e0, "position"), 1);
    assert_string_equal(str_member(e0, "controller_id"), "1"); /* sent as 1 */
    assert_int_equal(int_member(e0, "laps"), 3);               /* sent as "3" */
    assert_int_equal(int_member(e0, "best_lap_ms"), 4915);     /* best_laptime */
    assert_int_equal(int_member(e0, "last_lap_ms"), 5000);     /* from the record */
    assert_string_equal(str_member(e0, "driver"), "drv1");     /* resolved by id */
    assert_string_equal(str_member(e0, "gap"), "");            /* the leader's, as sent */
    assert_null(test_member(e0, "pitstops"));                  /* not sent */
    /* unknown members stay on smartrace/event/end */
    assert_false(json_object_object_get_ex(e0, "x", NULL));
    assert_false(json_object_object_get_ex(e0, "driver_id", NULL));
    assert_false(json_object_object_get_ex(e0, "best_laptime", NULL));
    struct json_object *e1 = json_object_array_get_idx(arr, 1);
    assert_int_equal(int_member(e1, "position"), 2);
    assert_string_equal(str_member(e1, "controller_id"), "3");
    assert_string_equal(str_member(e1, "gap"), "+1");
    assert_int_equal(int_member(e1, "best_lap_ms"), 4900);
    /* a controller the state never saw: what the result says, null for the rest */
    struct json_object *e2 = json_object_array_get_idx(arr, 2);
    assert_int_equal(int_member(e2, "position"), 10);
    assert_string_equal(str_member(e2, "controller_id"), "9");
    assert_int_equal(int_member(e2, "laps"), 0);
    assert_null(test_member(e2, "driver"));
    assert_null(test_member(e2, "last_lap_ms"));
    assert_null(test_member(e2, "best_lap_ms"));
    json_object_put(arr);
    /* positions follow the official result */
    struct json_object *o = json_of(c, "controller/1");
    assert_int_equal(int_member(o, "position"), 1);
    json_object_put(o);
    o = json_of(c, "controller/3");
    assert_int_equal(int_member(o, "position"), 2);
    json_object_put(o);

    /* a car crossing the line after the end does not rewrite the result */
    lap(st, 5, 6000, "3", 3, 5000);
    emit(st, false, c);
    assert_null(find(c, "standings"));
    emit(st, true, c);
    arr = json_of(c, "standings");
    assert_string_equal(str_member(json_object_array_get_idx(arr, 0), "controller_id"), "1");
    json_object_put(arr);

    /* the next event.start goes back to computed standings, laps cleared */
    apply(st, 6,
          "{\"time\":7000,\"event_type\":\"event.start\",\"event_data\":{\"type\":\"race\"}}");
    emit(st, false, c);
    check_order(c, NULL, 0);
    o = json_of(c, "controller/3");
    assert_int_equal(int_member(o, "laps"), 0);
    assert_null(test_member(o, "best_lap_ms"));
    assert_null(test_member(o, "position"));
    assert_string_equal(str_member(o, "driver"), "drv3"); /* identity kept */
    json_object_put(o);
}

static void apply_file(struct state *st, uint64_t seq, const char *name)
{
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/smartrace/%s", R2M_FIXTURES, name);
    char *body = test_slurp(path, &len);
    if (!body)
        fail_msg("cannot read %s", path);
    apply(st, seq, body);
    free(body);
}

/* Computed and official entries: the same members, and where both have a
 * value, the same JSON type. */
static void test_standings_same_shape(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    apply_file(st, 1, "ui.lap_update_full.json"); /* controller "3", with names */
    lap(st, 2, 1718035300000, "5", 12, 9800);
    lap(st, 3, 1718035300001, "6", 11, 9900);
    apply(st, 4, "{\"event_type\":\"event.pit.enter\",\"event_data\":{\"controller_id\":\"5\"}}");
    emit(st, false, c);
    struct json_object *computed = json_of(c, "standings");
    check_standings_schema(computed, false);
    assert_int_equal(json_object_array_length(computed), 3);

    apply_file(st, 5, "event.end_result.json");
    emit(st, false, c);
    struct json_object *official = json_of(c, "standings");
    check_standings_schema(official, true);
    assert_int_equal(json_object_array_length(official), 3);

    for (size_t i = 0; i < 3; i++) {
        struct json_object *a = json_object_array_get_idx(computed, i);
        for (size_t j = 0; j < 3; j++) {
            struct json_object *b = json_object_array_get_idx(official, j);
            for (size_t k = 0; k < NSCHEMA; k++) {
                struct json_object *va = test_member(a, standing_schema[k].key);
                struct json_object *vb = test_member(b, standing_schema[k].key);
                if (va && vb && json_object_get_type(va) != json_object_get_type(vb))
                    fail_msg("%s: %s vs %s", standing_schema[k].key, json_object_to_json_string(a),
                             json_object_to_json_string(b));
            }
        }
    }
    /* the computed one leaves the result-only members null */
    struct json_object *a0 = json_object_array_get_idx(computed, 0);
    assert_null(test_member(a0, "gap"));
    assert_null(test_member(a0, "pitstops"));
    assert_null(test_member(a0, "retired"));
    assert_null(test_member(a0, "disqualified"));

    /* names come from the lap events before the end */
    struct json_object *first = json_object_array_get_idx(official, 0);
    assert_string_equal(str_member(first, "controller_id"), "3");
    assert_string_equal(str_member(first, "driver"), "J\xc3\xbcrgen \"JJ\" Jansen");
    assert_string_equal(str_member(first, "car"), "Ferrari 499P (#51)");
    assert_string_equal(str_member(first, "color_bg"), "rgb(0, 90, 255)");
    assert_string_equal(str_member(first, "color_text"), "#ffffff");
    assert_int_equal(int_member(first, "last_lap_ms"), 9876);
    assert_int_equal(int_member(first, "laps"), 41);
    assert_int_equal(int_member(first, "best_lap_ms"), 9650);
    assert_int_equal(int_member(first, "pitstops"), 1);
    assert_false(json_object_get_boolean(test_member(first, "retired")));
    struct json_object *third = json_object_array_get_idx(official, 2);
    assert_string_equal(str_member(third, "controller_id"), "6"); /* sent as "6" */
    assert_string_equal(str_member(third, "driver"), "drv6");
    assert_int_equal(int_member(third, "laps"), 38);          /* "38" */
    assert_int_equal(int_member(third, "best_lap_ms"), 9999); /* "9999" */
    assert_true(json_object_get_boolean(test_member(third, "retired")));
    assert_string_equal(str_member(third, "gap"), "+3 Lap(s)");
    json_object_put(computed);
    json_object_put(official);
}

static void test_official_id_int_or_string(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    /* the lap sends 4 as an integer, the result "4"; 5 the other way round */
    apply(st, 1,
          "{\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":4,\"lap\":7,"
          "\"laptime_raw\":4321,\"driver_data\":{\"name\":\"Four\"},\"car_data\":{\"name\":"
          "\"Car4\"}}}");
    lap(st, 2, 1000, "5", 6, 5432);
    /* members missing from the result fall back to the controller record; an
     * unusable best_laptime (0, "x") too */
    apply(st, 3,
          "{\"event_type\":\"event.end\",\"event_data\":{\"result\":{"
          "\"1\":{\"controller_id\":\"4\",\"best_laptime\":0,\"retired\":1},"
          "\"2\":{\"controller_id\":5,\"best_laptime\":\"x\",\"disqualified\":true,"
          "\"pitstops\":\"2\",\"gap\":7}}}}");
    emit(st, false, c);
    struct json_object *arr = json_of(c, "standings");
    check_standings_schema(arr, true);
    struct json_object *e = json_object_array_get_idx(arr, 0);
    assert_string_equal(str_member(e, "controller_id"), "4");
    assert_string_equal(str_member(e, "driver"), "Four");
    assert_string_equal(str_member(e, "car"), "Car4");
    assert_int_equal(int_member(e, "laps"), 7);
    assert_int_equal(int_member(e, "best_lap_ms"), 4321);
    assert_true(json_object_get_boolean(test_member(e, "retired")));
    assert_null(test_member(e, "disqualified"));
    e = json_object_array_get_idx(arr, 1);
    assert_string_equal(str_member(e, "controller_id"), "5");
    assert_string_equal(str_member(e, "driver"), "drv5");
    assert_int_equal(int_member(e, "laps"), 6);
    assert_int_equal(int_member(e, "best_lap_ms"), 5432);
    assert_int_equal(int_member(e, "pitstops"), 2);
    assert_true(json_object_get_boolean(test_member(e, "disqualified")));
    assert_null(test_member(e, "gap")); /* not a string */
    json_object_put(arr);
    struct json_object *o = json_of(c, "controller/4");
    assert_int_equal(int_member(o, "position"), 1);
    json_object_put(o);
}

static void test_official_bounded(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    size_t cap = 64 * 1024;
    char *body = malloc(cap);
    char *p = body + sprintf(body, "{\"event_type\":\"event.end\",\"event_data\":{\"result\":{");
    for (int i = 0; i < STATE_MAX_CONTROLLERS + 20; i++)
        p += sprintf(p, "%s\"%d\":{\"controller_id\":%d,\"laps\":1}", i ? "," : "", i + 1, i);
    strcpy(p, "}}}");
    apply(st, 1, body);
    free(body);
    emit(st, false, c);
    struct json_object *arr = json_of(c, "standings");
    assert_int_equal(json_object_array_length(arr), STATE_MAX_CONTROLLERS);
    json_object_put(arr);
}

/* ---- flag ------------------------------------------------------------------------ */

static void status(struct state *st, uint64_t seq, const char *s)
{
    applyf(st, seq, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"%s\"}}", s);
}

static void test_flag_for_every_status(void **state)
{
    (void)state;
    static const struct {
        const char *status, *flag, *flag_vsc;
    } table[] = {
        {"prepare_for_start", "start", "start"},
        {"starting", "start", "start"},
        {"jumpstart", "jumpstart", "jumpstart"},
        {"running", "green", "yellow"},
        {"suspended", "red", "red"},
        {"restarting", "start", "start"},
        {"ended", "checkered", "checkered"},
    };
    struct capture *c = calloc(1, sizeof *c);
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        for (int vsc = 0; vsc < 2; vsc++) {
            struct state *st = state_new(BASE);
            apply(st, 1, "{\"event_type\":\"event.start\",\"event_data\":{\"type\":\"race\"}}");
            apply(st, 2,
                  vsc ? "{\"event_type\":\"race.vsc_deployed\"}"
                      : "{\"event_type\":\"race.vsc_retracted\"}");
            status(st, 3, table[i].status);
            emit(st, true, c);
            const char *want = vsc ? table[i].flag_vsc : table[i].flag;
            if (strcmp(payload_of(c, "flag"), want) != 0)
                fail_msg("%s, vsc %d: %s, want %s", table[i].status, vsc, payload_of(c, "flag"),
                         want);
            state_free(st);
        }
    }
    capture_clear(c);
    free(c);
}

/* The flag after the last emission, which must have sent it (want != NULL)
 * or not (want == NULL). */
static void expect_flag(struct state *st, struct capture *c, const char *want)
{
    emit(st, false, c);
    const struct emitted *e = find(c, "flag");
    if (!want) {
        if (e)
            fail_msg("flag re-sent unchanged: %s", e->payload);
        return;
    }
    if (!e)
        fail_msg("flag not sent, want %s", want);
    assert_string_equal(e->payload, want);
}

static void test_flag_emitted_on_change(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    uint64_t seq = 1;
    expect_flag(st, c, NULL); /* "none" is only sent in a full emission */
    emit(st, true, c);
    assert_string_equal(payload_of(c, "flag"), "none");

    apply(st, seq++, "{\"event_type\":\"event.start\",\"event_data\":{\"type\":\"race\"}}");
    expect_flag(st, c, "start"); /* an event, no status yet */
    status(st, seq++, "prepare_for_start");
    expect_flag(st, c, NULL);
    assert_string_equal(payload_of(c, "status"), "prepare_for_start");
    status(st, seq++, "starting");
    expect_flag(st, c, NULL);
    status(st, seq++, "running");
    expect_flag(st, c, "green");
    lap(st, seq++, 1000, "1", 1, 5000);
    expect_flag(st, c, NULL);
    apply(st, seq++, "{\"event_type\":\"race.vsc_deployed\"}");
    expect_flag(st, c, "yellow");
    /* a status SmartRace may add one day: the light stays */
    status(st, seq++, "safety_car_in");
    expect_flag(st, c, NULL);
    assert_string_equal(payload_of(c, "status"), "safety_car_in");
    apply(st, seq++, "{\"event_type\":\"race.vsc_retracted\"}");
    expect_flag(st, c, "green");
    status(st, seq++, "suspended");
    expect_flag(st, c, "red");
    apply(st, seq++, "{\"event_type\":\"race.vsc_deployed\"}");
    expect_flag(st, c, NULL); /* red wins */
    assert_string_equal(payload_of(c, "vsc"), "deployed");
    status(st, seq++, "restarting");
    expect_flag(st, c, "start");
    status(st, seq++, "running");
    expect_flag(st, c, "yellow"); /* the VSC is still out */
    apply(st, seq++, "{\"event_type\":\"race.vsc_retracted\"}");
    expect_flag(st, c, "green");
    status(st, seq++, "jumpstart");
    expect_flag(st, c, "jumpstart");
    status(st, seq++, "running");
    expect_flag(st, c, "green");
    /* event.end without a status change, then the status: checkered once */
    apply(st, seq++, "{\"event_type\":\"event.end\",\"event_data\":{\"type\":\"race\"}}");
    expect_flag(st, c, "checkered");
    status(st, seq++, "ended");
    expect_flag(st, c, NULL);
    /* malformed events leave it */
    apply(st, seq++, "{\"event_type\":\"event.start\",\"event_data\":\"race\"}");
    apply(st, seq++, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":5}}");
    expect_flag(st, c, NULL);
    apply(st, seq++, "{\"event_type\":\"ui.reset\"}");
    expect_flag(st, c, "none");
    /* a status without event.start (the gateway started mid-race) counts */
    status(st, seq++, "running");
    expect_flag(st, c, "green");
    apply(st, seq++, "{\"event_type\":\"ui.reset\"}");
    expect_flag(st, c, "none");
    apply(st, seq++, "{\"event_type\":\"event.end\"}");
    expect_flag(st, c, "checkered");
    apply(st, seq++, "{\"event_type\":\"event.start\"}");
    expect_flag(st, c, "start");
    emit(st, true, c);
    assert_string_equal(payload_of(c, "flag"), "start");
}

/* ---- reset / remove -------------------------------------------------------------- */

static void test_reset(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    lap(st, 1, 1000, "1", 1, 5000);
    lap(st, 2, 1000, "2", 1, 5000);
    apply(st, 3, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"running\"}}");
    emit(st, false, c);

    apply(st, 4, "{\"event_type\":\"ui.reset\"}");
    assert_true(state_dirty(st));
    emit(st, false, c);
    const struct emitted *d1 = find(c, "controller/1"), *d2 = find(c, "controller/2");
    assert_non_null(d1);
    assert_non_null(d2);
    assert_null(d1->payload);
    assert_null(d2->payload);
    assert_string_equal(payload_of(c, "standings"), "[]");
    assert_null(find(c, "status")); /* unchanged, not re-sent */

    /* deletions are sent once; afterwards the controllers are simply gone */
    emit(st, true, c);
    assert_null(find(c, "controller/1"));
    assert_string_equal(payload_of(c, "status"), "running");
    assert_string_equal(payload_of(c, "standings"), "[]");

    /* a controller that comes back is not deleted again */
    lap(st, 5, 2000, "1", 1, 5000);
    apply(st, 6, "{\"event_type\":\"ui.reset\"}");
    lap(st, 7, 3000, "1", 1, 5000);
    emit(st, false, c);
    const struct emitted *e = find(c, "controller/1");
    assert_non_null(e);
    assert_non_null(e->payload);
}

static void test_reset_pending_deletions_in_full_emit(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    lap(st, 1, 1000, "7", 1, 5000);
    emit(st, false, c);
    apply(st, 2, "{\"event_type\":\"ui.reset\"}");
    /* a reconnect before the changes were emitted: deletions go out too */
    emit(st, true, c);
    const struct emitted *d = find(c, "controller/7");
    assert_non_null(d);
    assert_null(d->payload);
    assert_false(state_dirty(st));
}

static void test_remove(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    lap(st, 1, 1000, "1", 2, 5000);
    lap(st, 2, 1000, "2", 1, 5000);
    emit(st, false, c);
    apply(st, 3, "{\"event_type\":\"ui.remove_car_from_session\",\"event_data\":\"1\"}");
    emit(st, false, c);
    const struct emitted *d = find(c, "controller/1");
    assert_non_null(d);
    assert_null(d->payload);
    check_order(c, (const char *const[]){"2"}, 1);
    struct json_object *o = json_of(c, "controller/2");
    assert_int_equal(int_member(o, "position"), 1);
    json_object_put(o);

    /* removing someone unknown, or without an id, changes nothing */
    apply(st, 4, "{\"event_type\":\"ui.remove_car_from_session\",\"event_data\":\"9\"}");
    apply(st, 5, "{\"event_type\":\"ui.remove_car_from_session\"}");
    assert_false(state_dirty(st));
}

/* ---- emission ------------------------------------------------------------------- */

static void test_emit_dirty_vs_all(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    assert_false(state_dirty(st));
    emit(st, false, c);
    assert_int_equal(c->n, 0);
    /* a fresh state still republishes empty standings and the flag after a reconnect */
    emit(st, true, c);
    assert_int_equal(c->n, 2);
    assert_string_equal(payload_of(c, "standings"), "[]");
    assert_string_equal(payload_of(c, "flag"), "none");

    apply(st, 1, "{\"event_type\":\"race.vsc_deployed\"}");
    apply(st, 2, "{\"event_type\":\"events.weather_change\",\"event_data\":\"dry\"}");
    lap(st, 3, 1000, "1", 1, 5000);
    lap(st, 4, 1000, "2", 1, 5000);
    apply(st, 5, "{\"event_type\":\"util.set_active_track\",\"event_data\":{\"id\":1}}");
    emit(st, false, c);
    size_t first = c->n;
    assert_int_equal(first, 6); /* vsc weather track controller/1 controller/2 standings */

    lap(st, 6, 2000, "2", 2, 5000);
    emit(st, false, c);
    /* controller/2 and standings, and controller/1 whose position changed */
    assert_int_equal(c->n, 3);
    assert_null(find(c, "vsc"));
    assert_non_null(find(c, "controller/1"));

    emit(st, false, c);
    assert_int_equal(c->n, 0);

    emit(st, true, c);
    assert_int_equal(c->n, 7);
    assert_string_equal(payload_of(c, "vsc"), "deployed");
    assert_string_equal(payload_of(c, "flag"), "none"); /* VSC without an event */
    assert_string_equal(payload_of(c, "weather"), "dry");
    assert_non_null(find(c, "track"));
    assert_non_null(find(c, "controller/1"));
    assert_non_null(find(c, "controller/2"));
    assert_non_null(find(c, "standings"));
    assert_false(state_dirty(st));
}

static void test_seq(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    assert_int_equal(state_seq(st), 0);
    apply(st, 5, "{\"event_type\":\"race.vsc_deployed\"}");
    assert_int_equal(state_seq(st), 5);
    /* unknown types advance seq but change nothing */
    emit(st, false, c);
    apply(st, 6, "{\"event_type\":\"brand.new\",\"event_data\":{\"new\":\"x\"}}");
    assert_int_equal(state_seq(st), 6);
    assert_false(state_dirty(st));
    /* an event at or below the current seq was applied already */
    apply(st, 6, "{\"event_type\":\"race.vsc_retracted\"}");
    apply(st, 3, "{\"event_type\":\"race.vsc_retracted\"}");
    assert_false(state_dirty(st));
    assert_int_equal(state_seq(st), 6);
}

/* ---- bounds and garbage --------------------------------------------------------------- */

static void test_controller_cap(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    uint64_t seq = 1;
    for (int i = 0; i < STATE_MAX_CONTROLLERS + 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%d", i);
        lap(st, seq++, 1000 + i, id, 1, 5000);
    }
    emit(st, true, c);
    size_t ctrl_topics = 0;
    for (size_t i = 0; i < c->n; i++) {
        if (strstr(c->e[i].topic, "/state/controller/"))
            ctrl_topics++;
    }
    assert_int_equal(ctrl_topics, STATE_MAX_CONTROLLERS);
    assert_non_null(find(c, "controller/c0"));
    assert_null(find(c, "controller/c64"));
    struct json_object *arr = json_of(c, "standings");
    assert_int_equal(json_object_array_length(arr), STATE_MAX_CONTROLLERS);
    json_object_put(arr);

    /* after a removal there is room again */
    apply(st, seq++, "{\"event_type\":\"ui.remove_car_from_session\",\"event_data\":\"c3\"}");
    lap(st, seq++, 5000, "c99", 1, 5000);
    emit(st, false, c);
    assert_non_null(find(c, "controller/c99"));
}

static void test_malformed_ignored(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    lap(st, 1, 1000, "1", 1, 5000);
    apply(st, 2, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"running\"}}");
    apply(st, 3, "{\"event_type\":\"util.set_active_track\",\"event_data\":{\"id\":1}}");
    apply(st, 4, "{\"event_type\":\"event.start\",\"event_data\":{\"type\":\"race\"}}");
    emit(st, false, c);
    char *before = state_save(st);
    assert_non_null(before);

    static const char *garbage[] = {
        "{\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":\"1\"}}",
        "{\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":\"1\",\"lap\":\"x\"}}",
        "{\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":\"1\",\"lap\":-1}}",
        "{\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":\"1\",\"lap\":[]}}",
        "{\"event_type\":\"ui.lap_update\",\"event_data\":{\"lap\":3}}",
        "{\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":\"new\"}}",
        "{\"event_type\":\"ui.lap_update\",\"event_data\":\"1\"}",
        "{\"event_type\":\"ui.lap_update\",\"event_data\":[1,2]}",
        "{\"event_type\":\"ui.lap_update\"}",
        "{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":\"1\",\"fuel\":"
        "\"a\"}}",
        "{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":\"1\"}}",
        "{\"event_type\":\"race.penalty_update\",\"event_data\":{\"controller_id\":\"1\","
        "\"penalty\":{}}}",
        "{\"event_type\":\"race.damage_update\",\"event_data\":{\"controller_id\":\"1\","
        "\"damage\":\"\"}}",
        "{\"event_type\":\"race.damage_update\",\"event_data\":{\"controller_id\":\"1\","
        "\"damage\":5}}",
        "{\"event_type\":\"events.tire_change\",\"event_data\":{\"controller_id\":\"1\"}}",
        "{\"event_type\":\"event.pit.enter\",\"event_data\":{\"controller_id\":true}}",
        "{\"event_type\":\"event.pit.enter\"}",
        "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":5}}",
        "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"\"}}",
        "{\"event_type\":\"event.change_status\",\"event_data\":\"running\"}",
        "{\"event_type\":\"event.change_status\"}",
        "{\"event_type\":\"event.start\",\"event_data\":\"race\"}",
        "{\"event_type\":\"event.start\",\"event_data\":[]}",
        "{\"event_type\":\"event.end\",\"event_data\":7}",
        "{\"event_type\":\"util.set_active_track\",\"event_data\":[{\"id\":2}]}",
        "{\"event_type\":\"util.set_active_track\"}",
        "{\"event_type\":\"events.weather_change\",\"event_data\":{\"new\":1}}",
        "{\"event_type\":\"ui.remove_car_from_session\",\"event_data\":{\"controller_id\":[]}}",
        "{\"event_type\":\"some.future_event\",\"event_data\":{\"controller_id\":\"1\"}}",
    };
    uint64_t seq = 10;
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        apply(st, seq++, garbage[i]);
        if (state_dirty(st))
            fail_msg("changed state: %s", garbage[i]);
    }
    char *after = state_save(st);
    /* identical but for seq */
    struct json_object *b = json_tokener_parse(before), *a = json_tokener_parse(after);
    json_object_object_del(b, "seq");
    json_object_object_del(a, "seq");
    assert_true(json_object_equal(a, b));
    json_object_put(a);
    json_object_put(b);
    free(before);
    free(after);
}

static void test_strings_capped(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    size_t n = 5000;
    char *name = malloc(n * 3 + 1);
    assert_non_null(name);
    for (size_t i = 0; i < n; i++)
        memcpy(name + i * 3, "\xe2\x9c\x93", 3); /* a 3-byte character */
    name[n * 3] = '\0';
    char *body = malloc(n * 3 + 256);
    assert_non_null(body);
    sprintf(body,
            "{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":\"1\","
            "\"fuel\":5,\"driver_data\":{\"name\":\"%s\"}}}",
            name);
    apply(st, 1, body);
    sprintf(body, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"%s\"}}", name);
    apply(st, 2, body);
    emit(st, false, c);
    struct json_object *o = json_of(c, "controller/1");
    const char *driver = str_member(o, "driver");
    assert_true(strlen(driver) <= 128 && strlen(driver) >= 120);
    assert_int_equal(strlen(driver) % 3, 0); /* cut between characters */
    assert_memory_equal(driver, name, strlen(driver));
    json_object_put(o);
    const char *status = payload_of(c, "status");
    assert_true(strlen(status) <= 128);
    assert_int_equal(strlen(status) % 3, 0);
    free(body);
    free(name);
}

/* ---- snapshots ------------------------------------------------------------------- */

static void build_race(struct state *st)
{
    apply(st, 1,
          "{\"event_type\":\"util.set_active_track\",\"event_data\":{\"id\":3,\"name\":"
          "\"Oval\",\"length\":\"14.2\"}}");
    apply(st, 2,
          "{\"time\":100,\"event_type\":\"event.start\",\"event_data\":{\"type\":\"race\","
          "\"laps\":\"20\"}}");
    apply(st, 3, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"running\"}}");
    apply(st, 4, "{\"event_type\":\"events.weather_change\",\"event_data\":\"wet\"}");
    apply(st, 5, "{\"event_type\":\"race.vsc_deployed\"}");
    lap(st, 6, 1000, "1", 1, 9000);
    lap(st, 7, 1100, "2", 1, 8000);
    lap(st, 8, 2000, "2", 2, 8500);
    apply(st, 9,
          "{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":\"1\","
          "\"fuel\":33,\"controller_data\":{\"color_bg\":\"red\",\"color_text\":\"w\"}}}");
    apply(st, 10, "{\"event_type\":\"event.pit.enter\",\"event_data\":\"1\"}");
    apply(st, 11,
          "{\"event_type\":\"events.tire_change\",\"event_data\":{\"controller_id\":\"2\","
          "\"tire\":\"wet\"}}");
    lap(st, 12, 3000, "3", 1, 9900);
    apply(st, 13, "{\"event_type\":\"ui.remove_car_from_session\",\"event_data\":\"3\"}");
}

/* Every emission of src and dst (emit all) is the same. */
static void assert_same_emission(struct state *a, struct state *b)
{
    struct capture *ca = calloc(1, sizeof *ca), *cb = calloc(1, sizeof *cb);
    emit(a, true, ca);
    emit(b, true, cb);
    assert_int_equal(ca->n, cb->n);
    for (size_t i = 0; i < ca->n; i++) {
        assert_string_equal(ca->e[i].topic, cb->e[i].topic);
        if (ca->e[i].payload)
            assert_string_equal(ca->e[i].payload, cb->e[i].payload);
        else
            assert_null(cb->e[i].payload);
    }
    capture_clear(ca);
    capture_clear(cb);
    free(ca);
    free(cb);
}

static void test_snapshot_round_trip(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    build_race(st);
    char *snap = state_save(st);
    assert_non_null(snap);

    struct state *copy = state_new(BASE);
    lap(copy, 1, 1, "zz", 1, 1); /* to be replaced */
    assert_int_equal(state_load(copy, snap, strlen(snap)), 0);
    assert_int_equal(state_seq(copy), 13);
    assert_true(state_dirty(copy));

    /* load marks everything: the first dirty emit is a full one, with the
     * pending deletion of controller 3 */
    emit(copy, false, c);
    const struct emitted *d = find(c, "controller/3");
    assert_non_null(d);
    assert_null(d->payload);
    assert_null(find(c, "controller/zz"));
    struct json_object *o = json_of(c, "controller/1");
    assert_int_equal(int_member(o, "fuel"), 33);
    assert_true(json_object_get_boolean(test_member(o, "in_pit")));
    assert_string_equal(str_member(o, "color_bg"), "red");
    assert_int_equal(int_member(o, "position"), 2);
    json_object_put(o);
    assert_string_equal(payload_of(c, "status"), "running");
    assert_string_equal(payload_of(c, "weather"), "wet");
    assert_string_equal(payload_of(c, "vsc"), "deployed");
    o = json_of(c, "event");
    assert_int_equal(int_member(o, "laps"), 20);
    json_object_put(o);
    o = json_of(c, "track");
    assert_string_equal(str_member(o, "length"), "14.2");
    json_object_put(o);
    check_order(c, (const char *const[]){"2", "1"}, 2);

    /* both continue identically: standings tie-breaks survived the snapshot */
    lap(st, 14, 2000, "1", 2, 8000);
    lap(copy, 14, 2000, "1", 2, 8000);
    emit(st, false, c); /* flush st's own marks */
    assert_same_emission(st, copy);

    char *snap2 = state_save(copy);
    char *snap1 = state_save(st);
    assert_string_equal(snap1, snap2);
    free(snap1);
    free(snap2);
    free(snap);
    state_free(copy);
}

static void test_snapshot_official_round_trip(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    apply_file(st, 1, "ui.lap_update_full.json");
    apply_file(st, 2, "event.end_result.json");
    /* the named controller goes away: the result keeps its names */
    apply(st, 3, "{\"event_type\":\"ui.remove_car_from_session\",\"event_data\":\"3\"}");
    emit(st, false, c);
    char *snap = state_save(st);
    struct state *copy = state_new(BASE);
    assert_int_equal(state_load(copy, snap, strlen(snap)), 0);
    assert_same_emission(st, copy);
    emit(copy, true, c);
    assert_string_equal(payload_of(c, "flag"), "checkered");
    struct json_object *arr = json_of(c, "standings");
    check_standings_schema(arr, true);
    assert_int_equal(json_object_array_length(arr), 3);
    struct json_object *e = json_object_array_get_idx(arr, 0);
    assert_string_equal(str_member(e, "driver"), "J\xc3\xbcrgen \"JJ\" Jansen");
    assert_string_equal(str_member(e, "gap"), "");
    assert_int_equal(int_member(e, "pitstops"), 1);
    assert_false(json_object_get_boolean(test_member(e, "disqualified")));
    json_object_put(arr);
    /* still official: a later lap does not change the standings */
    lap(copy, 4, 5000, "5", 2, 9000);
    emit(copy, false, c);
    assert_null(find(c, "standings"));
    char *again = state_save(copy);
    lap(st, 4, 5000, "5", 2, 9000);
    char *orig = state_save(st);
    assert_string_equal(again, orig);
    free(again);
    free(orig);
    free(snap);
    state_free(copy);
}

/* The flag phase is saved, not guessed again from status and event. */
static void test_snapshot_keeps_flag(void **state)
{
    static const char *const steps[][2] = {
        {"{\"event_type\":\"event.start\",\"event_data\":{\"type\":\"race\"}}", "start"},
        {"{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"running\"}}", "green"},
        {"{\"event_type\":\"race.vsc_deployed\"}", "yellow"},
        {"{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"new_thing\"}}",
         "yellow"},
        {"{\"event_type\":\"ui.reset\"}", "none"}, /* status is still "new_thing" */
        {"{\"event_type\":\"event.start\"}", "start"},
    };
    (void)state;
    struct capture *c = calloc(1, sizeof *c);
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        struct state *st = state_new(BASE), *copy = state_new(BASE);
        for (size_t j = 0; j <= i; j++)
            apply(st, j + 1, steps[j][0]);
        char *snap = state_save(st);
        assert_int_equal(state_load(copy, snap, strlen(snap)), 0);
        emit(copy, true, c);
        if (strcmp(payload_of(c, "flag"), steps[i][1]) != 0)
            fail_msg("after %s: %s, want %s", steps[i][0], payload_of(c, "flag"), steps[i][1]);
        /* and it goes on from there like the original */
        status(st, 100, "suspended");
        status(copy, 100, "suspended");
        emit(st, false, c);
        assert_string_equal(payload_of(c, "flag"), "red");
        emit(copy, false, c);
        assert_string_equal(payload_of(c, "flag"), "red");
        free(snap);
        state_free(copy);
        state_free(st);
    }
    capture_clear(c);
    free(c);
}

/* A version 1 snapshot (official entries as SmartRace sent them, no phase)
 * written before an upgrade still restores the race. */
static void test_snapshot_version_1(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    const char *v1 =
        "{\"version\":1,\"seq\":12,\"status\":\"ended\",\"weather\":\"wet\",\"vsc\":"
        "\"retracted\",\"event\":{\"type\":\"race\",\"laps\":25,\"start_time\":1,\"end_time\":2},"
        "\"track\":null,\"official\":[{\"position\":1,\"driver_id\":17,\"controller_id\":3,"
        "\"laps\":41,\"best_laptime\":9650,\"pitstops\":1,\"gap\":\"\",\"disqualified\":false,"
        "\"retired\":false,\"x_new\":[1]},{\"position\":2,\"controller_id\":\"6\",\"laps\":\"38\","
        "\"gap\":\"+3 Lap(s)\"},{\"position\":3,\"laps\":1}],\"controllers\":[{\"level\":\"3\","
        "\"controller_id\":\"3\",\"laps\":12,\"last_lap_ms\":9876,\"best_lap_ms\":9876,"
        "\"driver\":\"Ann\",\"car\":\"Ferrari\",\"color_bg\":\"red\",\"color_text\":\"#fff\"}],"
        "\"deleted\":[\"4\"]}";
    assert_int_equal(state_load(st, v1, strlen(v1)), 0);
    assert_int_equal(state_seq(st), 12);
    emit(st, true, c);
    assert_string_equal(payload_of(c, "flag"), "checkered");
    struct json_object *arr = json_of(c, "standings");
    check_standings_schema(arr, true);
    assert_int_equal(json_object_array_length(arr), 2); /* the entry without an id dropped */
    struct json_object *e = json_object_array_get_idx(arr, 0);
    assert_string_equal(str_member(e, "controller_id"), "3");
    assert_string_equal(str_member(e, "driver"), "Ann");
    assert_int_equal(int_member(e, "best_lap_ms"), 9650);
    assert_int_equal(int_member(e, "last_lap_ms"), 9876);
    assert_false(json_object_object_get_ex(e, "x_new", NULL));
    e = json_object_array_get_idx(arr, 1);
    assert_string_equal(str_member(e, "controller_id"), "6");
    assert_int_equal(int_member(e, "laps"), 38);
    assert_null(test_member(e, "driver"));
    json_object_put(arr);
    struct json_object *o = json_of(c, "controller/3");
    assert_int_equal(int_member(o, "position"), 1);
    json_object_put(o);
    /* saved again, it is a version 2 snapshot that loads to the same state */
    char *v2 = state_save(st);
    struct json_object *root = json_tokener_parse(v2);
    assert_int_equal(int_member(root, "version"), 2);
    assert_string_equal(str_member(root, "phase"), "ended");
    json_object_put(root);
    struct state *copy = state_new(BASE);
    assert_int_equal(state_load(copy, v2, strlen(v2)), 0);
    assert_same_emission(st, copy);
    state_free(copy);
    free(v2);

    /* without an end: the phase is the status, yellow under a VSC */
    const char *running = "{\"version\":1,\"seq\":3,\"status\":\"running\",\"vsc\":\"deployed\","
                          "\"event\":{\"type\":\"race\"}}";
    assert_int_equal(state_load(st, running, strlen(running)), 0);
    emit(st, true, c);
    assert_string_equal(payload_of(c, "flag"), "yellow");
    const char *event = "{\"version\":1,\"seq\":3,\"status\":\"sometime\",\"event\":{}}";
    assert_int_equal(state_load(st, event, strlen(event)), 0);
    emit(st, true, c);
    assert_string_equal(payload_of(c, "flag"), "start");
}

static void test_snapshot_invalid(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    build_race(st);
    emit(st, false, c);
    char *before = state_save(st);
    static const char *bad[] = {
        "",
        "not json",
        "[]",
        "{}",
        "{\"version\":3,\"seq\":1}",
        "{\"version\":0,\"seq\":1}",
        "{\"version\":2,\"seq\":1,\"phase\":\"green\"}",
        "{\"version\":2,\"seq\":1,\"phase\":1}",
        "{\"version\":2,\"seq\":1,\"official\":[{\"position\":1,\"controller_id\":1,"
        "\"laps\":1}]}",
        "{\"version\":2,\"seq\":1,\"official\":[{\"position\":0,\"controller_id\":\"1\","
        "\"laps\":1}]}",
        "{\"version\":2,\"seq\":1,\"official\":[{\"position\":1,\"controller_id\":\"1\"}]}",
        "{\"version\":2,\"seq\":1,\"official\":[{\"position\":1,\"controller_id\":\"1\","
        "\"laps\":1,\"retired\":0}]}",
        "{\"version\":2,\"seq\":1,\"official\":[{\"position\":1,\"controller_id\":\"1\","
        "\"laps\":1,\"gap\":5}]}",
        "{\"version\":2,\"seq\":1,\"official\":[7]}",
        "{\"version\":1}",
        "{\"version\":1,\"seq\":-1}",
        "{\"version\":1,\"seq\":\"1\"}",
        "{\"version\":1,\"seq\":1,\"status\":5}",
        "{\"version\":1,\"seq\":1,\"event\":[]}",
        "{\"version\":1,\"seq\":1,\"official\":{}}",
        "{\"version\":1,\"seq\":1,\"controllers\":{}}",
        "{\"version\":1,\"seq\":1,\"controllers\":[{\"level\":\"a/b\",\"controller_id\":\"a\"}]}",
        "{\"version\":1,\"seq\":1,\"controllers\":[{\"level\":\"\",\"controller_id\":\"a\"}]}",
        "{\"version\":1,\"seq\":1,\"controllers\":[{\"level\":\"a\"}]}",
        "{\"version\":1,\"seq\":1,\"controllers\":[{\"level\":\"a\",\"controller_id\":\"a\","
        "\"laps\":\"3\"}]}",
        "{\"version\":1,\"seq\":1,\"controllers\":[{\"level\":\"a\",\"controller_id\":\"a\"},"
        "{\"level\":\"a\",\"controller_id\":\"a\"}]}",
        "{\"version\":1,\"seq\":1,\"controllers\":[{\"level\":\"a\",\"controller_id\":\"a\","
        "\"in_pit\":1}]}",
        "{\"version\":1,\"seq\":1,\"deleted\":[\"#\"]}",
        "{\"version\":1,\"seq\":1,\"deleted\":\"a\"}",
        "{\"version\":1,\"seq\":1} trailing",
        "{\"version\":1,\"seq\":1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (state_load(st, bad[i], strlen(bad[i])) != -1)
            fail_msg("loaded: %s", bad[i]);
        assert_false(state_dirty(st));
    }
    const char nul[] = "{\"version\":1,\"seq\":1}\0x";
    assert_int_equal(state_load(st, nul, sizeof nul - 1), -1);
    /* too many controllers */
    size_t cap = 64 * 1024;
    char *many = malloc(cap);
    char *p = many + sprintf(many, "{\"version\":1,\"seq\":1,\"controllers\":[");
    for (int i = 0; i <= STATE_MAX_CONTROLLERS; i++)
        p += sprintf(p, "%s{\"level\":\"c%d\",\"controller_id\":\"c%d\"}", i ? "," : "", i, i);
    strcpy(p, "]}");
    assert_int_equal(state_load(st, many, strlen(many)), -1);
    /* too many official entries */
    p = many + sprintf(many, "{\"version\":2,\"seq\":1,\"official\":[");
    for (int i = 0; i <= STATE_MAX_CONTROLLERS; i++)
        p += sprintf(p, "%s{\"position\":%d,\"controller_id\":\"c%d\",\"laps\":0}", i ? "," : "",
                     i + 1, i);
    strcpy(p, "]}");
    assert_int_equal(state_load(st, many, strlen(many)), -1);
    free(many);

    char *after = state_save(st);
    assert_string_equal(before, after);
    free(before);
    free(after);

    /* a minimal valid one replaces everything */
    const char *empty = "{\"version\":2,\"seq\":99}";
    assert_int_equal(state_load(st, empty, strlen(empty)), 0);
    assert_int_equal(state_seq(st), 99);
    emit(st, true, c);
    assert_int_equal(c->n, 2);
    assert_string_equal(payload_of(c, "standings"), "[]");
    assert_string_equal(payload_of(c, "flag"), "none");
}

/* ---- journal replay ------------------------------------------------------------------ */

static void test_replay_from_payloads(void **state)
{
    /* applying stored payloads gives the same state as applying the bodies */
    struct state *direct = ST;
    struct state *replayed = state_new(BASE);
    static const char *bodies[] = {
        "{\"time\":1,\"event_type\":\"event.start\",\"event_data\":{\"type\":\"race\",\"laps\":"
        "\"5\"}}",
        "{\"time\":2,\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":4,\"lap\":"
        "1,\"laptime_raw\":\"7000\",\"driver_data\":{\"name\":\"Z\"}}}",
        "{\"time\":3,\"event_type\":\"event.pit.enter\",\"event_data\":4}",
        "{\"time\":4,\"event_type\":\"events.weather_change\",\"event_data\":\"wet\"}",
        "{\"time\":5,\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":\"x/y\","
        "\"lap\":1,\"laptime_raw\":6000}}",
        "{\"time\":6,\"event_type\":\"event.end\",\"event_data\":{\"result\":{\"1\":{"
        "\"controller_id\":4}}}}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        struct sr_event ev, back;
        struct sr_message msg;
        assert_int_equal(smartrace_parse(bodies[i], strlen(bodies[i]), &ev, NULL, 0), SR_OK);
        assert_int_equal(smartrace_map(&ev, BASE, &msg), 0);
        state_apply(direct, &ev, i + 1);
        assert_int_equal(smartrace_event_from_payload(msg.head, msg.head_len, &back), SR_OK);
        state_apply(replayed, &back, i + 1);
        smartrace_event_cleanup(&back);
        smartrace_message_cleanup(&msg);
        smartrace_event_cleanup(&ev);
    }
    char *a = state_save(direct), *b = state_save(replayed);
    assert_string_equal(a, b);
    free(a);
    free(b);
    assert_same_emission(direct, replayed);
    state_free(replayed);
}

static void test_null_safety(void **state)
{
    (void)state;
    state_free(NULL);
    struct state *st = state_new(BASE);
    state_apply(st, NULL, 1);
    struct sr_event ev;
    memset(&ev, 0, sizeof ev);
    state_apply(st, &ev, 1); /* a cleaned-up event */
    assert_false(state_dirty(st));
    assert_int_equal(state_load(st, NULL, 0), -1);
    state_free(st);
}

/* ---- the page's view (GET /api/state) -------------------------------------- */

/* view.race must say what the retained topics say, member by member: the page
 * and a light controller that reads the topics must never disagree. */
static void check_view_mirrors_topics(struct state *st, struct capture *c)
{
    emit(st, true, c);
    struct json_object *v = state_view(st);
    assert_non_null(v);
    assert_int_equal(json_object_get_uint64(test_member(v, "seq")), state_seq(st));
    static const char *const plain[] = {"status", "flag", "weather", "vsc"};
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
        const struct emitted *e = find(c, plain[i]);
        struct json_object *got = test_member(v, plain[i]);
        if (!e || !e->payload)
            assert_null(got);
        else
            assert_string_equal(json_object_get_string(got), e->payload);
    }
    static const char *const objects[] = {"event", "track", "standings"};
    for (size_t i = 0; i < sizeof objects / sizeof *objects; i++) {
        const struct emitted *e = find(c, objects[i]);
        struct json_object *want = e && e->payload ? json_tokener_parse(e->payload) : NULL;
        if (!json_object_equal(test_member(v, objects[i]), want))
            fail_msg("%s: view %s, topic %s", objects[i],
                     json_object_to_json_string(test_member(v, objects[i])),
                     e && e->payload ? e->payload : "(none)");
        json_object_put(want);
    }
    /* Every controller topic once, in standings order, then the rest by id. */
    struct json_object *ctrls = test_member(v, "controllers");
    size_t topics = 0;
    for (size_t i = 0; i < c->n; i++)
        topics += strncmp(c->e[i].topic, BASE "/state/controller/", 25) == 0 && c->e[i].payload;
    assert_int_equal(json_object_array_length(ctrls), topics);
    int64_t last_pos = 1;
    for (size_t i = 0; i < json_object_array_length(ctrls); i++) {
        struct json_object *got = json_object_array_get_idx(ctrls, i);
        char suffix[128];
        snprintf(suffix, sizeof suffix, "controller/%s", str_member(got, "controller_id"));
        struct json_object *want = json_of(c, suffix);
        if (!json_object_equal(got, want))
            fail_msg("%s: view %s, topic %s", suffix, json_object_to_json_string(got),
                     json_object_to_json_string(want));
        struct json_object *pos = test_member(got, "position");
        if (pos) {
            assert_true(json_object_get_int64(pos) >= last_pos);
            last_pos = json_object_get_int64(pos);
        } else {
            last_pos = INT64_MAX; /* unplaced ones come last */
        }
        json_object_put(want);
    }
    json_object_put(v);
}

static void test_view_mirrors_topics(void **state)
{
    struct state *st = ST;
    struct capture *c = CAP;
    check_view_mirrors_topics(st, c); /* nothing known: all null, no controllers */
    apply(st, 1,
          "{\"time\":1000,\"event_type\":\"event.start\",\"event_data\":{\"type\":\"race\","
          "\"laps\":\"20\"}}");
    apply(st, 2, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"running\"}}");
    apply(st, 3, "{\"event_type\":\"util.set_active_track\",\"event_data\":{\"name\":\"Club\"}}");
    lap(st, 4, 2000, "3", 1, 8100);
    lap(st, 5, 2100, "1", 1, 8300);
    lap(st, 6, 2200, "3", 2, 7900);
    apply(st, 7, "{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":\"6\","
                 "\"fuel\":\"80\"}}");
    check_view_mirrors_topics(st, c); /* 3 leads 1; 6 has no lap yet */
    apply(st, 8, "{\"event_type\":\"race.vsc_deployed\"}");
    apply(st, 9, "{\"event_type\":\"events.weather_change\",\"event_data\":\"wet\"}");
    apply(st, 10, "{\"event_type\":\"event.pit.enter\",\"event_data\":\"3\"}");
    lap(st, 11, 2300, "1", 2, 7800);
    lap(st, 12, 2400, "1", 3, 7700);
    check_view_mirrors_topics(st, c); /* 1 passed 3 */
    apply_file(st, 13, "event.end_result.json");
    check_view_mirrors_topics(st, c); /* the official result orders them now */
    apply(st, 14, "{\"event_type\":\"event.change_status\",\"event_data\":{\"new\":\"ended\"}}");
    check_view_mirrors_topics(st, c);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_status),
        T(test_race_dirty),
        T(test_weather),
        T(test_vsc),
        T(test_event),
        T(test_track),
        T(test_controller_laps),
        T(test_controller_other_events),
        T(test_controller_topic_is_sanitised),
        T(test_standings_order),
        T(test_official_result),
        T(test_standings_same_shape),
        T(test_official_id_int_or_string),
        T(test_official_bounded),
        cmocka_unit_test(test_flag_for_every_status),
        T(test_flag_emitted_on_change),
        T(test_reset),
        T(test_reset_pending_deletions_in_full_emit),
        T(test_remove),
        T(test_emit_dirty_vs_all),
        T(test_seq),
        T(test_controller_cap),
        T(test_malformed_ignored),
        T(test_strings_capped),
        T(test_snapshot_round_trip),
        T(test_snapshot_official_round_trip),
        cmocka_unit_test(test_snapshot_keeps_flag),
        T(test_snapshot_version_1),
        T(test_snapshot_invalid),
        T(test_replay_from_payloads),
        cmocka_unit_test(test_null_safety),
        T(test_view_mirrors_topics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
