/*
 * ingest.h - from an accepted webhook body to a journaled message, in seq order.
 *
 * ingest owns the retained race state: an event is parsed and mapped outside
 * any lock, then journaled and applied to the state under one lock, so the
 * state is always "every event up to seq N" and can be rebuilt after a
 * restart from a snapshot plus the journal after it.
 */
#ifndef RACE2MQTT_INGEST_H
#define RACE2MQTT_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "race2mqtt/state.h"

struct config;
struct journal;
struct ingest;

/* One accepted event, as the tap sees it. Pointers live until the tap returns. */
struct ingest_accepted {
    uint64_t seq;
    int64_t at_ms;    /* wall clock when it was journaled (Unix ms) */
    const char *type; /* event_type as sent */
    const char *body; /* the raw body, exactly as received */
    size_t len;
};

/*
 * Who else sees every accepted event (the page, the recording). Called on the
 * HTTP worker with ingest's lock held, so taps see events in seq order: copy
 * what you keep and return; never call back into ingest.
 */
struct ingest_tap {
    void (*accepted)(void *ctx, const struct ingest_accepted *a);
    void *ctx;
};

/* Creates the ingest path over j (borrowed, must outlive it); tap (may be
 * NULL) is copied. NULL on no memory. */
struct ingest *ingest_new(const struct config *cfg, struct journal *j,
                          const struct ingest_tap *tap);
void ingest_free(struct ingest *in);

/*
 * Loads <store.dir>/state.json if present and replays the journal after its
 * seq, so the state is as it was at the last accepted event. Returns 0, or -1
 * with a reason in err (an unreadable snapshot is logged and ignored, not an
 * error).
 */
int ingest_restore(struct ingest *in, char *err, size_t errlen);

enum ingest_result {
    INGEST_OK,      /* journaled; durable once the journal commits *seq */
    INGEST_INVALID, /* malformed input: 400, detail says why */
    INGEST_FULL,    /* journal full: 503 */
    INGEST_ERROR,   /* journal cannot write or no memory: 503 */
};

/*
 * Accepts one SmartRace webhook body. Any thread. On INGEST_OK, *seq is the
 * event's sequence number. detail receives a one-line reason otherwise.
 */
enum ingest_result ingest_event(struct ingest *in, const char *body, size_t len, uint64_t *seq,
                                char *detail, size_t detail_len);

/* Publisher side: see state_emit(). Takes the lock for the duration. */
void ingest_emit_state(struct ingest *in, bool all, state_emit_fn fn, void *ctx);
/* Whether state_emit() has something to emit; *race (may be NULL): see
 * state_race_dirty(). */
bool ingest_state_dirty(struct ingest *in, bool *race);

/* See state_view(); caller puts it. Takes the lock for the duration. */
struct json_object *ingest_view(struct ingest *in);

/* See state_controllers(). Takes the lock for the duration: fn must be quick
 * and must not call back into ingest. */
void ingest_controllers(struct ingest *in, state_controller_fn fn, void *ctx);

/*
 * Starts the thread that writes the state snapshot atomically (temp file,
 * fsync, rename, fsync of the directory) about once a second when it changed.
 * It has its own thread because an fsync on the publisher's path would stall
 * every event behind it.
 */
int ingest_start(struct ingest *in, char *err, size_t errlen);

/* Writes a last snapshot and stops the thread. Safe twice. */
void ingest_stop(struct ingest *in);

/* The seq the snapshot on disk covers: the journal may forget up to here. */
uint64_t ingest_saved_seq(struct ingest *in);

#endif
