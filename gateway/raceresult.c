/*
 * raceresult.c - RACE RESULT REST answers -> device status and passings, and
 * the MQTT payloads of both. Pure: no I/O.
 *
 * Wire formats (reference/raceresult-rest-api.md "Models"; the real device
 * list in fixtures/raceresult/). The server is written in Go, which shows:
 * members are in alphabetical or struct order, absent values come as Go zero
 * values (0, "", false) and empty slices as null ("Boxes": null).
 *
 *   GET /customers/{cid}/devices -> {"Devices": [record, ...]}
 *     Decoder / TrackBox:  {"DeviceID": "D-4013", "DeviceName": ..., "DeviceType":
 *                           "Decoder"|"TrackBox", "Connected": false, "FileNo": 359,
 *                           "RecordsCount": 0, "BatteryCharge": -1, "Temperature": 21.48,
 *                           "Position": {"Flag": "S", "Latitude": .., "Longitude": ..,
 *                           "Altitude": ..}, "DecoderStatus": {"Firmware", "ErrorFlags",
 *                           "IsInTimingMode", ...} | "TrackboxStatus": {"ReaderStatus", ...}}
 *     Ubidium (no DeviceType): {"System": {"DeviceID", "DeviceName", "Firmware",
 *                           "Temperature"}, "ConnStatus": 0|1|2, "Data": {"FileNumber",
 *                           "PassingNo", "PassingID"}, "Power": {"Battery1": {"Installed",
 *                           "Level", ...}, "Battery2": ...}, "Position": {...}, ...}
 *
 *   GET .../devices/{dev}/detections -> [record, ...], three shapes mixed:
 *     decoder passing   {"FileNo", "PassingNo", "Code", "RealTime", "LoopID", "Channel",
 *                        "Hits", "RSSI", "Battery" (volts), "IsActive", "WUC", ...}
 *     Ubidium detection {"no": {"file", "no"}, "transp": {"id", "active": {"bat" (volts
 *                        x 10), "temp", "wuc"}}, "time", "act_data": {"channel",
 *                        "loop_id"}, "hits", "rssi", "src": {...}, ...}
 *     trackping         {"FileNo", "TrackpingNo", "Code", "Time", "BoxTime", "Received",
 *                        "Hits", "RSSI", "MinRSSI", ...}
 *
 * Times are RFC 3339 with 0-9 fractional digits and "Z" or "+hh:mm"; devices
 * that run on a zero-start clock (IsRunTime) write years 0000 and 0001.
 *
 * Decisions, all of them about input the documentation does not settle:
 * - The body goes through jsonutil_parse() (strict JSON, strict UTF-8, bounded
 *   nesting, RFC 8259 numbers only); any failure there refuses the whole body.
 *   A detections page goes through it record by record, with the same result
 *   (see "detections" below). Past that, a record or field of the wrong type
 *   is "absent", never fatal.
 * - A top-level null is an empty list ("Devices": null, or a null detections
 *   page): that is how Go encodes an empty slice.
 * - A device id is a non-empty string without NUL, or a JSON integer (printed
 *   in decimal), like the SmartRace controller id. DeviceID is looked up first,
 *   then System.DeviceID. Ids longer than RR_ID_MAX bytes are cut at a UTF-8
 *   character boundary.
 * - Counters, file and detection numbers are JSON integers or strings of 1-19
 *   decimal digits ("12"); a file or detection number must also be >= 1.
 *   Fractions, signs, floats ("12.0") and values beyond int64 are not numbers.
 * - Payload members are always present, null when the record lacks them or
 *   carries the wrong type, so that subscribers see one fixed schema per
 *   topic. Values are copied as sent (same JSON text), except battery from an
 *   Ubidium detection (tenths of a volt -> volts) and the derived id/time_ms.
 * - status.battery is BatteryCharge when >= 0, else the Level of the first
 *   installed Ubidium battery (Power.Battery1, then Battery2); -1 means no
 *   reading. status.position is null unless Latitude and Longitude are both
 *   numbers and not both 0: 0/0 is Go's zero value (Ubidiums without a fix
 *   send it), not a place in the Gulf of Guinea.
 * - status.timing_mode is DecoderStatus.IsInTimingMode (bool) or
 *   TrackboxStatus.ReaderStatus (string, ON/SYNC/OFF/...); Ubidium has no such
 *   field, so null.
 */
#include "race2mqtt/raceresult.h"
#include "race2mqtt/jsonutil.h"

#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

/* Years 0000-9999 must fit; a 32-bit time_t would make timegm() fail. */
_Static_assert(sizeof(time_t) >= 8, "64-bit time_t required");

#define RR_JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

const char *rr_strerror(enum rr_error err)
{
    switch (err) {
    case RR_OK:
        return "ok";
    case RR_ERR_JSON:
        return "invalid JSON";
    case RR_ERR_SHAPE:
        return "unexpected JSON shape";
    case RR_ERR_NOMEM:
        return "out of memory";
    }
    return "unknown error";
}

const char *rr_device_type_name(enum rr_device_type t)
{
    switch (t) {
    case RR_DEVICE_DECODER:
        return "Decoder";
    case RR_DEVICE_TRACKBOX:
        return "TrackBox";
    case RR_DEVICE_UBIDIUM:
        return "Ubidium";
    case RR_DEVICE_UNKNOWN:
        break;
    }
    return "unknown";
}

/* ---- reading the tree --------------------------------------------------- */

/* Member key of o (borrowed) when o is an object and the member has type t;
 * NULL otherwise (json-c represents JSON null as NULL, so null is absent). */
static struct json_object *rr_get(struct json_object *o, const char *key, enum json_type t)
{
    struct json_object *v = NULL;
    if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, t))
        return NULL;
    return v;
}

static bool rr_has(struct json_object *o, const char *key)
{
    return json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, key, NULL);
}

/* An int or a double. Sharing the object keeps the number as sent: json-c
 * prints a parsed double from its source text ("21.48", not 21.480000000000001)
 * and an int64 exactly. */
static struct json_object *rr_get_number(struct json_object *o, const char *key)
{
    struct json_object *v = rr_get(o, key, json_type_int);
    return v ? v : rr_get(o, key, json_type_double);
}

/* A JSON integer within int64, or a string of 1-19 decimal digits. */
static bool rr_int(struct json_object *v, int64_t *out)
{
    if (json_object_is_type(v, json_type_int)) {
        /* json-c keeps values above INT64_MAX as uint64 and saturates get_int64. */
        int64_t i = json_object_get_int64(v);
        if (i == INT64_MAX && json_object_get_uint64(v) > INT64_MAX)
            return false;
        *out = i;
        return true;
    }
    if (!json_object_is_type(v, json_type_string))
        return false;
    const char *s = json_object_get_string(v);
    size_t len = (size_t)json_object_get_string_len(v);
    if (len == 0 || len > 19)
        return false;
    int64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        if (__builtin_mul_overflow(n, 10, &n) || __builtin_add_overflow(n, s[i] - '0', &n))
            return false;
    }
    *out = n;
    return true;
}

static bool rr_member_int(struct json_object *o, const char *key, int64_t *out)
{
    struct json_object *v = NULL;
    return json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, key, &v) &&
           rr_int(v, out);
}

/* Bytes of s[0..len) that fit in max without splitting a UTF-8 character. */
static size_t rr_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

static enum rr_error rr_parse_body(const char *body, size_t len, struct json_object **root,
                                   char *detail, size_t detail_len)
{
    switch (jsonutil_parse(body, len, NULL, 0, RR_MAX_DEPTH, root, detail, detail_len)) {
    case JSONUTIL_OK:
        return RR_OK;
    case JSONUTIL_ERR_NOMEM:
        return RR_ERR_NOMEM;
    case JSONUTIL_ERR_JSON:
    case JSONUTIL_ERR_DEPTH:
        break;
    }
    return RR_ERR_JSON;
}

/* ---- device list -------------------------------------------------------- */

/* Sets d->id and d->level from v (borrowed); false when v is no usable id. */
static bool rr_set_id(struct rr_device *d, struct json_object *v)
{
    char num[24];
    const char *s;
    size_t len;
    int64_t i;

    if (json_object_is_type(v, json_type_string)) {
        s = json_object_get_string(v);
        len = (size_t)json_object_get_string_len(v);
        /* An id with an embedded NUL cannot be a C string, a URL path or a topic. */
        if (len == 0 || strlen(s) != len)
            return false;
    } else if (json_object_is_type(v, json_type_int) && rr_int(v, &i)) {
        len = (size_t)snprintf(num, sizeof num, "%" PRId64, i);
        s = num;
    } else {
        return false;
    }
    len = rr_cut(s, len, RR_ID_MAX);
    memcpy(d->id, s, len);
    d->id[len] = '\0';
    topic_level(d->level, d->id, len);
    return true;
}

/* Fills d from rec (borrowed); false when rec has no usable device id. */
static bool rr_device_from(struct rr_device *d, struct json_object *rec)
{
    struct json_object *system = rr_get(rec, "System", json_type_object);
    struct json_object *data = rr_get(rec, "Data", json_type_object);
    struct json_object *v;

    memset(d, 0, sizeof *d);
    if (!json_object_is_type(rec, json_type_object))
        return false;
    if (!(json_object_object_get_ex(rec, "DeviceID", &v) && rr_set_id(d, v)) &&
        !(json_object_object_get_ex(system, "DeviceID", &v) && rr_set_id(d, v)))
        return false;

    if ((v = rr_get(rec, "DeviceType", json_type_string)) != NULL) {
        const char *t = json_object_get_string(v);
        if (strcmp(t, "Decoder") == 0)
            d->type = RR_DEVICE_DECODER;
        else if (strcmp(t, "TrackBox") == 0)
            d->type = RR_DEVICE_TRACKBOX;
    } else if (system) {
        d->type = RR_DEVICE_UBIDIUM;
    }

    if ((v = rr_get(rec, "Connected", json_type_boolean)) != NULL)
        d->connected = json_object_get_boolean(v);
    else if ((v = rr_get(rec, "ConnStatus", json_type_int)) != NULL)
        d->connected = json_object_get_int64(v) == 1; /* 2 is "bad connection" */

    if ((v = rr_get(rec, "DeviceName", json_type_string)) != NULL ||
        (v = rr_get(system, "DeviceName", json_type_string)) != NULL) {
        const char *s = json_object_get_string(v);
        size_t len = rr_cut(s, strnlen(s, (size_t)json_object_get_string_len(v)), RR_NAME_MAX);
        memcpy(d->name, s, len);
        d->name[len] = '\0';
    }

    d->has_file_no =
        rr_member_int(rec, "FileNo", &d->file_no) || rr_member_int(data, "FileNumber", &d->file_no);
    d->has_records = rr_member_int(rec, "RecordsCount", &d->records) ||
                     rr_member_int(data, "PassingNo", &d->records);
    d->raw = rec;
    return true;
}

enum rr_error rr_parse_devices(const char *body, size_t len, struct rr_device_list *out,
                               char *detail, size_t detail_len)
{
    struct json_object *root = NULL, *devices = NULL;
    enum rr_error rc;

    memset(out, 0, sizeof *out);
    if (detail && detail_len)
        detail[0] = '\0';
    rc = rr_parse_body(body, len, &root, detail, detail_len);
    if (rc != RR_OK)
        goto fail;
    rc = RR_ERR_SHAPE;
    if (!json_object_is_type(root, json_type_object)) {
        jsonutil_detail(detail, detail_len, "top level is a JSON %s, not an object",
                  json_type_to_name(json_object_get_type(root)));
        goto fail;
    }
    if (!json_object_object_get_ex(root, "Devices", &devices)) {
        jsonutil_detail(detail, detail_len, "no Devices member");
        goto fail;
    }
    if (devices && !json_object_is_type(devices, json_type_array)) {
        jsonutil_detail(detail, detail_len, "Devices is a JSON %s, not an array",
                  json_type_to_name(json_object_get_type(devices)));
        goto fail;
    }
    size_t n = devices ? json_object_array_length(devices) : 0;
    if (n > 0) {
        out->devices = calloc(n, sizeof *out->devices);
        if (!out->devices) {
            rc = RR_ERR_NOMEM;
            jsonutil_detail(detail, detail_len, "out of memory");
            goto fail;
        }
    }
    for (size_t k = 0; k < n; k++) {
        if (rr_device_from(&out->devices[out->count], json_object_array_get_idx(devices, k)))
            out->count++;
        else
            out->skipped++;
    }
    out->root = root;
    return RR_OK;
fail:
    json_object_put(root);
    rr_device_list_cleanup(out);
    return rc;
}

void rr_device_list_cleanup(struct rr_device_list *list)
{
    if (!list)
        return;
    json_object_put(list->root);
    free(list->devices);
    memset(list, 0, sizeof *list);
}

/* ---- building payloads -------------------------------------------------- */

/* An object under construction; after the first failure every call is a
 * no-op and rr_finish() returns NULL, so builders need no error checks. */
struct rr_builder {
    struct json_object *o;
    bool ok;
};

static void rr_begin(struct rr_builder *b)
{
    b->o = json_object_new_object();
    b->ok = b->o != NULL;
}

/* Adds v, which the builder takes over; v NULL means a failed allocation. */
static void rr_take(struct rr_builder *b, const char *key, struct json_object *v)
{
    if (!b->ok || !v) {
        b->ok = false;
        json_object_put(v);
        return;
    }
    /* Keys are literals and each is added once. */
    if (json_object_object_add_ex(b->o, key, v,
                                  JSON_C_OBJECT_ADD_KEY_IS_NEW | JSON_C_OBJECT_KEY_IS_CONSTANT)) {
        b->ok = false;
        json_object_put(v);
    }
}

/* Adds v (borrowed, shared by reference; NULL gives JSON null). */
static void rr_ref(struct rr_builder *b, const char *key, struct json_object *v)
{
    if (!b->ok)
        return;
    if (json_object_object_add_ex(b->o, key, json_object_get(v),
                                  JSON_C_OBJECT_ADD_KEY_IS_NEW | JSON_C_OBJECT_KEY_IS_CONSTANT)) {
        b->ok = false;
        json_object_put(v);
    }
}

static void rr_take_string(struct rr_builder *b, const char *key, const char *s, size_t len)
{
    rr_take(b, key, b->ok ? json_object_new_string_len(s, (int)len) : NULL);
}

static void rr_take_int(struct rr_builder *b, const char *key, int64_t i)
{
    rr_take(b, key, b->ok ? json_object_new_int64(i) : NULL);
}

/* Serialises and releases the object; malloc'd text or NULL. */
static char *rr_finish(struct rr_builder *b, size_t *len)
{
    char *text = NULL;
    size_t n = 0;

    if (b->ok) {
        const char *s = json_object_to_json_string_length(b->o, RR_JSON_FLAGS, &n);
        if (s && (text = malloc(n + 1)) != NULL)
            memcpy(text, s, n + 1);
    }
    json_object_put(b->o);
    b->o = NULL;
    if (len)
        *len = text ? n : 0;
    return text;
}

/* BatteryCharge when it is a reading, else the first installed Ubidium battery. */
static struct json_object *rr_status_battery(struct json_object *rec)
{
    static const char *const packs[] = {"Battery1", "Battery2"};
    struct json_object *v = rr_get_number(rec, "BatteryCharge");

    if (v)
        return json_object_get_double(v) >= 0 ? v : NULL;
    struct json_object *power = rr_get(rec, "Power", json_type_object);
    for (size_t i = 0; i < sizeof packs / sizeof packs[0]; i++) {
        struct json_object *pack = rr_get(power, packs[i], json_type_object);
        struct json_object *installed = rr_get(pack, "Installed", json_type_boolean);
        v = rr_get_number(pack, "Level");
        if (installed && json_object_get_boolean(installed) && v && json_object_get_double(v) >= 0)
            return v;
    }
    return NULL;
}

static void rr_status_position(struct rr_builder *b, struct json_object *rec)
{
    struct json_object *pos = rr_get(rec, "Position", json_type_object);
    struct json_object *lat = rr_get_number(pos, "Latitude");
    struct json_object *lon = rr_get_number(pos, "Longitude");

    if (!lat || !lon || (json_object_get_double(lat) == 0 && json_object_get_double(lon) == 0)) {
        rr_ref(b, "position", NULL);
        return;
    }
    struct rr_builder p;
    rr_begin(&p);
    rr_ref(&p, "latitude", lat);
    rr_ref(&p, "longitude", lon);
    rr_ref(&p, "altitude", rr_get_number(pos, "Altitude"));
    rr_ref(&p, "flag", rr_get(pos, "Flag", json_type_string));
    if (!p.ok) {
        json_object_put(p.o);
        p.o = NULL;
    }
    rr_take(b, "position", p.o);
}

char *rr_status_payload(const struct rr_device *dev, size_t *len)
{
    struct json_object *rec = dev->raw;
    struct json_object *system = rr_get(rec, "System", json_type_object);
    struct json_object *decoder = rr_get(rec, "DecoderStatus", json_type_object);
    struct json_object *trackbox = rr_get(rec, "TrackboxStatus", json_type_object);
    struct json_object *v;
    struct rr_builder b;

    rr_begin(&b);
    rr_take_string(&b, "device", dev->id, strlen(dev->id));
    v = rr_get(rec, "DeviceName", json_type_string);
    rr_ref(&b, "name", v ? v : rr_get(system, "DeviceName", json_type_string));
    rr_take_string(&b, "type", rr_device_type_name(dev->type),
                   strlen(rr_device_type_name(dev->type)));
    rr_take(&b, "connected", b.ok ? json_object_new_boolean(dev->connected) : NULL);
    rr_ref(&b, "battery", rr_status_battery(rec));
    v = rr_get_number(rec, "Temperature");
    rr_ref(&b, "temperature", v ? v : rr_get_number(system, "Temperature"));
    if (dev->has_file_no)
        rr_take_int(&b, "file", dev->file_no);
    else
        rr_ref(&b, "file", NULL);
    /* The vendor page spells it "IsInTImingMode"; real decoders send "IsInTimingMode". */
    v = rr_get(decoder, "IsInTimingMode", json_type_boolean);
    if (!v)
        v = rr_get(decoder, "IsInTImingMode", json_type_boolean);
    rr_ref(&b, "timing_mode", v ? v : rr_get(trackbox, "ReaderStatus", json_type_string));
    rr_ref(&b, "error_flags", rr_get(decoder, "ErrorFlags", json_type_int));
    rr_status_position(&b, rec);
    v = rr_get(decoder, "Firmware", json_type_string);
    rr_ref(&b, "firmware", v ? v : rr_get(system, "Firmware", json_type_string));
    if (dev->has_records)
        rr_take_int(&b, "records", dev->records);
    else
        rr_ref(&b, "records", NULL);
    rr_ref(&b, "raw", rec);
    return rr_finish(&b, len);
}

/* ---- detections --------------------------------------------------------- */

bool rr_passing_read(struct rr_passing *p, struct json_object *rec)
{
    struct json_object *no = rr_get(rec, "no", json_type_object);

    if (no) {
        p->kind = RR_UBIDIUM_DETECTION;
        if (!rr_member_int(no, "file", &p->file) || !rr_member_int(no, "no", &p->no))
            return false;
    } else if (rr_has(rec, "TrackpingNo")) {
        p->kind = RR_TRACKPING;
        if (!rr_member_int(rec, "FileNo", &p->file) || !rr_member_int(rec, "TrackpingNo", &p->no))
            return false;
    } else if (rr_has(rec, "PassingNo")) {
        p->kind = RR_PASSING;
        if (!rr_member_int(rec, "FileNo", &p->file) || !rr_member_int(rec, "PassingNo", &p->no))
            return false;
    } else {
        return false;
    }
    /* 0 is what Go sends for a missing number; the cursor starts at 1. */
    return p->file >= 1 && p->no >= 1;
}

/*
 * A detections page is walked, not parsed whole. json-c spends about 6 KiB
 * on the tree of a 430-byte decoder passing (an object is a hash table), so
 * the tree of a page of 10,000 took 60 MiB of heap, and it was held while
 * the page was published. The scanner below only finds where each record of
 * the top-level array begins and ends; each record then goes through
 * jsonutil_parse() on its own, becomes its payload and its tree is freed at
 * once. Small trees are also faster to build than one big one (less
 * memory to touch): on pages of the fake decoder's records, 24-29 us per
 * record with its payload, against 38-45 us for the tree of the whole page.
 *
 * Strictness is unchanged: the page is accepted only when the bytes between
 * the records are JSON's own ("[", ",", "]" and the four whitespace bytes,
 * in the right order) and every record is a strict JSON text. A body of that
 * form is one strict JSON text, and every check of jsonutil_parse() holds for
 * the whole when it holds for each record, because the bytes between the
 * records are ASCII, never NUL, never a quote and never part of a number. A
 * wrong cut (brackets that do not match) can only yield a record that is not
 * JSON, so a body the scanner misreads is refused, as it must be. The fuzz
 * target holds every outcome against the page parsed whole.
 *
 * Built payloads are kept rather than record offsets to parse again when the
 * record is published. Measured with bench/rr_backlog.py (100,000 passings):
 * offsets cost the gateway 76-97 us of CPU per passing against 70-83 us for
 * payloads (a second json-c parse of every record), and saved 0.6 MiB of
 * peak RSS at 1,000 records per page (12.5 against 13.1 MiB) and 7 MiB at
 * 10,000 (17 against 24 MiB): the payloads are the records plus 200 bytes,
 * and the poller frees the body as soon as it is parsed.
 */

static bool rr_is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t rr_skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && rr_is_ws(s[i]))
        i++;
    return i;
}

/*
 * *end = one past the value that starts at s[i]: a container up to the
 * bracket that closes it, a string up to its closing quote, anything else up
 * to the next delimiter. Brackets are only counted (a mismatch is found when
 * the record is parsed), and the count is bounded: the page array is level 1,
 * so a record may open RR_MAX_DEPTH - 1 levels.
 */
static enum rr_error rr_value_end(const char *s, size_t len, size_t i, size_t *end, char *detail,
                                  size_t detail_len)
{
    size_t depth = 0;

    for (; i < len; i++) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < len && s[i] != '"'; i++) {
                if (s[i] == '\\')
                    i++;
            }
            if (i >= len)
                goto truncated;
            if (depth == 0) {
                *end = i + 1;
                return RR_OK;
            }
        } else if (c == '{' || c == '[') {
            if (++depth > RR_MAX_DEPTH - 1) {
                jsonutil_detail(detail, detail_len, "JSON nested deeper than %d levels",
                                RR_MAX_DEPTH);
                return RR_ERR_JSON;
            }
        } else if (c == '}' || c == ']') {
            if (depth == 0) { /* a scalar, ended by the page's "]" */
                *end = i;
                return RR_OK;
            }
            if (--depth == 0) {
                *end = i + 1;
                return RR_OK;
            }
        } else if (depth == 0 && (c == ',' || rr_is_ws(c))) {
            *end = i;
            return RR_OK;
        }
    }
    if (depth == 0) {
        *end = len; /* a scalar that runs to the end: the caller finds the page cut short */
        return RR_OK;
    }
truncated:
    jsonutil_detail(detail, detail_len, "invalid JSON: truncated after %zu bytes", len);
    return RR_ERR_JSON;
}

/* A page being read: the list, its capacity and where the records are. */
struct rr_page {
    struct rr_passing_list *out;
    size_t cap;
    const char *device;
    char *detail;
    size_t detail_len;
};

/* Parses the record text[0..len) (at byte offset of the page, the index-th
 * record) on its own and keeps its payload, or counts it as skipped. */
static enum rr_error rr_page_record(struct rr_page *pg, const char *text, size_t len, size_t offset,
                                    size_t index)
{
    struct rr_passing_list *out = pg->out;
    struct json_object *rec = NULL;
    struct rr_passing p = {.index = index};
    char why[160];

    if (len == 0) {
        jsonutil_detail(pg->detail, pg->detail_len, "invalid JSON at byte %zu: record %zu expected",
                        offset, index);
        return RR_ERR_JSON;
    }
    switch (jsonutil_parse(text, len, NULL, 0, RR_MAX_DEPTH - 1, &rec, why, sizeof why)) {
    case JSONUTIL_OK:
        break;
    case JSONUTIL_ERR_NOMEM:
        jsonutil_detail(pg->detail, pg->detail_len, "out of memory");
        return RR_ERR_NOMEM;
    case JSONUTIL_ERR_DEPTH:
        jsonutil_detail(pg->detail, pg->detail_len, "record %zu: JSON nested deeper than %d levels",
                        index, RR_MAX_DEPTH);
        return RR_ERR_JSON;
    case JSONUTIL_ERR_JSON:
        /* why names offsets within the record. */
        jsonutil_detail(pg->detail, pg->detail_len, "record %zu at byte %zu: %s", index, offset,
                        why);
        return RR_ERR_JSON;
    }
    if (!rr_passing_read(&p, rec)) {
        json_object_put(rec);
        out->skipped++;
        return RR_OK;
    }
    if (out->count == pg->cap) {
        size_t cap = pg->cap ? pg->cap * 2 : 64;
        struct rr_passing *items = realloc(out->items, cap * sizeof *items);
        if (!items) {
            json_object_put(rec);
            jsonutil_detail(pg->detail, pg->detail_len, "out of memory");
            return RR_ERR_NOMEM;
        }
        out->items = items;
        pg->cap = cap;
    }
    p.payload = rr_passing_payload(&p, rec, pg->device, &p.payload_len);
    json_object_put(rec);
    if (!p.payload) {
        jsonutil_detail(pg->detail, pg->detail_len, "out of memory");
        return RR_ERR_NOMEM;
    }
    out->items[out->count++] = p;
    return RR_OK;
}

/* Anything but an array: parsed whole, only to tell null (an empty page), a
 * JSON value of the wrong shape and no JSON apart. */
static enum rr_error rr_page_other(const char *body, size_t len, char *detail, size_t detail_len)
{
    struct json_object *root = NULL;
    enum rr_error rc = rr_parse_body(body, len, &root, detail, detail_len);
    if (rc == RR_OK && root) {
        rc = RR_ERR_SHAPE;
        jsonutil_detail(detail, detail_len, "top level is a JSON %s, not an array",
                        json_type_to_name(json_object_get_type(root)));
    }
    json_object_put(root);
    return rc;
}

enum rr_error rr_parse_detections(const char *body, size_t len, const char *device,
                                  struct rr_passing_list *out, char *detail, size_t detail_len)
{
    struct rr_page pg = {out, 0, device, detail, detail_len};
    enum rr_error rc = RR_ERR_JSON;
    size_t i, end, n = 0;

    memset(out, 0, sizeof *out);
    if (detail && detail_len)
        detail[0] = '\0';
    if (!body)
        len = 0;
    i = rr_skip_ws(body, len, 0);
    if (i == len || body[i] != '[' || len > INT_MAX / 2)
        return rr_page_other(body, len, detail, detail_len);
    i = rr_skip_ws(body, len, i + 1);
    if (i < len && body[i] == ']') {
        i++;
    } else {
        for (;; n++) {
            if ((rc = rr_value_end(body, len, i, &end, detail, detail_len)) != RR_OK ||
                (rc = rr_page_record(&pg, body + i, end - i, i, n)) != RR_OK)
                goto fail;
            i = rr_skip_ws(body, len, end);
            rc = RR_ERR_JSON;
            if (i == len) {
                jsonutil_detail(detail, detail_len, "invalid JSON: truncated after %zu bytes", len);
                goto fail;
            }
            if (body[i] == ']') {
                i++;
                break;
            }
            if (body[i] != ',') {
                jsonutil_detail(detail, detail_len,
                                "invalid JSON at byte %zu: ',' or ']' expected after record %zu", i,
                                n);
                goto fail;
            }
            i = rr_skip_ws(body, len, i + 1);
        }
    }
    if (rr_skip_ws(body, len, i) != len) {
        jsonutil_detail(detail, detail_len, "invalid JSON at byte %zu: garbage after the page",
                        rr_skip_ws(body, len, i));
        goto fail;
    }
    return RR_OK;
fail:
    rr_passing_list_cleanup(out);
    return rc;
}

void rr_passing_list_cleanup(struct rr_passing_list *list)
{
    if (!list)
        return;
    for (size_t i = 0; i < list->count; i++)
        free(list->items[i].payload);
    free(list->items);
    memset(list, 0, sizeof *list);
}

/* The bytes of device used in ids and payloads: up to the first invalid UTF-8
 * byte (the poller may pass a configured id), cut at RR_ID_MAX. */
static size_t rr_device_len(const char *device)
{
    size_t len = strlen(device);
    len = jsonutil_utf8_check((const unsigned char *)device, len);
    return rr_cut(device, len, RR_ID_MAX);
}

void rr_passing_id(char *out, size_t cap, const char *device, int64_t file, int64_t no)
{
    if (!out || cap == 0)
        return;
    if (!device)
        device = "";
    snprintf(out, cap, "%.*s/%" PRId64 "/%" PRId64, (int)rr_device_len(device), device, file, no);
}

/* Tenths of a volt as a JSON number with exactly that text ("3.1", not
 * json-c's "%.17g" rendering 3.1000000000000001). */
static struct json_object *rr_decivolts(int64_t tenths)
{
    char text[32];
    uint64_t mag = tenths < 0 ? (uint64_t)0 - (uint64_t)tenths : (uint64_t)tenths;
    snprintf(text, sizeof text, "%s%" PRIu64 ".%" PRIu64, tenths < 0 ? "-" : "", mag / 10,
             mag % 10);
    return json_object_new_double_s((double)tenths / 10.0, text);
}

/* Milliseconds since the epoch (rounded down) of a time string (borrowed). */
static bool rr_time_ms(struct json_object *time, int64_t *ms)
{
    int64_t sec;
    int32_t nsec;

    if (!time)
        return false;
    const char *s = json_object_get_string(time);
    /* An embedded NUL would let a valid prefix pass for the whole string. */
    if (strlen(s) != (size_t)json_object_get_string_len(time) ||
        rr_parse_time_parts(s, &sec, &nsec) != 0)
        return false;
    *ms = sec * 1000 + nsec / 1000000;
    return true;
}

char *rr_passing_payload(const struct rr_passing *p, struct json_object *rec, const char *device,
                         size_t *len)
{
    static const char *const kinds[] = {[RR_PASSING] = "passing",
                                        [RR_UBIDIUM_DETECTION] = "detection",
                                        [RR_TRACKPING] = "trackping"};
    struct json_object *transponder, *time, *loop, *channel, *hits, *rssi, *battery = NULL;
    char id[RR_PASSING_ID_MAX + 1];
    struct rr_builder b;
    bool has_decivolts = false;
    int64_t decivolts = 0, ms;

    if (!device)
        device = "";
    if (p->kind == RR_UBIDIUM_DETECTION) {
        struct json_object *transp = rr_get(rec, "transp", json_type_object);
        struct json_object *act = rr_get(rec, "act_data", json_type_object);
        transponder = rr_get(transp, "id", json_type_string);
        time = rr_get(rec, "time", json_type_string);
        loop = rr_get(act, "loop_id", json_type_int);
        channel = rr_get(act, "channel", json_type_int);
        hits = rr_get(rec, "hits", json_type_int);
        rssi = rr_get(rec, "rssi", json_type_int);
        struct json_object *bat =
            rr_get(rr_get(transp, "active", json_type_object), "bat", json_type_int);
        has_decivolts = bat && rr_int(bat, &decivolts);
    } else {
        transponder = rr_get(rec, "Code", json_type_string);
        time = rr_get(rec, p->kind == RR_TRACKPING ? "Time" : "RealTime", json_type_string);
        loop = rr_get(rec, "LoopID", json_type_int);
        channel = rr_get(rec, "Channel", json_type_int);
        hits = rr_get(rec, "Hits", json_type_int);
        rssi = rr_get(rec, "RSSI", json_type_int);
        battery = rr_get_number(rec, "Battery");
    }

    rr_passing_id(id, sizeof id, device, p->file, p->no);
    rr_begin(&b);
    rr_take_string(&b, "id", id, strlen(id));
    rr_take_string(&b, "device", device, rr_device_len(device));
    rr_take_int(&b, "file", p->file);
    rr_take_int(&b, "no", p->no);
    const char *kind =
        (size_t)p->kind < sizeof kinds / sizeof kinds[0] ? kinds[p->kind] : "unknown";
    rr_take_string(&b, "kind", kind, strlen(kind));
    rr_ref(&b, "transponder", transponder);
    rr_ref(&b, "time", time);
    if (rr_time_ms(time, &ms))
        rr_take_int(&b, "time_ms", ms);
    else
        rr_ref(&b, "time_ms", NULL);
    rr_ref(&b, "loop", loop);
    rr_ref(&b, "channel", channel);
    rr_ref(&b, "hits", hits);
    rr_ref(&b, "rssi", rssi);
    if (has_decivolts)
        rr_take(&b, "battery", b.ok ? rr_decivolts(decivolts) : NULL);
    else
        rr_ref(&b, "battery", battery);
    rr_ref(&b, "raw", rec);
    return rr_finish(&b, len);
}

/* ---- time --------------------------------------------------------------- */

/* Exactly n ASCII digits at s. */
static bool rr_digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/*
 * RFC 3339 fields are fixed width, so the digits are read here; strptime()
 * would also take "2025-5-1T1:2:3" and leading blanks. timegm() does the
 * calendar, and a date that it normalises into another (Feb 30 -> Mar 2) does
 * not exist.
 */
int rr_parse_time_parts(const char *s, int64_t *utc_sec, int32_t *nsec)
{
    int year, mon, day, hour, min, sec, frac = 0, off = 0;

    if (!s)
        return -1;
    if (!rr_digits(s, 4, &year) || s[4] != '-' || !rr_digits(s + 5, 2, &mon) || s[7] != '-' ||
        !rr_digits(s + 8, 2, &day) || s[10] != 'T' || !rr_digits(s + 11, 2, &hour) ||
        s[13] != ':' || !rr_digits(s + 14, 2, &min) || s[16] != ':' || !rr_digits(s + 17, 2, &sec))
        return -1;
    const char *p = s + 19;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++) {
            if (++digits > 9)
                return -1;
            frac = frac * 10 + (*p - '0');
        }
        if (digits == 0)
            return -1;
        for (; digits < 9; digits++)
            frac *= 10;
    }
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!rr_digits(p + 1, 2, &oh) || p[3] != ':' || !rr_digits(p + 4, 2, &om) || oh > 23 ||
            om > 59)
            return -1;
        off = (oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -1;
    }
    if (*p != '\0' || mon < 1 || mon > 12 || day < 1 || hour > 23 || min > 59 || sec > 60)
        return -1;

    struct tm tm = {0};
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec == 60 ? 59 : sec; /* a leap second is the next second in POSIX time */
    time_t t = timegm(&tm);
    if (tm.tm_year != year - 1900 || tm.tm_mon != mon - 1 || tm.tm_mday != day)
        return -1;
    *utc_sec = (int64_t)t + (sec == 60) - off;
    *nsec = frac;
    return 0;
}

int rr_parse_time(const char *s, int64_t *utc_ns)
{
    int64_t sec, ns;
    int32_t nsec;

    if (rr_parse_time_parts(s, &sec, &nsec) != 0)
        return -1;
    /* Borrow a second before 1970 so that INT64_MIN itself stays reachable. */
    if (sec < 0 && nsec > 0) {
        sec++;
        nsec -= 1000000000;
    }
    if (__builtin_mul_overflow(sec, (int64_t)1000000000, &ns) ||
        __builtin_add_overflow(ns, (int64_t)nsec, &ns))
        return -1;
    *utc_ns = ns;
    return 0;
}
