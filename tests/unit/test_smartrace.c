/*
 * test_smartrace.c - webhook body -> event -> topic + payload, with our own
 * fixtures (tests/fixtures/smartrace), the real captures in
 * ../shared/fixtures/smartrace when present, and hostile input.
 *
 * Payloads are always checked by parsing the sealed text with json-c and
 * comparing members, never by string compare alone, so a head that is not
 * valid JSON once sealed fails.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testutil.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "race2mqtt/smartrace.h"

#define BASE "smartrace"

/* ---- helpers ----------------------------------------------------------- */

static char *slurp(const char *path, size_t *len)
{
    return test_slurp(path, len);
}

/* Seals msg with seq and parses the result; the caller puts it. */
static struct json_object *seal_and_parse(const struct sr_message *msg, uint64_t seq)
{
    size_t cap = msg->head_len + SMARTRACE_SEAL_EXTRA;
    char *out = malloc(cap);
    assert_non_null(out);
    size_t n = smartrace_seal(out, cap, msg->head, msg->head_len, seq);
    assert_true(n > msg->head_len);
    assert_int_equal(strlen(out), n);
    struct json_tokener *tok = json_tokener_new();
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    struct json_object *o = json_tokener_parse_ex(tok, out, (int)n);
    if (!o)
        fail_msg("sealed payload is not JSON: %s", out);
    assert_int_equal(json_tokener_get_parse_end(tok), n);
    json_tokener_free(tok);
    free(out);
    return o;
}

static bool has_member(struct json_object *o, const char *key)
{
    return json_object_object_get_ex(o, key, NULL);
}

struct mapped {
    struct sr_event ev;
    struct sr_message msg;
    struct json_object *payload;
};

static void map_body(const char *body, size_t len, struct mapped *m)
{
    char detail[256];
    enum sr_error rc = smartrace_parse(body, len, &m->ev, detail, sizeof detail);
    if (rc != SR_OK)
        fail_msg("parse failed (%s): %s", smartrace_strerror(rc), detail);
    assert_int_equal(smartrace_map(&m->ev, BASE, &m->msg), 0);
    m->payload = seal_and_parse(&m->msg, 77);
}

static void map_str(const char *body, struct mapped *m)
{
    map_body(body, strlen(body), m);
}

static void mapped_cleanup(struct mapped *m)
{
    json_object_put(m->payload);
    smartrace_message_cleanup(&m->msg);
    smartrace_event_cleanup(&m->ev);
}

static enum sr_error parse_err(const char *body, size_t len, char *detail, size_t detail_len)
{
    struct sr_event ev;
    memset(&ev, 0x5a, sizeof ev);
    enum sr_error rc = smartrace_parse(body, len, &ev, detail, detail_len);
    if (rc == SR_OK) {
        smartrace_event_cleanup(&ev);
    } else {
        assert_null(ev.root); /* nothing held on failure */
    }
    return rc;
}

static enum sr_error parse_err_str(const char *body)
{
    char detail[256];
    detail[0] = '\0';
    enum sr_error rc = parse_err(body, strlen(body), detail, sizeof detail);
    if (rc != SR_OK)
        assert_true(strlen(detail) > 0);
    return rc;
}

static const char *per_controller_types[] = {
    "ui.lap_update",      "race.penalty_update", "race.damage_update", "util.fuel_update",
    "events.tire_change", "event.pit.enter",     "event.pit.leave",    "ui.remove_car_from_session",
};

static bool is_per_controller(const char *type)
{
    for (size_t i = 0; i < sizeof per_controller_types / sizeof per_controller_types[0]; i++) {
        if (strcmp(type, per_controller_types[i]) == 0)
            return true;
    }
    return false;
}

/*
 * The generic contract for any body that parses: topic below the base with no
 * wildcard or empty level, payload = event_type, time, data exactly as sent,
 * controller_id as a string on per-controller topics, seq; and the stored head
 * rebuilds the same event.
 */
static void check_body(const char *name, const char *body, size_t len)
{
    struct json_object *ref = json_tokener_parse(body);
    if (!ref)
        fail_msg("%s: reference parse failed", name);
    struct mapped m;
    map_body(body, len, &m);

    const char *type = json_object_get_string(test_member(ref, "event_type"));
    assert_string_equal(m.ev.type, type);
    assert_string_equal(json_object_get_string(test_member(m.payload, "event_type")), type);
    assert_int_equal(json_object_get_uint64(test_member(m.payload, "seq")), 77);

    /* topic: base, then only clean non-empty levels */
    assert_memory_equal(m.msg.topic, BASE "/", strlen(BASE) + 1);
    assert_null(strpbrk(m.msg.topic, "+# "));
    assert_null(strstr(m.msg.topic, "//"));
    assert_true(m.msg.topic[strlen(m.msg.topic) - 1] != '/');

    /* time as sent (a numeric string comes out as the same integer) */
    struct json_object *rt = NULL, *pt = test_member(m.payload, "time");
    json_object_object_get_ex(ref, "time", &rt);
    if (!rt) {
        assert_null(pt);
        assert_false(m.ev.has_time);
    } else {
        assert_true(json_object_is_type(pt, json_type_int));
        char want[32];
        snprintf(want, sizeof want, "%" PRId64, json_object_get_int64(pt));
        if (json_object_is_type(rt, json_type_string))
            assert_string_equal(json_object_get_string(rt), want);
        else
            assert_int_equal(json_object_get_int64(rt), json_object_get_int64(pt));
    }

    /* data exactly as sent */
    struct json_object *rd = NULL;
    json_object_object_get_ex(ref, "event_data", &rd);
    if (!json_object_equal(rd, test_member(m.payload, "data")))
        fail_msg("%s: data differs: %s", name, m.msg.head);

    /* controller_id: a string (or null) exactly on per-controller topics */
    if (is_per_controller(type)) {
        assert_true(m.ev.per_controller);
        struct json_object *cid = test_member(m.payload, "controller_id");
        const char *last = strrchr(m.msg.topic, '/') + 1;
        assert_string_equal(last, m.ev.controller_level);
        if (m.ev.has_controller) {
            assert_true(json_object_is_type(cid, json_type_string));
            assert_string_equal(json_object_get_string(cid), m.ev.controller_id);
        } else {
            assert_null(cid);
            assert_string_equal(last, "_");
        }
    } else {
        assert_false(m.ev.per_controller);
        assert_false(has_member(m.payload, "controller_id"));
    }

    /* the stored head rebuilds an event that maps to the very same head */
    struct sr_event back;
    assert_int_equal(smartrace_event_from_payload(m.msg.head, m.msg.head_len, &back), SR_OK);
    assert_string_equal(back.type, m.ev.type);
    assert_int_equal(back.kind, m.ev.kind);
    assert_int_equal(back.has_time, m.ev.has_time);
    assert_int_equal(back.time_ms, m.ev.time_ms);
    assert_true(json_object_equal(back.data, m.ev.data));
    assert_int_equal(back.has_controller, m.ev.has_controller);
    assert_string_equal(back.controller_id, m.ev.controller_id);
    assert_string_equal(back.controller_level, m.ev.controller_level);
    struct sr_message again;
    assert_int_equal(smartrace_map(&back, BASE, &again), 0);
    assert_string_equal(again.topic, m.msg.topic);
    assert_int_equal(again.head_len, m.msg.head_len);
    assert_memory_equal(again.head, m.msg.head, m.msg.head_len);
    smartrace_message_cleanup(&again);
    smartrace_event_cleanup(&back);

    json_object_put(ref);
    mapped_cleanup(&m);
}

/* Runs check_body on every *.json of dir; returns how many. */
static int check_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        size_t len = 0;
        char *body = slurp(path, &len);
        assert_non_null(body);
        check_body(de->d_name, body, len);
        free(body);
        count++;
    }
    closedir(d);
    return count;
}

/* ---- fixtures ------------------------------------------------------------ */

static void test_own_fixtures(void **state)
{
    (void)state;
    int n = check_dir(R2M_FIXTURES "/smartrace");
    /* fails when the directory is missing or loses files */
    assert_true(n >= 29);
}

static void test_shared_fixtures(void **state)
{
    (void)state;
    struct stat sb;
    if (stat(R2M_SHARED_FIXTURES "/smartrace", &sb) != 0) {
        print_message("no %s, skipped\n", R2M_SHARED_FIXTURES "/smartrace");
        skip();
    }
    assert_true(check_dir(R2M_SHARED_FIXTURES "/smartrace") > 0);
}

struct fixture_expect {
    const char *file;
    const char *topic;
    const char *controller_id; /* NULL: not per controller; "": per controller, none */
    int64_t laptime_ms;        /* -1: no laptime_ms member */
};

static const struct fixture_expect fixture_expects[] = {
    {"ui.lap_update_full.json", BASE "/lap/3", "3", 9876},
    {"ui.lap_update_strings.json", BASE "/lap/5", "5", 11234},
    {"ui.lap_update_int_controller.json", BASE "/lap/4", "4", 15020},
    {"ui.lap_update_no_controller.json", BASE "/lap/_", "", 12001},
    {"event.start_laps.json", BASE "/event/start", NULL, -1},
    {"event.start_duration.json", BASE "/event/start", NULL, -1},
    {"event.start_no_data.json", BASE "/event/start", NULL, -1},
    {"event.end_result.json", BASE "/event/end", NULL, -1},
    {"event.change_status_suspended.json", BASE "/event/status", NULL, -1},
    {"event.change_status_running.json", BASE "/event/status", NULL, -1},
    {"events.weather_change_wet.json", BASE "/weather/change", NULL, -1},
    {"events.weather_change_dry.json", BASE "/weather/change", NULL, -1},
    {"events.weather_update_rain.json", BASE "/weather/forecast", NULL, -1},
    {"events.weather_update_dry_up.json", BASE "/weather/forecast", NULL, -1},
    {"race.vsc_deployed.json", BASE "/vsc", NULL, -1},
    {"race.vsc_retracted.json", BASE "/vsc", NULL, -1},
    {"race.penalty_update.json", BASE "/penalty/6", "6", -1},
    {"race.damage_update.json", BASE "/damage/3", "3", -1},
    {"util.fuel_update.json", BASE "/fuel/5", "5", -1},
    {"events.tire_change.json", BASE "/tire/3", "3", -1},
    {"event.pit.enter.json", BASE "/pit/5", "5", -1},
    {"event.pit.leave_bare_string.json", BASE "/pit/5", "5", -1},
    {"event.pit.enter_bare_int.json", BASE "/pit/6", "6", -1},
    {"util.set_active_track.json", BASE "/track", NULL, -1},
    {"ui.reset.json", BASE "/reset", NULL, -1},
    {"ui.remove_car_from_session.json", BASE "/remove/4", "4", -1},
    {"cu.send_esc_command.json", BASE "/esc", NULL, -1},
    {"other.unknown_type.json", BASE "/other/util.brand_new_event", NULL, -1},
    {"other.time_null.json", BASE "/other/ui.show_message", NULL, -1},
};

static void test_fixture_topics_and_fields(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof fixture_expects / sizeof fixture_expects[0]; i++) {
        const struct fixture_expect *x = &fixture_expects[i];
        char path[4096];
        snprintf(path, sizeof path, "%s/smartrace/%s", R2M_FIXTURES, x->file);
        size_t len = 0;
        char *body = slurp(path, &len);
        if (!body)
            fail_msg("missing fixture %s", path);
        struct mapped m;
        map_body(body, len, &m);
        if (strcmp(m.msg.topic, x->topic) != 0)
            fail_msg("%s: topic %s, want %s", x->file, m.msg.topic, x->topic);
        if (!x->controller_id) {
            assert_false(has_member(m.payload, "controller_id"));
        } else if (!x->controller_id[0]) {
            assert_false(m.ev.has_controller);
            assert_null(test_member(m.payload, "controller_id"));
        } else {
            assert_true(m.ev.has_controller);
            assert_string_equal(json_object_get_string(test_member(m.payload, "controller_id")),
                                x->controller_id);
        }
        if (x->laptime_ms < 0) {
            assert_false(has_member(m.payload, "laptime_ms"));
        } else {
            struct json_object *lt = test_member(m.payload, "laptime_ms");
            assert_true(json_object_is_type(lt, json_type_int));
            assert_int_equal(json_object_get_int64(lt), x->laptime_ms);
        }
        mapped_cleanup(&m);
        free(body);
    }
}

static void test_time_string_and_absent(void **state)
{
    (void)state;
    struct mapped m;
    map_str("{\"time\":\"1718035209999\",\"event_type\":\"ui.reset\"}", &m);
    assert_true(m.ev.has_time);
    assert_int_equal(m.ev.time_ms, 1718035209999LL);
    assert_int_equal(json_object_get_int64(test_member(m.payload, "time")), 1718035209999LL);
    assert_null(test_member(m.payload, "data"));
    mapped_cleanup(&m);

    map_str("{\"event_type\":\"ui.reset\"}", &m);
    assert_false(m.ev.has_time);
    assert_null(test_member(m.payload, "time"));
    mapped_cleanup(&m);

    map_str("{\"event_type\":\"ui.reset\",\"time\":1.7e12}", &m);
    assert_int_equal(m.ev.time_ms, 1700000000000LL);
    mapped_cleanup(&m);
}

/* ---- every event type of the SPEC table ---------------------------------- */

struct type_case {
    const char *type;
    const char *data; /* JSON text of event_data */
    const char *topic;
    enum sr_kind kind;
};

static const struct type_case type_cases[] = {
    {"ui.lap_update", "{\"controller_id\":\"7\",\"lap\":3,\"laptime_raw\":8000}", "lap/7",
     SR_KIND_LAP},
    {"event.start", "{\"type\":\"race\",\"laps\":\"10\"}", "event/start", SR_KIND_EVENT_START},
    {"event.end", "{\"type\":\"race\",\"result\":{}}", "event/end", SR_KIND_EVENT_END},
    {"event.change_status", "{\"old\":\"a\",\"new\":\"b\"}", "event/status", SR_KIND_STATUS},
    {"events.weather_change", "\"wet\"", "weather/change", SR_KIND_WEATHER_CHANGE},
    {"events.weather_update", "\"about_to_rain\"", "weather/forecast", SR_KIND_WEATHER_FORECAST},
    {"race.vsc_deployed", "null", "vsc", SR_KIND_VSC_DEPLOYED},
    {"race.vsc_retracted", "null", "vsc", SR_KIND_VSC_RETRACTED},
    {"race.penalty_update", "{\"controller_id\":\"7\",\"penalty\":10}", "penalty/7",
     SR_KIND_PENALTY},
    {"race.damage_update", "{\"controller_id\":\"7\",\"damage\":\"engine\"}", "damage/7",
     SR_KIND_DAMAGE},
    {"util.fuel_update", "{\"controller_id\":\"7\",\"fuel\":\"50\"}", "fuel/7", SR_KIND_FUEL},
    {"events.tire_change", "{\"controller_id\":\"7\",\"tire\":\"dry\"}", "tire/7", SR_KIND_TIRE},
    {"event.pit.enter", "{\"controller_id\":\"7\"}", "pit/7", SR_KIND_PIT_ENTER},
    {"event.pit.leave", "{\"controller_id\":\"7\"}", "pit/7", SR_KIND_PIT_LEAVE},
    {"util.set_active_track", "{\"id\":1,\"name\":\"T\"}", "track", SR_KIND_TRACK},
    {"ui.reset", "null", "reset", SR_KIND_RESET},
    {"ui.remove_car_from_session", "\"7\"", "remove/7", SR_KIND_REMOVE},
    {"cu.send_esc_command", "null", "esc", SR_KIND_ESC},
    {"anything.else", "{}", "other/anything.else", SR_KIND_OTHER},
    {"with/slash+plus#hash", "{}", "other/with_slash_plus_hash", SR_KIND_OTHER},
    {"ui.lap_update.v2", "{\"controller_id\":\"2\"}", "other/ui.lap_update.v2", SR_KIND_OTHER},
};

static void test_every_event_type(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof type_cases / sizeof type_cases[0]; i++) {
        const struct type_case *c = &type_cases[i];
        char body[512], topic[128];
        snprintf(body, sizeof body, "{\"time\":1000,\"event_type\":\"%s\",\"event_data\":%s}",
                 c->type, c->data);
        snprintf(topic, sizeof topic, BASE "/%s", c->topic);
        struct mapped m;
        map_str(body, &m);
        if (strcmp(m.msg.topic, topic) != 0)
            fail_msg("%s: topic %s, want %s", c->type, m.msg.topic, topic);
        assert_int_equal(m.ev.kind, c->kind);
        assert_string_equal(json_object_get_string(test_member(m.payload, "event_type")), c->type);
        assert_int_equal(json_object_get_int64(test_member(m.payload, "time")), 1000);
        struct json_object *want = json_tokener_parse(c->data);
        assert_true(json_object_equal(want, test_member(m.payload, "data")));
        json_object_put(want);
        if (m.ev.per_controller)
            assert_string_equal(json_object_get_string(test_member(m.payload, "controller_id")), "7");
        mapped_cleanup(&m);
        /* also through the generic contract */
        check_body(c->type, body, strlen(body));
    }
}

static void test_base_topic_is_used(void **state)
{
    (void)state;
    struct sr_event ev;
    struct sr_message msg;
    const char *body =
        "{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":\"1\"}}";
    assert_int_equal(smartrace_parse(body, strlen(body), &ev, NULL, 0), SR_OK);
    assert_int_equal(smartrace_map(&ev, "site/a/sr", &msg), 0);
    assert_string_equal(msg.topic, "site/a/sr/fuel/1");
    smartrace_message_cleanup(&msg);

    /* a base that cannot fit is refused, not truncated */
    char base[SMARTRACE_TOPIC_MAX];
    memset(base, 'b', sizeof base - 1);
    base[sizeof base - 1] = '\0';
    assert_int_equal(smartrace_map(&ev, base, &msg), -1);
    assert_null(msg.head);
    smartrace_message_cleanup(&msg);
    smartrace_event_cleanup(&ev);
}

/* ---- controller ids ---------------------------------------------------------- */

static void check_controller(const char *type, const char *data, bool has, const char *id,
                             const char *level)
{
    char body[1024];
    snprintf(body, sizeof body, "{\"event_type\":\"%s\",\"event_data\":%s}", type, data);
    struct mapped m;
    map_str(body, &m);
    assert_true(m.ev.per_controller);
    if (m.ev.has_controller != has)
        fail_msg("%s %s: has_controller %d", type, data, m.ev.has_controller);
    assert_string_equal(m.ev.controller_level, level);
    const char *last = strrchr(m.msg.topic, '/') + 1;
    assert_string_equal(last, level);
    struct json_object *cid = test_member(m.payload, "controller_id");
    if (has) {
        assert_true(json_object_is_type(cid, json_type_string));
        assert_int_equal(json_object_get_string_len(cid), strlen(id) + 0);
        assert_string_equal(json_object_get_string(cid), id);
        assert_string_equal(m.ev.controller_id, id);
    } else {
        assert_null(cid);
    }
    mapped_cleanup(&m);
}

static void test_controller_id_forms(void **state)
{
    (void)state;
    check_controller("util.fuel_update", "{\"controller_id\":\"2\",\"fuel\":1}", true, "2", "2");
    check_controller("util.fuel_update", "{\"controller_id\":2,\"fuel\":1}", true, "2", "2");
    check_controller("util.fuel_update", "{\"controller_id\":-12}", true, "-12", "-12");
    check_controller("util.fuel_update", "{\"controller_id\":18446744073709551615}", true,
                     "18446744073709551615", "18446744073709551615");
    /* no usable id: "_" level, controller_id null */
    check_controller("util.fuel_update", "{\"fuel\":1}", false, NULL, "_");
    check_controller("util.fuel_update", "{\"controller_id\":\"\"}", false, NULL, "_");
    check_controller("util.fuel_update", "{\"controller_id\":true}", false, NULL, "_");
    check_controller("util.fuel_update", "{\"controller_id\":2.5}", false, NULL, "_");
    check_controller("util.fuel_update", "{\"controller_id\":null}", false, NULL, "_");
    check_controller("util.fuel_update", "{\"controller_id\":{\"id\":2}}", false, NULL, "_");
    check_controller("util.fuel_update", "null", false, NULL, "_");
    check_controller("util.fuel_update", "[\"2\"]", false, NULL, "_");
    /* a bare id only where SmartRace sends one */
    check_controller("event.pit.enter", "\"3\"", true, "3", "3");
    check_controller("event.pit.leave", "3", true, "3", "3");
    check_controller("ui.remove_car_from_session", "\"4\"", true, "4", "4");
    check_controller("ui.remove_car_from_session", "{\"controller_id\":4}", true, "4", "4");
    check_controller("ui.lap_update", "\"2\"", false, NULL, "_");
    check_controller("util.fuel_update", "2", false, NULL, "_");
    check_controller("event.pit.enter", "\"\"", false, NULL, "_");
}

static void test_controller_id_hostile(void **state)
{
    (void)state;
    check_controller("ui.lap_update", "{\"controller_id\":\"a/b\"}", true, "a/b", "a_b");
    check_controller("ui.lap_update", "{\"controller_id\":\"+\"}", true, "+", "_");
    check_controller("ui.lap_update", "{\"controller_id\":\"#\"}", true, "#", "_");
    check_controller("ui.lap_update", "{\"controller_id\":\"../x\"}", true, "../x", ".._x");
    check_controller("event.pit.enter", "\"x/#\"", true, "x/#", "x__");
    check_controller("ui.lap_update", "{\"controller_id\":\"\\\"q\\\\\"}", true, "\"q\\", "_q_");
    check_controller("ui.lap_update", "{\"controller_id\":\"J\\u00fcrgen\"}", true, "J\xc3\xbcrgen",
                     "J__rgen");

    /* an embedded NUL: the level replaces it, the payload keeps it escaped */
    struct mapped m;
    map_str("{\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":\"a\\u0000b\"}}",
            &m);
    assert_true(m.ev.has_controller);
    assert_string_equal(m.ev.controller_level, "a_b");
    assert_string_equal(m.msg.topic, BASE "/lap/a_b");
    struct json_object *cid = test_member(m.payload, "controller_id");
    assert_int_equal(json_object_get_string_len(cid), 3);
    assert_memory_equal(json_object_get_string(cid), "a\0b", 3);
    mapped_cleanup(&m);

    /* a long id: level capped at 64, controller_id cut on a character boundary,
     * the payload keeps it whole */
    size_t n = 2000;
    char *body = malloc(n * 2 + 100);
    assert_non_null(body);
    char *p = body + sprintf(body, "{\"event_type\":\"ui.lap_update\",\"event_data\":{"
                                   "\"controller_id\":\"x");
    for (size_t i = 0; i < n; i++) {
        *p++ = '\xc3';
        *p++ = '\xa9';
    }
    strcpy(p, "\"}}");
    map_str(body, &m);
    assert_int_equal(strlen(m.ev.controller_level), TOPIC_LEVEL_MAX);
    size_t idlen = strlen(m.ev.controller_id);
    assert_true(idlen <= sizeof m.ev.controller_id - 1);
    assert_true(idlen >= sizeof m.ev.controller_id - 3);
    assert_true((idlen - 1) % 2 == 0); /* "x" + whole two-byte characters */
    assert_int_equal(json_object_get_string_len(test_member(m.payload, "controller_id")), 1 + 2 * n);
    mapped_cleanup(&m);
    free(body);
}

static void test_laptime(void **state)
{
    (void)state;
    static const struct {
        const char *raw;
        int64_t want; /* -1: none */
    } cases[] = {
        {"13861", 13861}, {"\"13861\"", 13861}, {"13861.7", 13861}, {"\"\"", -1}, {"null", -1},
        {"\"abc\"", -1},  {"-5", -1},           {"true", -1},       {"0", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_id\":\"1\","
                 "\"laptime_raw\":%s}}",
                 cases[i].raw);
        struct mapped m;
        map_str(body, &m);
        if (cases[i].want < 0) {
            assert_false(has_member(m.payload, "laptime_ms"));
        } else {
            assert_int_equal(json_object_get_int64(test_member(m.payload, "laptime_ms")), cases[i].want);
        }
        mapped_cleanup(&m);
    }
    /* not on other event types */
    struct mapped m;
    map_str("{\"event_type\":\"util.fuel_update\",\"event_data\":{\"controller_id\":\"1\","
            "\"laptime_raw\":5}}",
            &m);
    assert_false(has_member(m.payload, "laptime_ms"));
    mapped_cleanup(&m);
}

/* ---- envelope errors ------------------------------------------------------ */

static void test_event_type_errors(void **state)
{
    (void)state;
    assert_int_equal(parse_err_str("{\"time\":1}"), SR_ERR_NO_EVENT_TYPE);
    assert_int_equal(parse_err_str("{}"), SR_ERR_NO_EVENT_TYPE);
    assert_int_equal(parse_err_str("{\"event_type\":\"\"}"), SR_ERR_EVENT_TYPE);
    assert_int_equal(parse_err_str("{\"event_type\":null}"), SR_ERR_EVENT_TYPE);
    assert_int_equal(parse_err_str("{\"event_type\":3}"), SR_ERR_EVENT_TYPE);
    assert_int_equal(parse_err_str("{\"event_type\":[\"ui.reset\"]}"), SR_ERR_EVENT_TYPE);
    assert_int_equal(parse_err_str("{\"event_type\":{}}"), SR_ERR_EVENT_TYPE);
    assert_int_equal(parse_err_str("{\"event_type\":\"ui\\u0000reset\"}"), SR_ERR_EVENT_TYPE);
    assert_int_equal(parse_err_str("{\"EVENT_TYPE\":\"ui.reset\"}"), SR_ERR_NO_EVENT_TYPE);

    char body[SMARTRACE_MAX_TYPE_LEN + 64];
    char type[SMARTRACE_MAX_TYPE_LEN + 2];
    memset(type, 't', sizeof type);
    type[SMARTRACE_MAX_TYPE_LEN] = '\0';
    snprintf(body, sizeof body, "{\"event_type\":\"%s\"}", type);
    assert_int_equal(parse_err_str(body), SR_OK);
    type[SMARTRACE_MAX_TYPE_LEN] = 't';
    type[SMARTRACE_MAX_TYPE_LEN + 1] = '\0';
    snprintf(body, sizeof body, "{\"event_type\":\"%s\"}", type);
    assert_int_equal(parse_err_str(body), SR_ERR_EVENT_TYPE);

    char detail[128];
    assert_int_equal(parse_err("{\"a\":1}", 7, detail, sizeof detail), SR_ERR_NO_EVENT_TYPE);
    assert_string_equal(detail, "missing event_type");
}

static void test_not_object(void **state)
{
    (void)state;
    assert_int_equal(parse_err_str("[]"), SR_ERR_NOT_OBJECT);
    assert_int_equal(parse_err_str("[{\"event_type\":\"ui.reset\"}]"), SR_ERR_NOT_OBJECT);
    assert_int_equal(parse_err_str("\"ui.reset\""), SR_ERR_NOT_OBJECT);
    assert_int_equal(parse_err_str("42"), SR_ERR_NOT_OBJECT);
    assert_int_equal(parse_err_str("true"), SR_ERR_NOT_OBJECT);
    assert_int_equal(parse_err_str("null"), SR_ERR_NOT_OBJECT);
}

static void test_time_errors(void **state)
{
    (void)state;
    static const char *bad[] = {
        "true",
        "\"\"",
        "\"abc\"",
        "\"12abc\"",
        "\" 12\"",
        "\"0x10\"",
        "\"1e5\"",
        "\"inf\"",
        "\"NaN\"",
        "{}",
        "[1]",
        "1e999",
        "-1e999",
        "99999999999999999999",
        "\"99999999999999999999\"",
        "\"1.\"",
        "\"-\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"event_type\":\"ui.reset\",\"time\":%s}", bad[i]);
        if (parse_err_str(body) != SR_ERR_TIME)
            fail_msg("time %s accepted", bad[i]);
    }
    static const char *good[] = {"0",      "-1",  "1718035201234", "\"1718035201234\"",  "null",
                                 "\"-5\"", "1.5", "\"1.5\"",       "9223372036854775807"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"event_type\":\"ui.reset\",\"time\":%s}", good[i]);
        if (parse_err_str(body) != SR_OK)
            fail_msg("time %s refused", good[i]);
    }
}

static void test_invalid_json(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        " ",
        "{",
        "{\"event_type\":\"ui.reset\"",
        "{\"event_type\":\"ui.res",
        "{\"event_type\":\"ui.reset\"}x",
        "{\"event_type\":\"ui.reset\"} {}",
        "{\"event_type\":\"ui.reset\"}}",
        "{\"event_type\":'ui.reset'}",
        "{event_type:\"ui.reset\"}",
        "{\"event_type\":\"ui.reset\",}",
        "{\"event_type\":\"ui.reset\",\"event_data\":[1,]}",
        "{\"event_type\":\"ui.reset\",\"event_data\":NaN}",
        "{\"event_type\":\"ui.reset\",\"event_data\":Infinity}",
        "{\"event_type\":\"ui.reset\",\"event_data\":-Infinity}",
        "{\"event_type\":\"ui.reset\",\"event_data\":{\"a\":[1.]}}",
        "{\"event_type\":\"ui.reset\",\"event_data\":-.5}",
        "{\"event_type\":\"ui.reset\",\"event_data\":1.e5}",
        "{\"event_type\":\"ui.reset\",\"event_data\":0x10}",
        "{\"event_type\":\"ui.reset\",\"event_data\":TRUE}",
        "{\"event_type\":\"ui.reset\",\"event_data\":\"\xff\"}",
        "{\"event_type\":\"ui.reset\",\"event_data\":\"\xc3\"}",
        "{\"event_type\":\"ui.reset\",\"event_data\":\"\xed\xa0\x80\"}",     /* surrogate */
        "{\"event_type\":\"ui.reset\",\"event_data\":\"\xc0\xaf\"}",         /* overlong */
        "{\"event_type\":\"ui.reset\",\"event_data\":\"\xe0\x80\xaf\"}",     /* overlong */
        "{\"event_type\":\"ui.reset\",\"event_data\":\"\xf4\x90\x80\x80\"}", /* > U+10FFFF */
        "{\"event_type\":\"ui.reset\",\"event_data\":\"\xf8\x88\x80\x80\x80\"}",
        "{\"event_type\":\"ui.reset\",\"event_data\":\"\xe2\x9c\"}", /* cut short */
        "{\"event_type\":\"ui.re\xc3set\"}",
        "\xef\xbb\xbf{\"event_type\":\"ui.reset\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse_err_str(bad[i]) != SR_ERR_JSON)
            fail_msg("accepted: %s", bad[i]);
    }
    char detail[256];
    assert_int_equal(parse_err("{\"event_type\":x}", 16, detail, sizeof detail), SR_ERR_JSON);
    assert_non_null(strstr(detail, "at byte 14"));
    assert_int_equal(parse_err("{\"event_type\":\"a\"", 17, detail, sizeof detail), SR_ERR_JSON);
    assert_non_null(strstr(detail, "truncated"));
    assert_int_equal(parse_err("{\"event_type\":\"\xc0\x80\"}", 19, detail, sizeof detail),
                     SR_ERR_JSON);
    assert_non_null(strstr(detail, "UTF-8"));
    /* every valid form, 1 to 4 bytes, edges included */
    assert_int_equal(
        parse_err_str("{\"event_type\":\"x\",\"event_data\":\"\x7f\xc2\x80\xdf\xbf"
                      "\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80\x80"
                      "\xf4\x8f\xbf\xbf\"}"),
        SR_OK);
    /* whitespace after the object is fine */
    assert_int_equal(parse_err_str("\r\n {\"event_type\":\"ui.reset\"} \n\t "), SR_OK);
}

static void test_embedded_nul(void **state)
{
    (void)state;
    const char body[] = "{\"event_type\":\"ui.reset\"}\0garbage";
    char detail[128];
    assert_int_equal(parse_err(body, sizeof body - 1, detail, sizeof detail), SR_ERR_JSON);
    assert_non_null(strstr(detail, "NUL"));
    const char body2[] = "{\"event_type\":\"ui.re\0set\"}";
    assert_int_equal(parse_err(body2, sizeof body2 - 1, NULL, 0), SR_ERR_JSON);
    /* the escaped form is a valid string and stays inside data */
    struct mapped m;
    map_str("{\"event_type\":\"x\",\"event_data\":\"a\\u0000b\"}", &m);
    assert_int_equal(json_object_get_string_len(test_member(m.payload, "data")), 3);
    mapped_cleanup(&m);
}

static char *nested(size_t depth, const char *open, const char *close, const char *inner)
{
    size_t lo = strlen(open), lc = strlen(close);
    char *s = malloc(100 + depth * (lo + lc) + strlen(inner));
    assert_non_null(s);
    char *p = s + sprintf(s, "{\"event_type\":\"x\",\"event_data\":");
    for (size_t i = 0; i < depth; i++)
        p += sprintf(p, "%s", open);
    p += sprintf(p, "%s", inner);
    for (size_t i = 0; i < depth; i++)
        p += sprintf(p, "%s", close);
    strcpy(p, "}");
    return s;
}

static void test_depth(void **state)
{
    (void)state;
    char detail[128];
    /* the envelope is level 1, event_data's own nesting adds to it */
    char *ok = nested(SMARTRACE_MAX_DEPTH - 1, "[", "]", "1");
    assert_int_equal(parse_err(ok, strlen(ok), detail, sizeof detail), SR_OK);
    free(ok);
    char *deep = nested(SMARTRACE_MAX_DEPTH, "[", "]", "1");
    assert_int_equal(parse_err(deep, strlen(deep), detail, sizeof detail), SR_ERR_DEPTH);
    free(deep);
    deep = nested(SMARTRACE_MAX_DEPTH, "{\"a\":", "}", "1");
    assert_int_equal(parse_err(deep, strlen(deep), detail, sizeof detail), SR_ERR_DEPTH);
    free(deep);

    /* 10000 unclosed '[': refused at the limit, no recursion blow-up */
    size_t n = 10000;
    char *s = malloc(n + 64);
    assert_non_null(s);
    int k = sprintf(s, "{\"event_type\":\"x\",\"event_data\":");
    memset(s + k, '[', n);
    assert_int_equal(parse_err(s, (size_t)k + n, detail, sizeof detail), SR_ERR_DEPTH);
    memset(s, '[', n);
    assert_int_equal(parse_err(s, n, detail, sizeof detail), SR_ERR_DEPTH);
    assert_non_null(strstr(detail, "nested"));
    free(s);
}

static void test_huge_strings(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *body = malloc(n + 128);
    assert_non_null(body);
    int k = sprintf(body, "{\"event_type\":\"x\",\"event_data\":{\"s\":\"");
    memset(body + k, 'A', n);
    strcpy(body + k + n, "\"}}");
    struct mapped m;
    map_str(body, &m);
    struct json_object *s = test_member(test_member(m.payload, "data"), "s");
    assert_int_equal(json_object_get_string_len(s), n);
    mapped_cleanup(&m);

    /* a 1 MiB event_type is refused, and the reason does not echo it */
    k = sprintf(body, "{\"event_type\":\"");
    memset(body + k, 'B', n);
    strcpy(body + k + n, "\"}");
    char detail[256];
    assert_int_equal(parse_err(body, strlen(body), detail, sizeof detail), SR_ERR_EVENT_TYPE);
    assert_null(strstr(detail, "BBBB"));

    /* a 1 MiB number */
    k = sprintf(body, "{\"event_type\":\"x\",\"event_data\":");
    memset(body + k, '7', n);
    strcpy(body + k + n, "}");
    assert_int_equal(parse_err(body, strlen(body), detail, sizeof detail), SR_OK);
    free(body);
}

static void test_huge_numbers(void **state)
{
    (void)state;
    struct mapped m;
    /* carried as valid JSON (json-c clamps integers beyond 64 bits) */
    map_str("{\"event_type\":\"x\",\"event_data\":{\"a\":99999999999999999999999,"
            "\"b\":-99999999999999999999999,\"c\":1e999,\"d\":-0.0,\"e\":1E+05,"
            "\"f\":18446744073709551615}}",
            &m);
    struct json_object *d = test_member(m.payload, "data");
    assert_true(json_object_is_type(test_member(d, "a"), json_type_int));
    assert_int_equal(json_object_get_int64(test_member(d, "b")), INT64_MIN);
    assert_true(json_object_is_type(test_member(d, "c"), json_type_double));
    assert_int_equal(json_object_get_uint64(test_member(d, "f")), UINT64_MAX);
    mapped_cleanup(&m);
}

static void test_wrong_types_in_data(void **state)
{
    (void)state;
    /* odd data never stops an event: it is carried as sent */
    static const char *datas[] = {"[]",
                                  "[1,2]",
                                  "true",
                                  "12",
                                  "\"\"",
                                  "{\"lap\":{}}",
                                  "{\"controller_id\":[1]}",
                                  "{\"laptime_raw\":[]}"};
    for (size_t i = 0; i < sizeof datas / sizeof datas[0]; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"event_type\":\"ui.lap_update\",\"event_data\":%s}",
                 datas[i]);
        check_body(datas[i], body, strlen(body));
    }
}

static void test_slashes_and_unicode_carried(void **state)
{
    (void)state;
    struct mapped m;
    map_str("{\"event_type\":\"x\",\"event_data\":{\"url\":\"cdvfile:\\/\\/a\\/b\","
            "\"t\":\"\\u00e9\\u2713\\ud83c\\udfc1\",\"c\":\"\\t\\n\\\"\\\\\"}}",
            &m);
    struct json_object *d = test_member(m.payload, "data");
    assert_string_equal(json_object_get_string(test_member(d, "url")), "cdvfile://a/b");
    assert_string_equal(json_object_get_string(test_member(d, "t")),
                        "\xc3\xa9\xe2\x9c\x93\xf0\x9f\x8f\x81");
    assert_string_equal(json_object_get_string(test_member(d, "c")), "\t\n\"\\");
    /* NOSLASHESCAPE: no "\/" in the payload */
    assert_null(strstr(m.msg.head, "\\/"));
    mapped_cleanup(&m);
}

/* ---- seal / from_payload ------------------------------------------------------ */

static void test_seal(void **state)
{
    (void)state;
    char out[64];
    const char *head = "{\"a\":1";
    size_t n = smartrace_seal(out, sizeof out, head, strlen(head), 42);
    assert_int_equal(n, strlen("{\"a\":1,\"seq\":42}"));
    assert_string_equal(out, "{\"a\":1,\"seq\":42}");
    n = smartrace_seal(out, sizeof out, head, strlen(head), UINT64_MAX);
    assert_string_equal(out, "{\"a\":1,\"seq\":18446744073709551615}");
    assert_true(strlen(head) + strlen(",\"seq\":18446744073709551615}") + 1 <=
                strlen(head) + SMARTRACE_SEAL_EXTRA);
    /* too small: 0, untouched */
    memset(out, 'z', sizeof out);
    assert_int_equal(smartrace_seal(out, 10, head, strlen(head), 1), 0);
    assert_int_equal(out[0], 'z');

    /* in place in a mapped head */
    struct sr_event ev;
    struct sr_message msg;
    const char *body = "{\"event_type\":\"ui.reset\",\"time\":5}";
    assert_int_equal(smartrace_parse(body, strlen(body), &ev, NULL, 0), SR_OK);
    assert_int_equal(smartrace_map(&ev, BASE, &msg), 0);
    assert_string_equal(msg.head, "{\"event_type\":\"ui.reset\",\"time\":5,\"data\":null");
    n = smartrace_seal(msg.head, msg.head_len + SMARTRACE_SEAL_EXTRA, msg.head, msg.head_len,
                       UINT64_MAX);
    assert_string_equal(msg.head, "{\"event_type\":\"ui.reset\",\"time\":5,\"data\":null,"
                                  "\"seq\":18446744073709551615}");
    assert_int_equal(n, strlen(msg.head));
    smartrace_message_cleanup(&msg);
    smartrace_message_cleanup(&msg); /* harmless twice */
    smartrace_event_cleanup(&ev);
    smartrace_event_cleanup(&ev);
}

static void test_from_payload(void **state)
{
    (void)state;
    struct sr_event ev;
    /* a head */
    const char *head = "{\"event_type\":\"event.pit.enter\",\"time\":12,\"data\":\"9\","
                       "\"controller_id\":\"9\"";
    assert_int_equal(smartrace_event_from_payload(head, strlen(head), &ev), SR_OK);
    assert_int_equal(ev.kind, SR_KIND_PIT_ENTER);
    assert_int_equal(ev.time_ms, 12);
    assert_string_equal(ev.controller_id, "9");
    smartrace_event_cleanup(&ev);

    /* a sealed payload */
    const char *sealed = "{\"event_type\":\"util.fuel_update\",\"time\":null,\"data\":{"
                         "\"controller_id\":\"1\",\"fuel\":3},\"controller_id\":\"1\",\"seq\":4}";
    assert_int_equal(smartrace_event_from_payload(sealed, strlen(sealed), &ev), SR_OK);
    assert_false(ev.has_time);
    assert_string_equal(ev.controller_level, "1");
    assert_true(json_object_is_type(ev.data, json_type_object));
    smartrace_event_cleanup(&ev);

    /* a head whose data object is its last member (ends in '}') */
    const char *head2 = "{\"event_type\":\"x\",\"time\":1,\"data\":{\"a\":{}}";
    assert_int_equal(smartrace_event_from_payload(head2, strlen(head2), &ev), SR_OK);
    assert_int_equal(json_object_object_length(ev.data), 1);
    smartrace_event_cleanup(&ev);

    /* the payload's controller_id wins over data */
    const char *head3 = "{\"event_type\":\"ui.lap_update\",\"data\":{\"controller_id\":\"1\"},"
                        "\"controller_id\":\"a/b\"";
    assert_int_equal(smartrace_event_from_payload(head3, strlen(head3), &ev), SR_OK);
    assert_string_equal(ev.controller_level, "a_b");
    smartrace_event_cleanup(&ev);

    static const char *bad[] = {
        "",
        "{",
        "[",
        "{\"time\":1",
        "{\"event_type\":1",
        "{\"event_type\":\"x\"}}",
        "{\"event_type\":\"x\",",
        "garbage",
        "{\"event_type\":\"x\",\"time\":\"soon\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&ev, 0x5a, sizeof ev);
        if (smartrace_event_from_payload(bad[i], strlen(bad[i]), &ev) == SR_OK)
            fail_msg("accepted payload: %s", bad[i]);
        assert_null(ev.root);
    }
    const char nul[] = "{\"event_type\":\"x\"\0";
    assert_int_not_equal(smartrace_event_from_payload(nul, sizeof nul - 1, &ev), SR_OK);
}

static void test_smartrace_int(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        bool ok;
        int64_t want;
    } cases[] = {
        {"5", true, 5},
        {"-1", true, -1},
        {"\"50\"", true, 50},
        {"\"-1\"", true, -1},
        {"\"007\"", true, 7},
        {"12.9", true, 12},
        {"\"12.9\"", true, 12},
        {"-12.9", true, -12},
        {"9223372036854775807", true, INT64_MAX},
        {"\"9223372036854775807\"", true, INT64_MAX},
        {"\"9223372036854775808\"", false, 0},
        {"18446744073709551615", false, 0},
        {"9.3e18", false, 0},
        {"\"\"", false, 0},
        {"\" 5\"", false, 0},
        {"\"5 \"", false, 0},
        {"\"+5\"", false, 0},
        {"\"5.\"", false, 0},
        {"\".5\"", false, 0},
        {"\"1e3\"", false, 0},
        {"\"0x1f\"", false, 0},
        {"\"-\"", false, 0},
        {"true", false, 0},
        {"null", false, 0},
        {"[]", false, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct json_object *v = json_tokener_parse(cases[i].json);
        int64_t out = -999;
        bool ok = smartrace_int(v, &out);
        if (ok != cases[i].ok)
            fail_msg("smartrace_int(%s) = %d", cases[i].json, ok);
        if (ok)
            assert_int_equal(out, cases[i].want);
        json_object_put(v);
    }
    int64_t out;
    assert_false(smartrace_int(NULL, &out));
}

static void test_strerror(void **state)
{
    (void)state;
    for (int e = SR_OK; e <= SR_ERR_NOMEM; e++) {
        const char *s = smartrace_strerror((enum sr_error)e);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        for (int f = SR_OK; f < e; f++)
            assert_string_not_equal(s, smartrace_strerror((enum sr_error)f));
    }
    assert_non_null(smartrace_strerror((enum sr_error)999));
}

static void test_detail_is_bounded(void **state)
{
    (void)state;
    char detail[16];
    memset(detail, 'q', sizeof detail);
    assert_int_equal(parse_err("{\"event_type\":}", 15, detail, sizeof detail), SR_ERR_JSON);
    assert_true(memchr(detail, '\0', sizeof detail) != NULL);
    assert_int_equal(parse_err("{\"event_type\":}", 15, NULL, 0), SR_ERR_JSON);
    assert_int_equal(parse_err(NULL, 0, detail, sizeof detail), SR_ERR_JSON);
    /* a cleaned-up event maps to nothing */
    struct sr_event ev;
    struct sr_message msg;
    memset(&ev, 0, sizeof ev);
    assert_int_equal(smartrace_map(&ev, BASE, &msg), -1);
    assert_null(msg.head);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_own_fixtures),
        cmocka_unit_test(test_shared_fixtures),
        cmocka_unit_test(test_fixture_topics_and_fields),
        cmocka_unit_test(test_time_string_and_absent),
        cmocka_unit_test(test_every_event_type),
        cmocka_unit_test(test_base_topic_is_used),
        cmocka_unit_test(test_controller_id_forms),
        cmocka_unit_test(test_controller_id_hostile),
        cmocka_unit_test(test_laptime),
        cmocka_unit_test(test_event_type_errors),
        cmocka_unit_test(test_not_object),
        cmocka_unit_test(test_time_errors),
        cmocka_unit_test(test_invalid_json),
        cmocka_unit_test(test_embedded_nul),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_huge_strings),
        cmocka_unit_test(test_huge_numbers),
        cmocka_unit_test(test_wrong_types_in_data),
        cmocka_unit_test(test_slashes_and_unicode_carried),
        cmocka_unit_test(test_seal),
        cmocka_unit_test(test_from_payload),
        cmocka_unit_test(test_smartrace_int),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_detail_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
