/*
 * test_recording.c - the race recording against real files in a temp
 * directory: raw bodies survive byte for byte (quotes, backslashes, control
 * characters, NUL, UTF-8, non-canonical JSON), hand-written object bodies are
 * read, bad lines are refused with a reason, lines from two writers never
 * interleave, and a short write leaves no half line.
 */
#include "race2mqtt/recording.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

struct fixture {
    char dir[64];
    char path[128];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/r2m-rec-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/race.jsonl", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Calls fn(line, len, ctx) for every '\n'-terminated line of buf; returns
 * the count and fails on a last line without '\n'. */
static size_t each_line(const char *buf, size_t len,
                        void (*fn)(const char *, size_t, size_t, void *), void *ctx)
{
    size_t n = 0, start = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == '\n') {
            if (fn)
                fn(buf + start, i + 1 - start, n, ctx);
            n++;
            start = i + 1;
        }
    }
    if (start != len)
        fail_msg("last line has no newline: %.*s", (int)(len - start), buf + start);
    return n;
}

struct body {
    const char *s;
    size_t len;
};

#define BODY(lit)                                                                                  \
    {                                                                                              \
        lit, sizeof lit - 1                                                                        \
    }

static const struct body bodies[] = {
    BODY("{\"time\":1718035201234,\"event_type\":\"ui.lap_update\",\"event_data\":{\"controller_"
         "id\":"
         "\"3\",\"lap\":12}}"),
    /* Non-canonical JSON: spacing, member order, \/ and \u escapes, 1.50. */
    BODY("{ \"event_type\" : \"ui.show_message\",\n\t\"event_data\": \"Hello \\/ world \\u00e9\","
         " \"n\": 1.50 }"),
    BODY("{\"event_type\":\"x\",\"event_data\":{\"name\":\"J\xc3\xbcrgen \\\"JJ\\\" "
         "\xf0\x9f\x8f\x81\",\"path\":\"C:\\\\cars\\\\\"}}"),
    /* Raw control characters (not JSON, but bytes are bytes), NUL, DEL. */
    BODY("\x01\x02\x1f\t\r\n\"\\\x7f end"),
    BODY("a\0b\0"),
    BODY("\"quoted\""),
    BODY("\\"),
};
#define N_BODIES (sizeof bodies / sizeof bodies[0])

static void check_roundtrip_line(const char *line, size_t len, size_t i, void *ctx)
{
    (void)ctx;
    uint64_t at = 0;
    char *body = NULL;
    size_t body_len = 0;
    const char *why = "unset";

    assert_true(i < N_BODIES);
    /* The newline is the line's only one: control characters are escaped. */
    assert_ptr_equal(memchr(line, '\n', len), line + len - 1);
    assert_int_equal(recording_parse_line(line, len, &at, &body, &body_len, &why), 0);
    assert_null(why);
    assert_int_equal(at, 1718035201000u + i);
    assert_int_equal(body_len, bodies[i].len);
    assert_memory_equal(body, bodies[i].s, body_len);
    assert_int_equal(body[body_len], '\0');
    free(body);
}

static void test_roundtrip(void **state)
{
    struct fixture *f = *state;
    char err[256] = "";
    struct recorder *r = recorder_open(f->path, err, sizeof err);
    assert_non_null(r);
    for (size_t i = 0; i < N_BODIES; i++)
        assert_int_equal(recorder_append(r, 1718035201000u + i, bodies[i].s, bodies[i].len), 0);
    recorder_close(r);

    size_t len = 0;
    char *buf = test_slurp(f->path, &len);
    assert_non_null(buf);
    assert_int_equal(each_line(buf, len, check_roundtrip_line, NULL), N_BODIES);
    /* The wire format is what recording.h promises, time first. */
    assert_memory_equal(buf, "{\"at_ms\":1718035201000,\"body\":\"{\\\"time\\\":", 39);
    free(buf);
}

/* Opening again appends; a new file gets mode 0640. */
static void test_append_mode(void **state)
{
    struct fixture *f = *state;
    char err[256] = "";
    mode_t old = umask(0);
    struct recorder *r = recorder_open(f->path, err, sizeof err);
    umask(old);
    assert_non_null(r);
    assert_int_equal(recorder_append(r, 1, "{\"a\":1}", 7), 0);
    recorder_close(r);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);

    r = recorder_open(f->path, err, sizeof err);
    assert_non_null(r);
    assert_int_equal(recorder_append(r, 2, "{\"a\":2}", 7), 0);
    recorder_close(r);
    size_t len = 0;
    char *buf = test_slurp(f->path, &len);
    assert_string_equal(buf, "{\"at_ms\":1,\"body\":\"{\\\"a\\\":1}\"}\n"
                             "{\"at_ms\":2,\"body\":\"{\\\"a\\\":2}\"}\n");
    free(buf);

    recorder_close(NULL);
    assert_null(recorder_open("/nonexistent-dir/x.jsonl", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent-dir/x.jsonl"));
}

static void test_append_refusals(void **state)
{
    struct fixture *f = *state;
    char err[256] = "";
    struct recorder *r = recorder_open(f->path, err, sizeof err);
    assert_non_null(r);
    errno = 0;
    assert_int_equal(recorder_append(r, 1, "x", 0), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(recorder_append(r, 1, NULL, 3), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(recorder_append(r, 1, "{\"a\":\"\xc3\x28\"}", 10), -1);
    assert_int_equal(errno, EILSEQ);
    assert_int_equal(recorder_append(r, 1, "\xed\xa0\x80", 3), -1); /* a surrogate */
    assert_int_equal(errno, EILSEQ);
    char *big = malloc(RECORDING_MAX_BODY + 1);
    assert_non_null(big);
    memset(big, 'x', RECORDING_MAX_BODY + 1);
    assert_int_equal(recorder_append(r, 1, big, RECORDING_MAX_BODY + 1), -1);
    assert_int_equal(errno, EMSGSIZE);
    free(big);
    recorder_close(r);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_size, 0);
}

/* Hand-written captures may carry the body as an object. */
static void test_object_body(void **state)
{
    (void)state;
    static const char line[] =
        "  {\"body\": {\"event_type\": \"ui.reset\", \"time\": 1718035050000,"
        " \"event_data\": {\"s\": \"a/b\"}}, \"at_ms\": 5, \"note\": [1]}\r\n";
    uint64_t at = 0;
    char *body = NULL;
    size_t len = 0;
    const char *why = NULL;
    assert_int_equal(recording_parse_line(line, sizeof line - 1, &at, &body, &len, &why), 0);
    assert_int_equal(at, 5);
    assert_string_equal(body, "{\"event_type\":\"ui.reset\",\"time\":1718035050000,"
                              "\"event_data\":{\"s\":\"a/b\"}}");
    assert_int_equal(len, strlen(body));
    free(body);

    /* Without a trailing newline (the last line of a hand-written file). */
    static const char last[] = "{\"at_ms\":0,\"body\":\"{}\"}";
    assert_int_equal(recording_parse_line(last, sizeof last - 1, &at, &body, &len, &why), 0);
    assert_int_equal(at, 0);
    assert_string_equal(body, "{}");
    free(body);

    /* The largest at_ms the gateway's int64 clock can give. */
    static const char max[] = "{\"at_ms\":9223372036854775807,\"body\":\"{}\"}";
    assert_int_equal(recording_parse_line(max, sizeof max - 1, &at, &body, &len, &why), 0);
    assert_int_equal(at, INT64_MAX);
    free(body);
}

struct bad {
    const char *line;
    size_t len;
    const char *reason; /* a word the reason must contain */
};

#define BAD(lit, word)                                                                             \
    {                                                                                              \
        lit, sizeof lit - 1, word                                                                  \
    }

static const struct bad bad_lines[] = {
    BAD("", "JSON"),
    BAD("\n", "JSON"),
    BAD("not json", "JSON"),
    BAD("{\"at_ms\":1,\"body\":\"x\"", "JSON"),
    BAD("{\"at_ms\":1,\"body\":\"x\"} x", "trailing"),
    BAD("{\"at_ms\":1,\"body\":\"x\"}{\"at_ms\":2,\"body\":\"y\"}", "trailing"),
    BAD("{'at_ms':1,\"body\":\"x\"}", "JSON"),
    BAD("{\"at_ms\":1,\"body\":\"\xc3\x28\"}", "JSON"),
    BAD("{\"at_ms\":1,\"body\":\"a\0b\"}", "JSON"),
    BAD("[1,2]", "object"),
    BAD("\"body\"", "object"),
    BAD("{\"body\":\"x\"}", "missing at_ms"),
    BAD("{\"at_ms\":null,\"body\":\"x\"}", "missing at_ms"),
    BAD("{\"at_ms\":-1,\"body\":\"x\"}", "negative"),
    BAD("{\"at_ms\":1.5,\"body\":\"x\"}", "integer"),
    BAD("{\"at_ms\":1e3,\"body\":\"x\"}", "integer"),
    BAD("{\"at_ms\":\"5\",\"body\":\"x\"}", "integer"),
    BAD("{\"at_ms\":true,\"body\":\"x\"}", "integer"),
    BAD("{\"at_ms\":NaN,\"body\":\"x\"}", "JSON"),
    BAD("{\"at_ms\":18446744073709551615,\"body\":\"x\"}", "range"),
    BAD("{\"at_ms\":1}", "missing body"),
    BAD("{\"at_ms\":1,\"body\":null}", "missing body"),
    BAD("{\"at_ms\":1,\"body\":5}", "string"),
    BAD("{\"at_ms\":1,\"body\":[\"x\"]}", "string"),
    BAD("{\"at_ms\":1,\"body\":false}", "string"),
    BAD("{\"at_ms\":1,\"body\":\"\"}", "empty"),
};

static void test_bad_lines(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_lines / sizeof bad_lines[0]; i++) {
        const struct bad *b = &bad_lines[i];
        uint64_t at = 77;
        char *body = (char *)1;
        size_t len = 77;
        const char *why = NULL;
        int rc = recording_parse_line(b->line, b->len, &at, &body, &len, &why);
        if (rc != -1 || !why || !strstr(why, b->reason))
            fail_msg("line %zu (%.*s): rc %d, reason \"%s\", want one with \"%s\"", i, (int)b->len,
                     b->line, rc, why ? why : "(none)", b->reason);
        assert_null(body);
        assert_int_equal(len, 0);
    }

    /* Nesting beyond what the gateway accepts in a body: the wrapper and
     * RECORDING_MAX_DEPTH arrays around a number. */
    char deep[256];
    size_t n = (size_t)snprintf(deep, sizeof deep, "{\"at_ms\":1,\"body\":");
    for (int d = 0; d < RECORDING_MAX_DEPTH; d++)
        deep[n++] = '[';
    deep[n++] = '1';
    for (int d = 0; d < RECORDING_MAX_DEPTH; d++)
        deep[n++] = ']';
    deep[n++] = '}';
    uint64_t at;
    char *body;
    size_t len;
    const char *why = NULL;
    assert_int_equal(recording_parse_line(deep, n, &at, &body, &len, &why), -1);
    assert_non_null(strstr(why, "deep"));
}

/* Two recorders on one file, each in its own thread, bodies up to 48 KiB: a
 * line written in two pieces would sooner or later be split by the other
 * writer's line. */
#define WRITER_LINES 1500

struct writer {
    const char *path;
    char tag;
    int rc;
};

static size_t body_size(char tag, int i)
{
    return 1 + ((size_t)i * 7919u + (size_t)tag * 131u) % (48u * 1024u);
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    char err[256];
    struct recorder *r = recorder_open(w->path, err, sizeof err);
    char *buf = malloc(48u * 1024u + 1);
    if (!r || !buf) {
        w->rc = -1;
        goto out;
    }
    for (int i = 0; i < WRITER_LINES; i++) {
        size_t n = body_size(w->tag, i);
        memset(buf, w->tag, n);
        /* Quotes force escaping, so the line is longer than the body. */
        buf[n / 2] = '"';
        if (recorder_append(r, (uint64_t)i, buf, n) != 0) {
            w->rc = -1;
            break;
        }
    }
out:
    free(buf);
    recorder_close(r);
    return NULL;
}

struct seen {
    int next[2]; /* the next index expected from writer A and B */
};

static void check_writer_line(const char *line, size_t len, size_t i, void *ctx)
{
    struct seen *s = ctx;
    uint64_t at = 0;
    char *body = NULL;
    size_t body_len = 0;
    const char *why = NULL;
    if (recording_parse_line(line, len, &at, &body, &body_len, &why) != 0)
        fail_msg("line %zu torn (%s): %.60s...", i + 1, why, line);
    int k = body[0] == 'A' ? 0 : 1;
    assert_int_equal(at, (uint64_t)s->next[k]);
    assert_int_equal(body_len, body_size(body[0], s->next[k]));
    s->next[k]++;
    free(body);
}

static void test_writers_do_not_interleave(void **state)
{
    struct fixture *f = *state;
    struct writer w[2] = {{f->path, 'A', 0}, {f->path, 'B', 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].rc, 0);
    }
    size_t len = 0;
    char *buf = test_slurp(f->path, &len);
    assert_non_null(buf);
    struct seen s = {{0, 0}};
    assert_int_equal(each_line(buf, len, check_writer_line, &s), 2 * WRITER_LINES);
    assert_int_equal(s.next[0], WRITER_LINES);
    assert_int_equal(s.next[1], WRITER_LINES);
    free(buf);
}

/* A write cut short by the file size limit (as by a full disk) is undone. */
static void test_short_write(void **state)
{
    struct fixture *f = *state;
    char err[256] = "";
    struct recorder *r = recorder_open(f->path, err, sizeof err);
    assert_non_null(r);
    assert_int_equal(recorder_append(r, 1, "{\"a\":1}", 7), 0);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    off_t before = st.st_size;

    struct sigaction ign = {.sa_handler = SIG_IGN}, old_sa;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGXFSZ, &ign, &old_sa);
    struct rlimit old_rl, rl;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_rl), 0);
    rl = old_rl;
    rl.rlim_cur = (rlim_t)before + 10;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
    char body[200];
    memset(body, 'z', sizeof body);
    errno = 0;
    int rc = recorder_append(r, 2, body, sizeof body);
    int e = errno;
    setrlimit(RLIMIT_FSIZE, &old_rl);
    sigaction(SIGXFSZ, &old_sa, NULL);

    assert_int_equal(rc, -1);
    assert_int_equal(e, ENOSPC);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_size, before);
    /* The limit is gone: appending works again and the file reads clean. */
    assert_int_equal(recorder_append(r, 3, "{\"a\":3}", 7), 0);
    recorder_close(r);
    size_t len = 0;
    char *buf = test_slurp(f->path, &len);
    assert_int_equal(each_line(buf, len, NULL, NULL), 2);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_refusals, setup, teardown),
        cmocka_unit_test(test_object_body),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test_setup_teardown(test_writers_do_not_interleave, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_write, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
