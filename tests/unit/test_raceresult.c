/*
 * test_raceresult.c - RACE RESULT device lists and detections -> normalised
 * records -> status and passing payloads, with our own fixtures
 * (tests/fixtures/raceresult), the real device list in
 * ../shared/fixtures/raceresult when present, and hostile input.
 *
 * Every payload is parsed back with the strict parser and compared member by
 * member (and its set of keys checked), never by string compare alone, so a
 * payload that is not valid JSON, or has a member too many or too few, fails.
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

#include "race2mqtt/jsonutil.h"
#include "race2mqtt/raceresult.h"

#include "../rr_whole_page.h"

#define FIX R2M_FIXTURES "/raceresult/"

/* ---- helpers ----------------------------------------------------------- */

/* Our own fixtures must exist: a missing one fails the test. */
static char *slurp(const char *path, size_t *len)
{
    char *buf = test_slurp(path, len);
    if (!buf)
        fail_msg("cannot open %s", path);
    return buf;
}

/* Parses a payload back strictly; the caller puts the result. */
static struct json_object *parse_back(char *text, size_t len)
{
    struct json_object *o = NULL;
    char detail[128];
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    if (jsonutil_parse(text, len, NULL, 0, RR_MAX_DEPTH + 2, &o, detail, sizeof detail) !=
        JSONUTIL_OK)
        fail_msg("payload is not strict JSON (%s): %.300s", detail, text);
    assert_true(json_object_is_type(o, json_type_object));
    free(text);
    return o;
}

static void assert_null_member(struct json_object *o, const char *key)
{
    struct json_object *v = test_member(o, key);
    if (v)
        fail_msg("%s should be null, is %s", key, json_object_to_json_string(v));
}

static void assert_str_member(struct json_object *o, const char *key, const char *want)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_string))
        fail_msg("%s is not a string", key);
    assert_string_equal(json_object_get_string(v), want);
}

static void assert_int_member(struct json_object *o, const char *key, int64_t want)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_int))
        fail_msg("%s is not an integer", key);
    assert_int_equal(json_object_get_int64(v), want);
}

static void assert_bool_member(struct json_object *o, const char *key, bool want)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_boolean))
        fail_msg("%s is not a boolean", key);
    assert_int_equal(json_object_get_boolean(v), want);
}

/* A number member printed exactly as text (json-c prints the source text). */
static void assert_num_text(struct json_object *o, const char *key, const char *text)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
        fail_msg("%s is not a number", key);
    assert_string_equal(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN), text);
}

static void assert_keys(struct json_object *o, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        test_member(o, keys[i]);
    assert_int_equal(json_object_object_length(o), n);
}

static const char *const status_keys[] = {"device",      "name",        "type",     "connected",
                                          "battery",     "temperature", "file",     "timing_mode",
                                          "error_flags", "position",    "firmware", "records", "raw"};
static const char *const passing_keys[] = {"id",          "device", "file",    "no",   "kind",
                                           "transponder", "time",   "time_ms", "loop", "channel",
                                           "hits",        "rssi",   "battery", "raw"};

static struct json_object *status_of(const struct rr_device *d)
{
    size_t len = 0;
    char *text = rr_status_payload(d, &len);
    struct json_object *o = parse_back(text, len);
    assert_keys(o, status_keys, sizeof status_keys / sizeof status_keys[0]);
    assert_true(json_object_equal(test_member(o, "raw"), d->raw));
    return o;
}

/*
 * A page as the gateway reads it, and the same body parsed whole
 * (rr_whole_page.h): every page a test reads must give the same decision and
 * the same records, payload bytes included, as reading it as one tree did.
 */
struct page {
    struct rr_passing_list l;
    struct json_object *root; /* the whole page's tree, to compare raw with */
};

static enum rr_error page_read(struct page *pg, const char *body, size_t len, const char *device,
                               char *detail, size_t detail_len)
{
    struct rr_passing_list whole;
    enum rr_error rc = rr_parse_detections(body, len, device, &pg->l, detail, detail_len);
    enum rr_error want = rr_whole_page(body, len, device, &whole, &pg->root);
    if (rc != want)
        fail_msg("rr_parse_detections: %s, the page parsed whole: %s", rr_strerror(rc),
                 rr_strerror(want));
    const char *diff = rr_page_difference(&pg->l, &whole);
    if (diff)
        fail_msg("the page parsed whole differs in the %s", diff);
    rr_passing_list_cleanup(&whole);
    if (rc != RR_OK) {
        assert_null(pg->l.items);
        assert_int_equal(pg->l.count, 0);
        assert_int_equal(pg->l.skipped, 0);
    }
    return rc;
}

static void page_cleanup(struct page *pg)
{
    rr_passing_list_cleanup(&pg->l);
    json_object_put(pg->root);
    pg->root = NULL;
}

/* The payload of record i, parsed back; its raw is the record as received. */
static struct json_object *passing_of(const struct page *pg, size_t i)
{
    const struct rr_passing *p = &pg->l.items[i];
    char *text = malloc(p->payload_len + 1);
    assert_non_null(text);
    memcpy(text, p->payload, p->payload_len + 1);
    struct json_object *o = parse_back(text, p->payload_len);
    assert_keys(o, passing_keys, sizeof passing_keys / sizeof passing_keys[0]);
    assert_true(
        json_object_equal(test_member(o, "raw"), json_object_array_get_idx(pg->root, p->index)));
    return o;
}

static void devices_file(const char *name, struct rr_device_list *l)
{
    char path[512], detail[256];
    size_t len;
    snprintf(path, sizeof path, FIX "%s", name);
    char *body = slurp(path, &len);
    enum rr_error rc = rr_parse_devices(body, len, l, detail, sizeof detail);
    if (rc != RR_OK)
        fail_msg("%s: %s: %s", name, rr_strerror(rc), detail);
    free(body);
}

static void detections_file(const char *name, const char *device, struct page *pg)
{
    char path[512], detail[256];
    size_t len;
    snprintf(path, sizeof path, FIX "%s", name);
    char *body = slurp(path, &len);
    enum rr_error rc = page_read(pg, body, len, device, detail, sizeof detail);
    if (rc != RR_OK)
        fail_msg("%s: %s: %s", name, rr_strerror(rc), detail);
    free(body);
}

static enum rr_error devices_str(const char *body, struct rr_device_list *l)
{
    return rr_parse_devices(body, strlen(body), l, NULL, 0);
}

static enum rr_error detections_str(const char *body, const char *device, struct page *pg)
{
    return page_read(pg, body, strlen(body), device, NULL, 0);
}

/* ---- device list ------------------------------------------------------- */

static void test_devices_three_shapes(void **state)
{
    (void)state;
    struct rr_device_list l;
    devices_file("devices_three_shapes.json", &l);
    assert_int_equal(l.count, 3);
    assert_int_equal(l.skipped, 0);
    struct json_object *arr = test_member(l.root, "Devices");

    const struct rr_device *d = &l.devices[0];
    assert_string_equal(d->id, "D-5120");
    assert_string_equal(d->level, "D-5120");
    assert_int_equal(d->type, RR_DEVICE_DECODER);
    assert_true(d->connected);
    assert_true(d->has_file_no);
    assert_int_equal(d->file_no, 52);
    assert_true(d->has_records);
    assert_int_equal(d->records, 1873);
    assert_ptr_equal(d->raw, json_object_array_get_idx(arr, 0));
    struct json_object *s = status_of(d);
    assert_str_member(s, "device", "D-5120");
    assert_str_member(s, "name", "Finish line");
    assert_str_member(s, "type", "Decoder");
    assert_bool_member(s, "connected", true);
    assert_null_member(s, "battery"); /* BatteryCharge -1 */
    assert_num_text(s, "temperature", "27.25");
    assert_int_member(s, "file", 52);
    assert_bool_member(s, "timing_mode", true);
    assert_int_member(s, "error_flags", 16);
    struct json_object *pos = test_member(s, "position");
    assert_num_text(pos, "latitude", "47.36912");
    assert_num_text(pos, "longitude", "8.53805");
    assert_null_member(pos, "altitude");
    assert_str_member(pos, "flag", "S");
    assert_int_equal(json_object_object_length(pos), 4);
    assert_str_member(s, "firmware", "2.71");
    json_object_put(s);

    d = &l.devices[1];
    assert_string_equal(d->id, "T-31007");
    assert_string_equal(d->level, "T-31007");
    assert_int_equal(d->type, RR_DEVICE_TRACKBOX);
    assert_false(d->connected);
    assert_true(d->has_file_no);
    assert_int_equal(d->file_no, 7);
    assert_true(d->has_records);
    assert_int_equal(d->records, 311);
    assert_ptr_equal(d->raw, json_object_array_get_idx(arr, 1));
    s = status_of(d);
    assert_str_member(s, "device", "T-31007");
    assert_str_member(s, "name", "KM 12 climb");
    assert_str_member(s, "type", "TrackBox");
    assert_bool_member(s, "connected", false);
    assert_int_member(s, "battery", 64);
    assert_int_member(s, "temperature", 18);
    assert_int_member(s, "file", 7);
    assert_str_member(s, "timing_mode", "SYNC");
    assert_null_member(s, "error_flags");
    pos = test_member(s, "position");
    assert_num_text(pos, "latitude", "46.0207");
    assert_num_text(pos, "longitude", "-7.74912");
    assert_int_member(pos, "altitude", 1088);
    assert_str_member(pos, "flag", "M");
    assert_null_member(s, "firmware");
    json_object_put(s);

    d = &l.devices[2];
    assert_string_equal(d->id, "U-40123");
    assert_string_equal(d->level, "U-40123");
    assert_int_equal(d->type, RR_DEVICE_UBIDIUM);
    assert_true(d->connected); /* ConnStatus 1 */
    assert_true(d->has_file_no);
    assert_int_equal(d->file_no, 12);
    assert_true(d->has_records);
    assert_int_equal(d->records, 4410);
    assert_ptr_equal(d->raw, json_object_array_get_idx(arr, 2));
    s = status_of(d);
    assert_str_member(s, "device", "U-40123");
    assert_str_member(s, "name", "Start arch");
    assert_str_member(s, "type", "Ubidium");
    assert_bool_member(s, "connected", true);
    assert_int_member(s, "battery", 77); /* Power.Battery1.Level */
    assert_int_member(s, "temperature", 31);
    assert_int_member(s, "file", 12);
    assert_null_member(s, "timing_mode");
    assert_null_member(s, "error_flags");
    pos = test_member(s, "position");
    assert_num_text(pos, "latitude", "52.52001");
    assert_num_text(pos, "longitude", "13.40495");
    assert_int_member(pos, "altitude", 431);
    assert_str_member(pos, "flag", "S");
    assert_str_member(s, "firmware", "1.4.5");
    json_object_put(s);

    rr_device_list_cleanup(&l);
    assert_null(l.root);
    assert_null(l.devices);
    assert_int_equal(l.count, 0);
    rr_device_list_cleanup(&l); /* harmless twice */
    rr_device_list_cleanup(NULL);
}

static void test_devices_variants(void **state)
{
    (void)state;
    struct rr_device_list l;
    devices_file("devices_variants.json", &l);
    assert_int_equal(l.count, 4);
    assert_int_equal(l.skipped, 0);

    /* a zero-start run-time decoder: no BatteryCharge, position without a fix */
    const struct rr_device *d = &l.devices[0];
    assert_string_equal(d->id, "D-4470");
    assert_int_equal(d->type, RR_DEVICE_DECODER);
    assert_false(d->connected);
    assert_int_equal(d->file_no, 3);
    assert_true(d->has_records);
    assert_int_equal(d->records, 0);
    struct json_object *s = status_of(d);
    assert_str_member(s, "name", "D-4470");
    assert_null_member(s, "battery");
    assert_int_member(s, "temperature", 15);
    assert_bool_member(s, "timing_mode", false);
    assert_int_member(s, "error_flags", 0);
    assert_null_member(s, "position");
    assert_str_member(s, "firmware", "2.46");
    json_object_put(s);

    /* a TrackBox that never uploaded: no name, file, temperature, reader status */
    d = &l.devices[1];
    assert_string_equal(d->id, "T-31008");
    assert_int_equal(d->type, RR_DEVICE_TRACKBOX);
    assert_false(d->has_file_no);
    assert_true(d->has_records);
    s = status_of(d);
    assert_null_member(s, "name");
    assert_bool_member(s, "connected", false);
    assert_int_member(s, "battery", 100);
    assert_null_member(s, "temperature");
    assert_null_member(s, "file");
    assert_null_member(s, "timing_mode");
    assert_null_member(s, "error_flags");
    assert_null_member(s, "position");
    assert_null_member(s, "firmware");
    json_object_put(s);

    /* Ubidium with a bad connection, the second battery, and Go's 0/0 position */
    d = &l.devices[2];
    assert_string_equal(d->id, "U-40124");
    assert_int_equal(d->type, RR_DEVICE_UBIDIUM);
    assert_false(d->connected); /* ConnStatus 2 */
    assert_int_equal(d->file_no, 1);
    assert_int_equal(d->records, 0);
    s = status_of(d);
    assert_str_member(s, "type", "Ubidium");
    assert_bool_member(s, "connected", false);
    assert_int_member(s, "battery", 38);
    assert_int_member(s, "temperature", 24);
    assert_int_member(s, "file", 1);
    assert_null_member(s, "position");
    assert_str_member(s, "firmware", "1.3.9");
    json_object_put(s);

    /* Ubidium with no battery installed and no firmware */
    d = &l.devices[3];
    assert_string_equal(d->id, "U-40125");
    assert_false(d->connected);
    assert_int_equal(d->file_no, 2);
    assert_int_equal(d->records, 9);
    s = status_of(d);
    assert_null_member(s, "battery");
    assert_null_member(s, "position");
    assert_null_member(s, "firmware");
    assert_int_member(s, "temperature", 22);
    json_object_put(s);
    rr_device_list_cleanup(&l);
}

static void test_battery_charge(void **state)
{
    (void)state;
    static const struct {
        const char *value;
        const char *want; /* NULL: null */
    } cases[] = {
        {"-1", NULL},   {"-1.0", NULL},   {"0", "0"},     {"100", "100"}, {"55.5", "55.5"},
        {"null", NULL}, {"\"70\"", NULL}, {"true", NULL}, {"[70]", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"Devices\":[{\"DeviceID\":\"T-1\",\"DeviceType\":\"TrackBox\","
                 "\"BatteryCharge\":%s}]}",
                 cases[i].value);
        struct rr_device_list l;
        assert_int_equal(devices_str(body, &l), RR_OK);
        assert_int_equal(l.count, 1);
        struct json_object *s = status_of(&l.devices[0]);
        if (cases[i].want)
            assert_num_text(s, "battery", cases[i].want);
        else
            assert_null_member(s, "battery");
        json_object_put(s);
        rr_device_list_cleanup(&l);
    }
}

static void test_devices_hostile(void **state)
{
    (void)state;
    struct rr_device_list l;
    devices_file("devices_hostile.json", &l);
    /* 4 non-objects, no id, "", true, "N\0UL", System.DeviceID 3.5 */
    assert_int_equal(l.skipped, 9);
    assert_int_equal(l.count, 6);

    /* every field of the wrong type: absent, and the id is only sanitised in level */
    const struct rr_device *d = &l.devices[0];
    assert_string_equal(d->id, "a/b+c#d");
    assert_string_equal(d->level, "a_b_c_d");
    assert_int_equal(d->type, RR_DEVICE_UNKNOWN);
    assert_false(d->connected);
    assert_false(d->has_file_no);
    assert_false(d->has_records);
    struct json_object *s = status_of(d);
    assert_str_member(s, "device", "a/b+c#d");
    assert_str_member(s, "type", "unknown");
    assert_bool_member(s, "connected", false);
    for (size_t i = 1; i < sizeof status_keys / sizeof status_keys[0] - 1; i++) {
        if (strcmp(status_keys[i], "type") != 0 && strcmp(status_keys[i], "connected") != 0)
            assert_null_member(s, status_keys[i]);
    }
    json_object_put(s);

    /* an integer id; counters beyond int64 are absent */
    d = &l.devices[1];
    assert_string_equal(d->id, "17");
    assert_string_equal(d->level, "17");
    assert_int_equal(d->type, RR_DEVICE_DECODER);
    assert_false(d->has_file_no);
    assert_false(d->has_records);
    s = status_of(d);
    assert_str_member(s, "device", "17");
    json_object_put(s);

    /* DeviceID unusable: System.DeviceID; nested wrong types are absent */
    d = &l.devices[2];
    assert_string_equal(d->id, "U-1");
    assert_int_equal(d->type, RR_DEVICE_UBIDIUM);
    assert_false(d->connected); /* ConnStatus true is not 1 */
    assert_false(d->has_file_no);
    assert_false(d->has_records);
    s = status_of(d);
    assert_null_member(s, "name");
    assert_null_member(s, "battery"); /* Installed "true" is not true */
    assert_null_member(s, "temperature");
    assert_null_member(s, "position");
    assert_null_member(s, "firmware");
    json_object_put(s);

    /* an unknown DeviceType; numeric strings count, negative strings do not */
    d = &l.devices[3];
    assert_string_equal(d->id, "X-1");
    assert_int_equal(d->type, RR_DEVICE_UNKNOWN);
    assert_true(d->connected); /* no Connected: ConnStatus 1 */
    assert_true(d->has_file_no);
    assert_int_equal(d->file_no, 361);
    assert_false(d->has_records);
    s = status_of(d);
    assert_str_member(s, "type", "unknown");
    assert_int_member(s, "file", 361);
    json_object_put(s);

    /* Connected wins over ConnStatus; half a position is still a position */
    d = &l.devices[4];
    assert_string_equal(d->id, "D-10");
    assert_true(d->connected);
    s = status_of(d);
    assert_null_member(s, "battery"); /* negative */
    assert_null_member(s, "timing_mode");
    assert_null_member(s, "error_flags");
    assert_null_member(s, "firmware");
    struct json_object *pos = test_member(s, "position");
    assert_num_text(pos, "latitude", "1.5");
    assert_num_text(pos, "longitude", "0");
    assert_null_member(pos, "altitude");
    assert_null_member(pos, "flag");
    json_object_put(s);

    /* a TrackBox: ReaderStatus of the wrong type; a Power block counts anyway */
    d = &l.devices[5];
    s = status_of(d);
    assert_null_member(s, "timing_mode");
    assert_int_member(s, "battery", 40);
    json_object_put(s);
    rr_device_list_cleanup(&l);
}

static void test_devices_shape(void **state)
{
    (void)state;
    static const char *bad[] = {
        "[]",
        "[{\"DeviceID\":\"D-1\"}]",
        "\"Devices\"",
        "42",
        "true",
        "null",
        "{}",
        "{\"devices\":[]}",
        "{\"Devices\":{}}",
        "{\"Devices\":\"D-1\"}",
        "{\"Devices\":1}",
    };
    char detail[128];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct rr_device_list l;
        memset(&l, 0x5a, sizeof l);
        detail[0] = '\0';
        enum rr_error rc = rr_parse_devices(bad[i], strlen(bad[i]), &l, detail, sizeof detail);
        if (rc != RR_ERR_SHAPE)
            fail_msg("%s: got %s", bad[i], rr_strerror(rc));
        assert_true(strlen(detail) > 0);
        assert_null(l.root);
        assert_null(l.devices);
        assert_int_equal(l.count, 0);
        rr_device_list_cleanup(&l);
    }
    /* Go encodes an empty slice as null */
    struct rr_device_list l;
    assert_int_equal(devices_str("{\"Devices\":null}", &l), RR_OK);
    assert_int_equal(l.count, 0);
    rr_device_list_cleanup(&l);
    assert_int_equal(devices_str(" {\"Devices\":[],\"Other\":1} ", &l), RR_OK);
    assert_int_equal(l.count, 0);
    assert_int_equal(l.skipped, 0);
    rr_device_list_cleanup(&l);
}

static void test_shared_fixtures(void **state)
{
    (void)state;
    struct stat sb;
    const char *dir = R2M_SHARED_FIXTURES "/raceresult";
    if (stat(dir, &sb) != 0) {
        print_message("no %s, skipped\n", dir);
        skip();
    }
    DIR *dp = opendir(dir);
    assert_non_null(dp);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(dp)) != NULL) {
        if (strncmp(de->d_name, "devices_list_", 13) != 0 || !strstr(de->d_name, ".json"))
            continue;
        char path[1024], detail[256];
        size_t len;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        char *body = slurp(path, &len);
        struct rr_device_list l;
        enum rr_error rc = rr_parse_devices(body, len, &l, detail, sizeof detail);
        if (rc != RR_OK)
            fail_msg("%s: %s", de->d_name, detail);
        free(body);
        assert_int_equal(l.count, 291);
        assert_int_equal(l.skipped, 0);
        size_t n[4] = {0};
        for (size_t i = 0; i < l.count; i++) {
            const struct rr_device *d = &l.devices[i];
            assert_true(d->id[0] != '\0');
            assert_true(d->level[0] != '\0');
            assert_true(d->type != RR_DEVICE_UNKNOWN);
            n[d->type]++;
            if (d->type == RR_DEVICE_UBIDIUM)
                assert_true(d->has_file_no && d->has_records);
            struct json_object *s = status_of(d);
            assert_str_member(s, "device", d->id);
            json_object_put(s);
        }
        assert_int_equal(n[RR_DEVICE_DECODER], 90);
        assert_int_equal(n[RR_DEVICE_TRACKBOX], 186);
        assert_int_equal(n[RR_DEVICE_UBIDIUM], 15);
        rr_device_list_cleanup(&l);
        files++;
    }
    closedir(dp);
    assert_true(files > 0);
}

/* ---- detections -------------------------------------------------------- */

static void test_decoder_passings(void **state)
{
    (void)state;
    struct page pg;
    detections_file("detections_passings.json", "D-5120", &pg);
    assert_int_equal(pg.l.count, 3);
    assert_int_equal(pg.l.skipped, 0);
    assert_int_equal(pg.l.items[0].kind, RR_PASSING);
    assert_int_equal(pg.l.items[0].file, 52);
    assert_int_equal(pg.l.items[0].no, 17);
    assert_int_equal(pg.l.items[0].index, 0);

    struct json_object *p = passing_of(&pg, 0);
    assert_str_member(p, "id", "D-5120/52/17");
    assert_str_member(p, "device", "D-5120");
    assert_int_member(p, "file", 52);
    assert_int_member(p, "no", 17);
    assert_str_member(p, "kind", "passing");
    assert_str_member(p, "transponder", "KDFRT42");
    assert_str_member(p, "time", "2025-06-01T10:15:30.123456789+02:00");
    assert_int_member(p, "time_ms", 1748765730123);
    assert_int_member(p, "loop", 2);
    assert_int_member(p, "channel", 5);
    assert_int_member(p, "hits", 14);
    assert_int_member(p, "rssi", -71);
    assert_num_text(p, "battery", "3.1");
    json_object_put(p);

    /* a passive passing: Go zero values are carried as sent */
    p = passing_of(&pg, 1);
    assert_str_member(p, "id", "D-5120/52/18");
    assert_str_member(p, "transponder", "000812");
    assert_int_member(p, "time_ms", 1748765731000);
    assert_int_member(p, "loop", 0);
    assert_int_member(p, "rssi", 0);
    assert_num_text(p, "battery", "0");
    json_object_put(p);

    /* a zero-start run-time passing in year 0000 UTC */
    assert_int_equal(pg.l.items[2].file, 3);
    assert_int_equal(pg.l.items[2].no, 1);
    p = passing_of(&pg, 2);
    assert_str_member(p, "id", "D-5120/3/1");
    assert_str_member(p, "time", "0001-01-01T00:04:12.61+02:00");
    assert_int_member(p, "time_ms", -62135603747390);
    json_object_put(p);
    page_cleanup(&pg);
    rr_passing_list_cleanup(&pg.l);
    rr_passing_list_cleanup(NULL);
}

static void test_ubidium_detections(void **state)
{
    (void)state;
    struct page pg;
    detections_file("detections_ubidium.json", "U-40123", &pg);
    assert_int_equal(pg.l.count, 2);
    assert_int_equal(pg.l.skipped, 0);
    assert_int_equal(pg.l.items[0].kind, RR_UBIDIUM_DETECTION);
    assert_int_equal(pg.l.items[0].file, 12);
    assert_int_equal(pg.l.items[0].no, 4406);

    struct json_object *p = passing_of(&pg, 0);
    assert_str_member(p, "id", "U-40123/12/4406");
    assert_str_member(p, "device", "U-40123");
    assert_int_member(p, "file", 12);
    assert_int_member(p, "no", 4406);
    assert_str_member(p, "kind", "detection");
    assert_str_member(p, "transponder", "NXT4410");
    assert_str_member(p, "time", "2025-06-01T10:15:30.12345678+02:00");
    assert_int_member(p, "time_ms", 1748765730123);
    assert_int_member(p, "loop", 2);
    assert_int_member(p, "channel", 5);
    assert_int_member(p, "hits", 11);
    assert_int_member(p, "rssi", -68);
    assert_num_text(p, "battery", "3.1"); /* bat 31 = 3.1 V */
    assert_true(json_object_get_double(test_member(p, "battery")) == 3.1);
    json_object_put(p);

    /* passive: no transp.active, so no battery */
    p = passing_of(&pg, 1);
    assert_str_member(p, "id", "U-40123/12/4407");
    assert_str_member(p, "transponder", "004711");
    assert_int_member(p, "time_ms", 1748765731500);
    assert_int_member(p, "loop", 0);
    assert_int_member(p, "hits", 2);
    assert_null_member(p, "battery");
    json_object_put(p);
    page_cleanup(&pg);
}

static void test_trackpings(void **state)
{
    (void)state;
    struct page pg;
    detections_file("detections_trackpings.json", "T-31007", &pg);
    assert_int_equal(pg.l.count, 1);
    assert_int_equal(pg.l.items[0].kind, RR_TRACKPING);
    assert_int_equal(pg.l.items[0].file, 7);
    assert_int_equal(pg.l.items[0].no, 311);
    struct json_object *p = passing_of(&pg, 0);
    assert_str_member(p, "id", "T-31007/7/311");
    assert_str_member(p, "device", "T-31007");
    assert_int_member(p, "file", 7);
    assert_int_member(p, "no", 311);
    assert_str_member(p, "kind", "trackping");
    assert_str_member(p, "transponder", "KDFRT42");
    assert_str_member(p, "time", "2025-06-01T08:15:31.25Z"); /* Time, not BoxTime/Received */
    assert_int_member(p, "time_ms", 1748765731250);
    assert_null_member(p, "loop");
    assert_null_member(p, "channel");
    assert_int_member(p, "hits", 6);
    assert_int_member(p, "rssi", -60);
    assert_null_member(p, "battery");
    json_object_put(p);
    page_cleanup(&pg);
}

static void test_mixed_page_order(void **state)
{
    (void)state;
    struct page pg;
    detections_file("detections_mixed.json", "X-1", &pg);
    static const struct {
        enum rr_record_kind kind;
        int64_t file, no;
        const char *transponder;
    } want[] = {
        {RR_PASSING, 9, 4, "A1"},  {RR_TRACKPING, 9, 2, "A2"}, {RR_UBIDIUM_DETECTION, 9, 5, "A3"},
        {RR_PASSING, 10, 1, "A4"}, {RR_PASSING, 10, 2, "A5"}, /* numbers as strings */
    };
    assert_int_equal(pg.l.count, 5);
    assert_int_equal(pg.l.skipped, 2);
    for (size_t i = 0; i < pg.l.count; i++) {
        assert_int_equal(pg.l.items[i].kind, want[i].kind);
        assert_int_equal(pg.l.items[i].file, want[i].file);
        assert_int_equal(pg.l.items[i].no, want[i].no);
        struct json_object *p = passing_of(&pg, i);
        assert_str_member(p, "transponder", want[i].transponder);
        assert_int_member(p, "file", want[i].file);
        assert_int_member(p, "no", want[i].no);
        json_object_put(p);
    }
    struct json_object *p = passing_of(&pg, 2);
    assert_int_member(p, "hits", 4);
    assert_int_member(p, "time_ms", 1748764802250);
    json_object_put(p);
    page_cleanup(&pg);
}

static void test_detections_hostile(void **state)
{
    (void)state;
    struct page pg;
    detections_file("detections_hostile.json", "D-1", &pg);
    assert_int_equal(pg.l.count, 5);
    assert_int_equal(pg.l.skipped, 17);

    /* every payload field of the wrong type: null, numbers still right */
    assert_int_equal(pg.l.items[0].kind, RR_PASSING);
    struct json_object *p = passing_of(&pg, 0);
    assert_str_member(p, "id", "D-1/5/6");
    for (size_t i = 5; i < sizeof passing_keys / sizeof passing_keys[0] - 1; i++)
        assert_null_member(p, passing_keys[i]);
    json_object_put(p);

    /* "no" that is not an object does not make an Ubidium detection */
    assert_int_equal(pg.l.items[1].kind, RR_PASSING);
    assert_int_equal(pg.l.items[1].file, 2);

    assert_int_equal(pg.l.items[2].kind, RR_UBIDIUM_DETECTION);
    assert_int_equal(pg.l.items[2].no, 7);
    p = passing_of(&pg, 2);
    assert_str_member(p, "time", "not a time");
    assert_null_member(p, "time_ms");
    assert_null_member(p, "transponder");
    assert_null_member(p, "battery");
    assert_null_member(p, "loop");
    assert_null_member(p, "channel");
    assert_null_member(p, "hits");
    assert_null_member(p, "rssi");
    json_object_put(p);

    p = passing_of(&pg, 3);
    assert_num_text(p, "battery", "-0.5");
    assert_str_member(p, "time", "2025-02-30T00:00:00Z");
    assert_null_member(p, "time_ms");
    json_object_put(p);

    /* a NUL inside the time: carried, but not a time */
    assert_int_equal(pg.l.items[4].kind, RR_TRACKPING);
    p = passing_of(&pg, 4);
    assert_int_equal(json_object_get_string_len(test_member(p, "time")), 22);
    assert_null_member(p, "time_ms");
    assert_str_member(p, "transponder", "a/b+c#");
    json_object_put(p);
    page_cleanup(&pg);
}

static void test_detections_shape(void **state)
{
    (void)state;
    static const char *bad[] = {"{}",    "{\"Detections\":[]}", "\"x\"", "1",
                                "false", " {\"a\":[1]} "};
    char detail[128];
    struct page pg;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&pg.l, 0x5a, sizeof pg.l);
        detail[0] = '\0';
        if (page_read(&pg, bad[i], strlen(bad[i]), "D-1", detail, sizeof detail) != RR_ERR_SHAPE)
            fail_msg("accepted: %s", bad[i]);
        assert_non_null(strstr(detail, "not an array"));
        page_cleanup(&pg);
    }
    assert_int_equal(detections_str("null", "D-1", &pg), RR_OK);
    assert_int_equal(pg.l.count, 0);
    page_cleanup(&pg);
    assert_int_equal(detections_str(" \n null\t", "D-1", &pg), RR_OK);
    assert_int_equal(pg.l.count, 0);
    page_cleanup(&pg);
    assert_int_equal(detections_str("[]", "D-1", &pg), RR_OK);
    assert_int_equal(pg.l.count, 0);
    assert_int_equal(pg.l.skipped, 0);
    assert_null(pg.l.items);
    page_cleanup(&pg);
}

static void test_numbers(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        bool ok;
        int64_t want;
    } cases[] = {
        {"1", true, 1},
        {"\"1\"", true, 1},
        {"\"0012\"", true, 12},
        {"9223372036854775807", true, INT64_MAX},
        {"\"9223372036854775807\"", true, INT64_MAX},
        {"9223372036854775808", false, 0},
        {"\"9223372036854775808\"", false, 0},
        {"\"00000000000000000001\"", false, 0}, /* 20 digits */
        {"0", false, 0},
        {"-1", false, 0},
        {"\"-1\"", false, 0},
        {"1.0", false, 0},
        {"1e2", false, 0},
        {"\"1.0\"", false, 0},
        {"\"\"", false, 0},
        {"\"1 \"", false, 0},
        {"\"0x1\"", false, 0},
        {"true", false, 0},
        {"null", false, 0},
        {"{}", false, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[128];
        snprintf(body, sizeof body, "[{\"FileNo\":%s,\"PassingNo\":3}]", cases[i].file);
        struct page pg;
        assert_int_equal(detections_str(body, "D-1", &pg), RR_OK);
        if (pg.l.count != (cases[i].ok ? 1u : 0u))
            fail_msg("FileNo %s: count %zu", cases[i].file, pg.l.count);
        if (cases[i].ok)
            assert_int_equal(pg.l.items[0].file, cases[i].want);
        page_cleanup(&pg);
    }
}

/* ---- ids ----------------------------------------------------------------- */

static void test_passing_id(void **state)
{
    (void)state;
    char out[RR_PASSING_ID_MAX + 1];
    rr_passing_id(out, sizeof out, "D-1", 2, 3);
    assert_string_equal(out, "D-1/2/3");
    rr_passing_id(out, sizeof out, NULL, 2, 3);
    assert_string_equal(out, "/2/3");
    rr_passing_id(out, sizeof out, "a/b", INT64_MAX, INT64_MIN);
    assert_string_equal(out, "a/b/9223372036854775807/-9223372036854775808");
    /* the longest device and numbers fit */
    char dev[RR_ID_MAX + 40];
    memset(dev, 'x', sizeof dev - 1);
    dev[sizeof dev - 1] = '\0';
    rr_passing_id(out, sizeof out, dev, INT64_MIN, INT64_MIN);
    assert_int_equal(strlen(out), RR_ID_MAX + 42);
    assert_string_equal(out + RR_ID_MAX, "/-9223372036854775808/-9223372036854775808");
    /* a cut never splits a UTF-8 character */
    memset(dev, 'x', RR_ID_MAX - 1);
    memcpy(dev + RR_ID_MAX - 1, "\xc3\xa9z", 4);
    rr_passing_id(out, sizeof out, dev, 1, 2);
    assert_int_equal(strlen(out), RR_ID_MAX - 1 + 4);
    assert_string_equal(out + RR_ID_MAX - 1, "/1/2");
    /* a small buffer is cut and terminated; cap 0 writes nothing */
    char small[6];
    rr_passing_id(small, sizeof small, "D-1", 22, 33);
    assert_string_equal(small, "D-1/2");
    small[0] = '!';
    rr_passing_id(small, 0, "D-1", 22, 33);
    assert_int_equal(small[0], '!');
}

static void test_device_ids(void **state)
{
    (void)state;
    struct rr_device_list l;
    assert_int_equal(devices_str("{\"Devices\":[{\"DeviceID\":\"+\"},{\"DeviceID\":\"#\"},"
                                 "{\"DeviceID\":\"a/b\"},{\"DeviceID\":\"\\u00e9t\\u00e9\"},"
                                 "{\"DeviceID\":-5},{\"DeviceID\":\" \"}]}",
                                 &l),
                     RR_OK);
    static const char *ids[] = {"+", "#", "a/b", "\xc3\xa9t\xc3\xa9", "-5", " "};
    static const char *levels[] = {"_", "_", "a_b", "__t__", "-5", "_"};
    assert_int_equal(l.count, 6);
    for (size_t i = 0; i < l.count; i++) {
        assert_string_equal(l.devices[i].id, ids[i]);
        assert_string_equal(l.devices[i].level, levels[i]);
        struct json_object *s = status_of(&l.devices[i]);
        assert_str_member(s, "device", ids[i]);
        json_object_put(s);
        struct page pg;
        assert_int_equal(detections_str("[{\"FileNo\":1,\"PassingNo\":2}]", l.devices[i].id, &pg),
                         RR_OK);
        struct json_object *p = passing_of(&pg, 0);
        char want[64];
        snprintf(want, sizeof want, "%s/1/2", ids[i]);
        assert_str_member(p, "id", want);
        assert_str_member(p, "device", ids[i]);
        json_object_put(p);
        page_cleanup(&pg);
    }
    rr_device_list_cleanup(&l);

    /* a device name the poller got from elsewhere that is not UTF-8 */
    struct page pg;
    assert_int_equal(detections_str("[{\"FileNo\":1,\"PassingNo\":2}]",
                                    "ab\xff"
                                    "cd",
                                    &pg),
                     RR_OK);
    struct json_object *p = passing_of(&pg, 0);
    assert_str_member(p, "device", "ab");
    assert_str_member(p, "id", "ab/1/2");
    json_object_put(p);
    page_cleanup(&pg);
    assert_int_equal(detections_str("[{\"FileNo\":1,\"PassingNo\":2}]", NULL, &pg), RR_OK);
    p = passing_of(&pg, 0);
    assert_str_member(p, "device", "");
    assert_str_member(p, "id", "/1/2");
    json_object_put(p);
    page_cleanup(&pg);
}

/* ---- hostile bodies -------------------------------------------------------- */

static void test_huge_strings(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *body = malloc(2 * n + 256);
    assert_non_null(body);

    /* a 1 MiB id is cut at RR_ID_MAX (here inside a 2-byte character) */
    int k = sprintf(body, "{\"Devices\":[{\"DeviceID\":\"");
    body[k] = 'x';
    for (size_t i = 1; i < n; i += 2)
        memcpy(body + k + i, "\xc3\xa9", 2);
    k += (int)n + 1;
    k += sprintf(body + k, "\",\"DeviceName\":\"");
    memset(body + k, 'N', n);
    strcpy(body + k + n, "\"}]}");
    struct rr_device_list l;
    char detail[256];
    assert_int_equal(rr_parse_devices(body, strlen(body), &l, detail, sizeof detail), RR_OK);
    assert_int_equal(l.count, 1);
    assert_int_equal(strlen(l.devices[0].id), RR_ID_MAX - 1);
    assert_int_equal(jsonutil_utf8_check((const unsigned char *)l.devices[0].id, RR_ID_MAX - 1),
                     RR_ID_MAX - 1);
    assert_int_equal(strlen(l.devices[0].level), TOPIC_LEVEL_MAX);
    struct json_object *s = status_of(&l.devices[0]);
    assert_int_equal(json_object_get_string_len(test_member(s, "name")), n);
    json_object_put(s);
    rr_device_list_cleanup(&l);

    /* a 1 MiB transponder code is carried */
    k = sprintf(body, "[{\"FileNo\":1,\"PassingNo\":1,\"Code\":\"");
    memset(body + k, 'C', n);
    strcpy(body + k + n, "\"}]");
    struct page pg;
    assert_int_equal(page_read(&pg, body, strlen(body), "D-1", detail, sizeof detail), RR_OK);
    struct json_object *p = passing_of(&pg, 0);
    assert_int_equal(json_object_get_string_len(test_member(p, "transponder")), n);
    json_object_put(p);
    page_cleanup(&pg);

    /* an error in a huge body does not echo it */
    body[k + n] = '\0';
    assert_int_equal(page_read(&pg, body, strlen(body), "D-1", detail, sizeof detail), RR_ERR_JSON);
    page_cleanup(&pg);
    assert_null(strstr(detail, "CCCC"));
    free(body);
}

static void test_invalid_json(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        " ",
        "[",
        "[{\"FileNo\":1,\"PassingNo\":2}",
        "[{\"FileNo\":1,\"PassingNo\":2}]x",
        "[] []",
        "[{\"FileNo\":1,}]",
        "[{'FileNo':1}]",
        "[{FileNo:1}]",
        "[{\"FileNo\":NaN,\"PassingNo\":1}]",
        "[{\"FileNo\":1,\"PassingNo\":1,\"RSSI\":Infinity}]",
        "[{\"FileNo\":1,\"PassingNo\":1,\"RSSI\":-Infinity}]",
        "[{\"FileNo\":1,\"PassingNo\":1,\"Battery\":1.}]",
        "[{\"FileNo\":1,\"PassingNo\":1,\"Battery\":-.5}]",
        "[{\"FileNo\":0x10,\"PassingNo\":1}]",
        "[{\"Code\":\"\xff\"}]",
        "[{\"Code\":\"\xc0\xaf\"}]",         /* overlong */
        "[{\"Code\":\"\xed\xa0\x80\"}]",     /* surrogate */
        "[{\"Code\":\"\xf4\x90\x80\x80\"}]", /* > U+10FFFF */
        "[{\"Code\":\"\xe2\x9c\"}]",         /* cut short */
        "\xef\xbb\xbf[]",                    /* BOM */
    };
    char detail[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct page pg;
        if (page_read(&pg, bad[i], strlen(bad[i]), "D-1", detail, sizeof detail) != RR_ERR_JSON)
            fail_msg("detections accepted: %s", bad[i]);
        assert_true(strlen(detail) > 0);
        page_cleanup(&pg);
        /* the same bytes as a device list member */
        char body[256];
        snprintf(body, sizeof body, "{\"Devices\":%s}", bad[i]);
        struct rr_device_list dl;
        if (strlen(bad[i]) > 0 && rr_parse_devices(body, strlen(body), &dl, NULL, 0) != RR_ERR_JSON)
            fail_msg("devices accepted: %s", body);
    }
    struct rr_device_list dl;
    const char *cut = "{\"Devices\":[{\"DeviceID\":\"D-1\"}";
    assert_int_equal(rr_parse_devices(cut, strlen(cut), &dl, detail, sizeof detail), RR_ERR_JSON);
    assert_non_null(strstr(detail, "truncated"));
    const char *overlong = "{\"Devices\":[{\"DeviceID\":\"D-\xc0\x80\"}]}";
    assert_int_equal(rr_parse_devices(overlong, strlen(overlong), &dl, detail, sizeof detail),
                     RR_ERR_JSON);
    assert_non_null(strstr(detail, "UTF-8"));
    assert_non_null(strstr(detail, "byte 27"));
    /* json-c's STRICT mode takes a single-quoted key; jsonutil does not */
    assert_int_equal(rr_parse_devices("{'Devices':[]}", 14, &dl, detail, sizeof detail),
                     RR_ERR_JSON);
    assert_non_null(strstr(detail, "single quote"));
    /* a single quote inside a string (escaped quotes around it) is text */
    const char *quoted = "{\"Devices\":[{\"DeviceID\":\"\\\"it's\\\\\"}]}";
    assert_int_equal(rr_parse_devices(quoted, strlen(quoted), &dl, detail, sizeof detail), RR_OK);
    assert_int_equal(dl.count, 1);
    assert_string_equal(dl.devices[0].id, "\"it's\\");
    rr_device_list_cleanup(&dl);
    assert_int_equal(rr_parse_devices(NULL, 0, &dl, detail, sizeof detail), RR_ERR_JSON);

    /* embedded NUL: refused even after a complete value */
    const char nul1[] = "{\"Devices\":[]}\0garbage";
    assert_int_equal(rr_parse_devices(nul1, sizeof nul1 - 1, &dl, detail, sizeof detail),
                     RR_ERR_JSON);
    assert_non_null(strstr(detail, "NUL"));
    const char nul2[] = "[{\"Code\":\"a\0b\"}]";
    struct page pg;
    assert_int_equal(page_read(&pg, nul2, sizeof nul2 - 1, "D-1", NULL, 0), RR_ERR_JSON);
    /* whitespace around the value is fine */
    assert_int_equal(detections_str("\r\n [] \t\n", "D-1", &pg), RR_OK);
    page_cleanup(&pg);
}

static char *nested(size_t depth, const char *prefix, const char *suffix)
{
    char *s = malloc(strlen(prefix) + 2 * depth + strlen(suffix) + 8);
    assert_non_null(s);
    char *p = s + sprintf(s, "%s", prefix);
    memset(p, '[', depth);
    p += depth;
    *p++ = '1';
    memset(p, ']', depth);
    p += depth;
    strcpy(p, suffix);
    return s;
}

static void test_depth(void **state)
{
    (void)state;
    char detail[128];
    struct page pg;
    /* the page array is level 1, the record level 2 */
    char *ok = nested(RR_MAX_DEPTH - 2, "[{\"FileNo\":1,\"PassingNo\":1,\"x\":", "}]");
    assert_int_equal(page_read(&pg, ok, strlen(ok), "D-1", detail, sizeof detail), RR_OK);
    assert_int_equal(pg.l.count, 1);
    struct json_object *p = passing_of(&pg, 0);
    json_object_put(p);
    page_cleanup(&pg);
    free(ok);
    char *deep = nested(RR_MAX_DEPTH - 1, "[{\"FileNo\":1,\"PassingNo\":1,\"x\":", "}]");
    assert_int_equal(page_read(&pg, deep, strlen(deep), "D-1", detail, sizeof detail), RR_ERR_JSON);
    assert_non_null(strstr(detail, "nested"));
    page_cleanup(&pg);
    free(deep);
    deep = nested(RR_MAX_DEPTH - 1, "{\"Devices\":[{\"DeviceID\":\"D-1\",\"x\":", "}]}");
    struct rr_device_list dl;
    assert_int_equal(rr_parse_devices(deep, strlen(deep), &dl, detail, sizeof detail), RR_ERR_JSON);
    free(deep);

    /* 100000 unclosed '[': refused at the limit, no recursion */
    size_t n = 100000;
    char *s = malloc(n);
    assert_non_null(s);
    memset(s, '[', n);
    assert_int_equal(page_read(&pg, s, n, "D-1", detail, sizeof detail), RR_ERR_JSON);
    assert_non_null(strstr(detail, "nested"));
    page_cleanup(&pg);
    free(s);
}

/* ---- the page scanner ------------------------------------------------------ */

/* The bytes that mean something to the scanner, and some that must not. */
static const char scanner_bytes[] = "\"\\[]{},: \t\n\r'x0\xff";

/* One record whose strings hold everything the scanner must not take for
 * structure, with nested arrays and objects and whitespace everywhere. */
static const char tricky_page[] =
    " \r\n[ \t{ \"FileNo\" : 1 ,\"PassingNo\":1,\"Code\":\"]}[{,\\\"\\\\\",\n"
    "  \"x\" : [ [ ] , { \"a\" : [ 1 , { \"b\" : \"}\\\\\" } ] } , \"\\\\\\\"\" ] }\n , "
    "\"] \\\" [\" , [ { \"FileNo\" : 1 , \"PassingNo\" : 2 } ] ,\t{\"FileNo\":\"1\","
    "\"PassingNo\":3,\"Code\":\"it's \\u005d\"} ,-0.5e+3, true ,null,{}] \n";

static void test_scanner_strings(void **state)
{
    (void)state;
    struct page pg;
    char detail[256];
    if (page_read(&pg, tricky_page, strlen(tricky_page), "D-1", detail, sizeof detail) != RR_OK)
        fail_msg("refused: %s", detail);
    assert_int_equal(pg.l.count, 2);
    assert_int_equal(pg.l.skipped, 6);
    assert_int_equal(pg.l.items[0].index, 0);
    assert_int_equal(pg.l.items[0].no, 1);
    assert_int_equal(pg.l.items[1].index, 3);
    assert_int_equal(pg.l.items[1].no, 3);
    struct json_object *p = passing_of(&pg, 0);
    assert_str_member(p, "transponder", "]}[{,\"\\");
    json_object_put(p);
    p = passing_of(&pg, 1);
    assert_str_member(p, "transponder", "it's ]");
    json_object_put(p);
    page_cleanup(&pg);

    /* strings and scalars alone as records */
    static const char *ok[] = {
        "[\"]\"]", "[\"\\\\\"]",        "[\"\\\"]\"]", "[\"[\",\"{\"]", "[1,2]",         "[-1]",
        "[1e5]",   "[true,false,null]", "[[]]",        "[{}]",          "[[[\"]]]\"]]]", "[ ]",
        "[\n]",    "\t[{} ]\r\n",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (detections_str(ok[i], "D-1", &pg) != RR_OK)
            fail_msg("refused: %s", ok[i]);
        page_cleanup(&pg);
    }
}

static void test_scanner_refuses(void **state)
{
    (void)state;
    static const char *bad[] = {
        "[{}",              /* truncated after a record */
        "[{},",             /* ... after a comma */
        "[{\"a\":\"]}",     /* ... inside a string that holds a bracket */
        "[\"\\\"]",         /* ... after an escaped quote */
        "[\"\\",            /* ... inside an escape */
        "[1",               /* ... after a scalar */
        "[{}]x",            /* trailing garbage */
        "[{}] ]",           /* a bracket too many */
        "[{} {}]",          /* missing comma */
        "[{}\n{}]",         /* missing comma, whitespace only */
        "[{},,{}]",         /* double comma */
        "[,{}]",            /* leading comma */
        "[{},]",            /* trailing comma */
        "[{}:{}]",          /* not a comma */
        "[{}\f,{}]",        /* not JSON whitespace */
        "[{}\v]",           /* not JSON whitespace */
        "[{}, \xc2\xa0{}]", /* a non-breaking space */
        "['x']",            /* a single-quoted record */
        "[{}]]",            /* closes more than it opened */
        "[{]}",             /* brackets that do not match */
        "[{\"a\":[}]]",     /* ... inside a record */
        "[{\"a\":1}}]",     /* ... after a record */
        "[1 2]",            /* two scalars */
        "[tru]",            /* not a literal */
        "[01]",             /* not an RFC 8259 number */
        "[\"a\"\"b\"]",     /* two strings */
        "[\"a\"x]",         /* a string and garbage */
    };
    struct page pg;
    char detail[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (page_read(&pg, bad[i], strlen(bad[i]), "D-1", detail, sizeof detail) != RR_ERR_JSON)
            fail_msg("accepted: %s", bad[i]);
        assert_true(strlen(detail) > 0);
        page_cleanup(&pg);
    }
    /* a NUL between records and after the page */
    static const char nul_between[] = "[{}\0,{}]";
    assert_int_equal(page_read(&pg, nul_between, sizeof nul_between - 1, "D-1", NULL, 0),
                     RR_ERR_JSON);
    static const char nul_after[] = "[{}]\0";
    assert_int_equal(page_read(&pg, nul_after, sizeof nul_after - 1, "D-1", NULL, 0), RR_ERR_JSON);

    /* every proper prefix of a page is refused */
    size_t n = strlen(tricky_page);
    while (n > 0 && strchr(" \t\r\n", tricky_page[n - 1]))
        n--;
    for (size_t k = 0; k < n; k++) {
        if (page_read(&pg, tricky_page, k, "D-1", detail, sizeof detail) != RR_ERR_JSON)
            fail_msg("accepted the first %zu bytes", k);
        page_cleanup(&pg);
    }
}

/* One bad record among good ones refuses the whole page, wherever it is. */
static void test_scanner_one_bad_record(void **state)
{
    (void)state;
#define BYTES(s)                                                                                   \
    {                                                                                              \
        s, sizeof s - 1                                                                            \
    }
    static const struct {
        const char *s;
        size_t len;
    } bad[] = {
        BYTES("{\"FileNo\":1,\"PassingNo\":9,\"Code\":\"\xff\"}"),         /* invalid UTF-8 */
        BYTES("{\"FileNo\":1,\"PassingNo\":9,\"Code\":\"\xed\xa0\x80\"}"), /* a surrogate */
        BYTES("{\"FileNo\":1,\"PassingNo\":9,'Code':\"x\"}"),              /* a single quote */
        BYTES("{\"FileNo\":1,\"PassingNo\":9,\"Code\":\"a\0b\"}"),         /* a NUL */
        BYTES("{\"FileNo\":1,\"PassingNo\":9,\"RSSI\":NaN}"),              /* not a number */
        BYTES("{\"FileNo\":1,\"PassingNo\":9,\"RSSI\":1.}"),               /* not RFC 8259 */
        BYTES("{\"FileNo\":1,\"PassingNo\":9,}"),                          /* not JSON */
    };
#undef BYTES
    char *body = malloc(64 * 1024);
    assert_non_null(body);
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        for (int at = 0; at < 5; at++) {
            size_t n = 0;
            body[n++] = '[';
            for (int i = 0; i < 5; i++) {
                if (i > 0)
                    body[n++] = ',';
                if (i == at) {
                    memcpy(body + n, bad[b].s, bad[b].len);
                    n += bad[b].len;
                } else {
                    n += (size_t)sprintf(body + n, "{\"FileNo\":1,\"PassingNo\":%d}", i + 1);
                }
            }
            body[n++] = ']';
            struct page pg;
            char detail[256];
            if (page_read(&pg, body, n, "D-1", detail, sizeof detail) != RR_ERR_JSON)
                fail_msg("bad record %zu at %d accepted", b, at);
            char want[32];
            snprintf(want, sizeof want, "record %d", at);
            if (!strstr(detail, want))
                fail_msg("detail does not name %s: %s", want, detail);
            page_cleanup(&pg);
        }
    }
    free(body);
}

/* Depth counts from the page: the array is level 1, a record level 2. */
static void test_scanner_depth(void **state)
{
    (void)state;
    struct page pg;
    char detail[128];
    const char *opens[] = {"[", "{\"a\":"};
    const char *closes[] = {"]", "}"};
    for (int kind = 0; kind < 2; kind++) {
        for (int depth = RR_MAX_DEPTH - 2; depth <= RR_MAX_DEPTH + 1; depth++) {
            /* [ good record , <depth - 1 levels> ]: the page itself is level 1 */
            char body[1024];
            size_t n = (size_t)sprintf(body, "[{\"FileNo\":1,\"PassingNo\":1},");
            for (int i = 0; i < depth - 1; i++)
                n += (size_t)sprintf(body + n, "%s", opens[kind]);
            n += (size_t)sprintf(body + n, "1");
            for (int i = 0; i < depth - 1; i++)
                n += (size_t)sprintf(body + n, "%s", closes[kind]);
            n += (size_t)sprintf(body + n, "]");
            enum rr_error rc = page_read(&pg, body, n, "D-1", detail, sizeof detail);
            assert_int_equal(rc, depth <= RR_MAX_DEPTH ? RR_OK : RR_ERR_JSON);
            if (rc != RR_OK)
                assert_non_null(strstr(detail, "nested"));
            page_cleanup(&pg);
        }
    }
}

/* Any one byte of a page changed: the scanner decides as the page parsed
 * whole does (page_read() compares every outcome and record). */
static void test_scanner_one_byte_changed(void **state)
{
    (void)state;
    size_t len;
    char *base = slurp(FIX "detections_mixed.json", &len);
    size_t n = strlen(tricky_page);
    char *pages[2] = {base, malloc(n)};
    size_t lens[2] = {len, n};
    assert_non_null(pages[1]);
    memcpy(pages[1], tricky_page, n);
    size_t accepted = 0, refused = 0;
    for (int b = 0; b < 2; b++) {
        for (size_t i = 0; i < lens[b]; i++) {
            char was = pages[b][i];
            for (size_t k = 0; k < sizeof scanner_bytes; k++) { /* with the NUL */
                pages[b][i] = scanner_bytes[k];
                struct page pg;
                if (page_read(&pg, pages[b], lens[b], "D-1", NULL, 0) == RR_OK)
                    accepted++;
                else
                    refused++;
                page_cleanup(&pg);
            }
            pages[b][i] = was;
        }
    }
    /* both outcomes were exercised */
    assert_true(accepted > 100);
    assert_true(refused > 100);
    free(pages[0]);
    free(pages[1]);
}

/* A page of 10,000 records, decoder passings, Ubidium detections and
 * trackpings mixed with records to skip, is read as it was read whole. */
static void test_scanner_big_page(void **state)
{
    (void)state;
    size_t cap = 10000 * 600, n = 0;
    char *body = malloc(cap);
    assert_non_null(body);
    n += (size_t)sprintf(body + n, "[\n");
    for (int i = 1; i <= 10000; i++) {
        const char *sep = i < 10000 ? ",\n" : "\n";
        if (i % 97 == 0)
            n += (size_t)sprintf(body + n, "{\"FileNo\":3,\"Code\":\"no number %d\"}%s", i, sep);
        else if (i % 3 == 0)
            n += (size_t)sprintf(
                body + n,
                "{\"act_data\":{\"channel\":%d,\"loop_id\":2},\"hits\":%d,\"no\":{\"file\":3,"
                "\"no\":%d},\"rssi\":-%d,\"time\":\"2025-06-01T10:15:%02d.%03d+02:00\","
                "\"transp\":{\"active\":{\"bat\":%d},\"id\":\"NX%04d\"}}%s",
                i % 8, i % 40, i, 40 + i % 50, i % 60, i % 1000, 25 + i % 12, i % 150, sep);
        else if (i % 3 == 1)
            n += (size_t)sprintf(body + n,
                                 "{\"Battery\":%d.%d,\"Channel\":%d,\"Code\":\"KD%04d\","
                                 "\"FileNo\":3,\"Hits\":%d,\"LoopID\":1,\"PassingNo\":%d,"
                                 "\"Position\":{\"Flag\":\"S\",\"Latitude\":0.0},\"RSSI\":-%d,"
                                 "\"RealTime\":\"2025-06-01T10:15:%02d.%09dZ\","
                                 "\"Note\":\"[{\\\"%d\\\"}]\"}%s",
                                 2 + i % 2, i % 10, i % 8, i % 150, i % 40, i, 40 + i % 50, i % 60,
                                 i, i, sep);
        else
            n += (size_t)sprintf(body + n,
                                 "{\"Code\":\"TB%d\",\"FileNo\":\"3\",\"Hits\":%d,\"RSSI\":-60,"
                                 "\"Time\":\"2025-06-01T08:15:31.25Z\",\"TrackpingNo\":\"%d\"}%s",
                                 i, i % 40, i, sep);
        assert_true(n < cap - 1000);
    }
    n += (size_t)sprintf(body + n, "]\n");
    struct page pg;
    char detail[256];
    if (page_read(&pg, body, n, "D-4013", detail, sizeof detail) != RR_OK)
        fail_msg("refused: %s", detail);
    assert_int_equal(pg.l.count + pg.l.skipped, 10000);
    assert_int_equal(pg.l.skipped, 10000 / 97);
    int64_t last = 0;
    for (size_t i = 0; i < pg.l.count; i++) {
        const struct rr_passing *p = &pg.l.items[i];
        assert_int_equal(p->no, (int64_t)p->index + 1);
        assert_true(p->no > last);
        last = p->no;
        assert_int_equal(p->kind, p->no % 3 == 0   ? RR_UBIDIUM_DETECTION
                                  : p->no % 3 == 1 ? RR_PASSING
                                                   : RR_TRACKPING);
    }
    struct json_object *p = passing_of(&pg, pg.l.count - 1);
    assert_str_member(p, "id", "D-4013/3/10000");
    assert_str_member(p, "transponder", "KD0100");
    json_object_put(p);
    page_cleanup(&pg);
    free(body);
}

/* ---- time ---------------------------------------------------------------- */

static void test_time_valid(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t ns;
    } cases[] = {
        {"2025-06-01T08:15:31Z", 1748765731000000000},
        {"2025-06-01T08:15:31.1Z", 1748765731100000000},
        {"2025-06-01T08:15:31.12Z", 1748765731120000000},
        {"2025-06-01T08:15:31.123Z", 1748765731123000000},
        {"2025-06-01T08:15:31.1234Z", 1748765731123400000},
        {"2025-06-01T08:15:31.12345Z", 1748765731123450000},
        {"2025-06-01T08:15:31.123456Z", 1748765731123456000},
        {"2025-06-01T08:15:31.1234567Z", 1748765731123456700},
        {"2025-06-01T08:15:31.12345678Z", 1748765731123456780},
        {"2025-06-01T08:15:31.123456789Z", 1748765731123456789},
        {"2025-06-01T08:15:31.000000001Z", 1748765731000000001},
        {"2025-06-01T08:15:31.999999999Z", 1748765731999999999},
        {"2025-06-01T10:15:31.123456789+02:00", 1748765731123456789},
        {"2025-06-01T04:15:31-04:00", 1748765731000000000},
        {"2025-06-01T13:45:31.5+05:30", 1748765731500000000},
        {"2025-06-01T08:15:31+00:00", 1748765731000000000},
        {"2025-06-01T08:15:31-00:00", 1748765731000000000},
        {"2025-06-02T07:15:31+23:00", 1748765731000000000},
        {"2025-05-31T08:16:31-23:59", 1748765731000000000},
        {"2024-02-29T23:59:59Z", 1709251199000000000},
        {"1970-01-01T00:00:00Z", 0},
        {"1969-12-31T23:59:59Z", -1000000000},
        {"1969-12-31T23:59:59.5Z", -500000000},
        {"2016-12-31T23:59:60Z", 1483228800000000000}, /* leap second */
        {"2262-04-11T23:47:16.854775807Z", INT64_MAX},
        {"1677-09-21T00:12:43.145224192Z", INT64_MIN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t ns = 42;
        if (rr_parse_time(cases[i].s, &ns) != 0)
            fail_msg("refused: %s", cases[i].s);
        if (ns != cases[i].ns)
            fail_msg("%s: %" PRId64 " != %" PRId64, cases[i].s, ns, cases[i].ns);
    }
}

static void test_time_ancient(void **state)
{
    (void)state;
    int64_t sec, ns = 42;
    int32_t nsec;
    /* zero-start devices: beyond int64 nanoseconds, fine in parts */
    assert_int_equal(rr_parse_time("0001-01-01T00:04:12.61+02:00", &ns), -1);
    assert_int_equal(ns, 42);
    assert_int_equal(rr_parse_time_parts("0001-01-01T00:04:12.61+02:00", &sec, &nsec), 0);
    assert_int_equal(sec, -62135603748);
    assert_int_equal(nsec, 610000000);
    assert_int_equal(rr_parse_time_parts("0000-12-31T22:03:40.007Z", &sec, &nsec), 0);
    assert_int_equal(sec, -62135603780);
    assert_int_equal(nsec, 7000000);
    assert_int_equal(rr_parse_time_parts("0000-02-29T00:00:00Z", &sec, &nsec), 0); /* leap */
    assert_int_equal(rr_parse_time_parts("0000-01-01T00:00:00Z", &sec, &nsec), 0);
    assert_int_equal(sec, -62167219200);
    assert_int_equal(rr_parse_time_parts("9999-12-31T23:59:59.999999999Z", &sec, &nsec), 0);
    assert_int_equal(sec, 253402300799);
    assert_int_equal(nsec, 999999999);
    /* one past the int64 nanosecond range */
    assert_int_equal(rr_parse_time("2262-04-11T23:47:16.854775808Z", &ns), -1);
    assert_int_equal(rr_parse_time("1677-09-21T00:12:43.145224191Z", &ns), -1);
    assert_int_equal(rr_parse_time_parts("2262-04-11T23:47:16.854775808Z", &sec, &nsec), 0);
}

static void test_time_invalid(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        "garbage",
        "2025-06-01",
        "2025-06-01T08:15:31",             /* missing zone */
        "2025-06-01T08:15:31.123",         /* missing zone */
        "2025-06-01T08:15:31.1234567890Z", /* 10 fractional digits */
        "2025-06-01T08:15:31.Z",
        "2025-06-01T08:15:31,5Z",
        "2025-13-01T08:15:31Z",
        "2025-00-01T08:15:31Z",
        "2025-06-00T08:15:31Z",
        "2025-06-31T08:15:31Z",
        "2025-02-29T08:15:31Z", /* not a leap year */
        "2025-02-30T08:15:31Z",
        "1900-02-29T00:00:00Z",
        "2025-06-01T24:00:00Z",
        "2025-06-01T08:60:31Z",
        "2025-06-01T08:15:61Z",
        "2025-06-01T08:15:31+24:00",
        "2025-06-01T08:15:31+02:60",
        "2025-06-01T08:15:31+0200",
        "2025-06-01T08:15:31+02",
        "2025-06-01T08:15:31+2:00",
        "2025-06-01T08:15:31 Z",
        "2025-06-01T08:15:31Zx",
        "2025-06-01T08:15:31z",
        "2025-06-01t08:15:31Z",
        "2025-06-01 08:15:31Z",
        " 2025-06-01T08:15:31Z",
        "2025-6-01T08:15:31Z",
        "2025-06-1T08:15:31Z",
        "2025-06-01T8:15:31Z",
        "+2025-06-01T08:15:31Z",
        "-001-06-01T08:15:31Z",
        "20250-06-01T08:15:31Z",
        "2025-06-01T08:15:31.-1Z",
        "2025-06-01T08:15:31.1e3Z",
        "2025-06-01T08:15:31\xc3\xa9",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ns = 42, sec = 43;
        int32_t nsec = 44;
        if (rr_parse_time(bad[i], &ns) != -1 || rr_parse_time_parts(bad[i], &sec, &nsec) != -1)
            fail_msg("accepted: %s", bad[i]);
        assert_int_equal(ns, 42);
        assert_int_equal(sec, 43);
        assert_int_equal(nsec, 44);
    }
    int64_t ns;
    assert_int_equal(rr_parse_time(NULL, &ns), -1);
}

static void test_strerror(void **state)
{
    (void)state;
    assert_string_equal(rr_strerror(RR_OK), "ok");
    assert_string_equal(rr_strerror(RR_ERR_JSON), "invalid JSON");
    assert_string_equal(rr_strerror(RR_ERR_SHAPE), "unexpected JSON shape");
    assert_string_equal(rr_strerror(RR_ERR_NOMEM), "out of memory");
    assert_non_null(rr_strerror((enum rr_error)99));
    assert_string_equal(rr_device_type_name(RR_DEVICE_DECODER), "Decoder");
    assert_string_equal(rr_device_type_name(RR_DEVICE_TRACKBOX), "TrackBox");
    assert_string_equal(rr_device_type_name(RR_DEVICE_UBIDIUM), "Ubidium");
    assert_string_equal(rr_device_type_name(RR_DEVICE_UNKNOWN), "unknown");
    assert_string_equal(rr_device_type_name((enum rr_device_type)99), "unknown");
}

static void test_detail_is_bounded(void **state)
{
    (void)state;
    char detail[8];
    memset(detail, 'x', sizeof detail);
    struct rr_passing_list l;
    assert_int_equal(rr_parse_detections("{}", 2, "D-1", &l, detail, sizeof detail), RR_ERR_SHAPE);
    assert_int_equal(strlen(detail), sizeof detail - 1);
    assert_int_equal(rr_parse_detections("{}", 2, "D-1", &l, detail, 0), RR_ERR_SHAPE);
    memset(detail, 'x', sizeof detail);
    assert_int_equal(rr_parse_detections("[1,,2]", 6, "D-1", &l, detail, sizeof detail),
                     RR_ERR_JSON);
    assert_int_equal(strlen(detail), sizeof detail - 1);
    /* a successful parse leaves an empty detail */
    char full[64] = "stale";
    assert_int_equal(rr_parse_detections("[]", 2, "D-1", &l, full, sizeof full), RR_OK);
    assert_string_equal(full, "");
    rr_passing_list_cleanup(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_devices_three_shapes),
        cmocka_unit_test(test_devices_variants),
        cmocka_unit_test(test_battery_charge),
        cmocka_unit_test(test_devices_hostile),
        cmocka_unit_test(test_devices_shape),
        cmocka_unit_test(test_shared_fixtures),
        cmocka_unit_test(test_decoder_passings),
        cmocka_unit_test(test_ubidium_detections),
        cmocka_unit_test(test_trackpings),
        cmocka_unit_test(test_mixed_page_order),
        cmocka_unit_test(test_detections_hostile),
        cmocka_unit_test(test_detections_shape),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_passing_id),
        cmocka_unit_test(test_device_ids),
        cmocka_unit_test(test_huge_strings),
        cmocka_unit_test(test_invalid_json),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_scanner_strings),
        cmocka_unit_test(test_scanner_refuses),
        cmocka_unit_test(test_scanner_one_bad_record),
        cmocka_unit_test(test_scanner_depth),
        cmocka_unit_test(test_scanner_one_byte_changed),
        cmocka_unit_test(test_scanner_big_page),
        cmocka_unit_test(test_time_valid),
        cmocka_unit_test(test_time_ancient),
        cmocka_unit_test(test_time_invalid),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_detail_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
