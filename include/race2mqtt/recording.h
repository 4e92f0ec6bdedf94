/*
 * recording.h - a race kept as JSON lines, one per accepted SmartRace event,
 * so that it can be replayed into a gateway later (tools/replay.c) or read by
 * anything that reads JSON.
 *
 * Line format (one line, '\n'-terminated):
 *
 *     {"at_ms":1718035201234,"body":"{\"time\":1718035201200,...}"}
 *
 * at_ms is the Unix time in milliseconds at which the gateway accepted the
 * event; body is the webhook body exactly as received, as a JSON *string*:
 * the bytes survive byte for byte (member order, spacing, escapes, numbers
 * written as the app wrote them), which a re-serialised object would not.
 * A reader also takes body as a JSON object, for captures written by hand;
 * that object is replayed as json-c prints it.
 *
 * The writer appends with one write() per line on an O_APPEND descriptor, so
 * a reader that follows the file never sees half a line and two recorders on
 * one file never interleave their lines. There is no fsync: a recording is a
 * convenience, the journal is what keeps events safe.
 */
#ifndef RACE2MQTT_RECORDING_H
#define RACE2MQTT_RECORDING_H

#include <stddef.h>
#include <stdint.h>

/* The largest body a line may carry: http.max_body's upper bound. */
#define RECORDING_MAX_BODY (16u * 1024u * 1024u)
/* The longest line a reader accepts: every body byte escaped as \u00XX, plus
 * the wrapper. */
#define RECORDING_MAX_LINE (6u * RECORDING_MAX_BODY + 64u)
/* Nesting a line may have: the wrapper plus what the gateway accepts in a body. */
#define RECORDING_MAX_DEPTH 33

struct recorder;

/*
 * Opens path for appending (created 0640 if missing). Returns the recorder,
 * which the caller releases with recorder_close(), or NULL with a reason in
 * err.
 */
struct recorder *recorder_open(const char *path, char *err, size_t errlen);

/*
 * Appends one line for a body of len bytes (need not be NUL-terminated,
 * borrowed) accepted at at_ms. One recorder is not thread-safe: call it from
 * one thread at a time (the ingest tap is serialised by ingest's lock).
 * Returns 0, or -1 with errno set: EINVAL (body NULL or empty), EMSGSIZE
 * (longer than RECORDING_MAX_BODY), EILSEQ (not UTF-8: the line could not
 * be read back as JSON), ENOMEM, or the write() error. A short write is
 * undone (the file is cut back to where the line began) and reported as
 * ENOSPC, so a full disk never leaves half a line behind.
 */
int recorder_append(struct recorder *r, uint64_t at_ms, const char *body, size_t len);

/* Closes the file and frees r. r may be NULL. */
void recorder_close(struct recorder *r);

/*
 * Reads one line (len bytes, the trailing '\n' optional, need not be
 * NUL-terminated). On success returns 0 with *at_ms and *body, a malloc'd
 * copy of the body (NUL-terminated; *body_len excludes the NUL, and the body
 * may contain NUL bytes written as \u0000), which the caller frees. On a bad
 * line returns -1 with *why, a static English reason, and *body NULL.
 * Members other than at_ms and body are ignored, so later writers may add
 * some. Pure: no I/O.
 */
int recording_parse_line(const char *line, size_t len, uint64_t *at_ms, char **body,
                         size_t *body_len, const char **why);

#endif
