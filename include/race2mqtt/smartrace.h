/*
 * smartrace.h - the SmartRace data interface: webhook body -> event -> MQTT
 * message. Pure: no I/O, no globals, no locks.
 *
 * The app POSTs {"time": <epoch ms>, "event_type": "<name>", "event_data": ...}.
 * smartrace_parse() validates and borrows from the parsed envelope;
 * smartrace_map() decides the topic and builds the payload. The payload leaves
 * here as a JSON object *without its closing brace* (the "head"): the sequence
 * number is only known once the journal accepts the event, and sealing with
 * smartrace_seal() is a cheap append instead of a second serialisation.
 */
#ifndef RACE2MQTT_SMARTRACE_H
#define RACE2MQTT_SMARTRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "race2mqtt/topic.h"

struct json_object;

/* Bounds on untrusted input. */
#define SMARTRACE_MAX_DEPTH 32     /* JSON nesting */
#define SMARTRACE_MAX_TYPE_LEN 128 /* event_type bytes */
#define SMARTRACE_TOPIC_MAX 320    /* a full topic, base included */

enum sr_error {
    SR_OK = 0,
    SR_ERR_JSON,          /* not JSON, truncated, trailing garbage, invalid UTF-8 */
    SR_ERR_DEPTH,         /* nested deeper than SMARTRACE_MAX_DEPTH */
    SR_ERR_NOT_OBJECT,    /* top level is not an object */
    SR_ERR_NO_EVENT_TYPE, /* event_type missing */
    SR_ERR_EVENT_TYPE,    /* event_type not a non-empty string of sane length */
    SR_ERR_TIME,          /* time present but neither a number, a numeric string nor null */
    SR_ERR_NOMEM,
};

/* A short English reason for an error, for the 400 body. Never NULL. */
const char *smartrace_strerror(enum sr_error err);

/* The event types the gateway knows (SPEC section 2); anything else is OTHER. */
enum sr_kind {
    SR_KIND_OTHER = 0,
    SR_KIND_LAP,              /* ui.lap_update */
    SR_KIND_EVENT_START,      /* event.start */
    SR_KIND_EVENT_END,        /* event.end */
    SR_KIND_STATUS,           /* event.change_status */
    SR_KIND_WEATHER_CHANGE,   /* events.weather_change */
    SR_KIND_WEATHER_FORECAST, /* events.weather_update */
    SR_KIND_VSC_DEPLOYED,     /* race.vsc_deployed */
    SR_KIND_VSC_RETRACTED,    /* race.vsc_retracted */
    SR_KIND_PENALTY,          /* race.penalty_update */
    SR_KIND_DAMAGE,           /* race.damage_update */
    SR_KIND_FUEL,             /* util.fuel_update */
    SR_KIND_TIRE,             /* events.tire_change */
    SR_KIND_PIT_ENTER,        /* event.pit.enter */
    SR_KIND_PIT_LEAVE,        /* event.pit.leave */
    SR_KIND_TRACK,            /* util.set_active_track */
    SR_KIND_RESET,            /* ui.reset */
    SR_KIND_REMOVE,           /* ui.remove_car_from_session */
    SR_KIND_ESC,              /* cu.send_esc_command */
};

struct sr_event {
    struct json_object *root; /* owned: the parsed envelope (or stored payload) */
    const char *type;         /* borrowed from root: event_type */
    enum sr_kind kind;
    bool has_time;
    int64_t time_ms;          /* valid when has_time */
    struct json_object *data; /* borrowed: event_data; NULL when absent or null */
    /* Per-controller events only: the controller id as sent, as a string
     * (integers printed in decimal), and its sanitised topic level ("_" when
     * the event should have one and has none). */
    bool per_controller;
    bool has_controller;
    char controller_id[TOPIC_LEVEL_MAX * 4 + 1]; /* raw string, cut at this size (at a
                                                    UTF-8 character boundary); an
                                                    embedded NUL ends it early */
    char controller_level[TOPIC_LEVEL_MAX + 1];
    struct json_object *controller; /* borrowed: the id as sent (string or integer),
                                       NULL when has_controller is false */
};

/*
 * Parses a webhook body of len bytes (need not be NUL-terminated).
 * On success ev owns a reference and must be released with
 * smartrace_event_cleanup(). On failure ev holds nothing and detail (may be
 * NULL) receives a one-line reason naming the problem.
 */
enum sr_error smartrace_parse(const char *body, size_t len, struct sr_event *ev, char *detail,
                              size_t detail_len);

/* Releases what smartrace_parse() or smartrace_event_from_payload() set. Safe twice. */
void smartrace_event_cleanup(struct sr_event *ev);

struct sr_message {
    char topic[SMARTRACE_TOPIC_MAX];
    char *head;      /* payload JSON object without the closing '}'; owned (free()) */
    size_t head_len;
};

/*
 * Maps an event to its topic below base_topic and builds the payload head:
 * event_type, time (or null), data (event_data exactly as sent, or null),
 * controller_id on per-controller topics, and laptime_ms on laps when known.
 * Returns 0, or -1 when out of memory or when base_topic is too long for
 * SMARTRACE_TOPIC_MAX (keep it below SMARTRACE_TOPIC_MAX - 80 bytes).
 * Release msg with smartrace_message_cleanup().
 *
 * msg->head is NUL-terminated and has room for SMARTRACE_SEAL_EXTRA more bytes,
 * so it can be sealed in place:
 *     smartrace_seal(msg->head, msg->head_len + SMARTRACE_SEAL_EXTRA, msg->head,
 *                    msg->head_len, seq)
 */
int smartrace_map(const struct sr_event *ev, const char *base_topic, struct sr_message *msg);

void smartrace_message_cleanup(struct sr_message *msg);

/* Room smartrace_seal() needs beyond head_len. */
#define SMARTRACE_SEAL_EXTRA 32

/*
 * Writes head + ,"seq":N} into out (cap >= head_len + SMARTRACE_SEAL_EXTRA),
 * NUL-terminated. out may be head itself. Returns the payload length, or 0 when
 * cap is too small (out untouched).
 */
size_t smartrace_seal(char *out, size_t cap, const char *head, size_t head_len, uint64_t seq);

/*
 * Rebuilds an event from a stored payload head (journal replay at start); a
 * sealed payload is accepted too. The controller comes from the payload's
 * controller_id, the time from its time. Same ownership as smartrace_parse().
 */
enum sr_error smartrace_event_from_payload(const char *head, size_t head_len, struct sr_event *ev);

/*
 * Reads an integer that SmartRace may send as a JSON number (integer or
 * fraction, truncated toward zero) or as a numeric string ("50", "-1", "12.5").
 * Returns false for anything else: other types, "", " 5", "0x10", NaN,
 * values outside int64. v may be NULL (false).
 */
bool smartrace_int(struct json_object *v, int64_t *out);

#endif
