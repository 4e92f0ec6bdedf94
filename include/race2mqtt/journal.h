/*
 * journal.h - the durable queue between "answered 2xx" and "broker has it".
 *
 * Accepted events are appended to segment files under <dir>/journal/ and made
 * durable by a flusher thread with group commit (one write + fdatasync for
 * everything appended since the last one). Each record carries the sequence
 * number the journal assigned; seqs strictly increase and are never reused,
 * also across restarts. The one reader (the publisher) reads records back
 * from the files, so a long broker outage costs disk, not memory. Records are
 * forgotten by deleting whole segments once the reader has released them.
 *
 * Thread safety: journal_append() may be called from any thread; the reader
 * functions from one thread at a time.
 */
#ifndef RACE2MQTT_JOURNAL_H
#define RACE2MQTT_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest topic and payload a record may hold. */
#define JOURNAL_MAX_TOPIC 1024
#define JOURNAL_MAX_PAYLOAD (16u * 1024 * 1024)

struct journal;

struct journal_options {
    const char *dir;        /* the journal's own directory; created if missing */
    uint64_t max_bytes;     /* live bytes on disk + pending; beyond -> JOURNAL_FULL; 0: no limit */
    uint64_t segment_bytes; /* a segment is closed and a new one started past this; 0: 64 MiB */
    /*
     * Called on the flusher thread after each group commit: records with seq
     * first..last are durable (ok) or were not written (!ok, e.g. disk full;
     * they are gone and their seqs are never used again). Must only hand off.
     */
    void (*on_commit)(void *ctx, uint64_t first, uint64_t last, bool ok);
    void *ctx;
};

enum journal_error {
    JOURNAL_OK = 0,
    JOURNAL_FULL,    /* max_bytes reached: refuse (HTTP 503) */
    JOURNAL_TOO_BIG, /* topic or payload above the limits */
    JOURNAL_IO,      /* the journal cannot write (see the log) */
    JOURNAL_CLOSED,  /* journal_close() has begun */
};

const char *journal_strerror(enum journal_error err);

/*
 * Opens (creating if needed) and recovers the journal: every complete record is
 * kept; a torn or corrupt tail is cut off and reported in one log line.
 * Starts the flusher thread. Returns 0, or -1 with a reason in err.
 */
int journal_open(struct journal **out, const struct journal_options *opt, char *err,
                 size_t errlen);

/* Writes what is pending, stops the flusher, closes files, frees. NULL is fine. */
void journal_close(struct journal *j);

/*
 * Queues one record for the next group commit and returns its seq in *seq.
 * Not yet durable: wait for on_commit covering *seq before answering 2xx.
 * topic is NUL-terminated (NULL is refused as JOURNAL_TOO_BIG); both are copied.
 */
enum journal_error journal_append(struct journal *j, const char *topic, const void *payload,
                                  size_t payload_len, uint64_t *seq);

/* Where the reader is: the segment (named by its first seq) and a byte offset. */
struct journal_pos {
    uint64_t segment;
    uint64_t offset;
};

struct journal_record {
    uint64_t seq;
    struct journal_pos pos;  /* where this record starts (for re-reading) */
    const char *topic;       /* NUL-terminated */
    const char *payload;     /* payload_len bytes, NUL-terminated for convenience */
    size_t payload_len;
};

/* The position of the first record with seq > after_seq (or the end). */
void journal_seek(struct journal *j, uint64_t after_seq, struct journal_pos *pos);

/*
 * Reads the next durable record at *pos and advances *pos past it, moving into
 * the next segment when one ends. rec's pointers live in *buf (grown with
 * realloc as needed, caller frees) until the next call with the same buffer.
 * Returns 1 for a record, 0 when nothing durable is left to read, -1 on an I/O
 * error (logged). After a read error *pos is unchanged (try again later); after
 * a damaged record (bad CRC, found only on disks that corrupt data after it was
 * written) *pos has moved past it, to the next record if its header was sane,
 * else to the end of that segment.
 */
int journal_read(struct journal *j, struct journal_pos *pos, struct journal_record *rec,
                 char **buf, size_t *cap);

/*
 * The reader's acknowledgement watermark: every record with seq <= acked has
 * reached the broker. Stored on disk (without fsync: losing it only means
 * publishing a few records twice) and returned by journal_acked() after a
 * restart.
 */
void journal_set_acked(struct journal *j, uint64_t acked);
uint64_t journal_acked(const struct journal *j);

/* Deletes every segment (except the one being written) whose records all have
 * seq <= upto. */
void journal_release(struct journal *j, uint64_t upto);

struct journal_stats {
    uint64_t bytes;       /* on disk and pending */
    uint64_t max_bytes;
    uint64_t durable_seq; /* highest seq known durable, 0 if none */
    uint64_t next_seq;    /* the seq the next append gets */
    uint64_t segments;
    uint64_t commits;        /* group commits since open: one write + fdatasync each */
    uint64_t failed_commits; /* batches that could not be written (on_commit !ok) */
};

void journal_get_stats(struct journal *j, struct journal_stats *st);

#endif
