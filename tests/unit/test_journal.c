/*
 * test_journal.c - the durable queue against real files in a temp directory:
 * round trips, group commit bookkeeping, concurrency, recovery from torn and
 * corrupt segments, limits, a write failure (RLIMIT_FSIZE -> EFBIG), reading
 * ahead of the disk and the seq lease, and a printed (not asserted)
 * throughput measurement.
 */
#include "race2mqtt/journal.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TRACKED (1u << 20)
#define HEADER 24

/* Records what on_commit reported. Callbacks come in seq order from one thread. */
struct tracker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned char *seen; /* on_commit calls covering each seq */
    unsigned char *ok;
    uint64_t decided; /* highest seq any on_commit covered */
    uint64_t prev_last;
    uint64_t calls, failed;
    bool out_of_order;
    /* While gate_closed, on_commit blocks (in_gate), and with it the flusher:
     * what is appended meanwhile stays in memory, not durable. */
    bool gate_closed, in_gate;
};

struct fixture {
    char root[64];
    char dir[96];
    struct tracker t;
    struct journal_options opt;
    struct journal *j;
};

static void on_commit(void *ctx, uint64_t first, uint64_t last, bool ok)
{
    struct tracker *t = ctx;
    pthread_mutex_lock(&t->mu);
    if (first > last || first <= t->prev_last)
        t->out_of_order = true;
    t->prev_last = last;
    for (uint64_t s = first; s <= last && s < MAX_TRACKED; s++) {
        if (t->seen[s] < 255)
            t->seen[s]++;
        t->ok[s] = ok;
    }
    if (last > t->decided)
        t->decided = last;
    t->calls++;
    if (!ok)
        t->failed++;
    pthread_cond_broadcast(&t->cv);
    while (t->gate_closed) {
        t->in_gate = true;
        pthread_cond_broadcast(&t->cv);
        pthread_cond_wait(&t->cv, &t->mu);
    }
    t->in_gate = false;
    pthread_mutex_unlock(&t->mu);
}

static void gate_set(struct tracker *t, bool closed)
{
    pthread_mutex_lock(&t->mu);
    t->gate_closed = closed;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

/* Waits until the flusher blocks in on_commit; false after 20 s. */
static bool wait_in_gate(struct tracker *t)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&t->mu);
    while (!t->in_gate && pthread_cond_timedwait(&t->cv, &t->mu, &until) != ETIMEDOUT)
        ;
    bool in = t->in_gate;
    pthread_mutex_unlock(&t->mu);
    return in;
}

/* Waits until on_commit has covered seq; false after 20 s. */
static bool wait_decided(struct tracker *t, uint64_t seq)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    bool done;
    pthread_mutex_lock(&t->mu);
    while (t->decided < seq) {
        if (pthread_cond_timedwait(&t->cv, &t->mu, &until) == ETIMEDOUT)
            break;
    }
    done = t->decided >= seq;
    pthread_mutex_unlock(&t->mu);
    return done;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Each open starts a fresh record of on_commit calls. */
static void open_journal(struct fixture *f)
{
    char err[256] = "";
    memset(f->t.seen, 0, MAX_TRACKED);
    memset(f->t.ok, 0, MAX_TRACKED);
    f->t.decided = f->t.prev_last = f->t.calls = f->t.failed = 0;
    f->t.out_of_order = false;
    int rc = journal_open(&f->j, &f->opt, err, sizeof err);
    if (rc != 0)
        fail_msg("journal_open: %s", err);
    assert_non_null(f->j);
}

static void reopen(struct fixture *f)
{
    journal_close(f->j);
    f->j = NULL;
    open_journal(f);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->root, "/tmp/r2m-journal-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->dir, sizeof f->dir, "%s/var/journal", f->root);
    pthread_mutex_init(&f->t.mu, NULL);
    pthread_cond_init(&f->t.cv, NULL);
    f->t.seen = calloc(MAX_TRACKED, 1);
    f->t.ok = calloc(MAX_TRACKED, 1);
    assert_non_null(f->t.seen);
    assert_non_null(f->t.ok);
    f->opt = (struct journal_options){.dir = f->dir,
                                      .max_bytes = 1u << 30,
                                      .segment_bytes = 1u << 20,
                                      .on_commit = on_commit,
                                      .ctx = &f->t};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    journal_close(f->j);
    nftw(f->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f->t.seen);
    free(f->t.ok);
    pthread_cond_destroy(&f->t.cv);
    pthread_mutex_destroy(&f->t.mu);
    free(f);
    return 0;
}

static uint64_t append_ok(struct journal *j, const char *topic, const void *p, size_t n)
{
    uint64_t seq = 0;
    enum journal_error e = journal_append(j, topic, p, n, &seq);
    if (e != JOURNAL_OK)
        fail_msg("journal_append: %s", journal_strerror(e));
    return seq;
}

/* Appends "payload-<i>" to topic "t/<i>" and waits until it is durable. */
static uint64_t append_n(struct fixture *f, unsigned i)
{
    char topic[32], payload[64];
    snprintf(topic, sizeof topic, "t/%u", i);
    int n = snprintf(payload, sizeof payload, "payload-%u", i);
    uint64_t seq = append_ok(f->j, topic, payload, (size_t)n);
    assert_true(wait_decided(&f->t, seq));
    return seq;
}

static void expect_record(struct journal_record *r, unsigned i)
{
    char topic[32], payload[64];
    snprintf(topic, sizeof topic, "t/%u", i);
    int n = snprintf(payload, sizeof payload, "payload-%u", i);
    assert_string_equal(r->topic, topic);
    assert_int_equal(r->payload_len, (size_t)n);
    assert_memory_equal(r->payload, payload, (size_t)n);
}

/* Reads everything from the start; returns the seqs in *seqs (caller frees). */
static size_t read_all(struct journal *j, uint64_t **seqs)
{
    struct journal_pos pos;
    struct journal_record r;
    char *buf = NULL;
    size_t cap = 0, n = 0, scap = 0;
    *seqs = NULL;
    journal_seek(j, 0, &pos);
    int rc;
    while ((rc = journal_read(j, &pos, &r, &buf, &cap)) == 1) {
        if (n == scap) {
            scap = scap ? scap * 2 : 64;
            *seqs = realloc(*seqs, scap * sizeof **seqs);
            assert_non_null(*seqs);
        }
        (*seqs)[n++] = r.seq;
    }
    assert_int_equal(rc, 0);
    free(buf);
    return n;
}

/* Segment file names in dir, sorted; returns how many. */
static int list_segs(const char *dir, char names[][64], int max)
{
    struct dirent **list;
    int n = scandir(dir, &list, NULL, alphasort), k = 0;
    assert_true(n >= 0);
    for (int i = 0; i < n; i++) {
        if (strncmp(list[i]->d_name, "seg-", 4) == 0 && k < max)
            snprintf(names[k++], 64, "%.63s", list[i]->d_name);
        free(list[i]);
    }
    free(list);
    return k;
}

static off_t file_size(const char *dir, const char *name)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* stderr into a file, to check what the journal logs. */
struct capture {
    int saved;
    char path[128];
};

static void capture_start(struct capture *c, const struct fixture *f)
{
    snprintf(c->path, sizeof c->path, "%s/stderr.txt", f->root);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    c->saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/* Returns the captured text (caller frees) and echoes it. */
static char *capture_end(struct capture *c)
{
    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    FILE *fp = fopen(c->path, "r");
    assert_non_null(fp);
    char *text = calloc(1, 65536);
    size_t n = fread(text, 1, 65535, fp);
    text[n] = '\0';
    fclose(fp);
    fputs(text, stderr);
    return text;
}

static int count_lines_with(const char *text, const char *needle)
{
    int n = 0;
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        const char *hit = strstr(line, needle);
        if (hit && hit < line + len)
            n++;
        line = nl ? nl + 1 : NULL;
    }
    return n;
}

static void test_round_trip(void **state)
{
    struct fixture *f = *state;
    open_journal(f);
    const unsigned char bin[] = {0, 1, 2, 0xff, 0, 'x', 0x80, 0};
    char big_topic[JOURNAL_MAX_TOPIC + 1];
    memset(big_topic, 'a', JOURNAL_MAX_TOPIC);
    big_topic[JOURNAL_MAX_TOPIC] = '\0';

    uint64_t s1 = append_ok(f->j, "smartrace/race/lap", "{\"lap\":1}", 9);
    uint64_t s2 = append_ok(f->j, "bin", bin, sizeof bin);
    uint64_t s3 = append_ok(f->j, "empty", NULL, 0);
    uint64_t s4 = append_ok(f->j, big_topic, "x", 1);
    assert_int_equal(s1, 1);
    assert_int_equal(s2, 2);
    assert_int_equal(s3, 3);
    assert_int_equal(s4, 4);
    assert_true(wait_decided(&f->t, s4));
    for (uint64_t s = 1; s <= 4; s++)
        assert_true(f->t.ok[s]);

    struct journal_pos pos;
    struct journal_record r;
    char *buf = NULL;
    size_t cap = 0;
    journal_seek(f->j, 0, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 1);
    assert_string_equal(r.topic, "smartrace/race/lap");
    assert_int_equal(r.payload_len, 9);
    assert_string_equal(r.payload, "{\"lap\":1}");
    struct journal_pos first_pos = r.pos;

    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 2);
    assert_string_equal(r.topic, "bin");
    assert_int_equal(r.payload_len, sizeof bin);
    assert_memory_equal(r.payload, bin, sizeof bin);
    assert_int_equal(r.payload[r.payload_len], '\0');

    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 3);
    assert_string_equal(r.topic, "empty");
    assert_int_equal(r.payload_len, 0);
    assert_string_equal(r.payload, "");

    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 4);
    assert_string_equal(r.topic, big_topic);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 0);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 0);

    /* rec.pos re-reads the same record. */
    assert_int_equal(journal_read(f->j, &first_pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 1);

    /* A record appended later shows up at the old end. */
    uint64_t s5 = append_ok(f->j, "late", "5", 1);
    assert_true(wait_decided(&f->t, s5));
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 5);
    free(buf);

    struct journal_stats st;
    journal_get_stats(f->j, &st);
    assert_int_equal(st.durable_seq, 5);
    assert_int_equal(st.next_seq, 6);
    assert_int_equal(st.segments, 1);
    assert_int_equal(st.failed_commits, 0);
    assert_true(st.commits >= 1 && st.commits <= 5);
}

static void test_commit_ranges(void **state)
{
    struct fixture *f = *state;
    open_journal(f);
    uint64_t last = 0;
    for (int burst = 0; burst < 50; burst++) {
        for (int i = 0; i < 40; i++)
            last = append_ok(f->j, "r", "x", 1);
        if (burst % 3 == 0)
            assert_true(wait_decided(&f->t, last));
    }
    assert_int_equal(last, 2000);
    assert_true(wait_decided(&f->t, last));
    assert_false(f->t.out_of_order);
    for (uint64_t s = 1; s <= last; s++) {
        assert_int_equal(f->t.seen[s], 1);
        assert_true(f->t.ok[s]);
    }
    assert_int_equal(f->t.seen[last + 1], 0);
    /* Group commit: far fewer commits than records. */
    struct journal_stats st;
    journal_get_stats(f->j, &st);
    assert_int_equal(st.commits, f->t.calls);
    assert_true(st.commits < last);
}

#define THREADS 4
#define PER_THREAD 10000

struct writer {
    struct journal *j;
    unsigned id;
    uint64_t seqs[PER_THREAD];
    int errors;
};

static void make_payload(char *buf, size_t *len, unsigned id, unsigned i)
{
    /* Varying lengths, so that record boundaries move around. */
    int n = snprintf(buf, 64, "%u:%u:", id, i);
    size_t pad = (i * 7 + id) % 40;
    memset(buf + n, 'a' + (char)(i % 26), pad);
    *len = (size_t)n + pad;
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    char topic[16], payload[128];
    snprintf(topic, sizeof topic, "w/%u", w->id);
    for (unsigned i = 0; i < PER_THREAD; i++) {
        size_t len;
        make_payload(payload, &len, w->id, i);
        if (journal_append(w->j, topic, payload, len, &w->seqs[i]) != JOURNAL_OK)
            w->errors++;
        if (i % 256 == 0)
            usleep(100); /* more, smaller commits: more rolls while the reader reads */
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    struct fixture *f = *state;
    f->opt.segment_bytes = 64 * 1024; /* many rolls while reading */
    open_journal(f);
    static struct writer w[THREADS];
    pthread_t th[THREADS];
    for (unsigned k = 0; k < THREADS; k++) {
        w[k] = (struct writer){.j = f->j, .id = k};
        assert_int_equal(pthread_create(&th[k], NULL, writer_main, &w[k]), 0);
    }

    /* Read concurrently: every record read must already be durable. */
    const uint64_t total = THREADS * PER_THREAD;
    uint64_t *order = calloc(total + 1, sizeof *order);
    struct journal_pos pos;
    struct journal_record r;
    struct journal_stats st;
    char *buf = NULL;
    size_t cap = 0;
    uint64_t n = 0, prev = 0;
    journal_seek(f->j, 0, &pos);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (n < total) {
        int rc = journal_read(f->j, &pos, &r, &buf, &cap);
        assert_int_not_equal(rc, -1);
        if (rc == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            assert_true(now.tv_sec - t0.tv_sec < 60);
            usleep(200);
            continue;
        }
        journal_get_stats(f->j, &st);
        assert_true(r.seq <= st.durable_seq);
        assert_true(r.seq > prev);
        prev = r.seq;
        unsigned id, i;
        assert_int_equal(sscanf(r.topic, "w/%u", &id), 1);
        assert_true(id < THREADS);
        assert_int_equal(sscanf(r.payload, "%*u:%u:", &i), 1);
        assert_true(i < PER_THREAD);
        order[n++] = r.seq;
    }
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 0);
    for (unsigned k = 0; k < THREADS; k++)
        pthread_join(th[k], NULL);

    /* Every seq unique, 1..total, and each record holds what was appended with it. */
    unsigned char *owner_seen = calloc(total + 1, 1);
    for (unsigned k = 0; k < THREADS; k++) {
        assert_int_equal(w[k].errors, 0);
        for (unsigned i = 0; i < PER_THREAD; i++) {
            uint64_t s = w[k].seqs[i];
            assert_true(s >= 1 && s <= total);
            assert_int_equal(owner_seen[s], 0);
            owner_seen[s] = 1;
            if (i)
                assert_true(s > w[k].seqs[i - 1]);
        }
    }
    for (uint64_t s = 1; s <= total; s++)
        assert_int_equal(order[s - 1], s);

    /* Contents, by reading again after the fact. */
    uint64_t *by_seq = calloc(total + 1, sizeof *by_seq);
    for (unsigned k = 0; k < THREADS; k++)
        for (unsigned i = 0; i < PER_THREAD; i++)
            by_seq[w[k].seqs[i]] = (uint64_t)k << 32 | i;
    journal_seek(f->j, 0, &pos);
    for (uint64_t s = 1; s <= total; s++) {
        assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
        assert_int_equal(r.seq, s);
        unsigned id = (unsigned)(by_seq[s] >> 32), i = (unsigned)by_seq[s];
        char topic[16], payload[128];
        size_t len;
        snprintf(topic, sizeof topic, "w/%u", id);
        make_payload(payload, &len, id, i);
        assert_string_equal(r.topic, topic);
        assert_int_equal(r.payload_len, len);
        assert_memory_equal(r.payload, payload, len);
    }
    assert_true(wait_decided(&f->t, total));
    for (uint64_t s = 1; s <= total; s++)
        assert_int_equal(f->t.seen[s], 1);
    journal_get_stats(f->j, &st);
    assert_true(st.segments > 1);
    printf("    concurrent: %" PRIu64 " records in %" PRIu64 " commits, %" PRIu64 " segments\n",
           total, st.commits, st.segments);
    free(order);
    free(owner_seen);
    free(by_seq);
    free(buf);
}

static void test_reopen_continues(void **state)
{
    struct fixture *f = *state;
    open_journal(f);
    for (unsigned i = 1; i <= 10; i++)
        assert_int_equal(append_n(f, i), i);
    reopen(f);
    uint64_t *seqs;
    size_t n = read_all(f->j, &seqs);
    assert_int_equal(n, 10);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], i + 1);
    free(seqs);
    struct journal_stats st;
    journal_get_stats(f->j, &st);
    assert_int_equal(st.durable_seq, 10);
    assert_int_equal(append_n(f, 11), 11);

    /* Released down to an empty active segment, the name still carries the seq. */
    journal_close(f->j);
    f->j = NULL;
    f->opt.segment_bytes = 1; /* roll after every commit */
    open_journal(f);
    assert_int_equal(append_n(f, 12), 12);
    assert_int_equal(append_n(f, 13), 13);
    journal_release(f->j, UINT64_MAX);
    journal_get_stats(f->j, &st);
    assert_int_equal(st.segments, 1);
    char names[8][64];
    assert_int_equal(list_segs(f->dir, names, 8), 1);
    assert_int_equal(file_size(f->dir, names[0]), 0);
    reopen(f);
    n = read_all(f->j, &seqs);
    assert_int_equal(n, 0);
    free(seqs);
    assert_int_equal(append_n(f, 14), 14);
}

/* Appends "payload-<i>" to "t/<i>" without waiting for it to be durable. */
static uint64_t append_nowait(struct fixture *f, unsigned i)
{
    char topic[32], payload[64];
    snprintf(topic, sizeof topic, "t/%u", i);
    int n = snprintf(payload, sizeof payload, "payload-%u", i);
    return append_ok(f->j, topic, payload, (size_t)n);
}

/* Records not durable yet come from memory; durable ones are left to the files. */
static void test_read_ahead(void **state)
{
    struct fixture *f = *state;
    struct journal_record r;
    struct journal_pos pos;
    char *buf = NULL;
    size_t cap = 0;
    open_journal(f);
    assert_int_equal(append_n(f, 1), 1);
    assert_int_equal(journal_read_ahead(f->j, 0, &r, &buf, &cap), JOURNAL_AHEAD_ON_DISK);
    assert_int_equal(journal_read_ahead(f->j, 1, &r, &buf, &cap), 0);

    /* The flusher blocks after making 2 durable; 3 and 4 stay pending. */
    gate_set(&f->t, true);
    assert_int_equal(append_nowait(f, 2), 2);
    assert_true(wait_in_gate(&f->t));
    assert_int_equal(append_nowait(f, 3), 3);
    assert_int_equal(append_nowait(f, 4), 4);
    assert_int_equal(journal_read_ahead(f->j, 1, &r, &buf, &cap), JOURNAL_AHEAD_ON_DISK);
    assert_int_equal(journal_read_ahead(f->j, 2, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 3);
    expect_record(&r, 3);
    assert_int_equal(journal_read_ahead(f->j, 3, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 4);
    expect_record(&r, 4);
    assert_int_equal(journal_read_ahead(f->j, 4, &r, &buf, &cap), 0);
    /* Out of the cursor's order too (a resend): found by a search. */
    assert_int_equal(journal_read_ahead(f->j, 2, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 3);
    /* The files do not have them yet. */
    journal_ahead_pos(f->j, 2, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 0);

    /* Now 3 and 4 are written: from the files, at the place the cursor knew
     * (it stands after 3, the last record read ahead). */
    assert_int_equal(journal_read_ahead(f->j, 2, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 3);
    gate_set(&f->t, false);
    assert_true(wait_decided(&f->t, 4));
    assert_int_equal(journal_read_ahead(f->j, 4, &r, &buf, &cap), 0);
    assert_int_equal(journal_read_ahead(f->j, 3, &r, &buf, &cap), JOURNAL_AHEAD_ON_DISK);
    journal_ahead_pos(f->j, 3, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 4);
    expect_record(&r, 4);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 0);
    /* And by a search when the cursor is elsewhere. */
    journal_ahead_pos(f->j, 2, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 3);
    free(buf);
}

/* fork() with a pipe from the child to the parent: 0 in the child, which
 * writes fds[1]; the child's pid in the parent, which reads fds[0]. */
static pid_t fork_reporter(int fds[2])
{
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    close(fds[pid == 0 ? 0 : 1]);
    return pid;
}

static void kill9(pid_t pid)
{
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status));
}

/* kill -9 while records are read ahead but not written: their seqs are
 * never handed out again (the lease), and a clean stop leaves no gap. */
static void test_lease(void **state)
{
    struct fixture *f = *state;
    int fds[2];
    pid_t pid = fork_reporter(fds);
    if (pid == 0) {
        f->j = NULL;
        open_journal(f);
        for (unsigned i = 1; i <= 5; i++)
            append_n(f, i);
        gate_set(&f->t, true);
        uint64_t seq = append_nowait(f, 6);
        if (!wait_in_gate(&f->t))
            _exit(2);
        for (unsigned i = 7; i <= 9; i++) {
            seq = append_nowait(f, i);
            struct journal_record r;
            char *buf = NULL;
            size_t cap = 0;
            if (journal_read_ahead(f->j, seq - 1, &r, &buf, &cap) != 1 || r.seq != seq)
                _exit(3);
            free(buf);
        }
        if (write(fds[1], &seq, sizeof seq) != sizeof seq)
            _exit(4);
        for (;;)
            pause();
    }
    uint64_t handed = 0;
    assert_int_equal(read(fds[0], &handed, sizeof handed), sizeof handed);
    close(fds[0]);
    assert_int_equal(handed, 9);
    kill9(pid);

    open_journal(f);
    uint64_t *seqs;
    size_t n = read_all(f->j, &seqs);
    free(seqs);
    assert_int_equal(n, 6); /* 7..9 never reached the disk */
    struct journal_stats st;
    journal_get_stats(f->j, &st);
    assert_true(st.next_seq > handed);
    assert_int_equal(st.last_seq, 6);
    uint64_t next = append_n(f, 10);
    assert_true(next > handed);
    reopen(f);
    assert_int_equal(append_n(f, 11), next + 1);
}

struct file_limit {
    struct sigaction sa;
    struct rlimit rl;
    char name[64];
};

/* Opens the journal with records 1..3, then limits file sizes (RLIMIT_FSIZE,
 * SIGXFSZ ignored) to 100 bytes past the segment, so that a 1 KiB record
 * fails with EFBIG. Returns the segment's size; unlimit_files() undoes it. */
static off_t limit_files(struct fixture *f, struct file_limit *lim)
{
    open_journal(f);
    for (unsigned i = 1; i <= 3; i++)
        append_n(f, i);
    char names[4][64];
    assert_int_equal(list_segs(f->dir, names, 4), 1);
    memcpy(lim->name, names[0], sizeof lim->name);
    off_t size = file_size(f->dir, names[0]);
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigaction(SIGXFSZ, &ign, &lim->sa);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &lim->rl), 0);
    struct rlimit rl = lim->rl;
    rl.rlim_cur = (rlim_t)size + 100;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
    return size;
}

static void unlimit_files(const struct file_limit *lim)
{
    setrlimit(RLIMIT_FSIZE, &lim->rl);
    sigaction(SIGXFSZ, &lim->sa, NULL);
}

/* After a failed write nothing is read ahead until a write succeeds. */
static void test_read_ahead_held(void **state)
{
    struct fixture *f = *state;
    struct file_limit lim;
    limit_files(f, &lim);
    char big[1024];
    memset(big, 'B', sizeof big);
    gate_set(&f->t, true);
    uint64_t s1 = append_ok(f->j, "big", big, sizeof big);
    bool blocked = wait_in_gate(&f->t);
    uint64_t s2 = append_ok(f->j, "big", big, sizeof big);
    struct journal_record r;
    char *buf = NULL;
    size_t cap = 0;
    int held = journal_read_ahead(f->j, s1, &r, &buf, &cap);
    unlimit_files(&lim);
    gate_set(&f->t, false);
    assert_true(blocked);
    assert_false(f->t.ok[s1]);
    assert_int_equal(held, JOURNAL_AHEAD_HELD);

    assert_true(wait_decided(&f->t, s2));
    assert_true(f->t.ok[s2]);
    uint64_t s3 = append_n(f, 4);
    (void)s3;
    /* Written again: s2 is on disk and nothing newer is waiting. */
    assert_int_equal(journal_read_ahead(f->j, s1, &r, &buf, &cap), JOURNAL_AHEAD_ON_DISK);
    free(buf);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

/* Zeros written ahead: the file grows a chunk at a time, a crash leaves a
 * zero tail that recovery takes as the clean end, a clean stop cuts it. */
static void test_prealloc(void **state)
{
    struct fixture *f = *state;
    const off_t chunk = 64 * 1024;
    f->opt.prealloc_bytes = (uint64_t)chunk;
    open_journal(f);
    for (unsigned i = 1; i <= 10; i++)
        append_n(f, i);
    char names[4][64], path[256], saved[256];
    assert_int_equal(list_segs(f->dir, names, 4), 1);
    snprintf(path, sizeof path, "%s/%s", f->dir, names[0]);
    snprintf(saved, sizeof saved, "%s/crashed.bin", f->root);
    struct journal_stats st;
    journal_get_stats(f->j, &st);
    off_t records = (off_t)st.bytes; /* the zeros are not counted */
    assert_true(records > 0 && records < chunk);
    assert_int_equal(file_size(f->dir, names[0]), chunk);
    copy_file(path, saved); /* what a kill -9 leaves */

    journal_close(f->j);
    f->j = NULL;
    assert_int_equal(file_size(f->dir, names[0]), records);

    /* Restarted after a crash: no damage, nothing lost, writing goes on
     * right after the last record. */
    copy_file(saved, path);
    struct capture c;
    capture_start(&c, f);
    open_journal(f);
    char *log = capture_end(&c);
    assert_int_equal(count_lines_with(log, "dropped"), 0);
    free(log);
    uint64_t *seqs;
    assert_int_equal(read_all(f->j, &seqs), 10);
    free(seqs);
    assert_int_equal(append_n(f, 11), 11);
    size_t n = read_all(f->j, &seqs);
    assert_int_equal(n, 11);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], i + 1);
    free(seqs);
    assert_int_equal(file_size(f->dir, names[0]), chunk);

    /* A record torn in the preallocated area is damage, as anywhere. */
    journal_close(f->j);
    f->j = NULL;
    copy_file(saved, path);
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    static const unsigned char torn[12] = {0x52, 0x32, 0x4d, 0x4a, 1, 2, 3, 4, 11};
    assert_int_equal(pwrite(fd, torn, sizeof torn, records), (ssize_t)sizeof torn);
    close(fd);
    capture_start(&c, f);
    open_journal(f);
    log = capture_end(&c);
    assert_int_equal(count_lines_with(log, "dropped"), 1);
    free(log);
    assert_int_equal(read_all(f->j, &seqs), 10);
    free(seqs);
    assert_int_equal(file_size(f->dir, names[0]), records);
}

/* A rolled segment keeps no zeros: it is cut to its records. */
static void test_prealloc_roll(void **state)
{
    struct fixture *f = *state;
    f->opt.segment_bytes = 8192;
    f->opt.prealloc_bytes = 4096;
    open_journal(f);
    char payload[1000];
    memset(payload, 'p', sizeof payload);
    char names[4][64];
    for (int i = 0; i < 40 && list_segs(f->dir, names, 4) < 2; i++)
        assert_true(wait_decided(&f->t, append_ok(f->j, "roll", payload, sizeof payload)));
    assert_int_equal(list_segs(f->dir, names, 4), 2);
    off_t rec = 24 + 4 + (off_t)sizeof payload;
    off_t size = file_size(f->dir, names[0]);
    assert_true(size >= 8192 && size < 8192 + rec);
    assert_int_equal(size % rec, 0);
    /* The new active segment preallocates once written to. */
    assert_true(wait_decided(&f->t, append_ok(f->j, "roll", payload, sizeof payload)));
    assert_int_equal(file_size(f->dir, names[1]) % 4096, 0);
}

/* A write that needs more room than the file may grow by fails like any
 * other: the batch is burned, the file cut back, writing works again. */
static void test_prealloc_write_failure(void **state)
{
    struct fixture *f = *state;
    const off_t chunk = 16 * 1024;
    f->opt.prealloc_bytes = (uint64_t)chunk;
    open_journal(f);
    append_n(f, 1);
    char names[4][64];
    assert_int_equal(list_segs(f->dir, names, 4), 1);
    assert_int_equal(file_size(f->dir, names[0]), chunk);
    struct journal_stats st;
    journal_get_stats(f->j, &st);
    off_t records = (off_t)st.bytes;

    struct sigaction ign = {.sa_handler = SIG_IGN}, old_sa;
    sigaction(SIGXFSZ, &ign, &old_sa);
    struct rlimit old_rl, rl;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_rl), 0);
    rl = old_rl;
    rl.rlim_cur = (rlim_t)chunk;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
    char *big = malloc((size_t)chunk);
    assert_non_null(big);
    memset(big, 'B', (size_t)chunk);
    uint64_t small = append_ok(f->j, "small", "fits", 4); /* inside the zeros */
    bool small_done = wait_decided(&f->t, small);
    uint64_t s1 = append_ok(f->j, "big", big, (size_t)chunk);
    bool decided = wait_decided(&f->t, s1);
    setrlimit(RLIMIT_FSIZE, &old_rl);
    sigaction(SIGXFSZ, &old_sa, NULL);

    assert_true(small_done);
    assert_true(f->t.ok[small]);
    assert_true(decided);
    assert_false(f->t.ok[s1]);
    off_t after_small = records + 24 + 5 + 4;
    assert_int_equal(file_size(f->dir, names[0]), after_small);
    uint64_t s2 = append_ok(f->j, "big", big, (size_t)chunk);
    assert_true(wait_decided(&f->t, s2));
    assert_true(f->t.ok[s2]);
    free(big);
    uint64_t *seqs;
    size_t n = read_all(f->j, &seqs);
    assert_int_equal(n, 3);
    assert_int_equal(seqs[2], s2);
    free(seqs);
}

static void test_roll_and_release(void **state)
{
    struct fixture *f = *state;
    /* "t/N" + "payload-N" records are 24 + 3..4 + 9..10 bytes: 3 per segment. */
    f->opt.segment_bytes = 100;
    open_journal(f);
    for (unsigned i = 1; i <= 9; i++)
        append_n(f, i);
    char names[16][64];
    /* Segments: 1..3, 4..6, 7..9 and an empty active one named 10. */
    assert_int_equal(list_segs(f->dir, names, 16), 4);
    assert_string_equal(names[0], "seg-00000000000000000001.log");
    assert_string_equal(names[1], "seg-00000000000000000004.log");
    assert_string_equal(names[2], "seg-00000000000000000007.log");
    assert_string_equal(names[3], "seg-00000000000000000010.log");

    /* A reader inside the first segment. */
    struct journal_pos pos;
    struct journal_record r;
    char *buf = NULL;
    size_t cap = 0;
    journal_seek(f->j, 0, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 1);

    journal_release(f->j, 5); /* 4..6 not fully released */
    assert_int_equal(list_segs(f->dir, names, 16), 3);
    assert_string_equal(names[0], "seg-00000000000000000004.log");

    /* The reader's segment is gone: it continues with the next one. */
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 4);

    struct journal_stats st;
    journal_get_stats(f->j, &st);
    uint64_t before = st.bytes;
    journal_release(f->j, 6);
    journal_get_stats(f->j, &st);
    assert_true(st.bytes < before);
    assert_int_equal(list_segs(f->dir, names, 16), 2);

    /* The active segment is never deleted, whatever upto says. */
    append_n(f, 10);
    journal_release(f->j, UINT64_MAX);
    assert_int_equal(list_segs(f->dir, names, 16), 1);
    journal_get_stats(f->j, &st);
    assert_int_equal(st.segments, 1);
    assert_int_equal(st.bytes, (uint64_t)file_size(f->dir, names[0]));

    /* Seeking past everything released finds the next new record. */
    uint64_t s = append_n(f, 11);
    journal_seek(f->j, 10, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, s);
    expect_record(&r, 11);
    free(buf);
}

static void test_acked_persists(void **state)
{
    struct fixture *f = *state;
    open_journal(f);
    assert_int_equal(journal_acked(f->j), 0);
    for (unsigned i = 1; i <= 5; i++)
        append_n(f, i);
    journal_set_acked(f->j, 123456789012ull);
    journal_set_acked(f->j, 3);
    assert_int_equal(journal_acked(f->j), 3);
    reopen(f);
    assert_int_equal(journal_acked(f->j), 3);
    journal_set_acked(f->j, 1000);
    reopen(f);
    assert_int_equal(journal_acked(f->j), 1000);
    /* Seqs continue above the watermark, even if the records are gone. */
    uint64_t s = append_n(f, 6);
    assert_int_equal(s, 1001);
}

static void test_seek(void **state)
{
    struct fixture *f = *state;
    f->opt.segment_bytes = 400;
    open_journal(f);
    for (unsigned i = 1; i <= 100; i++)
        append_n(f, i);
    struct journal_stats st;
    journal_get_stats(f->j, &st);
    assert_true(st.segments > 5);

    struct journal_pos pos;
    struct journal_record r;
    char *buf = NULL;
    size_t cap = 0;
    for (uint64_t after = 0; after < 100; after += 7) {
        journal_seek(f->j, after, &pos);
        assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
        assert_int_equal(r.seq, after + 1);
        expect_record(&r, (unsigned)after + 1);
    }
    journal_seek(f->j, 100, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 0);
    journal_seek(f->j, 5000, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 0);
    append_n(f, 101);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 101);

    /* After a release, seeking before the first remaining record lands on it. */
    journal_release(f->j, 50);
    journal_seek(f->j, 0, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_true(r.seq > 40 && r.seq <= 51);
    free(buf);
}

/* Appends 1..n to a single segment and closes, returning that segment's name. */
static void fill_and_close(struct fixture *f, unsigned n, char *name)
{
    open_journal(f);
    for (unsigned i = 1; i <= n; i++)
        append_n(f, i);
    journal_close(f->j);
    f->j = NULL;
    char names[4][64];
    assert_int_equal(list_segs(f->dir, names, 4), 1);
    strcpy(name, names[0]);
}

static void test_torn_tail(void **state)
{
    struct fixture *f = *state;
    char name[64], path[256];
    fill_and_close(f, 10, name);
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    off_t size = file_size(f->dir, name);
    assert_int_equal(truncate(path, size - 5), 0);

    struct capture c;
    capture_start(&c, f);
    open_journal(f);
    char *log = capture_end(&c);
    assert_int_equal(count_lines_with(log, "dropped"), 1);
    assert_non_null(strstr(log, "extends past the end"));
    free(log);

    uint64_t *seqs;
    size_t n = read_all(f->j, &seqs);
    assert_int_equal(n, 9);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], i + 1);
    free(seqs);
    /* The torn record (seq 10) was never durable; its bytes are gone from the file. */
    off_t rec10 = HEADER + 4 + 10; /* "t/10" + "payload-10" */
    assert_int_equal(file_size(f->dir, name), size - rec10);
    /* Seq 10 is not handed out again: it may have been read ahead and
     * published before its write was torn. The lease says where to go on. */
    assert_int_equal(append_n(f, 11), 11);
    n = read_all(f->j, &seqs);
    assert_int_equal(n, 10);
    free(seqs);

    /* A clean reopen logs nothing about damage. */
    journal_close(f->j);
    f->j = NULL;
    capture_start(&c, f);
    open_journal(f);
    log = capture_end(&c);
    assert_int_equal(count_lines_with(log, "dropped"), 0);
    free(log);
}

static void test_corrupt_middle(void **state)
{
    struct fixture *f = *state;
    char name[64], path[256];
    fill_and_close(f, 20, name);
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    /* Records 1..9 are 24 + 3 + 9 bytes; flip a payload byte of record 10. */
    off_t rec10 = 9 * (HEADER + 3 + 9);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    char b;
    assert_int_equal(pread(fd, &b, 1, rec10 + HEADER + 6), 1);
    b ^= 0x20;
    assert_int_equal(pwrite(fd, &b, 1, rec10 + HEADER + 6), 1);
    close(fd);

    struct capture c;
    capture_start(&c, f);
    open_journal(f);
    char *log = capture_end(&c);
    assert_int_equal(count_lines_with(log, "dropped"), 1);
    assert_non_null(strstr(log, "crc mismatch"));
    assert_non_null(strstr(log, "10 intact records"));
    free(log);

    uint64_t *seqs;
    size_t n = read_all(f->j, &seqs);
    assert_int_equal(n, 9);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], i + 1);
    free(seqs);
    assert_int_equal(file_size(f->dir, name), rec10);
    /* Seqs of the lost records (up to 20) were handed out once; not again. */
    assert_int_equal(append_n(f, 21), 21);
    n = read_all(f->j, &seqs);
    assert_int_equal(n, 10);
    assert_int_equal(seqs[9], 21);
    free(seqs);
}

static void test_corrupt_older_segment(void **state)
{
    struct fixture *f = *state;
    f->opt.segment_bytes = 100; /* 3 records per segment */
    open_journal(f);
    for (unsigned i = 1; i <= 9; i++)
        append_n(f, i);
    journal_close(f->j);
    f->j = NULL;
    char names[8][64], path[256];
    assert_int_equal(list_segs(f->dir, names, 8), 4);
    /* Break the magic of record 5 (second record of the second segment). */
    snprintf(path, sizeof path, "%s/%s", f->dir, names[1]);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "XXXX", 4, HEADER + 3 + 9), 4);
    close(fd);
    off_t size = file_size(f->dir, names[1]);

    struct capture c;
    capture_start(&c, f);
    open_journal(f);
    char *log = capture_end(&c);
    assert_int_equal(count_lines_with(log, "dropped"), 1);
    assert_non_null(strstr(log, names[1]));
    assert_non_null(strstr(log, "bad magic"));
    free(log);

    uint64_t *seqs;
    size_t n = read_all(f->j, &seqs);
    uint64_t want[] = {1, 2, 3, 4, 7, 8, 9};
    assert_int_equal(n, 7);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], want[i]);
    free(seqs);
    assert_int_equal(file_size(f->dir, names[1]), size); /* kept as evidence */
    assert_int_equal(append_n(f, 10), 10);
    journal_release(f->j, 6);
    assert_int_equal(list_segs(f->dir, names, 8), 2);
}

/* Damage that appears after open is reported by journal_read and skipped. */
static void test_read_damaged(void **state)
{
    struct fixture *f = *state;
    open_journal(f);
    for (unsigned i = 1; i <= 5; i++)
        append_n(f, i);
    char names[4][64], path[256];
    assert_int_equal(list_segs(f->dir, names, 4), 1);
    snprintf(path, sizeof path, "%s/%s", f->dir, names[0]);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "?", 1, 2 * (HEADER + 3 + 9) + HEADER + 5), 1);
    close(fd);

    struct journal_pos pos;
    struct journal_record r;
    char *buf = NULL;
    size_t cap = 0;
    journal_seek(f->j, 0, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    struct capture c;
    capture_start(&c, f);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), -1);
    char *log = capture_end(&c);
    assert_int_equal(count_lines_with(log, "crc mismatch"), 1);
    free(log);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.seq, 4);
    expect_record(&r, 4);
    free(buf);
}

static void test_full(void **state)
{
    struct fixture *f = *state;
    /* 36-byte records, 3 per segment, room for 10. */
    f->opt.segment_bytes = 100;
    f->opt.max_bytes = 360;
    open_journal(f);
    uint64_t seq, last = 0;
    unsigned i = 0;
    enum journal_error e;
    while ((e = journal_append(f->j, "t/1", "payload-1", 9, &seq)) == JOURNAL_OK) {
        last = seq;
        assert_true(wait_decided(&f->t, seq));
        assert_true(++i < 100);
    }
    assert_int_equal(e, JOURNAL_FULL);
    assert_string_equal(journal_strerror(e), "journal full");
    assert_int_equal(i, 10);
    struct journal_stats st;
    journal_get_stats(f->j, &st);
    assert_int_equal(st.bytes, 360);
    assert_int_equal(st.max_bytes, 360);

    /* Releasing what is not fully acknowledged frees nothing. */
    journal_release(f->j, 2);
    assert_int_equal(journal_append(f->j, "t/1", "payload-1", 9, &seq), JOURNAL_FULL);
    journal_release(f->j, 6);
    journal_get_stats(f->j, &st);
    assert_int_equal(st.bytes, 360 - 6 * 36);
    assert_int_equal(journal_append(f->j, "t/1", "payload-1", 9, &seq), JOURNAL_OK);
    assert_int_equal(seq, last + 1);
    assert_true(wait_decided(&f->t, seq));
}

static void test_too_big(void **state)
{
    struct fixture *f = *state;
    open_journal(f);
    char topic[JOURNAL_MAX_TOPIC + 2];
    memset(topic, 't', sizeof topic - 1);
    topic[sizeof topic - 1] = '\0';
    uint64_t seq = 0;
    assert_int_equal(journal_append(f->j, topic, "x", 1, &seq), JOURNAL_TOO_BIG);
    assert_int_equal(journal_append(f->j, NULL, "x", 1, &seq), JOURNAL_TOO_BIG);
    size_t big = JOURNAL_MAX_PAYLOAD + 1;
    char *payload = calloc(1, big);
    assert_non_null(payload);
    assert_int_equal(journal_append(f->j, "t", payload, big, &seq), JOURNAL_TOO_BIG);
    assert_string_equal(journal_strerror(JOURNAL_TOO_BIG), "record too big");
    /* The largest payload is fine, and refused seqs were not consumed. */
    assert_int_equal(journal_append(f->j, "t", payload, big - 1, &seq), JOURNAL_OK);
    assert_int_equal(seq, 1);
    assert_true(wait_decided(&f->t, seq));
    struct journal_pos pos;
    struct journal_record r;
    char *buf = NULL;
    size_t cap = 0;
    journal_seek(f->j, 0, &pos);
    assert_int_equal(journal_read(f->j, &pos, &r, &buf, &cap), 1);
    assert_int_equal(r.payload_len, big - 1);
    assert_memory_equal(r.payload, payload, big - 1);
    free(buf);
    free(payload);
}

/* A write failure (EFBIG under RLIMIT_FSIZE) burns the batch and leaves no garbage. */
static void test_write_failure(void **state)
{
    struct fixture *f = *state;
    struct file_limit lim;
    off_t size = limit_files(f, &lim);
    char big[1024];
    memset(big, 'B', sizeof big);
    uint64_t s1 = append_ok(f->j, "big", big, sizeof big);
    bool decided = wait_decided(&f->t, s1);
    unlimit_files(&lim);

    assert_true(decided);
    assert_int_equal(f->t.seen[s1], 1);
    assert_false(f->t.ok[s1]);
    assert_int_equal(file_size(f->dir, lim.name), size);
    struct journal_stats st;
    journal_get_stats(f->j, &st);
    assert_int_equal(st.failed_commits, 1);
    assert_int_equal(st.durable_seq, 3);

    /* The limit is gone: writing works again, the burned seq is not reused. */
    uint64_t s2 = append_ok(f->j, "big", big, sizeof big);
    assert_int_equal(s2, s1 + 1);
    assert_true(wait_decided(&f->t, s2));
    assert_true(f->t.ok[s2]);
    uint64_t *seqs;
    size_t n = read_all(f->j, &seqs);
    uint64_t want[] = {1, 2, 3, s2};
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], want[i]);
    free(seqs);
    reopen(f);
    n = read_all(f->j, &seqs);
    assert_int_equal(n, 4);
    free(seqs);
}

static void test_misc(void **state)
{
    struct fixture *f = *state;
    journal_close(NULL);
    assert_int_equal(journal_append(NULL, "t", "x", 1, NULL), JOURNAL_CLOSED);
    assert_string_equal(journal_strerror(JOURNAL_CLOSED), "journal closed");
    /* A file where the directory should be. */
    char err[256] = "";
    char path[128];
    snprintf(path, sizeof path, "%s/file", f->root);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    struct journal_options opt = f->opt;
    opt.dir = path;
    struct journal *j = (struct journal *)1;
    assert_int_equal(journal_open(&j, &opt, err, sizeof err), -1);
    assert_null(j);
    assert_non_null(strstr(err, "file"));
    /* Foreign files in the directory are left alone. */
    open_journal(f);
    journal_close(f->j);
    f->j = NULL;
    snprintf(path, sizeof path, "%s/seg-notanumber.log", f->dir);
    fp = fopen(path, "w");
    fclose(fp);
    open_journal(f);
    append_n(f, 1);
    assert_int_equal(access(path, F_OK), 0);
}

/* The child reports each durable range on a pipe; on_commit runs on one thread. */
static void child_on_commit(void *ctx, uint64_t first, uint64_t last, bool ok)
{
    (void)first;
    if (ok && write(*(int *)ctx, &last, sizeof last) != sizeof last)
        _exit(3);
}

static void *child_writer(void *arg)
{
    struct journal *j = arg;
    char payload[200];
    for (unsigned i = 0;; i++) {
        uint64_t seq;
        int n = snprintf(payload, sizeof payload, "crash-%u", i);
        if (journal_append(j, "crash", payload, (size_t)n, &seq) != JOURNAL_OK)
            usleep(1000);
    }
    return NULL;
}

/* kill -9 in the middle of appends: everything reported durable is there. */
static void test_crash_kill9(void **state)
{
    struct fixture *f = *state;
    int fds[2];
    pid_t pid = fork_reporter(fds);
    if (pid == 0) {
        struct journal_options opt = f->opt;
        opt.segment_bytes = 32 * 1024;
        opt.on_commit = child_on_commit;
        opt.ctx = &fds[1];
        struct journal *j;
        char err[256];
        if (journal_open(&j, &opt, err, sizeof err) != 0)
            _exit(2);
        pthread_t th[2];
        for (int i = 0; i < 2; i++)
            pthread_create(&th[i], NULL, child_writer, j);
        for (;;)
            pause();
    }
    uint64_t durable = 0, last;
    while (durable < 20000 && read(fds[0], &last, sizeof last) == sizeof last)
        durable = last;
    kill9(pid);
    /* Reports already in the pipe are durable too. */
    while (read(fds[0], &last, sizeof last) == sizeof last)
        durable = last;
    close(fds[0]);
    assert_true(durable >= 20000);

    open_journal(f);
    uint64_t *seqs;
    size_t n = read_all(f->j, &seqs);
    assert_true(n >= durable);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], i + 1);
    free(seqs);
    struct journal_stats st;
    journal_get_stats(f->j, &st);
    assert_true(st.next_seq > durable);
    printf("    crash: %" PRIu64 " reported durable, %zu recovered\n", durable, n);
}

static double elapsed(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

struct waiter {
    struct fixture *f;
    double seconds;
    uint64_t done;
};

/* Like an HTTP handler: append, then wait until durable. */
static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    char payload[1024];
    memset(payload, 'p', sizeof payload);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (elapsed(&t0) < w->seconds) {
        uint64_t seq;
        if (journal_append(w->f->j, "bench/x", payload, sizeof payload, &seq) != JOURNAL_OK)
            break;
        if (!wait_decided(&w->f->t, seq))
            break;
        w->done++;
    }
    return NULL;
}

static void test_measure(void **state)
{
    struct fixture *f = *state;
    f->opt.segment_bytes = 16u << 20;
    open_journal(f);
    char payload[1024];
    memset(payload, 'p', sizeof payload);
    struct journal_stats st0, st1;

    /* Fire and forget, then wait: the upper bound. */
    const unsigned n = 50000;
    journal_get_stats(f->j, &st0);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t seq = 0;
    for (unsigned i = 0; i < n; i++)
        seq = append_ok(f->j, "bench/x", payload, sizeof payload);
    assert_true(wait_decided(&f->t, seq));
    double dt = elapsed(&t0);
    journal_get_stats(f->j, &st1);
    printf("    burst: %u x 1 KiB appends in %.3f s: %.0f appends/s, %" PRIu64
           " fdatasyncs (%.0f/s)\n",
           n, dt, n / dt, st1.commits - st0.commits, (double)(st1.commits - st0.commits) / dt);

    /* 1 and 16 "handlers" that each wait for their own commit. */
    const unsigned counts[] = {1, 16};
    for (size_t c = 0; c < 2; c++) {
        unsigned k = counts[c];
        struct waiter w[16];
        pthread_t th[16];
        journal_get_stats(f->j, &st0);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (unsigned i = 0; i < k; i++) {
            w[i] = (struct waiter){.f = f, .seconds = 1.0};
            pthread_create(&th[i], NULL, waiter_main, &w[i]);
        }
        uint64_t done = 0;
        for (unsigned i = 0; i < k; i++) {
            pthread_join(th[i], NULL);
            done += w[i].done;
        }
        dt = elapsed(&t0);
        journal_get_stats(f->j, &st1);
        printf("    %2u waiting writers: %.0f durable appends/s, %.0f fdatasyncs/s, %.1f "
               "records/commit\n",
               k, done / dt, (double)(st1.commits - st0.commits) / dt,
               (double)done / (double)(st1.commits - st0.commits ? st1.commits - st0.commits : 1));
        assert_true(done > 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_continues, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_ahead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_ahead_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prealloc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prealloc_write_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prealloc_roll, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roll_and_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acked_persists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seek, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_middle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_older_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_damaged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_misc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_kill9, setup, teardown),
        cmocka_unit_test_setup_teardown(test_measure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
