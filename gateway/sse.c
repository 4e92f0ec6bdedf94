/*
 * sse.c - Server-Sent Events for the page (see sse.h).
 *
 * Frames are shared, reference-counted buffers: the thread renders once and
 * every stream sends the same bytes. A stream holds the frame it is sending
 * and an offset; when it is done and no newer frame exists, its content
 * reader suspends the connection and returns 0, the pattern libmicrohttpd
 * prescribes for "no data yet" (returning 0 without suspending would spin).
 * The thread resumes suspended streams when it publishes a frame.
 *
 * Locking: one mutex for the stream list, the current frame and each stream's
 * position. Suspending happens under it, so the thread can never resume a
 * connection between a reader's "nothing to send" and its suspend (the same
 * rule as http.c's waiting requests). Rendering happens outside it.
 *
 * Lifetime: a stream is freed by libmicrohttpd's free callback of its
 * response, which runs once the connection is gone; a suspended connection
 * is never torn down, so the thread only ever resumes live streams.
 */
#include "race2mqtt/sse.h"

#include <json-c/json.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "race2mqtt/clock.h"
#include "race2mqtt/log.h"

/* The browser reconnects this long after a lost stream. */
#define SSE_INTRO "retry: 2000\n\n"
#define SSE_BLOCK 4096
#define SSE_JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

struct frame {
    int refs; /* under sse->lock */
    size_t len;
    char data[];
};

struct stream {
    struct sse *sse;
    struct MHD_Connection *conn;
    struct frame *cur; /* being sent; NULL between frames */
    size_t off;
    size_t intro_off; /* bytes of SSE_INTRO sent */
    uint64_t gen;     /* of the last frame taken */
    bool suspended;
    struct stream *next;
};

struct sse {
    struct sse_hooks hooks;
    int max_streams;

    pthread_mutex_t lock; /* protects what follows */
    pthread_cond_t wake;
    struct stream *streams;
    int nstreams;
    bool fresh_wanted; /* a new stream waits for its first frame */
    bool closing, stop;
    struct frame *frame; /* the newest, shared */
    uint64_t gen;

    pthread_t thread;
    bool running;
};

static void frame_put(struct frame *f)
{
    if (f && --f->refs == 0)
        free(f);
}

void sse_stamp(struct json_object *state)
{
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    json_object_object_add(
        state, "now_ms",
        json_object_new_int64((int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000));
}

/* "event: state\ndata: <json>\n\n": JSON text has no newline to split. */
static struct frame *frame_new(struct json_object *state)
{
    static const char head[] = "event: state\ndata: ";
    sse_stamp(state);
    size_t len;
    const char *json = json_object_to_json_string_length(state, SSE_JSON_FLAGS, &len);
    struct frame *f = json ? malloc(sizeof *f + sizeof head + len + 2) : NULL;
    if (!f)
        return NULL;
    memcpy(f->data, head, sizeof head - 1);
    memcpy(f->data + sizeof head - 1, json, len);
    memcpy(f->data + sizeof head - 1 + len, "\n\n", 2);
    f->len = sizeof head - 1 + len + 2;
    f->refs = 1;
    return f;
}

/* Publishes f (takes its reference) and wakes every waiting stream. Lock held. */
static void publish_locked(struct sse *s, struct frame *f)
{
    frame_put(s->frame);
    s->frame = f;
    s->gen++;
    for (struct stream *st = s->streams; st; st = st->next) {
        if (st->suspended) {
            st->suspended = false;
            MHD_resume_connection(st->conn);
        }
    }
}

static void *run(void *arg)
{
    struct sse *s = arg;
    char *last = NULL;
    uint64_t last_sent = 0;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        if (s->nstreams == 0) {
            /* Nobody watches: render nothing until someone does. */
            free(last);
            last = NULL;
            pthread_cond_wait(&s->wake, &s->lock);
            continue;
        }
        if (!s->fresh_wanted) {
            struct timespec until = realtime_in_us(SSE_CHECK_MS * 1000);
            pthread_cond_timedwait(&s->wake, &s->lock, &until);
        }
        if (s->stop || s->nstreams == 0)
            continue;
        bool fresh = s->fresh_wanted;
        s->fresh_wanted = false;
        pthread_mutex_unlock(&s->lock);

        struct json_object *state = s->hooks.render(s->hooks.ctx);
        const char *text = state ? json_object_to_json_string_ext(state, SSE_JSON_FLAGS) : NULL;
        struct frame *f = NULL;
        if (text) {
            bool changed = !last || strcmp(text, last) != 0;
            if (changed || fresh || mono_ms() - last_sent >= SSE_HEARTBEAT_MS) {
                char *copy = strdup(text);
                f = copy ? frame_new(state) : NULL;
                if (f) {
                    free(last);
                    last = copy;
                    last_sent = mono_ms();
                } else {
                    free(copy);
                }
            }
        }
        json_object_put(state);

        pthread_mutex_lock(&s->lock);
        if (f && !s->closing)
            publish_locked(s, f);
        else
            free(f);
    }
    pthread_mutex_unlock(&s->lock);
    free(last);
    return NULL;
}

struct sse *sse_new(int max_streams, const struct sse_hooks *hooks)
{
    struct sse *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->hooks = *hooks;
    s->max_streams = max_streams;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    return s;
}

int sse_start(struct sse *s, char *err, size_t errlen)
{
    if (pthread_create(&s->thread, NULL, run, s) != 0) {
        snprintf(err, errlen, "http: cannot start the live update thread");
        return -1;
    }
    s->running = true;
    return 0;
}

/* libmicrohttpd asks for the next bytes of a stream. */
static ssize_t read_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct stream *st = cls;
    struct sse *s = st->sse;
    (void)pos;
    pthread_mutex_lock(&s->lock);
    if (s->closing) {
        pthread_mutex_unlock(&s->lock);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    if (st->intro_off < sizeof SSE_INTRO - 1) {
        size_t n = sizeof SSE_INTRO - 1 - st->intro_off;
        n = n < max ? n : max;
        memcpy(buf, SSE_INTRO + st->intro_off, n);
        st->intro_off += n;
        pthread_mutex_unlock(&s->lock);
        return (ssize_t)n;
    }
    if (st->cur && st->off == st->cur->len) {
        frame_put(st->cur);
        st->cur = NULL;
    }
    if (!st->cur) {
        if (!s->frame || st->gen == s->gen) {
            st->suspended = true;
            MHD_suspend_connection(st->conn);
            pthread_mutex_unlock(&s->lock);
            return 0;
        }
        st->cur = s->frame;
        st->cur->refs++;
        st->gen = s->gen;
        st->off = 0;
    }
    size_t n = st->cur->len - st->off;
    n = n < max ? n : max;
    memcpy(buf, st->cur->data + st->off, n);
    st->off += n;
    pthread_mutex_unlock(&s->lock);
    return (ssize_t)n;
}

/* The connection is gone: the stream leaves the list. */
static void free_stream(void *cls)
{
    struct stream *st = cls;
    struct sse *s = st->sse;
    pthread_mutex_lock(&s->lock);
    for (struct stream **pp = &s->streams; *pp; pp = &(*pp)->next) {
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    }
    s->nstreams--;
    frame_put(st->cur);
    pthread_mutex_unlock(&s->lock);
    free(st);
}

struct MHD_Response *sse_open(struct sse *s, struct MHD_Connection *conn)
{
    struct stream *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->sse = s;
    st->conn = conn;
    pthread_mutex_lock(&s->lock);
    bool room = !s->closing && s->nstreams < s->max_streams;
    if (room) {
        /* Counted now, so concurrent opens cannot pass the bound together. */
        s->nstreams++;
        st->gen = s->gen; /* wait for a fresh frame, not the last one */
        st->next = s->streams;
        s->streams = st;
        s->fresh_wanted = true;
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->lock);
    if (!room) {
        free(st);
        return NULL;
    }
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK,
                                                                  read_stream, st, free_stream);
    if (!resp)
        free_stream(st);
    return resp;
}

void sse_close_all(struct sse *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->closing = true;
    for (struct stream *st = s->streams; st; st = st->next) {
        if (st->suspended) {
            st->suspended = false;
            MHD_resume_connection(st->conn);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

int sse_streams(struct sse *s)
{
    if (!s)
        return 0;
    pthread_mutex_lock(&s->lock);
    int n = s->nstreams;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void sse_free(struct sse *s)
{
    if (!s)
        return;
    if (s->running) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
    }
    frame_put(s->frame);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
