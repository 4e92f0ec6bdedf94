/*
 * sse.h - GET /events: the page's live updates as Server-Sent Events.
 *
 * One thread renders the state (through a hook) a few times a second while
 * any stream is open, and hands the same frame to every stream when it
 * changed, or at least every SSE_HEARTBEAT_MS (so a page can tell a quiet
 * race from a dead gateway). Streams wait suspended in libmicrohttpd between
 * frames, so an open page costs a connection slot but no worker thread.
 * A stream that reads slower than frames come skips to the newest frame.
 */
#ifndef RACE2MQTT_SSE_H
#define RACE2MQTT_SSE_H

#include <stddef.h>
#include <stdint.h>

struct MHD_Connection;
struct MHD_Response;
struct json_object;
struct sse;

#define SSE_CHECK_MS 250
#define SSE_HEARTBEAT_MS 10000

struct sse_hooks {
    /* The state as GET /api/state has it, without "now_ms" (which changes
     * every time and is added to each frame); the caller puts it. NULL on no
     * memory. Called on the stream thread only. */
    struct json_object *(*render)(void *ctx);
    void *ctx;
};

/* At most max_streams streams at once (0: none). NULL on no memory. */
struct sse *sse_new(int max_streams, const struct sse_hooks *hooks);

/* Starts the thread. 0, or -1 with a reason in err. */
int sse_start(struct sse *s, char *err, size_t errlen);

/*
 * A response for a new stream on conn (an HTTP worker calls this from its
 * request handler and queues it with status 200). NULL when max_streams are
 * open (answer 503) or on no memory.
 */
struct MHD_Response *sse_open(struct sse *s, struct MHD_Connection *conn);

/* Adds "now_ms" (the wall clock, Unix ms) to a state object: pages compute
 * "12 s ago" from it, not from their own clock. */
void sse_stamp(struct json_object *state);

/* Ends every stream and resumes its connection: libmicrohttpd cannot stop
 * with suspended connections. New streams are refused from now on. */
void sse_close_all(struct sse *s);

/* Stops the thread (after sse_close_all()) and frees. Safe with NULL. */
void sse_free(struct sse *s);

#endif
