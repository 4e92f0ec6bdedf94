/*
 * ingest.c - accepted SmartRace input: parse, map, journal, apply to state.
 *
 * Parsing and mapping (the expensive part) run on the calling HTTP worker
 * without a lock. Journal append and state update happen under one mutex, so
 * seqs are handed out in the order the state sees the events. That invariant
 * is what lets a restart rebuild the state from <store.dir>/state.json (which
 * records the seq it covers) plus the journal records after that seq; the
 * publisher releases journal segments only up to the snapshot's seq.
 */
#include "race2mqtt/ingest.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "race2mqtt/clock.h"
#include "race2mqtt/config.h"
#include "race2mqtt/journal.h"
#include "race2mqtt/log.h"
#include "race2mqtt/metrics.h"
#include "race2mqtt/smartrace.h"
#include "race2mqtt/state.h"

/* A snapshot larger than this is not ours: 64 controllers of JSON are ~50 KiB. */
#define SNAPSHOT_MAX_BYTES (16 * 1024 * 1024)
#define SNAPSHOT_INTERVAL_S 1

struct ingest {
    const struct config *cfg;
    struct journal *j;
    struct ingest_tap tap;
    pthread_mutex_t lock;
    struct state *st;           /* under lock */
    bool full;                  /* under lock: refusing because the journal is full */
    _Atomic uint64_t saved_seq; /* seq covered by the snapshot on disk */
    char path[PATH_MAX];        /* <store.dir>/state.json */
    char tmp[PATH_MAX];

    /* The snapshot writer. */
    pthread_t saver;
    bool saver_running;
    pthread_mutex_t saver_lock;
    pthread_cond_t saver_cond;
    bool saver_stop;
};

struct ingest *ingest_new(const struct config *cfg, struct journal *j, const struct ingest_tap *tap)
{
    struct ingest *in = calloc(1, sizeof *in);
    if (!in)
        return NULL;
    in->cfg = cfg;
    in->j = j;
    if (tap)
        in->tap = *tap;
    in->st = state_new(cfg->smartrace.base_topic);
    if (!in->st) {
        free(in);
        return NULL;
    }
    pthread_mutex_init(&in->lock, NULL);
    pthread_mutex_init(&in->saver_lock, NULL);
    pthread_cond_init(&in->saver_cond, NULL);
    snprintf(in->path, sizeof in->path, "%s/state.json", cfg->store.dir);
    snprintf(in->tmp, sizeof in->tmp, "%s/state.json.tmp", cfg->store.dir);
    return in;
}

void ingest_free(struct ingest *in)
{
    if (!in)
        return;
    ingest_stop(in);
    state_free(in->st);
    pthread_cond_destroy(&in->saver_cond);
    pthread_mutex_destroy(&in->saver_lock);
    pthread_mutex_destroy(&in->lock);
    free(in);
}

/* Reads a whole small file; returns malloc'd text or NULL (errno set). */
static char *read_file(const char *path, size_t max, size_t *len)
{
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size < 0 || (size_t)sb.st_size > max) {
        errno = EFBIG;
        goto out;
    }
    buf = malloc((size_t)sb.st_size + 1);
    if (!buf)
        goto out;
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
        if (n <= 0) {
            free(buf);
            buf = NULL;
            goto out;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    *len = got;
out:
    close(fd);
    return buf;
}

int ingest_restore(struct ingest *in, char *err, size_t errlen)
{
    size_t len = 0;
    char *text = read_file(in->path, SNAPSHOT_MAX_BYTES, &len);
    if (text) {
        if (state_load(in->st, text, len) != 0)
            log_warn("state: %s is not a valid snapshot; rebuilding from the journal", in->path);
        free(text);
    } else if (errno != ENOENT) {
        log_warn("state: cannot read %s: %s; rebuilding from the journal", in->path,
                 strerror(errno));
    }
    atomic_store(&in->saved_seq, state_seq(in->st));

    /* Replay what the snapshot does not cover yet. */
    struct journal_pos pos;
    struct journal_record rec;
    char *buf = NULL;
    size_t cap = 0;
    uint64_t replayed = 0;
    int rc;
    journal_seek(in->j, state_seq(in->st), &pos);
    while ((rc = journal_read(in->j, &pos, &rec, &buf, &cap)) == 1) {
        struct sr_event ev;
        if (smartrace_event_from_payload(rec.payload, rec.payload_len, &ev) == SR_OK) {
            state_apply(in->st, &ev, rec.seq);
            smartrace_event_cleanup(&ev);
            replayed++;
        } else {
            log_warn("state: journal record %llu is not an event; skipped",
                     (unsigned long long)rec.seq);
        }
    }
    free(buf);
    if (rc < 0) {
        snprintf(err, errlen, "state: cannot replay the journal (see above)");
        return -1;
    }
    log_info("state: restored up to seq %llu (%llu events replayed from the journal)",
             (unsigned long long)state_seq(in->st), (unsigned long long)replayed);
    return 0;
}

/* The family of a mapped topic is the level after the smartrace base. */
static void count_family(const struct ingest *in, const char *topic)
{
    size_t base = strlen(in->cfg->smartrace.base_topic);
    const char *family = topic + base + (topic[base] == '/');
    metrics_event_in(family, strcspn(family, "/"));
}

enum ingest_result ingest_event(struct ingest *in, const char *body, size_t len, uint64_t *seq,
                                char *detail, size_t detail_len)
{
    struct sr_event ev;
    struct sr_message msg = {0};
    enum ingest_result result = INGEST_OK;

    enum sr_error perr = smartrace_parse(body, len, &ev, detail, detail_len);
    if (perr != SR_OK) {
        if (detail && detail[0] == '\0')
            snprintf(detail, detail_len, "%s", smartrace_strerror(perr));
        return perr == SR_ERR_NOMEM ? INGEST_ERROR : INGEST_INVALID;
    }
    if (smartrace_map(&ev, in->cfg->smartrace.base_topic, &msg) != 0) {
        snprintf(detail, detail_len, "out of memory");
        result = INGEST_ERROR;
        goto out;
    }

    pthread_mutex_lock(&in->lock);
    enum journal_error jerr = journal_append(in->j, msg.topic, msg.head, msg.head_len, seq);
    if (jerr == JOURNAL_OK) {
        state_apply(in->st, &ev, *seq);
        if (in->tap.accepted) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            struct ingest_accepted a = {
                .seq = *seq,
                .at_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000,
                .type = ev.type,
                .body = body,
                .len = len,
            };
            in->tap.accepted(in->tap.ctx, &a);
        }
    }
    /* One line when the journal fills up and one when it has room again, not
     * one per refused webhook. */
    if ((jerr == JOURNAL_FULL) != in->full) {
        in->full = jerr == JOURNAL_FULL;
        if (in->full)
            log_warn("ingest: journal full (store.max_bytes): answering 503 until the broker "
                     "takes the backlog");
        else
            log_info("ingest: journal has room again: accepting events");
    }
    pthread_mutex_unlock(&in->lock);

    switch (jerr) {
    case JOURNAL_OK:
        count_family(in, msg.topic);
        break;
    case JOURNAL_FULL:
        snprintf(detail, detail_len, "journal full: the broker has been unreachable too long");
        result = INGEST_FULL;
        break;
    case JOURNAL_TOO_BIG:
        snprintf(detail, detail_len, "event too large for the journal");
        result = INGEST_INVALID;
        break;
    default:
        snprintf(detail, detail_len, "journal: %s", journal_strerror(jerr));
        result = INGEST_ERROR;
        break;
    }
out:
    smartrace_message_cleanup(&msg);
    smartrace_event_cleanup(&ev);
    return result;
}

void ingest_emit_state(struct ingest *in, bool all, state_emit_fn fn, void *ctx)
{
    pthread_mutex_lock(&in->lock);
    state_emit(in->st, all, fn, ctx);
    pthread_mutex_unlock(&in->lock);
}

bool ingest_state_dirty(struct ingest *in, bool *race)
{
    pthread_mutex_lock(&in->lock);
    bool dirty = state_dirty(in->st);
    if (race)
        *race = state_race_dirty(in->st);
    pthread_mutex_unlock(&in->lock);
    return dirty;
}

struct json_object *ingest_view(struct ingest *in)
{
    pthread_mutex_lock(&in->lock);
    struct json_object *o = state_view(in->st);
    pthread_mutex_unlock(&in->lock);
    return o;
}

void ingest_controllers(struct ingest *in, state_controller_fn fn, void *ctx)
{
    pthread_mutex_lock(&in->lock);
    state_controllers(in->st, fn, ctx);
    pthread_mutex_unlock(&in->lock);
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Saver thread only (and ingest_stop() after it ended). */
static void save_state(struct ingest *in)
{
    pthread_mutex_lock(&in->lock);
    uint64_t seq = state_seq(in->st);
    char *text = seq != atomic_load(&in->saved_seq) ? state_save(in->st) : NULL;
    pthread_mutex_unlock(&in->lock);
    if (!text)
        return;

    /* temp + fsync + rename + fsync(dir): the snapshot is either the old or the
     * new one, and durable before the journal it replaces may be released. */
    int fd = open(in->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, text, strlen(text)) != 0 || fsync(fd) != 0) {
        log_warn("state: cannot write %s: %s", in->tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(text);
        return;
    }
    close(fd);
    free(text);
    if (rename(in->tmp, in->path) != 0) {
        log_warn("state: cannot rename %s: %s", in->tmp, strerror(errno));
        return;
    }
    int dfd = open(in->cfg->store.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    atomic_store(&in->saved_seq, seq);
}

static void *saver_main(void *arg)
{
    struct ingest *in = arg;
    pthread_mutex_lock(&in->saver_lock);
    while (!in->saver_stop) {
        struct timespec until = realtime_in_us((uint64_t)SNAPSHOT_INTERVAL_S * 1000000);
        while (!in->saver_stop &&
               pthread_cond_timedwait(&in->saver_cond, &in->saver_lock, &until) == 0)
            ;
        pthread_mutex_unlock(&in->saver_lock);
        save_state(in);
        pthread_mutex_lock(&in->saver_lock);
    }
    pthread_mutex_unlock(&in->saver_lock);
    return NULL;
}

int ingest_start(struct ingest *in, char *err, size_t errlen)
{
    if (pthread_create(&in->saver, NULL, saver_main, in) != 0) {
        snprintf(err, errlen, "state: cannot start the snapshot thread");
        return -1;
    }
    in->saver_running = true;
    return 0;
}

void ingest_stop(struct ingest *in)
{
    if (!in || !in->saver_running)
        return;
    pthread_mutex_lock(&in->saver_lock);
    in->saver_stop = true;
    pthread_cond_signal(&in->saver_cond);
    pthread_mutex_unlock(&in->saver_lock);
    pthread_join(in->saver, NULL); /* its last round saved what was pending */
    in->saver_running = false;
}

uint64_t ingest_saved_seq(struct ingest *in)
{
    return atomic_load(&in->saved_seq);
}
