/*
 * test_discovery.c - Home Assistant device-based discovery (discovery.c):
 * - object ids: the four kinds, _xx escaping of every level character outside
 *   [A-Za-z0-9-], distinct levels give distinct ids, HA's topic alphabet,
 *   the discovery_parse_object() round trip and its refusal of foreign and
 *   non-canonical ids, the longest level, unusable levels and short buffers;
 * - config topics: discovery_topic() and which topics discovery_topic_object()
 *   takes for this node's;
 * - the config of each device, parsed back with json-c (strict, UTF-8
 *   checked) and held against what HA requires (reference/
 *   homeassistant-mqtt-discovery.md): top-level, dev and o members, every
 *   component's keys from an allow-list, platform, unique_id and entity-id
 *   shape, device classes and units, enum options, binary and event rules,
 *   availability lists; then the components and topics of each device, and
 *   JSON escaping of a decoder name.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testutil.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "race2mqtt/discovery.h"

#define NODE "club-1"
#define SW "1.2.3"
#define PAGE "http://10.0.0.5:8080/"
#define BRIDGE_STATE "race2mqtt/bridge/state"
#define GATEWAY_IDS "race2mqtt_" NODE

/* HA's MAX_LENGTH_STATE_ENTITY_ID. */
#define ENTITY_ID_MAX 255

static const struct discovery_names names_url = {
    .prefix = "homeassistant",
    .node_id = NODE,
    .bridge_base = "race2mqtt",
    .smartrace_base = "smartrace",
    .raceresult_base = "raceresult",
    .version = SW,
    .page_url = PAGE,
};

static const struct discovery_names names_plain = {
    .prefix = "homeassistant",
    .node_id = NODE,
    .bridge_base = "race2mqtt",
    .smartrace_base = "smartrace",
    .raceresult_base = "raceresult",
    .version = SW,
    .page_url = NULL,
};

static const struct discovery_device gateway = {.kind = DISCOVERY_GATEWAY};
static const struct discovery_device race = {.kind = DISCOVERY_RACE};
static const struct discovery_device controller = {.kind = DISCOVERY_CONTROLLER, .level = "7"};
static const struct discovery_device decoder = {
    .kind = DISCOVERY_DECODER, .level = "D-4013", .name = "Finish", .model = "Decoder"};

/* ---- small helpers ------------------------------------------------------- */

static bool in_list(const char *s, const char *const *list)
{
    for (size_t i = 0; list[i]; i++) {
        if (strcmp(s, list[i]) == 0)
            return true;
    }
    return false;
}

static size_t list_len(const char *const *list)
{
    size_t n = 0;
    while (list[n])
        n++;
    return n;
}

static bool has(struct json_object *o, const char *key)
{
    return json_object_object_get_ex(o, key, NULL);
}

/* o's string member key; missing or not a string fails the test. */
static const char *str_member(struct json_object *o, const char *key)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_string))
        fail_msg("member %s is not a string in %s", key, json_object_to_json_string(o));
    return json_object_get_string(v);
}

static void assert_member_str(struct json_object *o, const char *key, const char *expected)
{
    const char *v = str_member(o, key);
    if (strcmp(v, expected) != 0)
        fail_msg("%s is \"%s\", expected \"%s\" in %s", key, v, expected,
                 json_object_to_json_string(o));
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* o is an object with exactly the members keys. */
static void assert_keys_exactly(struct json_object *o, const char *const *keys)
{
    assert_true(json_object_is_type(o, json_type_object));
    for (size_t i = 0; keys[i]; i++) {
        if (!has(o, keys[i]))
            fail_msg("member %s missing in %s", keys[i], json_object_to_json_string(o));
    }
    {
        json_object_object_foreach(o, key, val)
        {
            (void)val;
            if (!in_list(key, keys))
                fail_msg("unexpected member %s in %s", key, json_object_to_json_string(o));
        }
    }
}

/* Every member of the object o is one of allowed (what: for the message). */
static void assert_keys_within(struct json_object *o, const char *const *allowed, const char *what)
{
    assert_true(json_object_is_type(o, json_type_object));
    json_object_object_foreach(o, key, val)
    {
        (void)val;
        if (!in_list(key, allowed))
            fail_msg("%s: key \"%s\" is not one Home Assistant knows", what, key);
    }
}

/* a is an array of exactly the strings expected, in order. */
static void assert_strings(struct json_object *a, const char *const *expected)
{
    assert_true(json_object_is_type(a, json_type_array));
    assert_int_equal(json_object_array_length(a), list_len(expected));
    for (size_t i = 0; expected[i]; i++) {
        struct json_object *s = json_object_array_get_idx(a, i);
        assert_true(json_object_is_type(s, json_type_string));
        assert_string_equal(json_object_get_string(s), expected[i]);
    }
}

/* a is an availability list: exactly topics, in order, online/offline. */
static void assert_availability(struct json_object *a, const char *const *topics)
{
    static const char *const entry_keys[] = {"topic",
                                             "t",
                                             "payload_available",
                                             "pl_avail",
                                             "payload_not_available",
                                             "pl_not_avail",
                                             "value_template",
                                             "val_tpl",
                                             NULL};
    if (!json_object_is_type(a, json_type_array))
        fail_msg("availability is not a list: %s", json_object_to_json_string(a));
    assert_int_equal(json_object_array_length(a), list_len(topics));
    for (size_t i = 0; topics[i]; i++) {
        struct json_object *e = json_object_array_get_idx(a, i);
        assert_keys_within(e, entry_keys, "availability entry");
        assert_member_str(e, "topic", topics[i]);
        /* What the gateway and the decoder poller publish (HA's defaults). */
        if (has(e, "payload_available"))
            assert_member_str(e, "payload_available", "online");
        if (has(e, "payload_not_available"))
            assert_member_str(e, "payload_not_available", "offline");
    }
}

/* One side of an entity id: [0-9a-z_]+, no leading, trailing or double '_'. */
static bool slug_ok(const char *s, size_t len)
{
    if (len == 0 || s[0] == '_' || s[len - 1] == '_')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
        if (c == '_' && s[i + 1] == '_')
            return false;
    }
    return true;
}

/* HA's valid_entity_id: ^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$ */
static bool valid_entity_id(const char *id)
{
    const char *dot = strchr(id, '.');
    return dot && slug_ok(id, (size_t)(dot - id)) && slug_ok(dot + 1, strlen(dot + 1));
}

/* The entity-id slug of s: ASCII letters lower-cased, digits kept, every run
 * of anything else one '_' (none at either end). */
static void slug_of(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    bool gap = false;
    for (; *s && n + 2 < cap; s++) {
        char c = *s;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (alpha || (c >= '0' && c <= '9')) {
            if (gap && n > 0)
                out[n++] = '_';
            out[n++] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
            gap = false;
        } else {
            gap = true;
        }
    }
    out[n] = '\0';
}

/* HA's TOPIC_MATCHER alphabet for node and object ids. */
static bool topic_id_ok(const char *s)
{
    if (!s[0])
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void object_id_of(const struct discovery_device *d, char out[DISCOVERY_OBJECT_MAX])
{
    if (!discovery_object_id(d, out, DISCOVERY_OBJECT_MAX))
        fail_msg("no object id for level %s", d->level ? d->level : "(null)");
}

/* text[0..len) as one strict JSON object with valid UTF-8 and nothing after it. */
static struct json_object *parse_strict(const char *text, size_t len)
{
    struct json_tokener *tok = json_tokener_new();
    assert_non_null(tok);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    struct json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error err = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!o || err != json_tokener_success)
        fail_msg("not strict JSON (%s): %s", json_tokener_error_desc(err), text);
    assert_int_equal(end, len);
    assert_true(json_object_is_type(o, json_type_object));
    return o;
}

static struct json_object *cmps_of(struct json_object *root)
{
    struct json_object *cmps = test_member(root, "cmps");
    assert_true(json_object_is_type(cmps, json_type_object));
    return cmps;
}

static struct json_object *cmp(struct json_object *root, const char *key)
{
    return test_member(cmps_of(root), key);
}

/* ---- what every config must satisfy -------------------------------------- */

static const char *const component_keys[] = {"p",
                                             "unique_id",
                                             "object_id",
                                             "default_entity_id",
                                             "name",
                                             "state_topic",
                                             "value_template",
                                             "device_class",
                                             "unit_of_measurement",
                                             "state_class",
                                             "options",
                                             "icon",
                                             "entity_category",
                                             "payload_on",
                                             "payload_off",
                                             "availability",
                                             "event_types",
                                             NULL};

/* A subset of HA's SensorDeviceClass / BinarySensorDeviceClass /
 * EventDeviceClass: extend when the gateway needs another. */
static const char *const sensor_classes[] = {"apparent_power",
                                             "aqi",
                                             "atmospheric_pressure",
                                             "battery",
                                             "current",
                                             "data_rate",
                                             "data_size",
                                             "date",
                                             "distance",
                                             "duration",
                                             "energy",
                                             "enum",
                                             "frequency",
                                             "humidity",
                                             "power",
                                             "pressure",
                                             "signal_strength",
                                             "speed",
                                             "temperature",
                                             "timestamp",
                                             "voltage",
                                             "volume",
                                             NULL};
static const char *const binary_classes[] = {"battery", "connectivity", "moving",   "occupancy",
                                             "plug",    "power",        "presence", "problem",
                                             "running", "safety",       "update",   NULL};
static const char *const event_classes[] = {"button", "doorbell", "motion", NULL};
static const char *const state_classes[] = {"measurement", "measurement_angle", "total",
                                            "total_increasing", NULL};

struct expect {
    const struct discovery_names *n;
    const char *object_id;
    const char *base; /* every state_topic starts with it */
};

static void check_sensor(const char *what, struct json_object *c)
{
    bool has_unit = has(c, "unit_of_measurement");
    const char *unit = has_unit ? str_member(c, "unit_of_measurement") : NULL;
    if (has(c, "state_class") && !in_list(str_member(c, "state_class"), state_classes))
        fail_msg("%s: state_class %s", what, str_member(c, "state_class"));
    if (!has(c, "device_class")) {
        if (has(c, "options"))
            fail_msg("%s: options without device_class enum", what);
        return;
    }
    const char *dc = str_member(c, "device_class");
    if (!in_list(dc, sensor_classes))
        fail_msg("%s: sensor device_class %s", what, dc);
    if (strcmp(dc, "enum") == 0) {
        if (has_unit || has(c, "state_class"))
            fail_msg("%s: enum sensor with a unit or state_class", what);
        struct json_object *opts = test_member(c, "options");
        assert_true(json_object_is_type(opts, json_type_array));
        assert_true(json_object_array_length(opts) > 0);
        /* The template maps every option through (anything else to None). */
        const char *tpl = has(c, "value_template") ? str_member(c, "value_template") : NULL;
        for (size_t i = 0; i < json_object_array_length(opts); i++) {
            struct json_object *o = json_object_array_get_idx(opts, i);
            assert_true(json_object_is_type(o, json_type_string));
            char quoted[128];
            snprintf(quoted, sizeof quoted, "'%s'", json_object_get_string(o));
            if (tpl && !strstr(tpl, quoted))
                fail_msg("%s: option %s not in the template %s", what, quoted, tpl);
        }
        return;
    }
    if (has(c, "options"))
        fail_msg("%s: options with device_class %s", what, dc);
    if (strcmp(dc, "duration") == 0 && !(unit && (!strcmp(unit, "ms") || !strcmp(unit, "s"))))
        fail_msg("%s: duration in %s", what, unit ? unit : "(no unit)");
    if (strcmp(dc, "battery") == 0 && !(unit && !strcmp(unit, "%")))
        fail_msg("%s: battery in %s", what, unit ? unit : "(no unit)");
    if (strcmp(dc, "temperature") == 0 && !(unit && !strcmp(unit, "°C")))
        fail_msg("%s: temperature in %s", what, unit ? unit : "(no unit)");
    if (strcmp(dc, "data_size") == 0 &&
        !(unit && in_list(unit, (const char *const[]){"B", "kB", "MB", "GB", "KiB", "MiB", NULL})))
        fail_msg("%s: data_size in %s", what, unit ? unit : "(no unit)");
    if (strcmp(dc, "timestamp") == 0 && has_unit)
        fail_msg("%s: timestamp with a unit", what);
}

static void check_not_numeric(const char *what, struct json_object *c)
{
    if (has(c, "unit_of_measurement") || has(c, "state_class") || has(c, "options"))
        fail_msg("%s: sensor-only keys on a %s", what, str_member(c, "p"));
}

static void check_binary_sensor(const char *what, struct json_object *c)
{
    check_not_numeric(what, c);
    if (has(c, "device_class") && !in_list(str_member(c, "device_class"), binary_classes))
        fail_msg("%s: binary_sensor device_class %s", what, str_member(c, "device_class"));
    bool on = has(c, "payload_on"), off = has(c, "payload_off");
    if (on != off)
        fail_msg("%s: only one of payload_on/payload_off", what);
    if (on) {
        assert_true(str_member(c, "payload_on")[0] != '\0');
        assert_true(str_member(c, "payload_off")[0] != '\0');
        assert_true(strcmp(str_member(c, "payload_on"), str_member(c, "payload_off")) != 0);
    } else if (!has(c, "value_template")) {
        fail_msg("%s: binary_sensor without payloads or value_template", what);
    }
}

static void check_event(const char *what, struct json_object *c)
{
    check_not_numeric(what, c);
    if (has(c, "device_class") && !in_list(str_member(c, "device_class"), event_classes))
        fail_msg("%s: event device_class %s", what, str_member(c, "device_class"));
    struct json_object *types = test_member(c, "event_types");
    assert_true(json_object_is_type(types, json_type_array));
    assert_true(json_object_array_length(types) > 0);
    for (size_t i = 0; i < json_object_array_length(types); i++) {
        struct json_object *t = json_object_array_get_idx(types, i);
        assert_true(json_object_is_type(t, json_type_string));
        assert_true(json_object_get_string_len(t) > 0);
    }
    if (!has(c, "value_template"))
        fail_msg("%s: event without value_template", what);
}

static void check_component(const struct expect *e, const char *key, struct json_object *c)
{
    char what[DISCOVERY_OBJECT_MAX + 64];
    snprintf(what, sizeof what, "%s/%s", e->object_id, key);
    if (!json_object_is_type(c, json_type_object))
        fail_msg("%s: not an object", what);
    assert_keys_within(c, component_keys, what);

    const char *p = str_member(c, "p");
    if (!in_list(p, (const char *const[]){"sensor", "binary_sensor", "event", NULL}))
        fail_msg("%s: platform %s", what, p);

    char uid[512], slug[512], entity[600];
    snprintf(uid, sizeof uid, "%s_%s_%s", e->n->node_id, e->object_id, key);
    assert_member_str(c, "unique_id", uid);
    slug_of(uid, slug, sizeof slug);
    snprintf(entity, sizeof entity, "%s.%s", p, slug);
    assert_member_str(c, "default_entity_id", entity);
    if (!valid_entity_id(entity) || strlen(entity) > ENTITY_ID_MAX)
        fail_msg("%s: %s is not a valid entity id", what, entity);
    if (has(c, "object_id"))
        assert_member_str(c, "object_id", slug);

    /* null: the device's main feature; otherwise a real name. */
    struct json_object *name = test_member(c, "name");
    if (name &&
        (!json_object_is_type(name, json_type_string) || json_object_get_string_len(name) == 0))
        fail_msg("%s: name %s", what, json_object_to_json_string(name));

    const char *st = str_member(c, "state_topic");
    if (!starts_with(st, e->base) || strlen(st) == strlen(e->base))
        fail_msg("%s: state_topic %s outside %s", what, st, e->base);

    if (has(c, "value_template"))
        assert_true(str_member(c, "value_template")[0] != '\0');
    if (has(c, "icon") && !starts_with(str_member(c, "icon"), "mdi:"))
        fail_msg("%s: icon %s", what, str_member(c, "icon"));
    /* HA refuses entity_category config for sensors and binary sensors. */
    if (has(c, "entity_category"))
        assert_member_str(c, "entity_category", "diagnostic");
    if (has(c, "availability")) {
        struct json_object *a = test_member(c, "availability");
        if (!json_object_is_type(a, json_type_array) || json_object_array_length(a) == 0)
            fail_msg("%s: availability %s", what, json_object_to_json_string(a));
    }
    if (has(c, "availability_topic"))
        fail_msg("%s: availability_topic", what);

    if (strcmp(p, "sensor") == 0)
        check_sensor(what, c);
    else if (strcmp(p, "binary_sensor") == 0)
        check_binary_sensor(what, c);
    else
        check_event(what, c);
}

/* Everything HA requires of d's config root (and what the gateway promises). */
static void check_config(struct json_object *root, const struct discovery_names *n,
                         const struct discovery_device *d)
{
    static const char *const dev_keys[] = {"ids",
                                           "identifiers",
                                           "cns",
                                           "connections",
                                           "name",
                                           "mf",
                                           "manufacturer",
                                           "mdl",
                                           "model",
                                           "mdl_id",
                                           "model_id",
                                           "sn",
                                           "serial_number",
                                           "hw",
                                           "hw_version",
                                           "sw",
                                           "sw_version",
                                           "via_device",
                                           "sa",
                                           "suggested_area",
                                           "cu",
                                           "configuration_url",
                                           NULL};
    static const char *const o_keys[] = {"name", "sw", "sw_version", "url", "support_url", NULL};
    char object_id[DISCOVERY_OBJECT_MAX], ids[512], base[512];
    object_id_of(d, object_id);

    switch (d->kind) {
    case DISCOVERY_GATEWAY:
        assert_keys_exactly(root, (const char *const[]){"dev", "o", "cmps", NULL});
        snprintf(ids, sizeof ids, "race2mqtt_%s", n->node_id);
        snprintf(base, sizeof base, "%s/bridge/", n->bridge_base);
        break;
    case DISCOVERY_RACE:
    case DISCOVERY_CONTROLLER:
        assert_keys_exactly(root, (const char *const[]){"dev", "o", "cmps", "availability", NULL});
        snprintf(ids, sizeof ids, "race2mqtt_%s_%s", n->node_id, object_id);
        snprintf(base, sizeof base, "%s/", n->smartrace_base);
        break;
    case DISCOVERY_DECODER:
        assert_keys_exactly(root, (const char *const[]){"dev", "o", "cmps", "availability",
                                                        "availability_mode", NULL});
        assert_member_str(root, "availability_mode", "all");
        snprintf(ids, sizeof ids, "race2mqtt_%s_%s", n->node_id, object_id);
        snprintf(base, sizeof base, "%s/%s/", n->raceresult_base, d->level);
        break;
    }

    /* Shared availability: the bridge, and a decoder's own topic. */
    char bridge_state[512], dec_av[512];
    snprintf(bridge_state, sizeof bridge_state, "%s/bridge/state", n->bridge_base);
    if (d->kind == DISCOVERY_RACE || d->kind == DISCOVERY_CONTROLLER) {
        assert_availability(test_member(root, "availability"),
                            (const char *const[]){bridge_state, NULL});
    } else if (d->kind == DISCOVERY_DECODER) {
        snprintf(dec_av, sizeof dec_av, "%s/%s/availability", n->raceresult_base, d->level);
        assert_availability(test_member(root, "availability"),
                            (const char *const[]){bridge_state, dec_av, NULL});
    }

    struct json_object *dev = test_member(root, "dev");
    assert_keys_within(dev, dev_keys, "dev");
    struct json_object *idl = test_member(dev, "ids");
    assert_true(json_object_is_type(idl, json_type_array));
    assert_true(json_object_array_length(idl) > 0);
    bool found = false;
    for (size_t i = 0; i < json_object_array_length(idl); i++) {
        struct json_object *s = json_object_array_get_idx(idl, i);
        assert_true(json_object_is_type(s, json_type_string));
        found = found || strcmp(json_object_get_string(s), ids) == 0;
    }
    if (!found)
        fail_msg("dev.ids lacks %s: %s", ids, json_object_to_json_string(idl));
    assert_true(str_member(dev, "name")[0] != '\0');
    if (d->kind == DISCOVERY_GATEWAY) {
        assert_false(has(dev, "via_device"));
        if (n->page_url)
            assert_member_str(dev, "cu", n->page_url);
        else
            assert_false(has(dev, "cu") || has(dev, "configuration_url"));
    } else {
        char gw[512];
        snprintf(gw, sizeof gw, "race2mqtt_%s", n->node_id);
        assert_member_str(dev, "via_device", gw);
        assert_false(has(dev, "cu") || has(dev, "configuration_url"));
    }

    struct json_object *o = test_member(root, "o");
    assert_keys_within(o, o_keys, "o");
    assert_member_str(o, "name", "race2mqtt");
    assert_member_str(o, "sw", n->version);

    struct json_object *cmps = cmps_of(root);
    assert_true(json_object_object_length(cmps) > 0);
    const struct expect e = {.n = n, .object_id = object_id, .base = base};
    json_object_object_foreach(cmps, key, c)
    {
        check_component(&e, key, c);
    }
}

/* d's config, parsed and checked; caller puts it. */
static struct json_object *config(const struct discovery_names *n, const struct discovery_device *d)
{
    size_t len = 0;
    char *text = discovery_config(n, d, &len);
    if (!text)
        fail_msg("no config for kind %d level %s", (int)d->kind, d->level ? d->level : "(null)");
    assert_int_equal(len, strlen(text));
    struct json_object *root = parse_strict(text, len);
    free(text);
    check_config(root, n, d);
    return root;
}

/* Every (key) of every component across configs: all distinct. */
struct idset {
    size_t n;
    char *v[512];
};

static void collect(struct idset *s, struct json_object *root, const char *key)
{
    json_object_object_foreach(cmps_of(root), ckey, c)
    {
        (void)ckey;
        const char *id = str_member(c, key);
        for (size_t i = 0; i < s->n; i++) {
            if (strcmp(s->v[i], id) == 0)
                fail_msg("%s %s twice", key, id);
        }
        assert_true(s->n < sizeof s->v / sizeof s->v[0]);
        s->v[s->n++] = strdup(id);
    }
}

static void idset_free(struct idset *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    s->n = 0;
}

/* ---- object ids ---------------------------------------------------------- */

static void assert_object_id(enum discovery_kind kind, const char *level, const char *expected)
{
    char out[DISCOVERY_OBJECT_MAX];
    const struct discovery_device d = {.kind = kind, .level = level};
    object_id_of(&d, out);
    assert_string_equal(out, expected);
}

static void test_object_id_kinds(void **state)
{
    (void)state;
    assert_object_id(DISCOVERY_GATEWAY, NULL, "gateway");
    assert_object_id(DISCOVERY_RACE, NULL, "race");
    assert_object_id(DISCOVERY_CONTROLLER, "7", "controller_7");
    assert_object_id(DISCOVERY_DECODER, "D-4013", "decoder_D-4013");
    assert_object_id(DISCOVERY_CONTROLLER, "AbC-9z", "controller_AbC-9z");
}

static void test_object_id_escaping(void **state)
{
    (void)state;
    assert_object_id(DISCOVERY_CONTROLLER, "1.5", "controller_1_2e5");
    assert_object_id(DISCOVERY_CONTROLLER, "1_5", "controller_1_5f5");
    assert_object_id(DISCOVERY_CONTROLLER, "1_2e5", "controller_1_5f2e5");
    assert_object_id(DISCOVERY_DECODER, "_", "decoder__5f");
    assert_object_id(DISCOVERY_DECODER, "a.b_c-d", "decoder_a_2eb_5fc-d");
}

/* Every level of length 1..3 over a tricky alphabet ('_' and hex digits
 * next to escapes): distinct levels, distinct object ids, all in HA's
 * alphabet, all parsed back to the same kind and level, and their config
 * topic recognised. */
static void test_object_id_distinct_and_round_trip(void **state)
{
    (void)state;
    static const char alphabet[] = "a5E._-";
    enum { K = sizeof alphabet - 1, N = K + K * K + K * K * K };
    static char levels[N][4];
    static char ids[2 * N][DISCOVERY_OBJECT_MAX];
    size_t n = 0;
    for (size_t len = 1; len <= 3; len++) {
        size_t count = len == 1 ? K : len == 2 ? K * K : K * K * K;
        for (size_t i = 0; i < count; i++) {
            size_t x = i;
            for (size_t j = 0; j < len; j++, x /= K)
                levels[n][j] = alphabet[x % K];
            levels[n][len] = '\0';
            n++;
        }
    }
    assert_int_equal(n, N);

    size_t m = 0;
    for (size_t i = 0; i < N; i++) {
        for (int k = 0; k < 2; k++) {
            const struct discovery_device d = {.kind = k ? DISCOVERY_DECODER : DISCOVERY_CONTROLLER,
                                               .level = levels[i]};
            object_id_of(&d, ids[m]);
            if (!topic_id_ok(ids[m]))
                fail_msg("object id %s outside [a-zA-Z0-9_-]", ids[m]);

            enum discovery_kind kind = DISCOVERY_GATEWAY;
            char level[TOPIC_LEVEL_MAX + 1];
            if (!discovery_parse_object(ids[m], &kind, level))
                fail_msg("%s (level %s) not parsed back", ids[m], levels[i]);
            assert_int_equal(kind, d.kind);
            assert_string_equal(level, levels[i]);

            char topic[512], back[DISCOVERY_OBJECT_MAX];
            assert_true(discovery_topic(&names_url, ids[m], topic, sizeof topic));
            assert_true(discovery_topic_object(&names_url, topic, back, sizeof back));
            assert_string_equal(back, ids[m]);
            m++;
        }
    }
    for (size_t i = 0; i < m; i++) {
        for (size_t j = i + 1; j < m; j++) {
            if (strcmp(ids[i], ids[j]) == 0)
                fail_msg("two levels share object id %s", ids[i]);
        }
    }
}

static void test_parse_object_gateway_race(void **state)
{
    (void)state;
    enum discovery_kind kind = DISCOVERY_DECODER;
    char level[TOPIC_LEVEL_MAX + 1] = "junk";
    assert_true(discovery_parse_object("gateway", &kind, level));
    assert_int_equal(kind, DISCOVERY_GATEWAY);
    assert_string_equal(level, "");
    strcpy(level, "junk");
    assert_true(discovery_parse_object("race", &kind, level));
    assert_int_equal(kind, DISCOVERY_RACE);
    assert_string_equal(level, "");
}

/* Only what discovery_object_id() writes is ours. */
static void test_parse_object_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {"",
                                      "foo",
                                      "Gateway",
                                      "gateway_",
                                      "gateway_1",
                                      "racex",
                                      "race_1",
                                      "controller",
                                      "decoder",
                                      "controller_",
                                      "decoder_",
                                      "Controller_1",
                                      "controller-1",
                                      "sensor_1",
                                      "controller_1_zz",
                                      "controller_1_z0",
                                      "decoder_a/b",
                                      "decoder_a b",
                                      "controller_1+",
                                      "controller_#",
                                      "controller_1_2", /* half an escape */
                                      "controller_1_",  /* an escape cut short */
                                      "controller_1_2e_",
                                      "controller_1_2E", /* upper-case hex is not what we write */
                                      "controller_1_41", /* 'A', which is written plain */
                                      "controller_1_2d", /* '-', which is written plain */
                                      "controller_1_30", /* '0', which is written plain */
                                      "controller_1_2f", /* '/', not a sanitised level */
                                      "controller_1_20", /* ' ' */
                                      "controller_1_2b", /* '+' */
                                      "controller_1_23", /* '#' */
                                      "controller_1_00", /* NUL */
                                      "decoder_S_c3_bc", /* UTF-8, not a sanitised level */
                                      NULL};
    for (size_t i = 0; bad[i]; i++) {
        enum discovery_kind kind;
        char level[TOPIC_LEVEL_MAX + 1];
        if (discovery_parse_object(bad[i], &kind, level))
            fail_msg("\"%s\" taken for kind %d level \"%s\"", bad[i], (int)kind, level);
    }
}

static void test_object_id_longest_level(void **state)
{
    (void)state;
    char dots[TOPIC_LEVEL_MAX + 2];
    memset(dots, '.', sizeof dots - 1);
    dots[TOPIC_LEVEL_MAX] = '\0';
    const struct discovery_device d = {.kind = DISCOVERY_CONTROLLER, .level = dots};

    char out[DISCOVERY_OBJECT_MAX];
    assert_true(discovery_object_id(&d, out, sizeof out));
    assert_int_equal(strlen(out), strlen("controller_") + 3 * TOPIC_LEVEL_MAX);
    assert_true(topic_id_ok(out));
    assert_false(discovery_object_id(&d, out, sizeof out - 1));

    enum discovery_kind kind;
    char level[TOPIC_LEVEL_MAX + 1];
    assert_true(discovery_parse_object(out, &kind, level));
    assert_int_equal(kind, DISCOVERY_CONTROLLER);
    assert_string_equal(level, dots);

    /* Its whole config, entity ids included, is still acceptable. */
    json_object_put(config(&names_url, &d));

    const struct discovery_device dd = {.kind = DISCOVERY_DECODER, .level = dots};
    assert_true(discovery_object_id(&dd, out, sizeof out));
    json_object_put(config(&names_url, &dd));

    /* One byte more is not a topic level. */
    dots[TOPIC_LEVEL_MAX] = '.';
    dots[TOPIC_LEVEL_MAX + 1] = '\0';
    assert_false(discovery_object_id(&d, out, sizeof out));
    assert_null(discovery_config(&names_url, &d, NULL));

    /* And "controller_" + 65 escaped bytes is none of ours. */
    char longid[sizeof "controller_" + 3 * (TOPIC_LEVEL_MAX + 1)];
    strcpy(longid, "controller_");
    for (size_t i = 0; i <= TOPIC_LEVEL_MAX; i++)
        strcat(longid, "_2e");
    assert_false(discovery_parse_object(longid, &kind, level));
    strcpy(longid, "decoder_");
    memset(longid + 8, 'a', TOPIC_LEVEL_MAX + 1);
    longid[8 + TOPIC_LEVEL_MAX + 1] = '\0';
    assert_false(discovery_parse_object(longid, &kind, level));
}

static void test_object_id_refuses_unusable(void **state)
{
    (void)state;
    char out[DISCOVERY_OBJECT_MAX];
    const struct discovery_device none[] = {
        {.kind = DISCOVERY_CONTROLLER, .level = NULL},
        {.kind = DISCOVERY_CONTROLLER, .level = ""},
        {.kind = DISCOVERY_DECODER, .level = NULL},
        {.kind = DISCOVERY_DECODER, .level = ""},
        {.kind = (enum discovery_kind)42, .level = "7"},
    };
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
        assert_false(discovery_object_id(&none[i], out, sizeof out));
        assert_null(discovery_config(&names_url, &none[i], NULL));
    }

    /* Buffers: exactly big enough works, one byte less does not. */
    assert_false(discovery_object_id(&gateway, out, 7));
    assert_true(discovery_object_id(&gateway, out, 8));
    assert_false(discovery_object_id(&race, out, 4));
    assert_true(discovery_object_id(&race, out, 5));
    assert_false(discovery_object_id(&controller, out, 12));
    assert_true(discovery_object_id(&controller, out, 13));
    assert_string_equal(out, "controller_7");
    const struct discovery_device dot = {.kind = DISCOVERY_DECODER, .level = "."};
    assert_false(discovery_object_id(&dot, out, 11));
    assert_true(discovery_object_id(&dot, out, 12));
    assert_string_equal(out, "decoder__2e");
}

/* discovery.h: false when "the level is not a sanitised topic level"
 * ([A-Za-z0-9._-], topic.h); discovery_parse_object() refuses the ids such
 * levels would give, so writing one would break the round trip. */
static void test_object_id_refuses_unsanitised_level(void **state)
{
    (void)state;
    static const char *const levels[] = {"a/b", "a b", "+", "#", "S\xc3\xbc", NULL};
    for (size_t i = 0; levels[i]; i++) {
        char out[DISCOVERY_OBJECT_MAX];
        const struct discovery_device d = {.kind = DISCOVERY_CONTROLLER, .level = levels[i]};
        if (discovery_object_id(&d, out, sizeof out)) {
            enum discovery_kind kind;
            char level[TOPIC_LEVEL_MAX + 1];
            fail_msg("level \"%s\" (not sanitised) gave object id %s, which "
                     "discovery_parse_object() %s",
                     levels[i], out,
                     discovery_parse_object(out, &kind, level) ? "accepts" : "refuses");
        }
    }
}

/* ---- topics -------------------------------------------------------------- */

static void test_topic(void **state)
{
    (void)state;
    static const char expected[] = "homeassistant/device/club-1/controller_7/config";
    char out[128];
    assert_true(discovery_topic(&names_url, "controller_7", out, sizeof out));
    assert_string_equal(out, expected);
    assert_true(discovery_topic(&names_url, "controller_7", out, sizeof expected));
    assert_false(discovery_topic(&names_url, "controller_7", out, sizeof expected - 1));

    assert_true(discovery_topic(&names_url, "gateway", out, sizeof out));
    assert_string_equal(out, "homeassistant/device/club-1/gateway/config");
}

static void test_topic_object_accepts(void **state)
{
    (void)state;
    const struct discovery_device *all[] = {&gateway, &race, &controller, &decoder};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        char id[DISCOVERY_OBJECT_MAX], topic[512], back[DISCOVERY_OBJECT_MAX];
        object_id_of(all[i], id);
        assert_true(discovery_topic(&names_url, id, topic, sizeof topic));
        memset(back, 'x', sizeof back);
        assert_true(discovery_topic_object(&names_url, topic, back, sizeof back));
        assert_string_equal(back, id);
    }

    char out[8];
    assert_true(
        discovery_topic_object(&names_url, "homeassistant/device/club-1/gateway/config", out, 8));
    assert_string_equal(out, "gateway");
    assert_false(
        discovery_topic_object(&names_url, "homeassistant/device/club-1/gateway/config", out, 7));

    const struct discovery_names other = {.prefix = "ha/x", .node_id = "n"};
    assert_true(discovery_topic_object(&other, "ha/x/device/n/race/config", out, sizeof out));
    assert_string_equal(out, "race");
    assert_false(
        discovery_topic_object(&other, "homeassistant/device/n/race/config", out, sizeof out));
}

static void test_topic_object_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "homeassistant",
        "homeassistant/device/club-1",
        "homeassistant/device/club-1/",
        "homeassistant/device/club-1//config",          /* empty object */
        "homeassistant/device/club-1/gateway",          /* no /config */
        "homeassistant/device/club-1/gateway/",         /* no config */
        "homeassistant/device/club-1/gateway/configX",  /* not config */
        "homeassistant/device/club-1/gateway/Config",   /* not config */
        "homeassistant/device/club-1/gateway/config/",  /* one level more */
        "homeassistant/device/club-1/gateway/config/x", /* one level more */
        "homeassistant/device/club-1/a/b/config",       /* one level more */
        "homeassistant/device/club-1/config",           /* no object */
        "homeassistant/device/club-2/gateway/config",   /* another node */
        "homeassistant/device/club-10/gateway/config",  /* node id only a prefix of */
        "homeassistant/device/club/gateway/config",     /* a prefix of our node id */
        "homeassistant/device/gateway/config",          /* no node id */
        "homeassistant/device/CLUB-1/gateway/config",   /* ids are case-sensitive */
        "homeassistantX/device/club-1/gateway/config",  /* prefix only as a string */
        "xhomeassistant/device/club-1/gateway/config",
        "homeassistant/sensor/club-1/gateway/config", /* per-component */
        "homeassistant/devices/club-1/gateway/config",
        "homeassistant/device/club-1-gateway/config",
        "/homeassistant/device/club-1/gateway/config",
        NULL};
    for (size_t i = 0; bad[i]; i++) {
        char out[DISCOVERY_OBJECT_MAX] = "";
        if (discovery_topic_object(&names_url, bad[i], out, sizeof out))
            fail_msg("\"%s\" taken as our config topic of \"%s\"", bad[i], out);
    }
}

/* ---- configs ------------------------------------------------------------- */

/* cmps of root has (at least) every key of keys. */
static void assert_components(struct json_object *root, const char *const *keys)
{
    for (size_t i = 0; keys[i]; i++) {
        if (!has(cmps_of(root), keys[i]))
            fail_msg("component %s missing in %s", keys[i],
                     json_object_to_json_string(cmps_of(root)));
    }
}

static void test_config_gateway(void **state)
{
    (void)state;
    struct json_object *root = config(&names_url, &gateway);
    struct json_object *dev = test_member(root, "dev");
    assert_strings(test_member(dev, "ids"), (const char *const[]){GATEWAY_IDS, NULL});
    assert_member_str(dev, "name", "race2mqtt " NODE);
    assert_member_str(dev, "sw", SW);
    assert_member_str(dev, "cu", PAGE);

    assert_components(root, (const char *const[]){"connectivity", "version", "events_accepted",
                                                  "queue_depth", "journal_bytes", NULL});
    struct json_object *c = cmp(root, "connectivity");
    assert_member_str(c, "p", "binary_sensor");
    assert_member_str(c, "device_class", "connectivity");
    assert_member_str(c, "state_topic", BRIDGE_STATE);
    assert_member_str(c, "payload_on", "online");
    assert_member_str(c, "payload_off", "offline");
    assert_member_str(c, "unique_id", NODE "_gateway_connectivity");
    assert_member_str(c, "default_entity_id", "binary_sensor.club_1_gateway_connectivity");
    /* It reports the topic it would be made unavailable by. */
    assert_false(has(c, "availability"));

    assert_member_str(cmp(root, "version"), "state_topic", "race2mqtt/bridge/info");
    assert_member_str(cmp(root, "events_accepted"), "state_topic", "race2mqtt/bridge/stats");
    assert_member_str(cmp(root, "queue_depth"), "state_topic", "race2mqtt/bridge/stats");
    assert_member_str(cmp(root, "journal_bytes"), "state_topic", "race2mqtt/bridge/stats");
    /* No shared availability, so everything else lists the bridge state. */
    json_object_object_foreach(cmps_of(root), key, comp)
    {
        if (strcmp(key, "connectivity") != 0)
            assert_availability(test_member(comp, "availability"),
                                (const char *const[]){BRIDGE_STATE, NULL});
    }
    json_object_put(root);

    root = config(&names_plain, &gateway);
    dev = test_member(root, "dev");
    assert_false(has(dev, "cu"));
    assert_member_str(dev, "name", "race2mqtt " NODE);
    json_object_put(root);

    /* A node id that already says race2mqtt is not repeated. */
    struct discovery_names host = names_plain;
    host.node_id = "race2mqtt-host";
    root = config(&host, &gateway);
    assert_member_str(test_member(root, "dev"), "name", "race2mqtt-host");
    json_object_put(root);
}

static void test_config_race(void **state)
{
    (void)state;
    struct json_object *root = config(&names_url, &race);
    struct json_object *dev = test_member(root, "dev");
    assert_strings(test_member(dev, "ids"), (const char *const[]){GATEWAY_IDS "_race", NULL});

    assert_components(root, (const char *const[]){"status", "flag", "weather", "vsc", "event_type",
                                                  "event_laps", "event_duration", "leader",
                                                  "leader_laps", NULL});
    static const struct {
        const char *key, *p, *topic;
    } want[] = {
        {"status", "sensor", "smartrace/state/status"},
        {"flag", "sensor", "smartrace/state/flag"},
        {"weather", "sensor", "smartrace/state/weather"},
        {"vsc", "binary_sensor", "smartrace/state/vsc"},
        {"event_type", "sensor", "smartrace/state/event"},
        {"event_laps", "sensor", "smartrace/state/event"},
        {"event_duration", "sensor", "smartrace/state/event"},
        {"leader", "sensor", "smartrace/state/standings"},
        {"leader_laps", "sensor", "smartrace/state/standings"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        struct json_object *c = cmp(root, want[i].key);
        assert_member_str(c, "p", want[i].p);
        assert_member_str(c, "state_topic", want[i].topic);
        assert_false(has(c, "availability")); /* the device's */
    }
    assert_member_str(cmp(root, "status"), "device_class", "enum");
    assert_strings(test_member(cmp(root, "status"), "options"),
                   (const char *const[]){"prepare_for_start", "starting", "jumpstart", "running",
                                         "suspended", "restarting", "ended", NULL});
    assert_member_str(cmp(root, "flag"), "device_class", "enum");
    assert_strings(test_member(cmp(root, "flag"), "options"),
                   (const char *const[]){"green", "yellow", "red", "checkered", "start",
                                         "jumpstart", "none", NULL});
    assert_member_str(cmp(root, "weather"), "device_class", "enum");
    assert_strings(test_member(cmp(root, "weather"), "options"),
                   (const char *const[]){"dry", "wet", NULL});
    assert_member_str(cmp(root, "event_duration"), "device_class", "duration");
    json_object_put(root);
}

static void test_config_controller(void **state)
{
    (void)state;
    struct json_object *root = config(&names_url, &controller);
    struct json_object *dev = test_member(root, "dev");
    assert_strings(test_member(dev, "ids"),
                   (const char *const[]){GATEWAY_IDS "_controller_7", NULL});
    assert_member_str(dev, "via_device", GATEWAY_IDS);

    assert_components(root,
                      (const char *const[]){"position", "laps", "last_lap", "best_lap", "fuel",
                                            "in_pit", "penalty", "driver", "car", "lap", NULL});
    json_object_object_foreach(cmps_of(root), key, c)
    {
        assert_member_str(c, "state_topic",
                          strcmp(key, "lap") == 0 ? "smartrace/lap/7"
                                                  : "smartrace/state/controller/7");
        assert_false(has(c, "availability")); /* the device's */
    }
    struct json_object *lap = cmp(root, "lap");
    assert_member_str(lap, "p", "event");
    assert_strings(test_member(lap, "event_types"),
                   (const char *const[]){"lap", "personal_best", NULL});
    assert_member_str(lap, "default_entity_id", "event.club_1_controller_7_lap");

    struct json_object *last = cmp(root, "last_lap");
    assert_member_str(last, "p", "sensor");
    assert_member_str(last, "device_class", "duration");
    assert_member_str(last, "unit_of_measurement", "ms");
    assert_member_str(last, "unique_id", NODE "_controller_7_last_lap");
    assert_member_str(last, "default_entity_id", "sensor.club_1_controller_7_last_lap");
    assert_member_str(cmp(root, "best_lap"), "unit_of_measurement", "ms");
    assert_member_str(cmp(root, "in_pit"), "p", "binary_sensor");
    json_object_put(root);

    /* An escaped level: topics use the level, ids its escaped form. */
    const struct discovery_device dotted = {.kind = DISCOVERY_CONTROLLER, .level = "1.5"};
    root = config(&names_plain, &dotted);
    assert_member_str(cmp(root, "laps"), "state_topic", "smartrace/state/controller/1.5");
    assert_member_str(cmp(root, "laps"), "unique_id", NODE "_controller_1_2e5_laps");
    assert_member_str(cmp(root, "laps"), "default_entity_id",
                      "sensor.club_1_controller_1_2e5_laps");
    assert_member_str(cmp(root, "lap"), "state_topic", "smartrace/lap/1.5");
    assert_member_str(test_member(root, "dev"), "name", "Controller 1.5");
    json_object_put(root);
}

static void test_config_decoder(void **state)
{
    (void)state;
    struct json_object *root = config(&names_url, &decoder);
    struct json_object *dev = test_member(root, "dev");
    assert_strings(test_member(dev, "ids"),
                   (const char *const[]){GATEWAY_IDS "_decoder_D-4013", NULL});
    assert_member_str(dev, "name", "Finish");
    assert_member_str(dev, "mdl", "Decoder");
    assert_member_str(dev, "via_device", GATEWAY_IDS);
    assert_availability(
        test_member(root, "availability"),
        (const char *const[]){BRIDGE_STATE, "raceresult/D-4013/availability", NULL});

    assert_components(root, (const char *const[]){"connectivity", "battery", "temperature", "file",
                                                  "timing_mode", "last_transponder", "records",
                                                  "passing", NULL});
    struct json_object *c = cmp(root, "connectivity");
    assert_member_str(c, "p", "binary_sensor");
    assert_member_str(c, "device_class", "connectivity");
    assert_member_str(c, "state_topic", "raceresult/D-4013/availability");
    assert_availability(test_member(c, "availability"), (const char *const[]){BRIDGE_STATE, NULL});

    static const char *const status_keys[] = {"battery",     "temperature", "file",
                                              "timing_mode", "records",     NULL};
    for (size_t i = 0; status_keys[i]; i++)
        assert_member_str(cmp(root, status_keys[i]), "state_topic", "raceresult/D-4013/status");
    assert_member_str(cmp(root, "last_transponder"), "state_topic", "raceresult/D-4013/passing");

    assert_member_str(cmp(root, "battery"), "device_class", "battery");
    assert_member_str(cmp(root, "battery"), "unit_of_measurement", "%");
    assert_member_str(cmp(root, "battery"), "default_entity_id",
                      "sensor.club_1_decoder_d_4013_battery");
    assert_member_str(cmp(root, "temperature"), "device_class", "temperature");
    assert_member_str(cmp(root, "temperature"), "unit_of_measurement", "°C");

    struct json_object *p = cmp(root, "passing");
    assert_member_str(p, "p", "event");
    assert_member_str(p, "state_topic", "raceresult/D-4013/passing");
    assert_strings(test_member(p, "event_types"), (const char *const[]){"passing", NULL});

    json_object_object_foreach(cmps_of(root), key, comp)
    {
        if (strcmp(key, "connectivity") != 0)
            assert_false(has(comp, "availability")); /* the device's */
    }
    json_object_put(root);

    /* Without a name: model and level. */
    const struct discovery_device unnamed = {
        .kind = DISCOVERY_DECODER, .level = "T-1", .name = "", .model = "TrackBox"};
    root = config(&names_plain, &unnamed);
    assert_member_str(test_member(root, "dev"), "name", "TrackBox T-1");
    assert_member_str(test_member(root, "dev"), "mdl", "TrackBox");
    json_object_put(root);
    const struct discovery_device bare = {.kind = DISCOVERY_DECODER, .level = "D-1"};
    root = config(&names_plain, &bare);
    assert_member_str(test_member(root, "dev"), "name", "Decoder D-1");
    json_object_put(root);
}

/* unique_id and default_entity_id never repeat across the four devices, nor
 * between two gateways with different node ids. */
static void test_config_ids_distinct(void **state)
{
    (void)state;
    struct discovery_names club2 = names_url;
    club2.node_id = "club-2";
    const struct discovery_names *names[] = {&names_url, &club2};
    const struct discovery_device *all[] = {&gateway, &race, &controller, &decoder};
    struct idset uids = {0}, entities = {0};
    for (size_t i = 0; i < 2; i++) {
        for (size_t j = 0; j < sizeof all / sizeof all[0]; j++) {
            struct json_object *root = config(names[i], all[j]);
            collect(&uids, root, "unique_id");
            collect(&entities, root, "default_entity_id");
            json_object_put(root);
        }
    }
    assert_true(uids.n > 30);
    idset_free(&uids);
    idset_free(&entities);
}

/* Node ids may start or end with '-' or '_' and hold runs of them (HA's
 * [a-zA-Z0-9_-]+): the entity ids must still be valid slugs. */
static void test_config_odd_node_id(void **state)
{
    (void)state;
    static const char *const nodes[] = {"_Club--1_", "-x", "9", "A_-_B", NULL};
    const struct discovery_device *all[] = {&gateway, &race, &controller, &decoder};
    for (size_t i = 0; nodes[i]; i++) {
        struct discovery_names n = names_plain;
        n.node_id = nodes[i];
        for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
            json_object_put(config(&n, all[j]));
    }
    struct discovery_names n = names_plain;
    n.node_id = "_Club--1_";
    struct json_object *root = config(&n, &controller);
    assert_member_str(cmp(root, "laps"), "unique_id", "_Club--1__controller_7_laps");
    assert_member_str(cmp(root, "laps"), "default_entity_id", "sensor.club_1_controller_7_laps");
    json_object_put(root);
}

static void test_config_len_optional(void **state)
{
    (void)state;
    char *text = discovery_config(&names_url, &race, NULL);
    assert_non_null(text);
    json_object_put(parse_strict(text, strlen(text)));
    free(text);
}

static void test_config_decoder_name_escaped(void **state)
{
    (void)state;
    static const char name[] = "Zieleinlauf \"Süd\" \\";
    const struct discovery_device d = {
        .kind = DISCOVERY_DECODER, .level = "D-4013", .name = name, .model = "Decoder"};
    struct json_object *root = config(&names_url, &d);
    assert_member_str(test_member(root, "dev"), "name", name);
    json_object_put(root);

    /* Control characters too. */
    static const char ctl[] = "a\tb\nc\x01";
    const struct discovery_device dc = {.kind = DISCOVERY_DECODER, .level = "D-1", .name = ctl};
    root = config(&names_url, &dc);
    assert_member_str(test_member(root, "dev"), "name", ctl);
    json_object_put(root);
}

/* The checkers above must themselves refuse what HA refuses. */
static void test_checkers(void **state)
{
    (void)state;
    assert_true(valid_entity_id("sensor.club_1_controller_7_last_lap"));
    assert_true(valid_entity_id("binary_sensor.a"));
    assert_true(valid_entity_id("event.1"));
    static const char *const bad[] = {"sensor",     "sensor.",     ".a",         "sensor._a",
                                      "sensor.a_",  "sensor.a__b", "_sensor.a",  "sensor_.a",
                                      "Sensor.a",   "sensor.A",    "sensor.a.b", "sensor.a-b",
                                      "sensor.a b", "se__nsor.a",  NULL};
    for (size_t i = 0; bad[i]; i++) {
        if (valid_entity_id(bad[i]))
            fail_msg("%s taken as an entity id", bad[i]);
    }
    char slug[64];
    slug_of("club-1_controller_1_2e5_Last_lap", slug, sizeof slug);
    assert_string_equal(slug, "club_1_controller_1_2e5_last_lap");
    slug_of("--a..b--", slug, sizeof slug);
    assert_string_equal(slug, "a_b");
    assert_true(topic_id_ok("controller_1_2e5-X"));
    assert_false(topic_id_ok(""));
    assert_false(topic_id_ok("a.b"));
    assert_false(topic_id_ok("a/b"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkers),
        cmocka_unit_test(test_object_id_kinds),
        cmocka_unit_test(test_object_id_escaping),
        cmocka_unit_test(test_object_id_distinct_and_round_trip),
        cmocka_unit_test(test_parse_object_gateway_race),
        cmocka_unit_test(test_parse_object_rejects),
        cmocka_unit_test(test_object_id_longest_level),
        cmocka_unit_test(test_object_id_refuses_unusable),
        cmocka_unit_test(test_object_id_refuses_unsanitised_level),
        cmocka_unit_test(test_topic),
        cmocka_unit_test(test_topic_object_accepts),
        cmocka_unit_test(test_topic_object_rejects),
        cmocka_unit_test(test_config_gateway),
        cmocka_unit_test(test_config_race),
        cmocka_unit_test(test_config_controller),
        cmocka_unit_test(test_config_decoder),
        cmocka_unit_test(test_config_ids_distinct),
        cmocka_unit_test(test_config_odd_node_id),
        cmocka_unit_test(test_config_len_optional),
        cmocka_unit_test(test_config_decoder_name_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
