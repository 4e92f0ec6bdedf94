/*
 * journal.c - the durable queue: segment files, group commit, recovery.
 *
 * What it owns. One directory holding segment files "seg-<first seq>.log"
 * (20 digits, so that names sort like numbers) and a file "acked" with the
 * reader's watermark as text. The newest segment is the active one: only the
 * flusher thread writes to it, only at its end. Older segments are immutable
 * until journal_release() unlinks them whole.
 *
 * Record format (integers little-endian, no padding):
 *
 *     u32 magic        0x4a4d3252 ("R2MJ")
 *     u32 crc          zlib crc32 of every byte after this field (header + body)
 *     u64 seq
 *     u32 topic_len    <= JOURNAL_MAX_TOPIC
 *     u32 payload_len  <= JOURNAL_MAX_PAYLOAD
 *     topic bytes (no NUL), payload bytes
 *
 * Preallocation. fdatasync after an append that grows the file must also
 * write the inode (its size), which on this kind of disk costs a third more
 * CPU and latency than an overwrite in place (bench/README.md). So the
 * flusher writes zeros ahead of the active segment's end, prealloc_bytes at a
 * time, in the same write and fdatasync as the batch that crosses the
 * allocated end. A zero tail is a clean end to recovery (no record starts
 * with four zero bytes), is cut off when the segment is rolled or the
 * journal closed, and is not counted in used bytes.
 *
 * A segment's name is a lower bound of the seqs in it and greater than every
 * seq in older segments; an empty active segment thus still says where seqs
 * continue after a restart.
 *
 * Invariants, and why:
 * - Seqs strictly increase and are never reused. They are assigned under the
 *   mutex in the same order in which records enter the pending buffer, so a
 *   batch is always a contiguous range. Seqs of a batch that failed to write
 *   are burned. On open, numbering continues after the highest of: every seq
 *   found (also intact records behind damage), the acked watermark, the
 *   newest segment's name - 1 and the seq lease (see "Reading ahead").
 * - Durable before on_commit. journal_append() only copies into memory; the
 *   flusher writes a whole batch with one pwrite and one fdatasync (group
 *   commit) and calls on_commit(ok) only afterwards, outside the mutex. A
 *   failed batch is cut off again with ftruncate, so a segment never holds
 *   garbage between good records.
 * - Records are read only when durable. Each segment tracks "end", the bytes
 *   known fdatasync'd and valid; the reader never reads past it, so it can
 *   pread the active segment while the flusher writes behind that point.
 * - Segments are deleted only when released, and never the active one, so a
 *   reader position is always either valid or in a deleted segment, in which
 *   case it continues with the next remaining one.
 *
 * Recovery keeps every complete record whose CRC matches. At the first bad
 * one the rest of that segment is given up (its length fields cannot be
 * trusted to find the next record): the newest segment is truncated there, as
 * that is what a crash during a write leaves behind; an older one is only
 * read up to there. One log line per damaged segment says what was dropped.
 *
 * Reading ahead. The publisher may take records before they are durable,
 * from the batch being written or the pending buffer (journal_read_ahead), so
 * that the broker hears of an event while its fdatasync runs. Two rules keep
 * that safe:
 * - Nothing is read ahead while writes fail (from a failed commit until a good
 *   one), so an event answered 503 is not also published, except for the
 *   batch whose write failed first.
 * - A seq read ahead is never used again, although its record may die with
 *   the process. Seqs are leased: the file "lease" holds a seq above every one
 *   handed out, fdatasync'd before any seq below it is read ahead, extended
 *   by the flusher LEASE_SEQS at a time when less than half is left, and set
 *   to next_seq exactly by journal_close(). After a crash, numbering resumes
 *   at the lease: a gap of at most LEASE_SEQS, no reuse.
 *
 * Locking: one mutex guards the segment list, the pending buffer and the
 * counters. No I/O happens under it except opening and closing the reader's
 * segment file; the reader preads outside it, from a file descriptor that
 * only the reader thread (read, seek, release) or journal_close() closes.
 */
#include "race2mqtt/journal.h"

#include "race2mqtt/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define REC_MAGIC 0x4a4d3252u
#define REC_HEADER 24
#define REC_MAX (REC_HEADER + JOURNAL_MAX_TOPIC + (uint64_t)JOURNAL_MAX_PAYLOAD)
#define SEG_NAME_SIZE 32 /* "seg-" + 20 digits + ".log" + NUL, rounded up */
#define DEFAULT_SEGMENT_BYTES (64u * 1024 * 1024)
#define SCAN_WINDOW (1u << 20)
#define SPARE_KEEP (1u << 20) /* a batch buffer larger than this is freed after use */
#define ACKED_FILE "acked"
#define LEASE_FILE "lease"
/* Seqs leased at a time: one small fdatasync per this many appends, and the
 * largest gap a crash leaves in the numbering. */
#define LEASE_SEQS 10000u

struct segment {
    uint64_t first; /* the seq in its name */
    uint64_t last;  /* highest seq in it; first - 1 while it has none */
    uint64_t end;   /* durable, valid bytes: the reader stops here */
    uint64_t disk;  /* bytes of records on disk; > end only for a damaged older segment */
    uint64_t alloc; /* file size of the active segment: disk plus zeros written ahead */
    int fd;         /* open for the active segment and the reader's current one */
};

struct journal {
    pthread_mutex_t mu;
    pthread_cond_t work; /* to the flusher: pending data or closing */
    pthread_t flusher;
    bool flusher_started;
    int dirfd;
    int ackfd;
    int leasefd;
    uint64_t max_bytes;
    uint64_t segment_bytes;
    uint64_t prealloc; /* zeros written ahead at a time; 0: none */
    void (*on_commit)(void *ctx, uint64_t first, uint64_t last, bool ok);
    void (*on_append)(void *ctx);
    void *ctx;

    /* Under mu. segs is sorted by first; the last one is the active one. */
    struct segment *segs;
    size_t nsegs, segcap;
    char *pending; /* serialised records with seqs pending_first..next_seq-1 */
    size_t pending_len, pending_cap;
    uint64_t pending_first;
    /* The batch the flusher is writing (not durable yet): records
     * writing_first..writing_last in writing[0..writing_len). */
    const char *writing;
    size_t writing_len;
    uint64_t writing_first, writing_last;
    uint64_t writing_seg, writing_off; /* where it goes: segment and offset */
    bool ahead_ok;                     /* false from a failed commit until a good one */
    uint64_t lease;                    /* durable: no seq >= lease was handed out */
    uint64_t last_seq;                 /* highest seq handed out or recovered */
    /* journal_read_ahead()'s cursor: the record with seq ahead_seq starts at
     * ahead_off in the buffer whose first record is ahead_first. A batch keeps
     * its offsets when pending becomes writing, so the cursor survives it.
     * Once its batch is being written, ahead_seg/ahead_file say where that
     * batch starts on disk (ahead_placed), so the reader can go on from the
     * file without a search when the batch is durable. */
    uint64_t ahead_first, ahead_seq;
    size_t ahead_off;
    bool ahead_placed;
    uint64_t ahead_seg, ahead_file;
    char *spare; /* the other batch buffer, kept to avoid a malloc per commit */
    size_t spare_cap;
    uint64_t next_seq;
    uint64_t durable_seq;
    uint64_t used; /* segment bytes on disk + pending + being written */
    uint64_t commits, failed_commits;
    bool closing;

    /* Flusher thread only: log a write problem when it starts and ends. */
    bool failing;
    bool roll_failing;
    bool lease_failing; /* also open and close, when no flusher runs */
    uint64_t failed_since;

    /* Reader thread only. */
    bool ack_failing;
    _Atomic uint64_t acked;
};

struct rec_header {
    uint32_t magic;
    uint32_t crc;
    uint64_t seq;
    uint32_t topic_len;
    uint32_t payload_len;
};

/* A read-ahead buffer over one file, for scanning many small records. */
struct window {
    int fd;
    uint64_t size;
    char *buf;
    size_t cap;
    uint64_t off;
    size_t len;
};

const char *journal_strerror(enum journal_error err)
{
    switch (err) {
    case JOURNAL_OK:
        return "ok";
    case JOURNAL_FULL:
        return "journal full";
    case JOURNAL_TOO_BIG:
        return "record too big";
    case JOURNAL_IO:
        return "journal cannot write";
    case JOURNAL_CLOSED:
        return "journal closed";
    }
    return "unknown journal error";
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void header_decode(const void *buf, struct rec_header *h)
{
    const unsigned char *p = buf;
    h->magic = get32(p);
    h->crc = get32(p + 4);
    h->seq = get64(p + 8);
    h->topic_len = get32(p + 16);
    h->payload_len = get32(p + 20);
}

static uint64_t record_len(const struct rec_header *h)
{
    return REC_HEADER + (uint64_t)h->topic_len + h->payload_len;
}

/* The checks that need only the header; NULL if it is plausible. */
static const char *header_problem(const struct rec_header *h)
{
    if (h->magic != REC_MAGIC)
        return "bad magic";
    if (h->topic_len > JOURNAL_MAX_TOPIC || h->payload_len > JOURNAL_MAX_PAYLOAD)
        return "bad lengths";
    return NULL;
}

/* rec points to a whole record. */
static bool record_crc_ok(const void *rec, const struct rec_header *h)
{
    const unsigned char *p = rec;
    uInt n = (uInt)(record_len(h) - 8);
    return crc32(0L, p + 8, n) == h->crc;
}

static void seg_name(char *buf, uint64_t first)
{
    snprintf(buf, SEG_NAME_SIZE, "seg-%020" PRIu64 ".log", first);
}

static bool seg_parse_name(const char *name, uint64_t *first)
{
    if (strlen(name) != 28 || strncmp(name, "seg-", 4) != 0 || strcmp(name + 24, ".log") != 0)
        return false;
    for (int i = 4; i < 24; i++)
        if (name[i] < '0' || name[i] > '9')
            return false;
    errno = 0;
    unsigned long long v = strtoull(name + 4, NULL, 10);
    if (errno == ERANGE || v == 0) /* seqs start at 1: seg-0 is not ours */
        return false;
    *first = v;
    return true;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    *got = done;
    return 0;
}

/*
 * Makes bytes [off, off + n) of the file available and returns a pointer to
 * them; NULL with errno set on a read error, or with errno 0 if the file is
 * shorter than it said (changed behind our back).
 */
static const char *window_get(struct window *w, uint64_t off, size_t n)
{
    if (off >= w->off && off + n <= w->off + w->len)
        return w->buf + (off - w->off);
    size_t want = n > SCAN_WINDOW ? n : SCAN_WINDOW;
    if (want > w->size - off)
        want = (size_t)(w->size - off);
    if (want > w->cap) {
        char *nb = realloc(w->buf, want);
        if (!nb)
            return NULL;
        w->buf = nb;
        w->cap = want;
    }
    size_t got;
    w->len = 0;
    if (pread_full(w->fd, w->buf, want, off, &got) != 0)
        return NULL;
    w->off = off;
    w->len = got;
    if (got < n) {
        errno = 0;
        return NULL;
    }
    return w->buf;
}

/*
 * Checks the record at off of a file scanned through w (w->size is the end).
 * Returns NULL if it is good (header in *h), else why not. An I/O error sets
 * *io_err.
 */
static const char *window_record(struct window *w, uint64_t off, struct rec_header *h, int *io_err)
{
    *io_err = 0;
    if (w->size - off < REC_HEADER)
        return "incomplete header";
    const char *p = window_get(w, off, REC_HEADER);
    if (!p)
        goto io;
    header_decode(p, h);
    const char *why = header_problem(h);
    if (why)
        return why;
    if (record_len(h) > w->size - off)
        return "record extends past the end";
    p = window_get(w, off, (size_t)record_len(h));
    if (!p)
        goto io;
    if (!record_crc_ok(p, h))
        return "crc mismatch";
    return NULL;
io:
    *io_err = errno ? errno : EIO;
    return "read error";
}

/* The end of the data from off on: just past its last non-zero byte, so off
 * itself when only zeros (what preallocation leaves) follow. *io_err on a
 * read error. */
static uint64_t data_end(struct window *w, uint64_t off, int *io_err)
{
    uint64_t end = off;
    *io_err = 0;
    while (off < w->size) {
        size_t n = w->size - off < SCAN_WINDOW ? (size_t)(w->size - off) : SCAN_WINDOW;
        const char *p = window_get(w, off, n);
        if (!p) {
            *io_err = errno ? errno : EIO;
            return end;
        }
        for (size_t i = n; i > 0; i--) {
            if (p[i - 1]) {
                end = off + i;
                break;
            }
        }
        off += n;
    }
    return end;
}

/*
 * After damage at off: finds the intact records further on (by magic and
 * CRC), only to say what was lost and to never reuse their seqs.
 */
static void salvage_scan(struct window *w, uint64_t off, uint64_t *count, uint64_t *lo,
                         uint64_t *hi)
{
    *count = 0;
    *lo = *hi = 0;
    uint64_t p = off + 1;
    while (p < w->size && w->size - p >= REC_HEADER) {
        size_t n = w->size - p < SCAN_WINDOW ? (size_t)(w->size - p) : SCAN_WINDOW;
        const char *b = window_get(w, p, n);
        if (!b)
            return;
        const char *m = memmem(b, n, "R2MJ", 4); /* REC_MAGIC as stored */
        if (!m) {
            p += n - 3;
            continue;
        }
        p += (uint64_t)(m - b);
        struct rec_header h;
        int io_err;
        if (window_record(w, p, &h, &io_err) == NULL) {
            if (*count == 0 || h.seq < *lo)
                *lo = h.seq;
            if (h.seq > *hi)
                *hi = h.seq;
            (*count)++;
            p += record_len(&h);
        } else {
            p++;
        }
    }
}

static void fmt_err(char *err, size_t errlen, const char *what, const char *name, int e)
{
    if (err && errlen)
        snprintf(err, errlen, "journal: %s %s: %s", what, name, strerror(e));
}

/* Makes a new directory's name durable by syncing its parent. p is restored. */
static void fsync_parent(char *p)
{
    char *slash = strrchr(p, '/');
    int pfd;
    if (!slash) {
        pfd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } else if (slash == p) {
        pfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } else {
        *slash = '\0';
        pfd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        *slash = '/';
    }
    if (pfd >= 0) {
        fsync(pfd);
        close(pfd);
    }
}

static int mkdir_p(const char *path, char *err, size_t errlen)
{
    int rc = -1;
    char *p = strdup(path);
    if (!p) {
        fmt_err(err, errlen, "cannot create", path, ENOMEM);
        return -1;
    }
    size_t n = strlen(p);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0750) == 0) {
            fsync_parent(p);
        } else if (errno != EEXIST) {
            fmt_err(err, errlen, "cannot create", p, errno);
            goto out;
        }
        p[i] = c;
    }
    rc = 0;
out:
    free(p);
    return rc;
}

static int segs_reserve(struct journal *j)
{
    if (j->nsegs < j->segcap)
        return 0;
    size_t cap = j->segcap ? j->segcap * 2 : 16;
    struct segment *ns = realloc(j->segs, cap * sizeof *ns);
    if (!ns)
        return -1;
    j->segs = ns;
    j->segcap = cap;
    return 0;
}

/* Creates an empty segment file and makes its name durable; returns its fd. */
static int segment_create(struct journal *j, uint64_t first, int *err)
{
    char name[SEG_NAME_SIZE];
    seg_name(name, first);
    int fd = openat(j->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    if (fsync(j->dirfd) != 0) {
        *err = errno;
        close(fd);
        unlinkat(j->dirfd, name, 0);
        return -1;
    }
    return fd;
}

/* Adds a segment created by segment_create() as the new active one. */
static int segment_add(struct journal *j, uint64_t first, int fd)
{
    if (segs_reserve(j) != 0)
        return -1;
    j->segs[j->nsegs++] =
        (struct segment){.first = first, .last = first - 1, .end = 0, .disk = 0, .fd = fd};
    return 0;
}

/* Flusher: starts a new active segment; the old one's fd stays for the reader. */
static void segment_roll(struct journal *j, uint64_t first)
{
    char name[SEG_NAME_SIZE];
    int e = 0;
    int fd = segment_create(j, first, &e);
    if (fd >= 0) {
        pthread_mutex_lock(&j->mu);
        if (segment_add(j, first, fd) != 0) {
            e = ENOMEM;
            close(fd);
            seg_name(name, first);
            unlinkat(j->dirfd, name, 0);
            fd = -1;
        }
        pthread_mutex_unlock(&j->mu);
    }
    seg_name(name, first);
    if (fd < 0 && !j->roll_failing)
        log_error("journal: cannot start %s: %s; the current segment keeps growing", name,
                  strerror(e));
    else if (fd >= 0 && j->roll_failing)
        log_info("journal: started %s", name);
    j->roll_failing = fd < 0;
}

/* Under mu: the cursor's batch is the one being written, so its place is known. */
static void ahead_place(struct journal *j)
{
    j->ahead_placed = true;
    j->ahead_seg = j->writing_seg;
    j->ahead_file = j->writing_off;
}

/* The number in the acked or lease file; 0 if it is empty or unreadable. */
static uint64_t read_number(int fd, const char *name)
{
    char buf[32];
    size_t got;
    if (pread_full(fd, buf, sizeof buf - 1, 0, &got) != 0 || got == 0)
        return 0;
    buf[got] = '\0';
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno || end == buf || (*end != '\n' && *end != '\0')) {
        log_warn("journal: ignoring an unreadable %s file", name);
        return 0;
    }
    return v;
}

/* Fixed width, so that an overwrite in place never leaves old digits behind. */
static int format_number(char buf[24], uint64_t v)
{
    return snprintf(buf, 24, "%020" PRIu64 "\n", v);
}

/* Makes the lease durable. The flusher, or open and close while no flusher runs. */
static int write_lease(struct journal *j, uint64_t lease)
{
    char buf[24];
    int n = format_number(buf, lease);
    ssize_t w = pwrite(j->leasefd, buf, (size_t)n, 0);
    int e = w < 0 ? errno : EIO;
    bool ok = w == n && fdatasync(j->leasefd) == 0;
    if (w == n && !ok)
        e = errno;
    if (!ok && !j->lease_failing)
        log_error("journal: cannot write " LEASE_FILE ": %s; events go to the broker only once "
                  "they are on disk",
                  strerror(e));
    else if (ok && j->lease_failing)
        log_info("journal: " LEASE_FILE " written again");
    j->lease_failing = !ok;
    return ok ? 0 : -1;
}

static int pwrite_all(int fd, const char *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? errno : EIO;
        done += (size_t)n;
    }
    return 0;
}

/* Writes zeros over [from, to); 0 or an errno. */
static int write_zeros(int fd, uint64_t from, uint64_t to)
{
    static const char zeros[64 * 1024];
    while (from < to) {
        size_t n = to - from < sizeof zeros ? (size_t)(to - from) : sizeof zeros;
        int e = pwrite_all(fd, zeros, n, from);
        if (e)
            return e;
        from += n;
    }
    return 0;
}

/*
 * Writes and fdatasyncs a batch at off of a file *alloc bytes long. When the
 * batch reaches past *alloc, zeros up to the next multiple of prealloc go
 * with it; if they cannot be written the batch still can. On failure cuts the
 * file back to off.
 */
static int write_batch(int fd, const char *buf, size_t len, uint64_t off, uint64_t *alloc,
                       uint64_t prealloc, bool *cut_failed)
{
    uint64_t end = off + len, want = end;
    *cut_failed = false;
    int err = pwrite_all(fd, buf, len, off);
    if (!err && prealloc && end > *alloc) {
        want = (end / prealloc + 1) * prealloc;
        if (write_zeros(fd, end, want) != 0)
            want = end; /* what did get written is zeros: still a clean end */
    }
    if (!err && fdatasync(fd) != 0)
        err = errno;
    if (err) {
        if (ftruncate(fd, (off_t)off) != 0)
            *cut_failed = true;
        else
            *alloc = off;
    } else if (want > *alloc) {
        *alloc = want;
    }
    return err;
}

static void *flusher_main(void *arg)
{
    struct journal *j = arg;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        while (j->pending_len == 0 && !j->closing)
            pthread_cond_wait(&j->work, &j->mu);
        if (j->pending_len == 0)
            break;

        char *buf = j->pending;
        size_t cap = j->pending_cap, len = j->pending_len;
        uint64_t first = j->pending_first, last = j->next_seq - 1;
        j->pending = j->spare;
        j->pending_cap = j->spare_cap;
        j->pending_len = 0;
        j->spare = NULL;
        j->spare_cap = 0;
        struct segment *a = &j->segs[j->nsegs - 1];
        int fd = a->fd;
        uint64_t off = a->disk, seg_first = a->first, alloc = a->alloc;
        j->writing = buf;
        j->writing_len = len;
        j->writing_first = first;
        j->writing_last = last;
        j->writing_seg = seg_first;
        j->writing_off = off;
        if (j->ahead_first == first)
            ahead_place(j);
        pthread_mutex_unlock(&j->mu);

        bool cut_failed;
        int err = write_batch(fd, buf, len, off, &alloc, j->prealloc, &cut_failed);

        pthread_mutex_lock(&j->mu);
        a = &j->segs[j->nsegs - 1];
        a->alloc = alloc;
        bool roll = false;
        j->writing = NULL;
        j->ahead_ok = !err;
        if (err && j->ahead_first == first)
            j->ahead_placed = false; /* those offsets now belong to the next batch */
        if (!err) {
            a->disk = a->end = off + len;
            a->last = last;
            j->durable_seq = last;
            j->commits++;
            roll = a->disk >= j->segment_bytes && !j->closing;
        } else {
            j->used -= len;
            j->failed_commits++;
        }
        bool extend = !err && j->next_seq + LEASE_SEQS / 2 > j->lease;
        uint64_t lease = j->next_seq + LEASE_SEQS;
        if (!j->spare && cap <= SPARE_KEEP) {
            j->spare = buf;
            j->spare_cap = cap;
            buf = NULL;
        }
        pthread_mutex_unlock(&j->mu);
        free(buf);

        if (err) {
            char name[SEG_NAME_SIZE];
            seg_name(name, seg_first);
            if (!j->failing || cut_failed)
                log_error("journal: cannot write %s: %s%s; records are refused until it works "
                          "again",
                          name, strerror(err),
                          cut_failed ? " (and cannot cut the failed write off)" : "");
            if (!j->failing)
                j->failed_since = first;
            j->failing = true;
        } else if (j->failing) {
            log_info("journal: writing again; records with seq %" PRIu64 "..%" PRIu64
                     " were refused",
                     j->failed_since, first - 1);
            j->failing = false;
        }
        /* Rolling first costs one directory fsync per segment, and leaves the
         * files settled by the time anyone hears of the commit. */
        if (roll) {
            /* The zeros written ahead are not needed any more. */
            if (ftruncate(fd, (off_t)(off + len)) == 0) {
                pthread_mutex_lock(&j->mu);
                a = &j->segs[j->nsegs - 1];
                a->alloc = a->disk;
                pthread_mutex_unlock(&j->mu);
            }
            segment_roll(j, last + 1);
        }
        if (j->on_commit)
            j->on_commit(j->ctx, first, last, !err);
        /* After the answers: the lease only holds back reading ahead. */
        if (extend && write_lease(j, lease) == 0) {
            pthread_mutex_lock(&j->mu);
            if (lease > j->lease)
                j->lease = lease;
            pthread_mutex_unlock(&j->mu);
        }
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

enum journal_error journal_append(struct journal *j, const char *topic, const void *payload,
                                  size_t payload_len, uint64_t *seq)
{
    if (!j)
        return JOURNAL_CLOSED;
    if (!topic || (!payload && payload_len))
        return JOURNAL_TOO_BIG;
    size_t tl = strnlen(topic, JOURNAL_MAX_TOPIC + 1);
    if (tl > JOURNAL_MAX_TOPIC || payload_len > JOURNAL_MAX_PAYLOAD)
        return JOURNAL_TOO_BIG;
    size_t reclen = REC_HEADER + tl + payload_len;

    /* The body's CRC is computed outside the lock and combined with the header's. */
    uLong body_crc = crc32(0L, (const Bytef *)topic, (uInt)tl);
    if (payload_len)
        body_crc = crc32(body_crc, payload, (uInt)payload_len);

    enum journal_error rc = JOURNAL_OK;
    pthread_mutex_lock(&j->mu);
    if (j->closing) {
        rc = JOURNAL_CLOSED;
        goto out;
    }
    if (j->max_bytes && (j->used > j->max_bytes || reclen > j->max_bytes - j->used)) {
        rc = JOURNAL_FULL;
        goto out;
    }
    if (j->pending_cap - j->pending_len < reclen) {
        size_t cap = j->pending_cap ? j->pending_cap : 64 * 1024;
        while (cap - j->pending_len < reclen)
            cap *= 2;
        char *nb = realloc(j->pending, cap);
        if (!nb) {
            log_error("journal: out of memory for a record of %zu bytes", reclen);
            rc = JOURNAL_IO;
            goto out;
        }
        j->pending = nb;
        j->pending_cap = cap;
    }
    uint64_t s = j->next_seq++;
    if (j->pending_len == 0)
        j->pending_first = s;
    unsigned char *p = (unsigned char *)j->pending + j->pending_len;
    put32(p, REC_MAGIC);
    put64(p + 8, s);
    put32(p + 16, (uint32_t)tl);
    put32(p + 20, (uint32_t)payload_len);
    put32(p + 4, (uint32_t)crc32_combine(crc32(0L, p + 8, REC_HEADER - 8), body_crc,
                                         (z_off_t)(tl + payload_len)));
    memcpy(p + REC_HEADER, topic, tl);
    if (payload_len)
        memcpy(p + REC_HEADER + tl, payload, payload_len);
    j->pending_len += reclen;
    j->used += reclen;
    j->last_seq = s;
    *seq = s;
    pthread_cond_signal(&j->work);
out:
    pthread_mutex_unlock(&j->mu);
    if (rc == JOURNAL_OK && j->on_append)
        j->on_append(j->ctx);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The firsts of all segment files, sorted; caller frees *out. */
static int list_segments(const char *dir, uint64_t **out, size_t *n, char *err, size_t errlen)
{
    int rc = -1;
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        fmt_err(err, errlen, "cannot list", dir, errno);
        return -1;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        uint64_t first;
        if (!seg_parse_name(de->d_name, &first))
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *nf = realloc(*out, cap * sizeof *nf);
            if (!nf) {
                fmt_err(err, errlen, "cannot list", dir, ENOMEM);
                goto out;
            }
            *out = nf;
        }
        (*out)[(*n)++] = first;
    }
    if (*n > 1) /* qsort(NULL, 0, ...) is undefined behaviour */
        qsort(*out, *n, sizeof **out, cmp_u64);
    rc = 0;
out:
    closedir(d);
    return rc;
}

/*
 * Scans one segment on open and fills *s. *max_seq is raised to every seq
 * seen (also in a damaged tail); *prev is the highest valid seq so far, which
 * every record must exceed.
 */
static int segment_recover(struct journal *j, uint64_t first, bool newest, uint64_t *prev,
                           uint64_t *max_seq, struct segment *s, char *err, size_t errlen)
{
    char name[SEG_NAME_SIZE];
    seg_name(name, first);
    struct window w = {.fd = -1};
    int rc = -1;

    w.fd = openat(j->dirfd, name, (newest ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    struct stat st;
    if (w.fd < 0 || fstat(w.fd, &st) != 0) {
        fmt_err(err, errlen, "cannot open", name, errno);
        goto out;
    }
    w.size = (uint64_t)st.st_size;
    *s = (struct segment){.first = first, .last = first - 1, .fd = -1};

    uint64_t off = 0, dend = 0;
    const char *why = NULL;
    while (off < w.size) {
        struct rec_header h;
        int io_err;
        why = window_record(&w, off, &h, &io_err);
        if (io_err) {
            fmt_err(err, errlen, "cannot read", name, io_err);
            goto out;
        }
        if (!why && (h.seq < first || h.seq <= *prev))
            why = "seq out of order";
        dend = why ? data_end(&w, off, &io_err) : off;
        if (io_err) {
            fmt_err(err, errlen, "cannot read", name, io_err);
            goto out;
        }
        if (why && dend == off) {
            why = NULL; /* only zeros follow: preallocated, the clean end */
            break;
        }
        if (why)
            break;
        s->last = *prev = h.seq;
        off += record_len(&h);
    }
    if (*prev > *max_seq)
        *max_seq = *prev;
    s->end = off;
    s->disk = why ? w.size : off;
    s->alloc = w.size;

    if (why) {
        uint64_t count, lo, hi;
        salvage_scan(&w, off, &count, &lo, &hi);
        if (hi > *max_seq)
            *max_seq = hi;
        char lost[96] = "";
        if (count)
            snprintf(lost, sizeof lost,
                     "; %" PRIu64 " intact record%s in them (seq %" PRIu64 "..%" PRIu64 ") lost",
                     count, count == 1 ? "" : "s", lo, hi);
        /* Zeros behind the damage were (most likely) written ahead: said apart. */
        char zeros[64] = "";
        if (w.size > dend)
            snprintf(zeros, sizeof zeros, " and %" PRIu64 " zero bytes after them", w.size - dend);
        log_msg(count ? LOG_LEVEL_ERROR : LOG_LEVEL_WARN,
                "journal: %s: dropped %" PRIu64 " bytes from offset %" PRIu64 "%s (%s)%s", name,
                dend - off, off, zeros, why, lost);
        if (newest) {
            if (ftruncate(w.fd, (off_t)off) != 0 || fdatasync(w.fd) != 0) {
                fmt_err(err, errlen, "cannot truncate", name, errno);
                goto out;
            }
            s->disk = s->alloc = off;
        }
    }
    if (newest) {
        s->fd = w.fd;
        w.fd = -1;
    }
    rc = 0;
out:
    if (w.fd >= 0)
        close(w.fd);
    free(w.buf);
    return rc;
}

static void journal_free(struct journal *j)
{
    for (size_t i = 0; i < j->nsegs; i++)
        if (j->segs[i].fd >= 0)
            close(j->segs[i].fd);
    if (j->dirfd >= 0)
        close(j->dirfd);
    if (j->ackfd >= 0)
        close(j->ackfd);
    if (j->leasefd >= 0)
        close(j->leasefd);
    free(j->segs);
    free(j->pending);
    free(j->spare);
    free(j);
}

int journal_open(struct journal **out, const struct journal_options *opt, char *err, size_t errlen)
{
    uint64_t *firsts = NULL;
    size_t nfirsts = 0;
    bool sync_init = false;
    *out = NULL;

    struct journal *j = calloc(1, sizeof *j);
    if (!j) {
        fmt_err(err, errlen, "cannot open", opt->dir, ENOMEM);
        return -1;
    }
    j->dirfd = j->ackfd = j->leasefd = -1;
    j->max_bytes = opt->max_bytes;
    j->segment_bytes = opt->segment_bytes ? opt->segment_bytes : DEFAULT_SEGMENT_BYTES;
    /* Never more ahead than a segment holds; below a page it saves nothing. */
    j->prealloc = opt->prealloc_bytes < j->segment_bytes ? opt->prealloc_bytes : j->segment_bytes;
    if (j->prealloc < 4096)
        j->prealloc = 0;
    j->on_commit = opt->on_commit;
    j->on_append = opt->on_append;
    j->ctx = opt->ctx;

    if (mkdir_p(opt->dir, err, errlen) != 0)
        goto fail;
    j->dirfd = open(opt->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dirfd < 0) {
        fmt_err(err, errlen, "cannot open", opt->dir, errno);
        goto fail;
    }
    j->ackfd = openat(j->dirfd, ACKED_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (j->ackfd < 0) {
        fmt_err(err, errlen, "cannot open", ACKED_FILE, errno);
        goto fail;
    }
    uint64_t acked = read_number(j->ackfd, ACKED_FILE);
    j->leasefd = openat(j->dirfd, LEASE_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (j->leasefd < 0) {
        fmt_err(err, errlen, "cannot open", LEASE_FILE, errno);
        goto fail;
    }
    uint64_t lease = read_number(j->leasefd, LEASE_FILE);
    atomic_store(&j->acked, acked);

    if (list_segments(opt->dir, &firsts, &nfirsts, err, errlen) != 0)
        goto fail;
    uint64_t prev = 0, max_seq = acked;
    for (size_t i = 0; i < nfirsts; i++) {
        if (segs_reserve(j) != 0) {
            fmt_err(err, errlen, "cannot open", opt->dir, ENOMEM);
            goto fail;
        }
        struct segment *s = &j->segs[j->nsegs];
        if (segment_recover(j, firsts[i], i + 1 == nfirsts, &prev, &max_seq, s, err, errlen))
            goto fail;
        j->nsegs++;
        j->used += s->disk;
    }
    if (j->nsegs && j->segs[j->nsegs - 1].first - 1 > max_seq)
        max_seq = j->segs[j->nsegs - 1].first - 1;
    j->last_seq = max_seq;
    /* Above the lease: seqs below it may have been read ahead and published
     * by a run that then died before they were written. */
    j->next_seq = lease > max_seq + 1 ? lease : max_seq + 1;
    j->durable_seq = prev;
    j->ahead_ok = true;
    if (write_lease(j, j->next_seq + LEASE_SEQS) == 0)
        j->lease = j->next_seq + LEASE_SEQS;
    else
        j->lease = j->next_seq; /* nothing is read ahead until the flusher can write it */

    if (!j->nsegs || j->segs[j->nsegs - 1].disk >= j->segment_bytes) {
        int e = 0;
        int fd = segment_create(j, j->next_seq, &e);
        if (fd < 0 || segment_add(j, j->next_seq, fd) != 0) {
            if (fd >= 0)
                close(fd);
            fmt_err(err, errlen, "cannot create a segment in", opt->dir, fd < 0 ? e : ENOMEM);
            goto fail;
        }
    }

    if (pthread_mutex_init(&j->mu, NULL) != 0 || pthread_cond_init(&j->work, NULL) != 0) {
        fmt_err(err, errlen, "cannot open", opt->dir, ENOMEM);
        goto fail;
    }
    sync_init = true;
    int e = pthread_create(&j->flusher, NULL, flusher_main, j);
    if (e != 0) {
        fmt_err(err, errlen, "cannot start the flusher for", opt->dir, e);
        goto fail;
    }
    j->flusher_started = true;
    log_info("journal: %s: %zu segments, %" PRIu64 " bytes, next seq %" PRIu64 ", acked %" PRIu64,
             opt->dir, j->nsegs, j->used, j->next_seq, acked);
    free(firsts);
    *out = j;
    return 0;

fail:
    if (sync_init) {
        pthread_cond_destroy(&j->work);
        pthread_mutex_destroy(&j->mu);
    }
    free(firsts);
    journal_free(j);
    return -1;
}

void journal_close(struct journal *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->mu);
    j->closing = true;
    pthread_cond_signal(&j->work);
    pthread_mutex_unlock(&j->mu);
    if (j->flusher_started)
        pthread_join(j->flusher, NULL);
    struct segment *a = &j->segs[j->nsegs - 1];
    if (a->fd >= 0 && a->alloc > a->disk && ftruncate(a->fd, (off_t)a->disk) != 0)
        log_warn("journal: cannot cut the preallocated end off: %s", strerror(errno));
    /* A clean stop hands out no seq below next_seq again: the next run
     * continues without a gap. */
    if (j->leasefd >= 0)
        write_lease(j, j->next_seq);
    pthread_cond_destroy(&j->work);
    pthread_mutex_destroy(&j->mu);
    journal_free(j);
}

/* Under mu: the segment named first, else the first one after it (nsegs if none). */
static size_t seg_find(const struct journal *j, uint64_t first)
{
    size_t lo = 0, hi = j->nsegs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (j->segs[mid].first < first)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/*
 * Under mu: an fd to read segment i, opened if needed. Other read-only fds
 * are closed, so the reader holds at most one besides the active segment's.
 */
static int seg_read_fd(struct journal *j, size_t i)
{
    struct segment *s = &j->segs[i];
    if (s->fd >= 0)
        return s->fd;
    for (size_t k = 0; k + 1 < j->nsegs; k++) {
        if (k != i && j->segs[k].fd >= 0) {
            close(j->segs[k].fd);
            j->segs[k].fd = -1;
        }
    }
    char name[SEG_NAME_SIZE];
    seg_name(name, s->first);
    s->fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0)
        log_error("journal: cannot open %s: %s", name, strerror(errno));
    return s->fd;
}

/* Layout of a record read back: header, topic, payload, NUL, a NUL-terminated
 * copy of the topic. Grows *buf to hold the record described by h. */
static int record_room(char **buf, size_t *cap, const struct rec_header *h)
{
    size_t need = (size_t)record_len(h) + 1 + h->topic_len + 1;
    if (*cap >= need)
        return 0;
    char *nb = realloc(*buf, need);
    if (!nb)
        return -1;
    *buf = nb;
    *cap = need;
    return 0;
}

/* b holds the whole record h (in the layout of record_room()): points rec into it. */
static void record_unpack(char *b, const struct rec_header *h, const struct journal_pos *pos,
                          struct journal_record *rec)
{
    size_t rl = (size_t)record_len(h);
    b[rl] = '\0';
    memcpy(b + rl + 1, b + REC_HEADER, h->topic_len);
    b[rl + 1 + h->topic_len] = '\0';
    rec->seq = h->seq;
    rec->pos = *pos;
    rec->topic = b + rl + 1;
    rec->payload = b + REC_HEADER + h->topic_len;
    rec->payload_len = h->payload_len;
}

int journal_read(struct journal *j, struct journal_pos *pos, struct journal_record *rec, char **buf,
                 size_t *cap)
{
    char name[SEG_NAME_SIZE];
    unsigned char hb[REC_HEADER];
    struct rec_header h;
    const char *why = NULL;
    size_t got;

    pthread_mutex_lock(&j->mu);
    size_t i;
    for (;;) {
        i = seg_find(j, pos->segment);
        if (i == j->nsegs) {
            pthread_mutex_unlock(&j->mu);
            return 0;
        }
        if (j->segs[i].first != pos->segment) {
            pos->segment = j->segs[i].first;
            pos->offset = 0;
        }
        if (pos->offset < j->segs[i].end)
            break;
        if (i + 1 == j->nsegs) {
            pthread_mutex_unlock(&j->mu);
            return 0;
        }
        pos->segment = j->segs[i + 1].first;
        pos->offset = 0;
    }
    uint64_t end = j->segs[i].end, off = pos->offset;
    int fd = seg_read_fd(j, i);
    pthread_mutex_unlock(&j->mu);
    seg_name(name, pos->segment);
    if (fd < 0)
        return -1;

    if (end - off < REC_HEADER) {
        why = "incomplete header";
        goto damaged;
    }
    if (pread_full(fd, hb, REC_HEADER, off, &got) != 0)
        goto io;
    if (got < REC_HEADER) {
        why = "file shorter than expected";
        goto damaged;
    }
    header_decode(hb, &h);
    why = header_problem(&h);
    if (!why && record_len(&h) > end - off)
        why = "record extends past the end";
    if (why)
        goto damaged;

    size_t rl = (size_t)record_len(&h);
    if (record_room(buf, cap, &h) != 0) {
        log_error("journal: out of memory reading %s", name);
        return -1;
    }
    char *b = *buf;
    memcpy(b, hb, REC_HEADER);
    if (pread_full(fd, b + REC_HEADER, rl - REC_HEADER, off + REC_HEADER, &got) != 0)
        goto io;
    if (got < rl - REC_HEADER) {
        why = "file shorter than expected";
        goto damaged;
    }
    if (!record_crc_ok(b, &h)) {
        why = "crc mismatch";
        goto damaged;
    }
    record_unpack(b, &h, pos, rec);
    pos->offset += rl;
    return 1;

io:
    log_error("journal: cannot read %s at offset %" PRIu64 ": %s", name, off, strerror(errno));
    return -1;
damaged:
    /* A bad CRC with a sane header skips one record; otherwise the rest is lost. */
    if (strcmp(why, "crc mismatch") == 0)
        pos->offset = off + record_len(&h);
    else
        pos->offset = end;
    log_error("journal: %s: damaged record at offset %" PRIu64 " (%s); skipped %" PRIu64 " bytes",
              name, off, why, pos->offset - off);
    return -1;
}

int journal_read_ahead(struct journal *j, uint64_t after_seq, struct journal_record *rec,
                       char **buf, size_t *cap)
{
    int rc = 0;
    pthread_mutex_lock(&j->mu);
    if (after_seq < j->durable_seq) {
        rc = JOURNAL_AHEAD_ON_DISK;
        goto out;
    }
    /* The batch being written holds lower seqs than the pending buffer. */
    const char *b = NULL;
    uint64_t first = 0;
    if (j->writing && j->writing_last > after_seq) {
        b = j->writing;
        first = j->writing_first;
    } else if (j->pending_len && j->next_seq - 1 > after_seq) {
        b = j->pending;
        first = j->pending_first;
    }
    if (!b)
        goto out;
    /* Seqs between after_seq and first, if any, were burned by a failed commit. */
    uint64_t want = after_seq + 1 > first ? after_seq + 1 : first;
    if (!j->ahead_ok || want >= j->lease) {
        rc = JOURNAL_AHEAD_HELD;
        goto out;
    }
    struct rec_header h;
    size_t off = 0;
    if (j->ahead_first == first && j->ahead_seq == want) {
        off = j->ahead_off;
    } else {
        for (uint64_t s = first; s < want; s++) {
            header_decode(b + off, &h);
            off += (size_t)record_len(&h);
        }
    }
    header_decode(b + off, &h);
    if (record_room(buf, cap, &h) != 0) {
        log_error("journal: out of memory reading ahead");
        rc = -1;
        goto out;
    }
    memcpy(*buf, b + off, (size_t)record_len(&h));
    record_unpack(*buf, &h, &(struct journal_pos){0, 0}, rec);
    j->ahead_first = first;
    j->ahead_seq = want + 1;
    j->ahead_off = off + (size_t)record_len(&h);
    j->ahead_placed = false;
    if (b == j->writing)
        ahead_place(j);
    rc = 1;
out:
    pthread_mutex_unlock(&j->mu);
    return rc;
}

void journal_ahead_pos(struct journal *j, uint64_t after_seq, struct journal_pos *pos)
{
    pthread_mutex_lock(&j->mu);
    bool known = j->ahead_placed && j->ahead_seq == after_seq + 1;
    if (known) {
        pos->segment = j->ahead_seg;
        pos->offset = j->ahead_file + j->ahead_off;
    }
    pthread_mutex_unlock(&j->mu);
    if (!known)
        journal_seek(j, after_seq, pos);
}

void journal_seek(struct journal *j, uint64_t after_seq, struct journal_pos *pos)
{
    struct window w = {.fd = -1};
    pthread_mutex_lock(&j->mu);
    size_t i = 0;
    while (i < j->nsegs && !(j->segs[i].last > after_seq && j->segs[i].last >= j->segs[i].first))
        i++;
    if (i == j->nsegs) {
        pos->segment = j->segs[j->nsegs - 1].first;
        pos->offset = j->segs[j->nsegs - 1].end;
        pthread_mutex_unlock(&j->mu);
        return;
    }
    pos->segment = j->segs[i].first;
    pos->offset = 0;
    w.size = j->segs[i].end;
    w.fd = seg_read_fd(j, i);
    pthread_mutex_unlock(&j->mu);
    if (w.fd < 0 || pos->segment > after_seq)
        goto out;

    /* Header by header; anything odd is left for journal_read() to report. */
    while (pos->offset < w.size && w.size - pos->offset >= REC_HEADER) {
        const char *p = window_get(&w, pos->offset, REC_HEADER);
        if (!p)
            break;
        struct rec_header h;
        header_decode(p, &h);
        if (header_problem(&h) || h.seq > after_seq)
            break;
        pos->offset += record_len(&h);
    }
out:
    free(w.buf);
}

void journal_set_acked(struct journal *j, uint64_t acked)
{
    char buf[24];
    atomic_store(&j->acked, acked);
    int n = format_number(buf, acked);
    ssize_t w = pwrite(j->ackfd, buf, (size_t)n, 0);
    if (w != n && !j->ack_failing)
        log_error("journal: cannot write " ACKED_FILE ": %s",
                  w < 0 ? strerror(errno) : "short write");
    j->ack_failing = w != n;
}

uint64_t journal_acked(const struct journal *j)
{
    return atomic_load(&j->acked);
}

void journal_release(struct journal *j, uint64_t upto)
{
    /* One segment per lock round, so that no unlink happens under the mutex. */
    for (;;) {
        pthread_mutex_lock(&j->mu);
        size_t i = 0;
        while (i + 1 < j->nsegs && j->segs[i].last > upto)
            i++;
        if (i + 1 >= j->nsegs) {
            pthread_mutex_unlock(&j->mu);
            return;
        }
        struct segment s = j->segs[i];
        memmove(&j->segs[i], &j->segs[i + 1], (j->nsegs - i - 1) * sizeof *j->segs);
        j->nsegs--;
        j->used -= s.disk;
        pthread_mutex_unlock(&j->mu);

        char name[SEG_NAME_SIZE];
        seg_name(name, s.first);
        if (s.fd >= 0)
            close(s.fd);
        if (unlinkat(j->dirfd, name, 0) != 0 && errno != ENOENT)
            log_error("journal: cannot delete %s: %s", name, strerror(errno));
    }
}

void journal_get_stats(struct journal *j, struct journal_stats *st)
{
    pthread_mutex_lock(&j->mu);
    st->bytes = j->used;
    st->max_bytes = j->max_bytes;
    st->durable_seq = j->durable_seq;
    st->next_seq = j->next_seq;
    st->last_seq = j->last_seq;
    st->segments = j->nsegs;
    st->commits = j->commits;
    st->failed_commits = j->failed_commits;
    pthread_mutex_unlock(&j->mu);
}
