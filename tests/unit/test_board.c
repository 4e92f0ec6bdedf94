/*
 * test_board.c - what the page shows about the inputs: counts per event type
 * and their bound, the last event and its sender, refusals newest first and
 * bounded, the raw event ring (count and byte bounds, ?limit), preflights, and
 * RACE RESULT devices with battery, passings and the API's reachability.
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

#include "race2mqtt/board.h"
#include "race2mqtt/ingest.h"

static void accept_event(struct board *b, uint64_t seq, const char *type, const char *body)
{
    struct ingest_accepted a = {
        .seq = seq, .at_ms = 1000 + (int64_t)seq, .type = type, .body = body, .len = strlen(body)};
    board_accepted(b, &a);
}

static int64_t int_of(struct json_object *o, const char *key)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_int))
        fail_msg("%s is not an integer in %s", key, json_object_to_json_string(o));
    return json_object_get_int64(v);
}

static const char *str_of(struct json_object *o, const char *key)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_string))
        fail_msg("%s is not a string in %s", key, json_object_to_json_string(o));
    return json_object_get_string(v);
}

static void test_empty(void **state)
{
    (void)state;
    struct board *b = board_new(5);
    assert_non_null(b);
    struct json_object *sr = board_smartrace_json(b);
    assert_int_equal(int_of(sr, "accepted"), 0);
    assert_int_equal(int_of(sr, "refused"), 0);
    assert_null(test_member(sr, "last_event"));
    assert_null(test_member(sr, "last_preflight"));
    assert_int_equal(json_object_object_length(test_member(sr, "by_type")), 0);
    assert_int_equal(json_object_array_length(test_member(sr, "refusals")), 0);
    json_object_put(sr);
    struct json_object *rr = board_raceresult_json(b);
    struct json_object *api = test_member(rr, "api");
    assert_null(test_member(api, "ok")); /* not asked yet */
    assert_null(test_member(api, "last_error"));
    assert_int_equal(json_object_array_length(test_member(rr, "devices")), 0);
    json_object_put(rr);
    struct json_object *ev = board_events_json(b, 100);
    assert_int_equal(json_object_array_length(test_member(ev, "events")), 0);
    json_object_put(ev);
    board_free(b);
}

static void test_counts_and_last(void **state)
{
    (void)state;
    struct board *b = board_new(0);
    accept_event(b, 1, "ui.lap_update", "{}");
    accept_event(b, 2, "ui.lap_update", "{}");
    board_from(b, 2, "192.0.2.7");
    accept_event(b, 3, "event.change_status", "{}");
    board_from(b, 2, "192.0.2.99"); /* a late worker of an older event: not the last one */
    struct json_object *sr = board_smartrace_json(b);
    assert_int_equal(int_of(sr, "accepted"), 3);
    struct json_object *types = test_member(sr, "by_type");
    assert_int_equal(int_of(types, "ui.lap_update"), 2);
    assert_int_equal(int_of(types, "event.change_status"), 1);
    struct json_object *last = test_member(sr, "last_event");
    assert_int_equal(int_of(last, "seq"), 3);
    assert_int_equal(int_of(last, "at_ms"), 1003);
    assert_string_equal(str_of(last, "type"), "event.change_status");
    assert_null(test_member(last, "from"));
    json_object_put(sr);
    board_from(b, 3, "192.0.2.8");
    sr = board_smartrace_json(b);
    assert_string_equal(str_of(test_member(sr, "last_event"), "from"), "192.0.2.8");
    json_object_put(sr);
    board_free(b);
}

static void test_types_bounded(void **state)
{
    (void)state;
    struct board *b = board_new(0);
    char type[32];
    for (int i = 0; i < BOARD_TYPES + 10; i++) {
        snprintf(type, sizeof type, "x.type_%d", i);
        accept_event(b, (uint64_t)i + 1, type, "{}");
    }
    char longer[200];
    memset(longer, 'a', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    accept_event(b, 1000, longer, "{}");
    struct json_object *sr = board_smartrace_json(b);
    struct json_object *types = test_member(sr, "by_type");
    assert_int_equal(json_object_object_length(types), BOARD_TYPES + 1);
    assert_int_equal(int_of(types, "other"), 11);
    assert_int_equal(int_of(types, "x.type_0"), 1);
    json_object_put(sr);
    board_free(b);
}

static void test_refusals_newest_first_bounded(void **state)
{
    (void)state;
    struct board *b = board_new(0);
    char reason[64];
    for (int i = 0; i < BOARD_REFUSALS + 3; i++) {
        snprintf(reason, sizeof reason, "reason %d", i);
        board_refused(b, "::1", 400 + i, reason);
    }
    char huge[1000];
    memset(huge, 'r', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    board_refused(b, "192.0.2.1", 401, huge);
    struct json_object *sr = board_smartrace_json(b);
    assert_int_equal(int_of(sr, "refused"), BOARD_REFUSALS + 4);
    struct json_object *list = test_member(sr, "refusals");
    assert_int_equal(json_object_array_length(list), BOARD_REFUSALS);
    struct json_object *newest = json_object_array_get_idx(list, 0);
    assert_int_equal(int_of(newest, "status"), 401);
    assert_string_equal(str_of(newest, "from"), "192.0.2.1");
    assert_true(strlen(str_of(newest, "reason")) < 256); /* cut, not kept whole */
    struct json_object *next = json_object_array_get_idx(list, 1);
    snprintf(reason, sizeof reason, "reason %d", BOARD_REFUSALS + 2);
    assert_string_equal(str_of(next, "reason"), reason);
    assert_string_equal(str_of(next, "from"), "::1");
    json_object_put(sr);
    board_free(b);
}

static void test_preflight(void **state)
{
    (void)state;
    struct board *b = board_new(0);
    board_preflight(b, "192.0.2.20", "http://localhost", true);
    board_preflight(b, "192.0.2.21", "capacitor://localhost", false);
    struct json_object *sr = board_smartrace_json(b);
    struct json_object *pf = test_member(sr, "last_preflight");
    assert_string_equal(str_of(pf, "from"), "192.0.2.21");
    assert_string_equal(str_of(pf, "origin"), "capacitor://localhost");
    assert_false(json_object_get_boolean(test_member(pf, "private_network")));
    assert_true(int_of(pf, "at_ms") > 0);
    json_object_put(sr);
    board_free(b);
}

/* The raw events: the last keep_events, oldest first, bodies as JSON. */
static void test_ring_count_and_limit(void **state)
{
    (void)state;
    struct board *b = board_new(3);
    char body[64];
    for (int i = 1; i <= 5; i++) {
        snprintf(body, sizeof body, "{\"event_type\":\"t\",\"n\":%d}", i);
        accept_event(b, (uint64_t)i, "t", body);
    }
    struct json_object *ev = board_events_json(b, 100);
    struct json_object *list = test_member(ev, "events");
    assert_int_equal(json_object_array_length(list), 3);
    for (int i = 0; i < 3; i++) {
        struct json_object *e = json_object_array_get_idx(list, (size_t)i);
        assert_int_equal(int_of(e, "seq"), 3 + i);
        assert_int_equal(int_of(e, "at_ms"), 1003 + i);
        assert_string_equal(str_of(e, "type"), "t");
        assert_int_equal(int_of(test_member(e, "body"), "n"), 3 + i);
    }
    json_object_put(ev);
    ev = board_events_json(b, 1);
    list = test_member(ev, "events");
    assert_int_equal(json_object_array_length(list), 1);
    assert_int_equal(int_of(json_object_array_get_idx(list, 0), "seq"), 5);
    json_object_put(ev);
    ev = board_events_json(b, 0);
    assert_int_equal(json_object_array_length(test_member(ev, "events")), 0);
    json_object_put(ev);
    board_free(b);

    b = board_new(0); /* off: counted, not kept */
    accept_event(b, 1, "t", "{}");
    ev = board_events_json(b, 10);
    assert_int_equal(json_object_array_length(test_member(ev, "events")), 0);
    json_object_put(ev);
    board_free(b);
}

static void test_ring_bytes_bounded(void **state)
{
    (void)state;
    struct board *b = board_new(BOARD_KEEP_MAX);
    size_t len = 300 * 1024; /* four of them exceed the 1 MiB bound */
    char *body = malloc(len + 1);
    assert_non_null(body);
    memset(body, ' ', len);
    body[0] = '{';
    body[len - 1] = '}';
    body[len] = '\0';
    for (uint64_t i = 1; i <= 6; i++)
        accept_event(b, i, "big", body);
    struct json_object *ev = board_events_json(b, BOARD_KEEP_MAX);
    struct json_object *list = test_member(ev, "events");
    size_t n = json_object_array_length(list);
    assert_int_equal(n, BOARD_RING_BYTES / len);
    assert_int_equal(int_of(json_object_array_get_idx(list, n - 1), "seq"), 6);
    json_object_put(ev);
    free(body);
    board_free(b);
}

static void device(struct board *b, const char *level, bool connected, int64_t file)
{
    struct board_device d = {.level = level,
                             .name = "Finish",
                             .type = "UBIDEC",
                             .connected = connected,
                             .has_file = file >= 0,
                             .file = file};
    board_rr_device(b, &d);
}

static void test_devices(void **state)
{
    (void)state;
    struct board *b = board_new(0);
    device(b, "D-1", true, 3);
    device(b, "D-2", false, -1);
    board_rr_listed(b);
    const char *status = "{\"battery\":87,\"connected\":true}";
    board_rr_status(b, "D-1", status, strlen(status));
    const char *passing = "{\"transponder\":\"ABC123\",\"time\":\"12:00:01.234\",\"id\":9}";
    board_rr_passing(b, "D-1", passing, strlen(passing));
    board_rr_status(b, "D-unknown", status, strlen(status)); /* not listed: ignored */
    board_rr_api(b, false, "HTTP 401 at /api/v1/devices");
    board_rr_api(b, true, NULL);

    struct json_object *rr = board_raceresult_json(b);
    struct json_object *api = test_member(rr, "api");
    assert_true(json_object_get_boolean(test_member(api, "ok")));
    assert_string_equal(str_of(api, "last_error"), "HTTP 401 at /api/v1/devices");
    assert_true(int_of(api, "last_ok_ms") >= int_of(api, "last_error_ms"));
    struct json_object *list = test_member(rr, "devices");
    assert_int_equal(json_object_array_length(list), 2);
    struct json_object *d1 = json_object_array_get_idx(list, 0);
    assert_string_equal(str_of(d1, "device"), "D-1");
    assert_string_equal(str_of(d1, "type"), "UBIDEC");
    assert_true(json_object_get_boolean(test_member(d1, "connected")));
    assert_int_equal(int_of(d1, "battery"), 87);
    assert_int_equal(int_of(d1, "file"), 3);
    assert_null(test_member(d1, "records"));
    assert_string_equal(str_of(d1, "last_transponder"), "ABC123");
    assert_string_equal(str_of(d1, "last_passing_time"), "12:00:01.234");
    assert_true(int_of(d1, "last_passing_ms") > 0);
    struct json_object *d2 = json_object_array_get_idx(list, 1);
    assert_false(json_object_get_boolean(test_member(d2, "connected")));
    assert_null(test_member(d2, "battery"));
    assert_null(test_member(d2, "file"));
    assert_null(test_member(d2, "last_passing_ms"));
    json_object_put(rr);

    /* The next complete list drops D-2 and keeps what D-1 had. */
    device(b, "D-1", true, 4);
    board_rr_listed(b);
    rr = board_raceresult_json(b);
    list = test_member(rr, "devices");
    assert_int_equal(json_object_array_length(list), 1);
    d1 = json_object_array_get_idx(list, 0);
    assert_int_equal(int_of(d1, "file"), 4);
    assert_int_equal(int_of(d1, "battery"), 87);
    json_object_put(rr);

    /* The latest status is what counts: without a battery, it is unknown.
     * A payload that is no object (ours never are) shows no transponder. */
    board_rr_status(b, "D-1", "{\"connected\":true}", 18);
    board_rr_passing(b, "D-1", "[1]", 3);
    rr = board_raceresult_json(b);
    d1 = json_object_array_get_idx(test_member(rr, "devices"), 0);
    assert_null(test_member(d1, "battery"));
    assert_null(test_member(d1, "last_transponder"));
    json_object_put(rr);
    board_free(b);
}

static void test_devices_bounded(void **state)
{
    (void)state;
    struct board *b = board_new(0);
    char level[32];
    for (int i = 0; i < BOARD_DEVICES + 5; i++) {
        snprintf(level, sizeof level, "D-%d", i);
        device(b, level, true, i);
    }
    board_rr_listed(b);
    struct json_object *rr = board_raceresult_json(b);
    assert_int_equal(json_object_array_length(test_member(rr, "devices")), BOARD_DEVICES);
    json_object_put(rr);
    board_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_counts_and_last),
        cmocka_unit_test(test_types_bounded),
        cmocka_unit_test(test_refusals_newest_first_bounded),
        cmocka_unit_test(test_preflight),
        cmocka_unit_test(test_ring_count_and_limit),
        cmocka_unit_test(test_ring_bytes_bounded),
        cmocka_unit_test(test_devices),
        cmocka_unit_test(test_devices_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
