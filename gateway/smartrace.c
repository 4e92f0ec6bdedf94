/*
 * smartrace.c - the SmartRace data interface, webhook body -> MQTT message.
 *
 * Wire format (POST body, JSON, see reference/smartrace-data-interface.md):
 *
 *     {"time": 1684769957969, "event_type": "ui.lap_update", "event_data": {...}}
 *
 * Real senders differ from the vendor page, so this file accepts all of:
 * event_data as an object, a bare string (weather events send "wet"), a number
 * or a bare controller id (pit and remove events), null, or absent; time as a
 * number, a numeric string, null or absent; controller_id as a string ("2") or
 * an integer (event.end results). Unknown members are carried through because
 * event_data is re-serialised from the parse tree as a whole, never picked
 * apart; unknown event types are normal and go to <base>/other/<type>.
 *
 * Hostile input is refused here, before anything is journalled: the body must
 * be one strict JSON object (jsonutil_parse(): json-c STRICT, strict UTF-8,
 * nesting bounded, nothing but whitespace after it, no NUL byte), and numbers
 * that json-c accepts but JSON forbids (NaN, Infinity, "1.", "-.5") are
 * rejected because json-c would print them back verbatim and the payload would
 * no longer be JSON. json-c clamps integers beyond 64 bits to the int64/uint64
 * range; such a value in event_data is carried through clamped, never wrapped.
 *
 * The payload is built as a "head" (the object without its closing brace) by
 * concatenating json-c serialisations of the borrowed parts: no copy of the
 * tree, one malloc per message. The sequence number is appended later by
 * smartrace_seal() once the journal has assigned it.
 */
#include "race2mqtt/smartrace.h"
#include "race2mqtt/jsonutil.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#define SR_JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

/* Per-controller event: the topic ends in /<controller>. */
#define SR_PER_CONTROLLER 0x1
/* event_data may be the controller id itself instead of an object. */
#define SR_BARE_ID 0x2

static const struct sr_type {
    const char *name;
    enum sr_kind kind;
    const char *topic; /* below the base topic */
    unsigned flags;
} sr_types[] = {
    {"ui.lap_update", SR_KIND_LAP, "lap", SR_PER_CONTROLLER},
    {"util.fuel_update", SR_KIND_FUEL, "fuel", SR_PER_CONTROLLER},
    {"event.pit.enter", SR_KIND_PIT_ENTER, "pit", SR_PER_CONTROLLER | SR_BARE_ID},
    {"event.pit.leave", SR_KIND_PIT_LEAVE, "pit", SR_PER_CONTROLLER | SR_BARE_ID},
    {"race.penalty_update", SR_KIND_PENALTY, "penalty", SR_PER_CONTROLLER},
    {"race.damage_update", SR_KIND_DAMAGE, "damage", SR_PER_CONTROLLER},
    {"events.tire_change", SR_KIND_TIRE, "tire", SR_PER_CONTROLLER},
    {"ui.remove_car_from_session", SR_KIND_REMOVE, "remove", SR_PER_CONTROLLER | SR_BARE_ID},
    {"event.start", SR_KIND_EVENT_START, "event/start", 0},
    {"event.end", SR_KIND_EVENT_END, "event/end", 0},
    {"event.change_status", SR_KIND_STATUS, "event/status", 0},
    {"events.weather_change", SR_KIND_WEATHER_CHANGE, "weather/change", 0},
    {"events.weather_update", SR_KIND_WEATHER_FORECAST, "weather/forecast", 0},
    {"race.vsc_deployed", SR_KIND_VSC_DEPLOYED, "vsc", 0},
    {"race.vsc_retracted", SR_KIND_VSC_RETRACTED, "vsc", 0},
    {"util.set_active_track", SR_KIND_TRACK, "track", 0},
    {"ui.reset", SR_KIND_RESET, "reset", 0},
    {"cu.send_esc_command", SR_KIND_ESC, "esc", 0},
};

const char *smartrace_strerror(enum sr_error err)
{
    switch (err) {
    case SR_OK:
        return "ok";
    case SR_ERR_JSON:
        return "invalid JSON";
    case SR_ERR_DEPTH:
        return "JSON nested too deeply";
    case SR_ERR_NOT_OBJECT:
        return "body is not a JSON object";
    case SR_ERR_NO_EVENT_TYPE:
        return "missing event_type";
    case SR_ERR_EVENT_TYPE:
        return "event_type must be a non-empty string";
    case SR_ERR_TIME:
        return "time must be a number, a numeric string or null";
    case SR_ERR_NOMEM:
        return "out of memory";
    }
    return "unknown error";
}

static const struct sr_type *sr_type_find(const char *name)
{
    for (size_t i = 0; i < sizeof sr_types / sizeof sr_types[0]; i++) {
        if (strcmp(sr_types[i].name, name) == 0)
            return &sr_types[i];
    }
    return NULL;
}

static int sr_isdigit(char c)
{
    return c >= '0' && c <= '9';
}

/*
 * Parses a[0..alen) followed by b[0..blen) (b may be empty) as one strict JSON
 * text (jsonutil.h). The second chunk lets a stored head be completed with "}"
 * without copying it. On success *out is owned by the caller.
 */
static enum sr_error sr_tokenize(const char *a, size_t alen, const char *b, size_t blen,
                                 struct json_object **out, char *detail, size_t detail_len)
{
    switch (jsonutil_parse(a, alen, b, blen, SMARTRACE_MAX_DEPTH, out, detail, detail_len)) {
    case JSONUTIL_OK:
        return SR_OK;
    case JSONUTIL_ERR_DEPTH:
        return SR_ERR_DEPTH;
    case JSONUTIL_ERR_NOMEM:
        return SR_ERR_NOMEM;
    case JSONUTIL_ERR_JSON:
        break;
    }
    return SR_ERR_JSON;
}

bool smartrace_int(struct json_object *v, int64_t *out)
{
    switch (json_object_get_type(v)) {
    case json_type_int:
        /* json-c keeps values above INT64_MAX as uint64 and saturates get_int64. */
        if (json_object_get_int64(v) == INT64_MAX && json_object_get_uint64(v) > INT64_MAX)
            return false;
        *out = json_object_get_int64(v);
        return true;
    case json_type_double: {
        double d = json_object_get_double(v);
        /* -2^63 and 2^63 are exact doubles; the range is half open. */
        if (!isfinite(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
            return false;
        *out = (int64_t)d;
        return true;
    }
    case json_type_string: {
        const char *s = json_object_get_string(v);
        size_t len = (size_t)json_object_get_string_len(v);
        char buf[64];
        /* Digits only, so no locale, whitespace, hex or "inf" from strto*(). */
        if (len == 0 || len >= sizeof buf)
            return false;
        size_t i = (s[0] == '-') ? 1 : 0;
        size_t digits = 0, dot = 0;
        for (; i < len; i++) {
            if (sr_isdigit(s[i])) {
                digits++;
            } else if (s[i] == '.' && !dot && digits > 0) {
                dot = i;
            } else {
                return false;
            }
        }
        if (digits == 0 || (dot && dot == len - 1))
            return false;
        memcpy(buf, s, len);
        buf[len] = '\0';
        errno = 0;
        if (!dot) {
            long long ll = strtoll(buf, NULL, 10);
            if (errno == ERANGE)
                return false;
            *out = (int64_t)ll;
            return true;
        }
        double d = strtod(buf, NULL);
        if (errno == ERANGE || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
            return false;
        *out = (int64_t)d;
        return true;
    }
    default:
        return false;
    }
}

/* A usable controller id: a non-empty string or an integer. */
static bool sr_id_usable(struct json_object *v)
{
    if (json_object_is_type(v, json_type_string))
        return json_object_get_string_len(v) > 0;
    return json_object_is_type(v, json_type_int);
}

/* Fills the controller fields from id (borrowed); id NULL means none. */
static enum sr_error sr_set_controller(struct sr_event *ev, struct json_object *id)
{
    const char *s;
    size_t len;

    ev->controller = NULL;
    ev->has_controller = false;
    ev->controller_id[0] = '\0';
    topic_level(ev->controller_level, NULL, 0);
    if (!id)
        return SR_OK;
    if (json_object_is_type(id, json_type_string)) {
        s = json_object_get_string(id);
        len = (size_t)json_object_get_string_len(id);
    } else {
        /* Printed by json-c so that uint64 values come out exactly. */
        s = json_object_to_json_string_length(id, SR_JSON_FLAGS, &len);
        if (!s)
            return SR_ERR_NOMEM;
    }
    size_t n = len;
    if (n > sizeof ev->controller_id - 1) {
        n = sizeof ev->controller_id - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(ev->controller_id, s, n);
    ev->controller_id[n] = '\0';
    topic_level(ev->controller_level, s, len);
    ev->controller = id;
    ev->has_controller = true;
    return SR_OK;
}

/*
 * Validates root (owned by the caller until success) and fills ev from it.
 * data_key is "event_data" in a webhook body and "data" in a stored payload;
 * a stored payload also names its controller in "controller_id".
 */
/* What v is, for an error a person reads on the page: "a number", "null". */
static const char *sr_kind(struct json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_int:
    case json_type_double:
        return "a number";
    case json_type_boolean:
        return "true or false";
    case json_type_string:
        return "a string";
    case json_type_array:
        return "an array";
    case json_type_object:
        return "an object";
    case json_type_null:
    default:
        return "null";
    }
}

static enum sr_error sr_event_from_root(struct json_object *root, bool stored, struct sr_event *ev,
                                        char *detail, size_t detail_len)
{
    struct json_object *v = NULL;

    if (!json_object_is_type(root, json_type_object)) {
        jsonutil_detail(detail, detail_len, "top level is a JSON %s, not an object",
                        json_type_to_name(json_object_get_type(root)));
        return SR_ERR_NOT_OBJECT;
    }
    if (!json_object_object_get_ex(root, "event_type", &v)) {
        jsonutil_detail(detail, detail_len, "missing event_type");
        return SR_ERR_NO_EVENT_TYPE;
    }
    if (!json_object_is_type(v, json_type_string)) {
        jsonutil_detail(detail, detail_len, "event_type must be a string, not %s", sr_kind(v));
        return SR_ERR_EVENT_TYPE;
    }
    size_t tlen = (size_t)json_object_get_string_len(v);
    const char *type = json_object_get_string(v);
    if (tlen == 0) {
        jsonutil_detail(detail, detail_len, "event_type is empty");
        return SR_ERR_EVENT_TYPE;
    }
    if (tlen > SMARTRACE_MAX_TYPE_LEN) {
        jsonutil_detail(detail, detail_len, "event_type longer than %d bytes",
                        SMARTRACE_MAX_TYPE_LEN);
        return SR_ERR_EVENT_TYPE;
    }
    if (strlen(type) != tlen) {
        jsonutil_detail(detail, detail_len, "event_type contains a NUL character");
        return SR_ERR_EVENT_TYPE;
    }

    ev->type = type;
    ev->has_time = false;
    ev->time_ms = 0;
    if (json_object_object_get_ex(root, "time", &v) && v) {
        if (!smartrace_int(v, &ev->time_ms)) {
            jsonutil_detail(detail, detail_len, "time must be a number of milliseconds, not %s",
                            sr_kind(v));
            return SR_ERR_TIME;
        }
        ev->has_time = true;
    }

    ev->data = NULL;
    /* json-c represents JSON null as a NULL object: absent and null look alike. */
    json_object_object_get_ex(root, stored ? "data" : "event_data", &ev->data);

    const struct sr_type *t = sr_type_find(type);
    ev->kind = t ? t->kind : SR_KIND_OTHER;
    ev->per_controller = t && (t->flags & SR_PER_CONTROLLER);

    struct json_object *id = NULL;
    if (ev->per_controller) {
        if (stored && json_object_object_get_ex(root, "controller_id", &v) && sr_id_usable(v))
            id = v;
        else if (json_object_object_get_ex(ev->data, "controller_id", &v) && sr_id_usable(v))
            id = v;
        else if ((t->flags & SR_BARE_ID) && sr_id_usable(ev->data))
            id = ev->data;
    }
    if (sr_set_controller(ev, id) != SR_OK) {
        jsonutil_detail(detail, detail_len, "out of memory");
        return SR_ERR_NOMEM;
    }
    return SR_OK;
}

static enum sr_error sr_event_build(const char *a, size_t alen, const char *b, size_t blen,
                                    bool stored, struct sr_event *ev, char *detail,
                                    size_t detail_len)
{
    struct json_object *root = NULL;

    memset(ev, 0, sizeof *ev);
    if (detail && detail_len)
        detail[0] = '\0';
    enum sr_error rc = sr_tokenize(a, alen, b, blen, &root, detail, detail_len);
    if (rc != SR_OK)
        return rc;
    rc = sr_event_from_root(root, stored, ev, detail, detail_len);
    if (rc != SR_OK) {
        json_object_put(root);
        memset(ev, 0, sizeof *ev);
        return rc;
    }
    ev->root = root;
    return SR_OK;
}

enum sr_error smartrace_parse(const char *body, size_t len, struct sr_event *ev, char *detail,
                              size_t detail_len)
{
    return sr_event_build(body, len, NULL, 0, false, ev, detail, detail_len);
}

enum sr_error smartrace_event_from_payload(const char *head, size_t head_len, struct sr_event *ev)
{
    /* A head completes with "}"; a sealed payload is already complete, and
     * then the "}" chunk is never fed (see sr_tokenize). */
    return sr_event_build(head, head_len, "}", 1, true, ev, NULL, 0);
}

void smartrace_event_cleanup(struct sr_event *ev)
{
    if (!ev)
        return;
    json_object_put(ev->root);
    memset(ev, 0, sizeof *ev);
}

struct sr_piece {
    const char *s;
    size_t len;
};

int smartrace_map(const struct sr_event *ev, const char *base_topic, struct sr_message *msg)
{
    const struct sr_type *t = ev->type ? sr_type_find(ev->type) : NULL;
    char level[TOPIC_LEVEL_MAX + 1];
    int n;

    memset(msg, 0, sizeof *msg);
    if (!ev->root || !ev->type)
        goto fail;
    if (!t) {
        topic_level(level, ev->type, strlen(ev->type));
        n = snprintf(msg->topic, sizeof msg->topic, "%s/other/%s", base_topic, level);
    } else if (t->flags & SR_PER_CONTROLLER) {
        n = snprintf(msg->topic, sizeof msg->topic, "%s/%s/%s", base_topic, t->topic,
                     ev->has_controller ? ev->controller_level : "_");
    } else {
        n = snprintf(msg->topic, sizeof msg->topic, "%s/%s", base_topic, t->topic);
    }
    if (n < 0 || (size_t)n >= sizeof msg->topic)
        goto fail;

    /* The serialisations below are cached inside the borrowed objects and die
     * with ev->root; they are copied once into the head. */
    struct json_object *type_obj = NULL;
    struct sr_piece type = {NULL, 0}, data = {"null", 4}, cid = {"null", 4};
    char time_buf[24] = "null", lap_buf[48] = "";
    bool cid_quote = false;

    if (!json_object_object_get_ex(ev->root, "event_type", &type_obj))
        goto fail;
    type.s = json_object_to_json_string_length(type_obj, SR_JSON_FLAGS, &type.len);
    if (!type.s)
        goto fail;
    if (ev->has_time)
        snprintf(time_buf, sizeof time_buf, "%" PRId64, ev->time_ms);
    if (ev->data) {
        data.s = json_object_to_json_string_length(ev->data, SR_JSON_FLAGS, &data.len);
        if (!data.s)
            goto fail;
    }
    if (ev->per_controller && ev->has_controller && ev->controller) {
        cid.s = json_object_to_json_string_length(ev->controller, SR_JSON_FLAGS, &cid.len);
        if (!cid.s)
            goto fail;
        /* An integer id prints as digits only and needs no escaping. */
        cid_quote = !json_object_is_type(ev->controller, json_type_string);
    }
    struct json_object *raw;
    int64_t laptime;
    if (ev->kind == SR_KIND_LAP && json_object_object_get_ex(ev->data, "laptime_raw", &raw) &&
        smartrace_int(raw, &laptime) && laptime >= 0)
        snprintf(lap_buf, sizeof lap_buf, ",\"laptime_ms\":%" PRId64, laptime);

    struct sr_piece parts[] = {
        {"{\"event_type\":", 14},
        type,
        {",\"time\":", 8},
        {time_buf, strlen(time_buf)},
        {",\"data\":", 8},
        data,
        {",\"controller_id\":\"", ev->per_controller ? (cid_quote ? 18u : 17u) : 0u},
        {cid.s, ev->per_controller ? cid.len : 0u},
        {"\"", cid_quote ? 1u : 0u},
        {lap_buf, strlen(lap_buf)},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        total += parts[i].len;
    msg->head = malloc(total + SMARTRACE_SEAL_EXTRA);
    if (!msg->head)
        goto fail;
    char *p = msg->head;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        memcpy(p, parts[i].s, parts[i].len);
        p += parts[i].len;
    }
    *p = '\0';
    msg->head_len = total;
    return 0;
fail:
    smartrace_message_cleanup(msg);
    return -1;
}

void smartrace_message_cleanup(struct sr_message *msg)
{
    if (!msg)
        return;
    free(msg->head);
    msg->head = NULL;
    msg->head_len = 0;
    msg->topic[0] = '\0';
}

size_t smartrace_seal(char *out, size_t cap, const char *head, size_t head_len, uint64_t seq)
{
    char tail[SMARTRACE_SEAL_EXTRA];
    int n = snprintf(tail, sizeof tail, ",\"seq\":%" PRIu64 "}", seq);

    if (n < 0 || (size_t)n >= sizeof tail || head_len > SIZE_MAX - (size_t)n - 1 ||
        cap < head_len + (size_t)n + 1)
        return 0;
    if (out != head)
        memmove(out, head, head_len);
    memcpy(out + head_len, tail, (size_t)n + 1);
    return head_len + (size_t)n;
}
