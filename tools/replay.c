/*
 * replay.c - race2mqtt-replay: plays a race recording (recording.h) into a
 * gateway's webhook endpoint the way SmartRace sent it, for demos, tests and
 * for re-feeding a race after an outage.
 *
 *     race2mqtt-replay [--url URL] [--token T] [--speed X] [--loop]
 *                      [--max-gap-s S] [-q] FILE
 *
 * The whole file is read and checked first: every line must be a recording
 * line and every body a SmartRace envelope the gateway would accept (same
 * parser), so a bad file sends nothing at all instead of half a race. Then
 * each body is POSTed as it was recorded, byte for byte, on one kept-alive
 * connection, after the recorded gap to the previous event, capped at
 * --max-gap-s (a coffee break in a recording should not stall a demo) and
 * divided by --speed (0: no waiting). The schedule is absolute, so a slow
 * answer is caught up on by the following gaps instead of stretching the race.
 *
 * The first refusal (non-2xx) or connection failure stops the replay: the
 * events after it would reach the gateway's race state with a hole before
 * them, and a gateway that is down refuses every later one too.
 *
 * Exit status: 0 all sent, 1 a POST failed, 2 bad usage or a bad file,
 * 128+N stopped by signal N (SIGINT, SIGTERM) between two events: a POST in
 * flight is finished first, so the gateway and this tool agree on what was
 * sent.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "race2mqtt/jsonutil.h"
#include "race2mqtt/recording.h"
#include "race2mqtt/smartrace.h"

#define PROG "race2mqtt-replay"
#define DEFAULT_URL "http://127.0.0.1:8080/"
#define DEFAULT_MAX_GAP_S 10.0
/* Bounds on what is read: the file as a whole, the number of events, the
 * token, and the part of an answer that is kept. */
#define REPLAY_MAX_FILE (1024u * 1024u * 1024u)
#define REPLAY_MAX_EVENTS 1000000u
#define REPLAY_MAX_TOKEN 1024u
#define REPLAY_ANSWER_MAX 4096u
#define REPLAY_CONNECT_TIMEOUT_MS 5000L
/* The gateway answers once the event is fsynced; generous, still bounded. */
#define REPLAY_TIMEOUT_MS 30000L

#define EXIT_POST 1
#define EXIT_USAGE 2

struct event {
    uint64_t at_ms;
    char *body;
    size_t len;
    size_t line; /* 1-based line in the file */
    char type[SMARTRACE_MAX_TYPE_LEN + 1];
};

struct options {
    const char *url;
    const char *token;
    double speed;
    double max_gap_s;
    bool loop;
    bool quiet;
    const char *file;
};

struct answer {
    char buf[REPLAY_ANSWER_MAX + 1];
    size_t len;
};

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: " PROG " [--url URL] [--token T] [--speed X] [--loop] [--max-gap-s S] [-q] "
            "FILE\n"
            "Replays a race recording (JSON lines, see smartrace.record) into a race2mqtt\n"
            "gateway, one POST per line, keeping the recorded gaps.\n"
            "\n"
            "  --url URL        where to POST (default " DEFAULT_URL ")\n"
            "  --token T        the gateway's http.token, sent as Authorization: Bearer T\n"
            "  --speed X        gaps divided by X (default 1; 0 = as fast as possible)\n"
            "  --max-gap-s S    longest recorded gap kept, in seconds (default 10)\n"
            "  --loop           start again after the last event, until stopped\n"
            "  -q, --quiet      no line per event\n"
            "  -h, --help       this text\n"
            "  --version        the version\n"
            "\n"
            "Exit status: 0 sent, 1 a POST failed, 2 bad usage or file (nothing sent),\n"
            "128+N stopped by signal N.\n");
}

/* A finite number >= 0 from s, or -1. */
static double parse_nonneg(const char *s)
{
    char *end = NULL;
    errno = 0;
    double d = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(d) || d < 0)
        return -1;
    return d;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    enum { OPT_URL = 256, OPT_TOKEN, OPT_SPEED, OPT_MAX_GAP, OPT_LOOP, OPT_VERSION };
    static const struct option longopts[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"speed", required_argument, NULL, OPT_SPEED},
        {"max-gap-s", required_argument, NULL, OPT_MAX_GAP},
        {"loop", no_argument, NULL, OPT_LOOP},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){.url = DEFAULT_URL, .speed = 1.0, .max_gap_s = DEFAULT_MAX_GAP_S};
    int c;
    while ((c = getopt_long(argc, argv, "qh", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_URL:
            o->url = optarg;
            break;
        case OPT_TOKEN:
            o->token = optarg;
            break;
        case OPT_SPEED:
            if ((o->speed = parse_nonneg(optarg)) < 0) {
                fprintf(stderr, PROG ": --speed wants a number >= 0, not \"%s\"\n", optarg);
                return -1;
            }
            break;
        case OPT_MAX_GAP:
            if ((o->max_gap_s = parse_nonneg(optarg)) < 0 || o->max_gap_s > 86400) {
                fprintf(stderr, PROG ": --max-gap-s wants seconds from 0 to 86400, not \"%s\"\n",
                        optarg);
                return -1;
            }
            break;
        case OPT_LOOP:
            o->loop = true;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case OPT_VERSION:
            printf(PROG " " RACE2MQTT_VERSION "\n");
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return -1;
    }
    o->file = argv[optind];
    if (o->token) {
        size_t n = strlen(o->token);
        /* It goes into a header line: no CR/LF or other control characters. */
        bool ok = n > 0 && n <= REPLAY_MAX_TOKEN;
        for (size_t i = 0; ok && i < n; i++)
            ok = (unsigned char)o->token[i] > 0x20 && o->token[i] != 0x7f;
        if (!ok) {
            fprintf(stderr, PROG ": --token must be 1 to %u printable characters\n",
                    REPLAY_MAX_TOKEN);
            return -1;
        }
    }
    return 0;
}

/* The whole file, NUL-terminated; NULL with a message printed. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    struct stat st;

    if (!f) {
        fprintf(stderr, PROG ": %s: %s\n", path, strerror(errno));
        return NULL;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, PROG ": %s: not a regular file\n", path);
        goto out;
    }
    if ((uintmax_t)st.st_size > REPLAY_MAX_FILE) {
        fprintf(stderr, PROG ": %s: larger than %u bytes\n", path, REPLAY_MAX_FILE);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fprintf(stderr, PROG ": %s: out of memory\n", path);
        goto out;
    }
    *len = fread(buf, 1, (size_t)st.st_size, f);
    if (ferror(f) || *len != (size_t)st.st_size) {
        fprintf(stderr, PROG ": %s: read error or file changed while read\n", path);
        free(buf);
        buf = NULL;
        goto out;
    }
    buf[*len] = '\0';
out:
    fclose(f);
    return buf;
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    }
    return true;
}

static void free_events(struct event *ev, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ev[i].body);
    free(ev);
}

/* Reads and checks the whole recording. Blank lines are skipped (hand-written
 * files end in one). Returns 0 with the events, or -1 with "FILE:LINE:
 * reason" printed. */
static int load(const char *path, struct event **out, size_t *count)
{
    size_t len = 0, n = 0, cap = 0, lineno = 0;
    struct event *ev = NULL;
    int rc = -1;
    char *text = read_file(path, &len);
    if (!text)
        return -1;

    for (size_t pos = 0; pos < len;) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t llen = nl ? (size_t)(nl - line) + 1 : len - pos;
        pos += llen;
        lineno++;
        if (blank(line, llen))
            continue;
        if (n == REPLAY_MAX_EVENTS) {
            fprintf(stderr, "%s:%zu: more than %u events\n", path, lineno, REPLAY_MAX_EVENTS);
            goto out;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 256;
            struct event *p = realloc(ev, ncap * sizeof *p);
            if (!p) {
                fprintf(stderr, "%s:%zu: out of memory\n", path, lineno);
                goto out;
            }
            ev = p;
            cap = ncap;
        }
        struct event *e = &ev[n];
        const char *why = NULL;
        if (recording_parse_line(line, llen, &e->at_ms, &e->body, &e->len, &why) != 0) {
            fprintf(stderr, "%s:%zu: %s\n", path, lineno, why);
            goto out;
        }
        n++;
        e->line = lineno;
        struct sr_event sr;
        char detail[256] = "";
        enum sr_error err = smartrace_parse(e->body, e->len, &sr, detail, sizeof detail);
        if (err != SR_OK) {
            fprintf(stderr, "%s:%zu: body is not a SmartRace event: %s\n", path, lineno,
                    detail[0] ? detail : smartrace_strerror(err));
            goto out;
        }
        snprintf(e->type, sizeof e->type, "%s", sr.type);
        smartrace_event_cleanup(&sr);
    }
    if (n == 0) {
        fprintf(stderr, "%s: no events\n", path);
        goto out;
    }
    *out = ev;
    *count = n;
    ev = NULL;
    n = 0;
    rc = 0;
out:
    free_events(ev, n);
    free(text);
    return rc;
}

/* The URL without user info, query and fragment (where tokens live), for
 * messages; "(bad URL)" when libcurl cannot parse it. */
static void url_for_humans(const char *url, char *out, size_t cap)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
    snprintf(out, cap, "(bad URL)");
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
        goto out;
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    snprintf(out, cap, "%s://%s%s%s%s", scheme, host, port ? ":" : "", port ? port : "", path);
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ctx)
{
    struct answer *a = ctx;
    size_t n = size * nmemb, room = REPLAY_ANSWER_MAX - a->len;
    memcpy(a->buf + a->len, data, n < room ? n : room);
    a->len += n < room ? n : room;
    a->buf[a->len] = '\0';
    return n;
}

/* The gateway's {"status":..,"seq":N} or {"error":".."}: *seq (-1 when
 * absent) and the error text into err. */
static void read_answer(const struct answer *a, int64_t *seq, char *err, size_t errlen)
{
    struct json_object *root = NULL, *v;
    *seq = -1;
    snprintf(err, errlen, "%.200s", a->len ? a->buf : "(empty answer)");
    if (jsonutil_parse(a->buf, a->len, NULL, 0, 4, &root, NULL, 0) != JSONUTIL_OK)
        return;
    if (json_object_object_get_ex(root, "seq", &v) && json_object_is_type(v, json_type_int))
        *seq = json_object_get_int64(v);
    if (json_object_object_get_ex(root, "error", &v) && json_object_is_type(v, json_type_string))
        snprintf(err, errlen, "%.200s", json_object_get_string(v));
    json_object_put(root);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sleeps until the monotonic time deadline_ns; false when a signal asks to stop. */
static bool sleep_until(uint64_t deadline_ns)
{
    struct timespec ts = {(time_t)(deadline_ns / 1000000000u), (long)(deadline_ns % 1000000000u)};
    while (!stop_signal) {
        int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        if (rc == 0)
            return !stop_signal;
        if (rc != EINTR)
            return !stop_signal;
    }
    return false;
}

/* The wait before an event, in ms: the recorded gap, capped, then scaled. */
static double wait_ms(const struct options *o, uint64_t prev_at, uint64_t at)
{
    if (o->speed == 0)
        return 0;
    double gap = at > prev_at ? (double)(at - prev_at) : 0;
    if (gap > o->max_gap_s * 1000.0)
        gap = o->max_gap_s * 1000.0;
    return gap / o->speed;
}

struct sender {
    CURL *curl;
    struct curl_slist *headers;
    struct answer answer;
    char errbuf[CURL_ERROR_SIZE];
    char where[512];
};

static int sender_init(struct sender *s, const struct options *o)
{
    char auth[REPLAY_MAX_TOKEN + 32];
    memset(s, 0, sizeof *s);
    url_for_humans(o->url, s->where, sizeof s->where);
    CURLU *u = curl_url();
    bool url_ok = u && curl_url_set(u, CURLUPART_URL, o->url, 0) == CURLUE_OK;
    curl_url_cleanup(u);
    if (!url_ok) {
        fprintf(stderr, PROG ": --url: not a URL: %s\n", o->url);
        return -1;
    }
    s->curl = curl_easy_init();
    if (!s->curl)
        goto nomem;
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    /* libcurl would otherwise send "Expect: 100-continue" for bodies above
     * 1 KiB, i.e. for every lap event, and wait a round trip for nothing. */
    h = h ? curl_slist_append(h, "Expect:") : NULL;
    if (h && o->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->token);
        h = curl_slist_append(h, auth);
        memset(auth, 0, sizeof auth);
    }
    if (!h)
        goto nomem;
    s->headers = h;
    curl_easy_setopt(s->curl, CURLOPT_URL, o->url);
    curl_easy_setopt(s->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(s->curl, CURLOPT_HTTPHEADER, s->headers);
    curl_easy_setopt(s->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(s->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(s->curl, CURLOPT_CONNECTTIMEOUT_MS, REPLAY_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(s->curl, CURLOPT_TIMEOUT_MS, REPLAY_TIMEOUT_MS);
    curl_easy_setopt(s->curl, CURLOPT_USERAGENT, PROG "/" RACE2MQTT_VERSION);
    curl_easy_setopt(s->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(s->curl, CURLOPT_WRITEDATA, &s->answer);
    curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, s->errbuf);
    return 0;
nomem:
    fprintf(stderr, PROG ": out of memory\n");
    return -1;
}

static void sender_cleanup(struct sender *s)
{
    curl_slist_free_all(s->headers);
    curl_easy_cleanup(s->curl);
}

/* POSTs one event; 0 on 2xx, -1 with one message printed. */
static int sender_post(struct sender *s, const struct options *o, const struct event *e,
                       double gap_ms)
{
    s->answer.len = 0;
    s->answer.buf[0] = '\0';
    s->errbuf[0] = '\0';
    curl_easy_setopt(s->curl, CURLOPT_POSTFIELDS, e->body);
    curl_easy_setopt(s->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)e->len);
    CURLcode rc = curl_easy_perform(s->curl);
    if (rc != CURLE_OK) {
        fprintf(stderr, PROG ": %s:%zu: %s: cannot POST to %s: %s\n", o->file, e->line, e->type,
                s->where, s->errbuf[0] ? s->errbuf : curl_easy_strerror(rc));
        return -1;
    }
    long status = 0;
    curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
    int64_t seq;
    char err[256];
    read_answer(&s->answer, &seq, err, sizeof err);
    if (status < 200 || status > 299) {
        fprintf(stderr, PROG ": %s:%zu: %s: %s answered HTTP %ld: %s\n", o->file, e->line, e->type,
                s->where, status, err);
        return -1;
    }
    if (!o->quiet) {
        char seqs[24] = "-";
        if (seq >= 0)
            snprintf(seqs, sizeof seqs, "%" PRId64, seq);
        printf("line=%zu type=%s status=%ld seq=%s gap_ms=%.0f\n", e->line, e->type, status, seqs,
               gap_ms);
    }
    return 0;
}

/* Plays every event once, then again with --loop. Returns the exit status. */
static int play(const struct options *o, const struct event *ev, size_t n)
{
    struct sender s;
    if (sender_init(&s, o) != 0) {
        sender_cleanup(&s);
        return EXIT_USAGE;
    }
    int rc = 0;
    uint64_t sent = 0, deadline = now_ns();
    for (unsigned long pass = 1;; pass++) {
        if (pass > 1 && !o->quiet)
            printf("pass=%lu\n", pass);
        for (size_t i = 0; i < n; i++) {
            double gap;
            if (i > 0)
                gap = wait_ms(o, ev[i - 1].at_ms, ev[i].at_ms);
            else if (pass > 1)
                /* Between passes: the longest gap, so the result stays up a while. */
                gap = o->speed == 0 ? 0 : o->max_gap_s * 1000.0 / o->speed;
            else
                gap = 0;
            deadline += (uint64_t)(gap * 1e6);
            if (!sleep_until(deadline))
                goto stopped;
            if (sender_post(&s, o, &ev[i], gap) != 0) {
                rc = EXIT_POST;
                goto out;
            }
            sent++;
        }
        if (!o->loop)
            break;
    }
    if (!o->quiet)
        printf("sent %" PRIu64 " events\n", sent);
    goto out;
stopped:
    fprintf(stderr, PROG ": stopped by signal %d after %" PRIu64 " events\n", (int)stop_signal,
            sent);
    rc = 128 + (int)stop_signal;
out:
    sender_cleanup(&s);
    return rc;
}

int main(int argc, char **argv)
{
    struct options o;
    struct event *ev = NULL;
    size_t n = 0;

    if (parse_options(argc, argv, &o) != 0)
        return EXIT_USAGE;
    /* Line by line, so that whoever reads the output sees each event when it
     * is sent. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a signal ends the sleep between two events at once. */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (load(o.file, &ev, &n) != 0)
        return EXIT_USAGE;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, PROG ": cannot initialise libcurl\n");
        free_events(ev, n);
        return EXIT_POST;
    }
    int rc = play(&o, ev, n);
    curl_global_cleanup();
    free_events(ev, n);
    return rc;
}
