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
 * So that publishing need not wait for the disk, the reader may also take
 * records that are not durable yet straight from memory (journal_read_ahead).
 * Such a record may be delivered and then lost in a crash (its client never
 * got a 2xx), so its seq must never be handed out again: seqs are leased in
 * blocks, the lease is durable before a seq in it is read ahead, and after a
 * crash numbering continues above the lease.
 *
 * Thread safety: journal_append() may be called from any thread; the reader
 * functions from one thread at a time.
 */
#ifndef RACE2MQTT_JOURNAL_H
#define RACE2MQTT_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What the gateway preallocates: one extra fdatasync'd write per MiB. */
#define JOURNAL_PREALLOC_BYTES (1024u * 1024)

/* Largest topic and payload a record may hold. */
#define JOURNAL_MAX_TOPIC 1024
#define JOURNAL_MAX_PAYLOAD (16u * 1024 * 1024)

struct journal;

struct journal_options {
    const char *dir;        /* the journal's own directory; created if missing */
    uint64_t max_bytes;     /* live bytes on disk + pending; beyond -> JOURNAL_FULL; 0: no limit */
    uint64_t segment_bytes; /* a segment is closed and a new one started past this; 0: 64 MiB */
    uint64_t prealloc_bytes; /* zeros written ahead of the active segment's end at a time
                                (JOURNAL_PREALLOC_BYTES); 0: none, the file grows by appends */
    /*
     * Called on the flusher thread after each group commit: records with seq
     * first..last are durable (ok) or were not written (!ok, e.g. disk full;
     * they are gone and their seqs are never used again). Must only hand off.
     */
    void (*on_commit)(void *ctx, uint64_t first, uint64_t last, bool ok);
    /* Called by journal_append() after a record was queued (outside the
     * journal's lock, inside the caller's): a record can be read ahead. May be
     * NULL. Must only hand off. */
    void (*on_append)(void *ctx);
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

/* journal_read_ahead() results besides 1 (a record) and 0 (nothing newer). */
enum {
    JOURNAL_AHEAD_ON_DISK = 2, /* the next record is durable already: journal_read() it */
    JOURNAL_AHEAD_HELD = 3,    /* the next record must wait until it is durable */
};

/*
 * The record with the lowest seq > after_seq, if it is not durable yet: copied
 * from memory into *buf like journal_read() does, except that rec->pos is not
 * known yet (zero). Held back while the journal cannot write (after a failed
 * commit, until one succeeds: a record that may fail should not go out first)
 * and beyond the seq lease. Same thread rules as journal_read(); keeps a
 * cursor, so reading a batch in seq order costs no search.
 */
int journal_read_ahead(struct journal *j, uint64_t after_seq, struct journal_record *rec,
                       char **buf, size_t *cap);

/*
 * Where journal_read() goes on after after_seq, for a reader that switches
 * from reading ahead to reading the files (JOURNAL_AHEAD_ON_DISK or _HELD).
 * Without a search when after_seq was the last record read ahead and its batch
 * went to disk; otherwise like journal_seek().
 */
void journal_ahead_pos(struct journal *j, uint64_t after_seq, struct journal_pos *pos);

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
    uint64_t last_seq;    /* the highest seq handed out or recovered, 0 if none; below
                             next_seq - 1 after a crash (the unused rest of the lease) */
    uint64_t segments;
    uint64_t commits;        /* group commits since open: one write + fdatasync each */
    uint64_t failed_commits; /* batches that could not be written (on_commit !ok) */
};

void journal_get_stats(struct journal *j, struct journal_stats *st);

#endif
