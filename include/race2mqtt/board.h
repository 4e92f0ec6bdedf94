/*
 * board.h - what the page and GET /api/state tell about the gateway's inputs:
 * the SmartRace link (events by type, the last one and where it came from,
 * refusals with their reasons, CORS preflights), the last accepted raw events,
 * and the RACE RESULT API and devices as the poller last saw them.
 *
 * Every function may be called from any thread: the inputs are hand-offs that
 * copy under the board's own lock and return. The renderers build json-c
 * objects on the caller's thread (json-c objects are not shared between
 * threads). The race itself is not here: it is ingest's state (state_view()).
 */
#ifndef RACE2MQTT_BOARD_H
#define RACE2MQTT_BOARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ingest_accepted;
struct json_object;
struct board;

/* Bounds of what the board keeps (see board.c). */
#define BOARD_TYPES 64    /* event types counted by name; further ones count as "other" */
#define BOARD_REFUSALS 10 /* refusals remembered, newest first */
#define BOARD_DEVICES 64  /* RACE RESULT devices shown */
#define BOARD_KEEP_MAX 1000
#define BOARD_RING_BYTES (1024 * 1024) /* raw events kept, at most */

/* keep_events: how many accepted raw events GET /api/events can show (0: none,
 * at most BOARD_KEEP_MAX). NULL on no memory. */
struct board *board_new(int keep_events);
void board_free(struct board *b);

/* ---- SmartRace (ingest's tap and the HTTP workers) ---- */

/* Every accepted event, in seq order (ingest's tap: quick, no I/O). */
void board_accepted(struct board *b, const struct ingest_accepted *a);

/* The address event seq came from, once the HTTP worker knows it was accepted. */
void board_from(struct board *b, uint64_t seq, const char *from);

/* A POST answered with an error status; reason is the answer's text. */
void board_refused(struct board *b, const char *from, int status, const char *reason);

/* A CORS preflight (OPTIONS); origin may be NULL. */
void board_preflight(struct board *b, const char *from, const char *origin, bool private_network);

/* ---- RACE RESULT (the poller's observer) ---- */

/* One device of a device list. Strings are copied (cut to fit). */
struct board_device {
    const char *level; /* the device's topic level: its key */
    const char *name;
    const char *type;
    bool connected;
    bool has_file, has_records;
    int64_t file, records;
};
void board_rr_device(struct board *b, const struct board_device *d);

/* After a complete list: devices that were not in it are dropped. */
void board_rr_listed(struct board *b);

/* The status payload just published for level (for the battery). */
void board_rr_status(struct board *b, const char *level, const char *payload, size_t len);

/* The last passing payload of a page the broker acknowledged for level. */
void board_rr_passing(struct board *b, const char *level, const char *payload, size_t len);

/* A device list request succeeded (ok) or failed with error (one line). */
void board_rr_api(struct board *b, bool ok, const char *error);

/* ---- rendering (caller puts the result; NULL on no memory) ---- */

/* accepted, refused, last_event, by_type, refusals, last_preflight. */
struct json_object *board_smartrace_json(struct board *b);

/* api, devices. */
struct json_object *board_raceresult_json(struct board *b);

/* {"events":[{seq, at_ms, type, body}]}: the last limit accepted events,
 * oldest first, body as JSON (it was valid JSON when accepted). */
struct json_object *board_events_json(struct board *b, size_t limit);

#endif
