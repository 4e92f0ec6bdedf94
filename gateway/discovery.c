/*
 * discovery.c - what Home Assistant is told about the gateway, the race, the
 * controllers and the decoders (device-based MQTT discovery).
 *
 * What Home Assistant does with a device config (reference/
 * homeassistant-mqtt-discovery.md), and how that shaped this file:
 * - One invalid component rejects the whole device message, and unknown keys
 *   are dropped without a word. So every component here uses only keys of its
 *   platform's schema, every sensor with a unit has a device class that
 *   accepts that unit (durations in ms or s), enum sensors carry no unit and
 *   no state class, and every component has "p" and "unique_id".
 * - An enum state outside "options" is an error in HA, so enum templates map
 *   anything unexpected (a future SmartRace status) to None, which HA shows
 *   as unknown. A numeric sensor's template yields None for JSON null.
 * - Event entities ignore retained payloads; the lap and passing topics are
 *   never retained, and their templates build the {"event_type": ...} object
 *   HA wants from the gateway's own event payload.
 * - Availability: every component of the race, a controller or a decoder
 *   inherits the device's "availability" list (bridge state, and for a
 *   decoder also its own availability topic, mode "all"). A connectivity
 *   entity reads the topic it reports on as its state, so it lists only the
 *   bridge state (decoder) or nothing (the gateway's own): otherwise it could
 *   never show "off", only "unavailable". The gateway device has no shared
 *   availability for that reason; its other components list it themselves.
 *   A component that sets "availability" must use the list form too: HA
 *   rejects "availability" together with an inherited "availability_topic".
 * - default_entity_id (HA >= 2025.10) and object_id (before) suggest entity
 *   ids; both must be valid entity-id slugs or HA refuses the config, so
 *   they go through discovery_slug().
 */
#include "race2mqtt/discovery.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#define ID_MAX 512
#define TOPIC_MAX 512
#define JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
/* A sanitised topic level (topic.h): the only levels an object id is made of. */
#define LEVEL_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"

/* SmartRace's statuses (data interface, event.change_status) and the flag
 * values derived from them (state.c). */
#define STATUS_LIST                                                                                \
    "['prepare_for_start','starting','jumpstart','running','suspended','restarting','ended']"
#define FLAG_LIST "['green','yellow','red','checkered','start','jumpstart','none']"

static const char *const status_options[] = {
    "prepare_for_start", "starting",   "jumpstart", "running",
    "suspended",         "restarting", "ended",     NULL};
static const char *const flag_options[] = {"green", "yellow",    "red",  "checkered",
                                           "start", "jumpstart", "none", NULL};
static const char *const weather_options[] = {"dry", "wet", NULL};

/* Everything one config is built from. */
struct builder {
    const struct discovery_names *n;
    const struct discovery_device *d;
    char object_id[DISCOVERY_OBJECT_MAX];
    char gateway_ids[ID_MAX]; /* the gateway device's identifier (via_device) */
    char bridge_state[TOPIC_MAX];
    struct json_object *root, *cmps;
    bool ok;
};

bool discovery_object_id(const struct discovery_device *d, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    const char *prefix;
    switch (d->kind) {
    case DISCOVERY_GATEWAY:
        return snprintf(out, cap, "gateway") < (int)cap;
    case DISCOVERY_RACE:
        return snprintf(out, cap, "race") < (int)cap;
    case DISCOVERY_CONTROLLER:
        prefix = "controller_";
        break;
    case DISCOVERY_DECODER:
        prefix = "decoder_";
        break;
    default:
        return false;
    }
    if (!d->level || !d->level[0] || strlen(d->level) > TOPIC_LEVEL_MAX ||
        strspn(d->level, LEVEL_CHARS) != strlen(d->level))
        return false;
    size_t n = strlen(prefix);
    if (n + 1 > cap)
        return false;
    memcpy(out, prefix, n);
    for (const unsigned char *p = (const unsigned char *)d->level; *p; p++) {
        bool plain = isalnum(*p) || *p == '-';
        if (n + (plain ? 1 : 3) + 1 > cap)
            return false;
        if (plain) {
            out[n++] = (char)*p;
        } else {
            out[n++] = '_';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = '\0';
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

bool discovery_parse_object(const char *object_id, enum discovery_kind *kind,
                            char level[TOPIC_LEVEL_MAX + 1])
{
    const char *rest;
    level[0] = '\0';
    if (strcmp(object_id, "gateway") == 0) {
        *kind = DISCOVERY_GATEWAY;
        return true;
    }
    if (strcmp(object_id, "race") == 0) {
        *kind = DISCOVERY_RACE;
        return true;
    }
    if (strncmp(object_id, "controller_", 11) == 0) {
        *kind = DISCOVERY_CONTROLLER;
        rest = object_id + 11;
    } else if (strncmp(object_id, "decoder_", 8) == 0) {
        *kind = DISCOVERY_DECODER;
        rest = object_id + 8;
    } else {
        return false;
    }
    size_t n = 0;
    for (const char *p = rest; *p; p++) {
        char c = *p;
        if (c == '_') {
            int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);
            if (lo < 0)
                return false;
            c = (char)(hi * 16 + lo);
            p += 2;
        } else if (!isalnum((unsigned char)c) && c != '-') {
            return false;
        }
        if (n == TOPIC_LEVEL_MAX)
            return false;
        level[n++] = c;
    }
    level[n] = '\0';
    if (n == 0)
        return false;
    /* Only what discovery_object_id() writes: a level of our alphabet. */
    char again[DISCOVERY_OBJECT_MAX];
    struct discovery_device d = {.kind = *kind, .level = level};
    return discovery_object_id(&d, again, sizeof again) && strcmp(again, object_id) == 0;
}

bool discovery_topic(const struct discovery_names *n, const char *object_id, char *out, size_t cap)
{
    int len = snprintf(out, cap, "%s/device/%s/%s/config", n->prefix, n->node_id, object_id);
    return len > 0 && (size_t)len < cap;
}

bool discovery_topic_object(const struct discovery_names *n, const char *topic, char *out,
                            size_t cap)
{
    char head[TOPIC_MAX];
    int len = snprintf(head, sizeof head, "%s/device/%s/", n->prefix, n->node_id);
    if (len <= 0 || (size_t)len >= sizeof head || strncmp(topic, head, (size_t)len) != 0)
        return false;
    const char *obj = topic + len;
    const char *slash = strchr(obj, '/');
    if (!slash || strcmp(slash, "/config") != 0 || slash == obj || (size_t)(slash - obj) >= cap)
        return false;
    memcpy(out, obj, (size_t)(slash - obj));
    out[slash - obj] = '\0';
    return true;
}

/* An entity-id slug: lower case [a-z0-9_], no leading, trailing or double '_'
 * (HA's valid_entity_id). */
static void discovery_slug(char *out, size_t cap, const char *in)
{
    size_t n = 0;
    bool sep = false;
    for (const unsigned char *p = (const unsigned char *)in; *p && n + 2 < cap; p++) {
        if (isalnum(*p)) {
            if (sep && n > 0)
                out[n++] = '_';
            out[n++] = (char)tolower(*p);
            sep = false;
        } else {
            sep = true;
        }
    }
    out[n] = '\0';
}

static void add_str(struct builder *b, struct json_object *o, const char *key, const char *v)
{
    struct json_object *s = json_object_new_string(v);
    if (!s || json_object_object_add(o, key, s) != 0) {
        json_object_put(s);
        b->ok = false;
    }
}

static void add_obj(struct builder *b, struct json_object *o, const char *key,
                    struct json_object *v)
{
    if (!v || json_object_object_add(o, key, v) != 0) {
        json_object_put(v);
        b->ok = false;
    }
}

static struct json_object *str_array(const char *const *items)
{
    struct json_object *a = json_object_new_array();
    for (size_t i = 0; a && items[i]; i++) {
        struct json_object *s = json_object_new_string(items[i]);
        if (!s || json_object_array_add(a, s) != 0) {
            json_object_put(s);
            json_object_put(a);
            return NULL;
        }
    }
    return a;
}

/* [{"topic": t, "payload_available": "online", "payload_not_available": "offline"}, ...] */
static struct json_object *availability(struct builder *b, const char *t1, const char *t2)
{
    struct json_object *a = json_object_new_array();
    const char *topics[] = {t1, t2};
    for (size_t i = 0; a && i < 2; i++) {
        if (!topics[i])
            continue;
        struct json_object *e = json_object_new_object();
        if (!e || json_object_array_add(a, e) != 0) {
            json_object_put(e);
            json_object_put(a);
            return NULL;
        }
        add_str(b, e, "topic", topics[i]);
        add_str(b, e, "payload_available", "online");
        add_str(b, e, "payload_not_available", "offline");
    }
    return a;
}

/* A new component <key> of platform p, named name (NULL: the device's main
 * feature), registered in cmps. NULL (and b->ok false) on no memory. */
static struct json_object *component(struct builder *b, const char *p, const char *key,
                                     const char *name, const char *state_topic)
{
    char id[ID_MAX], slug[ID_MAX], entity[ID_MAX + 32];
    struct json_object *c = json_object_new_object();
    if (!c || json_object_object_add(b->cmps, key, c) != 0) {
        json_object_put(c);
        b->ok = false;
        return NULL;
    }
    snprintf(id, sizeof id, "%s_%s_%s", b->n->node_id, b->object_id, key);
    discovery_slug(slug, sizeof slug, id);
    snprintf(entity, sizeof entity, "%s.%s", p, slug);
    add_str(b, c, "p", p);
    add_str(b, c, "unique_id", id);
    add_str(b, c, "object_id", slug);
    add_str(b, c, "default_entity_id", entity);
    if (name)
        add_str(b, c, "name", name);
    else if (json_object_object_add(c, "name", NULL) != 0) /* JSON null: the main feature */
        b->ok = false;
    if (state_topic)
        add_str(b, c, "state_topic", state_topic);
    return c;
}

/* A sensor of a JSON or text state topic with value template tpl. */
static struct json_object *sensor(struct builder *b, const char *key, const char *name,
                                  const char *topic, const char *tpl)
{
    struct json_object *c = component(b, "sensor", key, name, topic);
    if (c && tpl)
        add_str(b, c, "value_template", tpl);
    return c;
}

static void sensor_unit(struct builder *b, struct json_object *c, const char *device_class,
                        const char *unit, const char *state_class)
{
    if (!c)
        return;
    if (device_class)
        add_str(b, c, "device_class", device_class);
    if (unit)
        add_str(b, c, "unit_of_measurement", unit);
    if (state_class)
        add_str(b, c, "state_class", state_class);
}

static void sensor_enum(struct builder *b, struct json_object *c, const char *const *options)
{
    if (!c)
        return;
    add_str(b, c, "device_class", "enum");
    add_obj(b, c, "options", str_array(options));
}

static void extra(struct builder *b, struct json_object *c, const char *key, const char *v)
{
    if (c)
        add_str(b, c, key, v);
}

static void diagnostic(struct builder *b, struct json_object *c)
{
    extra(b, c, "entity_category", "diagnostic");
}

/* <base>/<mid>/<leaf>: every topic an entity reads has three parts. */
static void topic_of(char *out, const char *base, const char *mid, const char *leaf)
{
    snprintf(out, TOPIC_MAX, "%s/%s/%s", base, mid, leaf);
}

static void device_block(struct builder *b, const char *ids, const char *name, const char *mf,
                         const char *model, bool via)
{
    struct json_object *dev = json_object_new_object();
    struct json_object *idl = json_object_new_array();
    if (!dev || !idl) {
        json_object_put(dev);
        json_object_put(idl);
        b->ok = false;
        return;
    }
    struct json_object *id = json_object_new_string(ids);
    if (!id || json_object_array_add(idl, id) != 0) {
        json_object_put(id);
        b->ok = false;
    }
    add_obj(b, dev, "ids", idl);
    add_str(b, dev, "name", name);
    add_str(b, dev, "mf", mf);
    add_str(b, dev, "mdl", model);
    if (b->d->kind == DISCOVERY_GATEWAY) {
        add_str(b, dev, "sw", b->n->version);
        if (b->n->page_url)
            add_str(b, dev, "cu", b->n->page_url);
    } else if (b->d->kind == DISCOVERY_DECODER) {
        add_str(b, dev, "sn", b->d->level);
    }
    if (via)
        add_str(b, dev, "via_device", b->gateway_ids);
    add_obj(b, b->root, "dev", dev);
}

/* ---- the four devices ---------------------------------------------------- */

static void gateway_components(struct builder *b)
{
    const struct discovery_names *n = b->n;
    char info[TOPIC_MAX], stats[TOPIC_MAX];
    topic_of(info, n->bridge_base, "bridge", "info");
    topic_of(stats, n->bridge_base, "bridge", "stats");

    struct json_object *c =
        component(b, "binary_sensor", "connectivity", "Connection", b->bridge_state);
    extra(b, c, "device_class", "connectivity");
    extra(b, c, "payload_on", "online");
    extra(b, c, "payload_off", "offline");

    /* The rest is unavailable while the gateway is offline. */
    struct json_object *cs[5];
    cs[0] = sensor(b, "version", "Version", info, "{{ value_json.version }}");
    diagnostic(b, cs[0]);
    extra(b, cs[0], "icon", "mdi:tag");
    cs[1] =
        sensor(b, "events_accepted", "Events accepted", stats, "{{ value_json.events_accepted }}");
    sensor_unit(b, cs[1], NULL, "events", "total_increasing");
    extra(b, cs[1], "icon", "mdi:flag-checkered");
    cs[2] = sensor(b, "queue_depth", "Journal depth", stats, "{{ value_json.queue_depth }}");
    sensor_unit(b, cs[2], NULL, "events", "measurement");
    diagnostic(b, cs[2]);
    extra(b, cs[2], "icon", "mdi:tray-full");
    cs[3] = sensor(b, "journal_bytes", "Journal size", stats, "{{ value_json.journal_bytes }}");
    sensor_unit(b, cs[3], "data_size", "B", "measurement");
    diagnostic(b, cs[3]);
    cs[4] = sensor(b, "passings", "Passings published", stats, "{{ value_json.passings }}");
    sensor_unit(b, cs[4], NULL, "passings", "total_increasing");
    extra(b, cs[4], "icon", "mdi:timer-outline");
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        if (cs[i])
            add_obj(b, cs[i], "availability", availability(b, b->bridge_state, NULL));
    }
}

static void race_components(struct builder *b)
{
    const char *base = b->n->smartrace_base;
    char t[TOPIC_MAX];
    struct json_object *c;

    topic_of(t, base, "state", "status");
    c = sensor(b, "status", "Status", t, "{{ value if value in " STATUS_LIST " else None }}");
    sensor_enum(b, c, status_options);
    extra(b, c, "icon", "mdi:list-status");

    topic_of(t, base, "state", "flag");
    c = sensor(b, "flag", "Flag", t, "{{ value if value in " FLAG_LIST " else None }}");
    sensor_enum(b, c, flag_options);
    extra(b, c, "icon", "mdi:flag");

    topic_of(t, base, "state", "weather");
    c = sensor(b, "weather", "Weather", t, "{{ value if value in ['dry','wet'] else None }}");
    sensor_enum(b, c, weather_options);
    extra(b, c, "icon", "mdi:weather-partly-rainy");

    topic_of(t, base, "state", "vsc");
    c = component(b, "binary_sensor", "vsc", "Virtual safety car", t);
    extra(b, c, "payload_on", "deployed");
    extra(b, c, "payload_off", "retracted");
    extra(b, c, "icon", "mdi:car-brake-alert");

    topic_of(t, base, "state", "event");
    c = sensor(b, "event_type", "Event type", t, "{{ value_json.get('type') }}");
    extra(b, c, "icon", "mdi:trophy");
    c = sensor(b, "event_laps", "Race laps", t, "{{ value_json.get('laps') }}");
    sensor_unit(b, c, NULL, "laps", "measurement");
    extra(b, c, "icon", "mdi:counter");
    c = sensor(b, "event_duration", "Race duration", t, "{{ value_json.get('duration') }}");
    sensor_unit(b, c, "duration", "s", "measurement");

    topic_of(t, base, "state", "standings");
    c = sensor(b, "leader", "Leader", t,
               "{{ (value_json[0].driver or ('Controller ' ~ value_json[0].controller_id)) "
               "if value_json | length > 0 else None }}");
    extra(b, c, "icon", "mdi:podium-gold");
    c = sensor(b, "leader_laps", "Leader laps", t,
               "{{ value_json[0].laps if value_json | length > 0 else None }}");
    sensor_unit(b, c, NULL, "laps", "measurement");
    extra(b, c, "icon", "mdi:counter");

    topic_of(t, base, "state", "track");
    c = sensor(b, "track", "Track", t, "{{ value_json.get('name') }}");
    extra(b, c, "icon", "mdi:go-kart-track");
}

static void controller_components(struct builder *b)
{
    char st[TOPIC_MAX], lap[TOPIC_MAX];
    const char *base = b->n->smartrace_base;
    struct json_object *c;
    topic_of(st, base, "state/controller", b->d->level);
    topic_of(lap, base, "lap", b->d->level);

    c = sensor(b, "position", "Position", st, "{{ value_json.position }}");
    sensor_unit(b, c, NULL, NULL, "measurement");
    extra(b, c, "icon", "mdi:podium");
    c = sensor(b, "laps", "Laps", st, "{{ value_json.laps }}");
    sensor_unit(b, c, NULL, "laps", "total_increasing");
    extra(b, c, "icon", "mdi:counter");
    c = sensor(b, "last_lap", "Last lap", st, "{{ value_json.last_lap_ms }}");
    sensor_unit(b, c, "duration", "ms", "measurement");
    c = sensor(b, "best_lap", "Best lap", st, "{{ value_json.best_lap_ms }}");
    sensor_unit(b, c, "duration", "ms", "measurement");
    extra(b, c, "icon", "mdi:timer-star-outline");
    /* -1 is SmartRace's "fuel simulation off". */
    c = sensor(b, "fuel", "Fuel", st,
               "{{ value_json.fuel if value_json.fuel is number and value_json.fuel >= 0 "
               "else None }}");
    sensor_unit(b, c, NULL, "%", "measurement");
    extra(b, c, "icon", "mdi:gas-station");
    c = component(b, "binary_sensor", "in_pit", "In pit", st);
    extra(b, c, "value_template", "{{ 'ON' if value_json.in_pit else 'OFF' }}");
    extra(b, c, "icon", "mdi:car-wrench");
    c = sensor(b, "penalty", "Penalty", st, "{{ value_json.penalty }}");
    sensor_unit(b, c, "duration", "s", "measurement");
    c = sensor(b, "driver", "Driver", st, "{{ value_json.driver }}");
    extra(b, c, "icon", "mdi:account");
    c = sensor(b, "car", "Car", st, "{{ value_json.car }}");
    extra(b, c, "icon", "mdi:car-sports");
    c = sensor(b, "damage", "Damage", st, "{{ value_json.damage }}");
    extra(b, c, "icon", "mdi:car-wrench");
    c = sensor(b, "tire", "Tire", st, "{{ value_json.tire }}");
    extra(b, c, "icon", "mdi:tire");

    /* From the lap event itself: SmartRace's lap_pb says "personal best". */
    c = component(b, "event", "lap", "Lap", lap);
    add_obj(b, c, "event_types", str_array((const char *const[]){"lap", "personal_best", NULL}));
    extra(b, c, "value_template",
          "{% set d = value_json.data if value_json.data is mapping else {} %}"
          "{{ {'event_type': 'personal_best' if d.lap_pb is sameas true else 'lap', "
          "'lap': d.lap, 'laptime_ms': value_json.laptime_ms, "
          "'driver': d.driver_data.name if d.driver_data is mapping else None, "
          "'seq': value_json.seq} | tojson }}");
    extra(b, c, "icon", "mdi:flag-checkered");
}

static void decoder_components(struct builder *b)
{
    char st[TOPIC_MAX], av[TOPIC_MAX], pass[TOPIC_MAX];
    const char *base = b->n->raceresult_base;
    struct json_object *c;
    topic_of(st, base, b->d->level, "status");
    topic_of(av, base, b->d->level, "availability");
    topic_of(pass, base, b->d->level, "passing");

    /* Shared: unavailable when the gateway or the decoder is offline. */
    struct json_object *a = availability(b, b->bridge_state, av);
    add_obj(b, b->root, "availability", a);
    add_str(b, b->root, "availability_mode", "all");

    c = component(b, "binary_sensor", "connectivity", "Connection", av);
    extra(b, c, "device_class", "connectivity");
    extra(b, c, "payload_on", "online");
    extra(b, c, "payload_off", "offline");
    if (c)
        add_obj(b, c, "availability", availability(b, b->bridge_state, NULL));

    c = sensor(b, "battery", "Battery", st, "{{ value_json.battery }}");
    sensor_unit(b, c, "battery", "%", "measurement");
    c = sensor(b, "temperature", "Temperature", st, "{{ value_json.temperature }}");
    sensor_unit(b, c, "temperature", "°C", "measurement");
    diagnostic(b, c);
    c = sensor(b, "file", "File number", st, "{{ value_json.file }}");
    diagnostic(b, c);
    extra(b, c, "icon", "mdi:file-outline");
    c = sensor(b, "timing_mode", "Timing mode", st,
               "{% set m = value_json.timing_mode %}"
               "{{ 'on' if m is sameas true else ('off' if m is sameas false else m) }}");
    extra(b, c, "icon", "mdi:timer-cog-outline");
    c = sensor(b, "records", "Passings in file", st, "{{ value_json.records }}");
    sensor_unit(b, c, NULL, "passings", "measurement");
    extra(b, c, "icon", "mdi:counter");
    c = sensor(b, "last_transponder", "Last transponder", pass, "{{ value_json.transponder }}");
    extra(b, c, "icon", "mdi:tag-outline");

    c = component(b, "event", "passing", "Passing", pass);
    add_obj(b, c, "event_types", str_array((const char *const[]){"passing", NULL}));
    extra(b, c, "value_template",
          "{{ {'event_type': 'passing', 'id': value_json.id, "
          "'transponder': value_json.transponder, 'time': value_json.time, "
          "'loop': value_json.loop} | tojson }}");
    extra(b, c, "icon", "mdi:timer-marker-outline");
}

char *discovery_config(const struct discovery_names *n, const struct discovery_device *d,
                       size_t *len)
{
    struct builder b = {.n = n, .d = d, .ok = true};
    char ids[ID_MAX], name[ID_MAX], *text = NULL;

    if (!discovery_object_id(d, b.object_id, sizeof b.object_id))
        return NULL;
    snprintf(b.gateway_ids, sizeof b.gateway_ids, "race2mqtt_%s", n->node_id);
    topic_of(b.bridge_state, n->bridge_base, "bridge", "state");
    snprintf(ids, sizeof ids, "race2mqtt_%s_%s", n->node_id, b.object_id);
    b.root = json_object_new_object();
    b.cmps = json_object_new_object();
    if (!b.root || !b.cmps) {
        json_object_put(b.cmps);
        goto done;
    }
    add_obj(&b, b.root, "cmps", b.cmps);

    switch (d->kind) {
    case DISCOVERY_GATEWAY:
        /* "race2mqtt-host" reads better than "race2mqtt race2mqtt-host". */
        snprintf(name, sizeof name,
                 strncmp(n->node_id, "race2mqtt", 9) == 0 ? "%s" : "race2mqtt %s", n->node_id);
        device_block(&b, b.gateway_ids, name, "race2mqtt", "SmartRace / RACE RESULT gateway",
                     false);
        gateway_components(&b);
        break;
    case DISCOVERY_RACE:
        device_block(&b, ids, "SmartRace race", "SmartRace", "Race", true);
        add_obj(&b, b.root, "availability", availability(&b, b.bridge_state, NULL));
        race_components(&b);
        break;
    case DISCOVERY_CONTROLLER:
        snprintf(name, sizeof name, "Controller %s", d->level);
        device_block(&b, ids, name, "SmartRace", "Controller", true);
        add_obj(&b, b.root, "availability", availability(&b, b.bridge_state, NULL));
        controller_components(&b);
        break;
    case DISCOVERY_DECODER:
        if (d->name && d->name[0])
            snprintf(name, sizeof name, "%s", d->name);
        else
            snprintf(name, sizeof name, "%s %s", d->model ? d->model : "Decoder", d->level);
        device_block(&b, ids, name, "RACE RESULT", d->model ? d->model : "Decoder", true);
        decoder_components(&b);
        break;
    }

    struct json_object *o = json_object_new_object();
    if (o) {
        add_str(&b, o, "name", "race2mqtt");
        add_str(&b, o, "sw", n->version);
    }
    add_obj(&b, b.root, "o", o);
    if (b.ok) {
        size_t l;
        const char *s = json_object_to_json_string_length(b.root, JSON_FLAGS, &l);
        if (s && (text = malloc(l + 1)) != NULL) {
            memcpy(text, s, l + 1);
            if (len)
                *len = l;
        }
    }
done:
    json_object_put(b.root);
    return text;
}
