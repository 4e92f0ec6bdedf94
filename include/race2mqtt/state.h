/*
 * state.h - the race as it is now, for the retained smartrace/state/... topics.
 * Pure and single-threaded: the caller serialises access.
 *
 * Events are applied in seq order. Every change marks its topic; state_emit()
 * hands the marked topics (or all of them after a reconnect) to the caller to
 * publish retained. A snapshot (state_save/state_load) carries the seq of the
 * last applied event so that a restart can replay only the journal after it.
 */
#ifndef RACE2MQTT_STATE_H
#define RACE2MQTT_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sr_event;

/* Controllers tracked at most; events for further ids are not kept in state. */
#define STATE_MAX_CONTROLLERS 64

struct state;

/* base_topic is the smartrace base ("smartrace"); copied. NULL on no memory. */
struct state *state_new(const char *base_topic);
void state_free(struct state *st);

/* Applies one event. Unknown types and malformed data change nothing (but
 * still advance the seq). An event with seq <= state_seq() is ignored: it is
 * already in the state (a journal replay overlapping the snapshot). */
void state_apply(struct state *st, const struct sr_event *ev, uint64_t seq);

/* seq of the last applied event, 0 when none. */
uint64_t state_seq(const struct state *st);

/* payload == NULL with len 0 means "delete the retained message". */
typedef void (*state_emit_fn)(void *ctx, const char *topic, const char *payload, size_t len);

/*
 * Calls fn for every topic changed since the last call (all = false) or for
 * every topic that has a value plus pending deletions (all = true, after a
 * reconnect), then clears the marks. Payload pointers live until fn returns.
 */
void state_emit(struct state *st, bool all, state_emit_fn fn, void *ctx);

/* True when state_emit(st, false, ...) would emit something. */
bool state_dirty(const struct state *st);

/* True when a race-level topic changed (status, flag, weather, VSC, event,
 * track) or a controller is to be deleted: changes worth sending at once,
 * unlike the laps that move controllers and standings. */
bool state_race_dirty(const struct state *st);

/* Calls fn for every controller in the state, in no particular order, with
 * its topic level and the seq of its last event (0 after a restart, until
 * its next event). For outputs that follow the controllers (discovery). */
typedef void (*state_controller_fn)(void *ctx, const char *level, uint64_t event_seq);
void state_controllers(const struct state *st, state_controller_fn fn, void *ctx);

/*
 * The race as one JSON object for the page and GET /api/state (caller puts
 * it): seq, status, flag, weather, vsc, event, track (null when unknown),
 * standings (the entries of <base>/state/standings) and controllers (the
 * objects of <base>/state/controller/<id>, by position, then those without
 * one by id). The same payload builders as state_emit(), so the two cannot
 * disagree. Changes no mark. NULL on no memory.
 */
struct json_object;
struct json_object *state_view(struct state *st);

/* The whole state as JSON text (malloc'd, caller frees), including its seq. */
char *state_save(const struct state *st);

/* Replaces st with a snapshot made by state_save(); -1 (st unchanged) if invalid.
 * Marks everything for emission. */
int state_load(struct state *st, const char *text, size_t len);

#endif
