/*
 * bench.c - ingest benchmark for race2mqtt (a program, not a test).
 *
 * POSTs SmartRace ui.lap_update events (~1.5 KB each) to the gateway over C
 * keep-alive HTTP/1.1 connections (raw sockets, one request in flight per
 * connection, all driven by one epoll loop), while a paho MQTTAsync client
 * subscribed to smartrace/lap/# at QoS 1 records every delivery. Each 200
 * answer carries the gateway's seq; deliveries are matched to requests by that
 * seq after the run (and cross-checked against the "bench_id" member the bench
 * puts into event_data), which gives accepted/delivered rates, losses,
 * duplicates and POST-to-subscriber latency. See bench/README.md.
 *
 * Three more modes serve bench/compare.sh and bench/rr_backlog.py:
 * - --match id matches by bench_id alone, for targets whose answer and payload
 *   carry no seq (the Node-RED flow in bench/nodered/);
 * - --direct leaves HTTP out: a second paho client publishes each event, shaped
 *   as the gateway publishes it, straight to the broker at QoS 1 with at most
 *   --conns PUBACKs outstanding, so that the broker's own cost is measured with
 *   the same subscriber and the same numbers;
 * - --payload passing publishes RACE RESULT passings (raceresult/<device>/passing)
 *   instead of laps, and --no-subscribe leaves the counting to someone else.
 * Every run ends with one "RESULT key=value ..." line for scripts.
 */
#include <MQTTAsync.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NCONTROLLERS 6
#define MAX_CONNS 1024
#define TIMER_TAG UINT32_MAX
/* Passings per decoder file, as bench/rr_backlog.py has the fake server keep
 * them: the direct publisher then gives the same ids the gateway would. */
#define PASSINGS_PER_FILE 10000
#define PAYLOAD_MAX 2048
#define DEVICE_MAX 64
#define PSS_SAMPLE_US 200000

enum payload_kind { PAYLOAD_LAP, PAYLOAD_PASSING };

/* ------------------------------------------------------------------ options */

static struct {
    char host[256];
    char port[16];
    const char *path;
    char broker[512];
    long n;
    int conns;
    double rate;
    long pid;
    const char *token;
    long warmup;
    long grace_ms;
    long timeout_s;
    const char *label;
    int mqtt_version;
    bool match_id;  /* match deliveries by bench_id, not by the answer's seq */
    bool direct;    /* publish to the broker instead of POSTing */
    bool subscribe; /* run the subscriber (off: publish only) */
    enum payload_kind payload;
    char device[DEVICE_MAX + 1];
} opt = {
    .host = "127.0.0.1",
    .port = "8080",
    .path = "/",
    .broker = "tcp://127.0.0.1:1883",
    .n = 100000,
    .conns = 32,
    .rate = 0,
    .pid = 0,
    .token = NULL,
    .warmup = 0,
    .grace_ms = 3000,
    .timeout_s = 600,
    .label = NULL,
    .mqtt_version = 4,
    .match_id = false,
    .direct = false,
    .subscribe = true,
    .payload = PAYLOAD_LAP,
    .device = "D-1",
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: race2mqtt-bench [options]\n"
            "  --http HOST:PORT     gateway HTTP server (default 127.0.0.1:8080)\n"
            "  --path PATH          POST path (default /)\n"
            "  --broker URL         MQTT broker, tcp://HOST:PORT (default tcp://127.0.0.1:1883)\n"
            "  --n N                measured events (default 100000)\n"
            "  --conns C            keep-alive HTTP connections (default 32)\n"
            "  --rate R             events/s on a paced schedule, 0 = full speed (default 0)\n"
            "  --pid PID            gateway pid, for VmHWM/VmRSS and CPU time\n"
            "  --token T            ingest token (sent as ?token=T)\n"
            "  --warmup W           events sent (and drained) before measuring (default 0)\n"
            "  --grace-ms MS        wait for the last deliveries after the last answer "
            "(default 3000)\n"
            "  --timeout-s S        give up after S seconds in total (default 600)\n"
            "  --label TEXT         title of the result block\n"
            "  --mqtt5              subscribe with MQTT 5 (default 3.1.1)\n"
            "  --match seq|id       match deliveries by the answer's seq (default) or by\n"
            "                       the bench_id in the payload alone\n"
            "  --direct             no HTTP: publish gateway-shaped payloads straight to the\n"
            "                       broker at QoS 1, at most --conns unacknowledged\n"
            "  --payload lap|passing  what --direct publishes (default lap: smartrace/lap/1..6;\n"
            "                       passing: raceresult/DEVICE/passing, implies --direct)\n"
            "  --device ID          device of the passings (default D-1)\n"
            "  --no-subscribe       no subscriber: count acknowledgements only\n");
}

static long parse_long(const char *name, const char *s, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "bench: bad value for --%s: %s\n", name, s);
        exit(2);
    }
    return v;
}

/* Index of s in a NULL-terminated list of choices; exits on anything else. */
static int parse_choice(const char *name, const char *s, const char *const *choices)
{
    for (int k = 0; choices[k]; k++)
        if (strcmp(s, choices[k]) == 0)
            return k;
    fprintf(stderr, "bench: bad value for --%s: %s (one of:", name, s);
    for (int k = 0; choices[k]; k++)
        fprintf(stderr, " %s", choices[k]);
    fprintf(stderr, ")\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    enum {
        OPT_HTTP = 256,
        OPT_PATH,
        OPT_BROKER,
        OPT_N,
        OPT_CONNS,
        OPT_RATE,
        OPT_PID,
        OPT_TOKEN,
        OPT_WARMUP,
        OPT_GRACE,
        OPT_TIMEOUT,
        OPT_LABEL,
        OPT_MQTT5,
        OPT_MATCH,
        OPT_DIRECT,
        OPT_PAYLOAD,
        OPT_DEVICE,
        OPT_NO_SUBSCRIBE,
        OPT_HELP
    };
    static const struct option longopts[] = {
        {"http", required_argument, NULL, OPT_HTTP},
        {"path", required_argument, NULL, OPT_PATH},
        {"broker", required_argument, NULL, OPT_BROKER},
        {"n", required_argument, NULL, OPT_N},
        {"conns", required_argument, NULL, OPT_CONNS},
        {"rate", required_argument, NULL, OPT_RATE},
        {"pid", required_argument, NULL, OPT_PID},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"warmup", required_argument, NULL, OPT_WARMUP},
        {"grace-ms", required_argument, NULL, OPT_GRACE},
        {"timeout-s", required_argument, NULL, OPT_TIMEOUT},
        {"label", required_argument, NULL, OPT_LABEL},
        {"mqtt5", no_argument, NULL, OPT_MQTT5},
        {"match", required_argument, NULL, OPT_MATCH},
        {"direct", no_argument, NULL, OPT_DIRECT},
        {"payload", required_argument, NULL, OPT_PAYLOAD},
        {"device", required_argument, NULL, OPT_DEVICE},
        {"no-subscribe", no_argument, NULL, OPT_NO_SUBSCRIBE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_HTTP: {
            const char *colon = strrchr(optarg, ':');
            if (!colon || colon == optarg || !colon[1]) {
                fprintf(stderr, "bench: --http wants HOST:PORT\n");
                exit(2);
            }
            const char *h = optarg;
            size_t hl = (size_t)(colon - optarg);
            if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
                h++;
                hl -= 2;
            }
            if (hl >= sizeof opt.host || strlen(colon + 1) >= sizeof opt.port) {
                fprintf(stderr, "bench: --http too long\n");
                exit(2);
            }
            memcpy(opt.host, h, hl);
            opt.host[hl] = '\0';
            snprintf(opt.port, sizeof opt.port, "%s", colon + 1);
            break;
        }
        case OPT_PATH:
            opt.path = optarg;
            break;
        case OPT_BROKER:
            /* paho wants tcp://; accept mqtt:// too. */
            if (strncmp(optarg, "mqtt://", 7) == 0)
                snprintf(opt.broker, sizeof opt.broker, "tcp://%s", optarg + 7);
            else
                snprintf(opt.broker, sizeof opt.broker, "%s", optarg);
            break;
        case OPT_N:
            opt.n = parse_long("n", optarg, 1, 100000000);
            break;
        case OPT_CONNS:
            opt.conns = (int)parse_long("conns", optarg, 1, MAX_CONNS);
            break;
        case OPT_RATE: {
            char *end;
            opt.rate = strtod(optarg, &end);
            if (end == optarg || *end || !(opt.rate >= 0) || opt.rate > 1e7) {
                fprintf(stderr, "bench: bad value for --rate: %s\n", optarg);
                exit(2);
            }
            break;
        }
        case OPT_PID:
            opt.pid = parse_long("pid", optarg, 1, INT32_MAX);
            break;
        case OPT_TOKEN:
            opt.token = optarg;
            break;
        case OPT_WARMUP:
            opt.warmup = parse_long("warmup", optarg, 0, 100000000);
            break;
        case OPT_GRACE:
            opt.grace_ms = parse_long("grace-ms", optarg, 0, 3600000);
            break;
        case OPT_TIMEOUT:
            opt.timeout_s = parse_long("timeout-s", optarg, 1, 86400);
            break;
        case OPT_LABEL:
            opt.label = optarg;
            break;
        case OPT_MQTT5:
            opt.mqtt_version = 5;
            break;
        case OPT_MATCH:
            opt.match_id = parse_choice("match", optarg, (const char *const[]){"seq", "id", NULL});
            break;
        case OPT_DIRECT:
            opt.direct = true;
            break;
        case OPT_PAYLOAD:
            /* In the order of enum payload_kind. */
            opt.payload = (enum payload_kind)parse_choice(
                "payload", optarg, (const char *const[]){"lap", "passing", NULL});
            break;
        case OPT_DEVICE: {
            /* A topic level and a JSON string: no escaping needed for these. */
            size_t dl = strlen(optarg);
            if (dl == 0 || dl > DEVICE_MAX ||
                strspn(optarg, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
                               "qrstuvwxyz0123456789._-") != dl) {
                fprintf(stderr, "bench: --device wants 1 to %d of [A-Za-z0-9._-]\n", DEVICE_MAX);
                exit(2);
            }
            memcpy(opt.device, optarg, dl + 1);
            break;
        }
        case OPT_NO_SUBSCRIBE:
            opt.subscribe = false;
            break;
        case 'h':
        case OPT_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc) {
        usage(stderr);
        exit(2);
    }
    /* Passings only exist on the direct path here (the gateway polls them). */
    if (opt.payload == PAYLOAD_PASSING)
        opt.direct = true;
    /* The direct publisher knows every event's bench_id; seq is its own. */
    if (opt.direct)
        opt.match_id = true;
}

/* --------------------------------------------------------------------- time */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t epoch_ms_base; /* CLOCK_REALTIME ms at mono_base */
static int64_t mono_base;

static int64_t epoch_ms_now(int64_t mono)
{
    return epoch_ms_base + (mono - mono_base) / 1000000;
}

/* ------------------------------------------------------------------- events */

/* One record per event: warmup events are 0..W-1, measured ones W..W+N-1. */
struct ev {
    int64_t sched; /* due time (rate mode) or send time */
    int64_t sent;  /* just before send(2) */
    int64_t resp;  /* complete answer parsed */
    int64_t deliv; /* first delivery at the subscriber (post-processing) */
    int64_t seq;   /* from the 200 answer, -1 if none */
    int status;    /* HTTP status, 0 = transport error, -1 = not done */
};

static struct ev *evs;
static long n_total; /* warmup + measured */

/* The static tail of each controller's event (driver, car, controller data). */
static char tails[NCONTROLLERS][1600];
static size_t tail_len[NCONTROLLERS];
/* The same tail as the gateway publishes it inside "data": compact JSON, up to
 * and including the "}" that closes event_data (--direct). */
static char ctails[NCONTROLLERS][1600];
static size_t ctail_len[NCONTROLLERS];
static char request_target[1024];
static size_t body_len_sample;

/*
 * Copies JSON text without the whitespace between tokens, the way json-c
 * prints it with JSON_C_TO_STRING_PLAIN (which the gateway uses for "data").
 * Only for the bench's own templates: strings are kept byte for byte, escapes
 * included. dst needs len bytes; returns the length written.
 */
static size_t json_compact(char *dst, const char *src, size_t len)
{
    size_t o = 0;
    bool in_str = false, esc = false;
    for (size_t k = 0; k < len; k++) {
        char ch = src[k];
        if (in_str) {
            if (esc)
                esc = false;
            else if (ch == '\\')
                esc = true;
            else if (ch == '"')
                in_str = false;
        } else if (ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r') {
            continue;
        } else if (ch == '"') {
            in_str = true;
        }
        dst[o++] = ch;
    }
    return o;
}

static void build_tails(void)
{
    static const char *const drivers[NCONTROLLERS] = {"osc", "mia", "ben", "lou", "kai", "eva"};
    static const char *const cars[NCONTROLLERS] = {"BMW M4",      "Porsche 911 RSR", "Ferrari 488",
                                                   "Audi R8 LMS", "Mercedes AMG",    "Ford GT"};
    static const char *const colors[NCONTROLLERS] = {"rgb(254, 56, 39)",  "rgb(39, 118, 254)",
                                                     "rgb(255, 214, 0)",  "rgb(0, 190, 90)",
                                                     "rgb(160, 80, 220)", "rgb(255, 140, 0)"};
    for (int c = 0; c < NCONTROLLERS; c++) {
        /* Same layout (2-space indented JSON) and size (~1.5 KB) as the app's lap events. */
        int n =
            snprintf(tails[c], sizeof tails[c],
                     "    \"driver_data\": {\n"
                     "      \"id\": %d,\n"
                     "      \"name\": \"%s\",\n"
                     "      \"name_short\": \"%.2s\",\n"
                     "      \"name_tts\": \"Der %s\",\n"
                     "      \"team\": %d,\n"
                     "      \"image\": "
                     "\"file:///data/user/0/com.trademarc.smartrace/files/17042213894%02d.jpg\",\n"
                     "      \"start_no\": %d,\n"
                     "      \"start_no_color_background\": \"\",\n"
                     "      \"start_no_color_text\": \"\",\n"
                     "      \"start_no_color_border\": \"\",\n"
                     "      \"start_no_text_style\": \"normal\",\n"
                     "      \"active\": \"yes\",\n"
                     "      \"team_data\": {\n"
                     "        \"id\": %d,\n"
                     "        \"name\": \"team %d\",\n"
                     "        \"location\": \"\",\n"
                     "        \"comment\": \"\",\n"
                     "        \"image\": "
                     "\"file:///data/user/0/com.trademarc.smartrace/files/17034974145%02d.jpg\"\n"
                     "      }\n"
                     "    },\n"
                     "    \"car_data\": {\n"
                     "      \"id\": %d,\n"
                     "      \"name\": \"%s\",\n"
                     "      \"manufacturer\": \"Carrera\",\n"
                     "      \"scale\": \"1:32\",\n"
                     "      \"tyres\": \"Original\",\n"
                     "      \"color\": \"\",\n"
                     "      \"decoder_type\": \"Carrera (default)\",\n"
                     "      \"magnets\": \"yes\",\n"
                     "      \"digital_analog\": \"digital\",\n"
                     "      \"active\": \"yes\",\n"
                     "      \"logo\": \"car%d.png\",\n"
                     "      \"image\": "
                     "\"file:///data/user/0/com.trademarc.smartrace/files/17035215858%02d.jpg\",\n"
                     "      \"speed\": 0,\n"
                     "      \"brakes\": 13,\n"
                     "      \"fuel\": 9,\n"
                     "      \"changed_on\": \"2024-01-19 19:27:48\",\n"
                     "      \"laps\": %d,\n"
                     "      \"interval\": 0,\n"
                     "      \"interval_counter\": %d,\n"
                     "      \"comment\": \"\",\n"
                     "      \"sound\": \"-\",\n"
                     "      \"tags\": \"[]\"\n"
                     "    },\n"
                     "    \"controller_data\": {\n"
                     "      \"color_bg\": \"%s\",\n"
                     "      \"color_text\": \"rgb(23, 255, 255)\"\n"
                     "    }\n"
                     "  }\n"
                     "}",
                     c + 1, drivers[c], drivers[c], drivers[c], c + 1, c, c + 1, c + 1, c + 1, c,
                     c + 10, cars[c], c, c, 1600 + c * 7, 1598 + c * 7, colors[c]);
        if (n < 0 || (size_t)n >= sizeof tails[c]) {
            fprintf(stderr, "bench: event template too long\n");
            exit(1);
        }
        tail_len[c] = (size_t)n;
        ctail_len[c] = json_compact(ctails[c], tails[c], tail_len[c]);
        if (ctail_len[c] < 2 || ctails[c][ctail_len[c] - 1] != '}') {
            fprintf(stderr, "bench: event template does not end in \"}\"\n");
            exit(1);
        }
        ctail_len[c]--; /* the envelope's "}" */
    }
    const char *sep = strchr(opt.path, '?') ? "&" : "?";
    if (opt.token)
        snprintf(request_target, sizeof request_target, "%s%stoken=%s", opt.path, sep, opt.token);
    else
        snprintf(request_target, sizeof request_target, "%s", opt.path);
}

static int lap_controller(long i)
{
    return (int)(i % NCONTROLLERS) + 1;
}

static int lap_raw_ms(long i)
{
    return 9000 + (int)((i * 7919) % 3000);
}

/*
 * The members of event i's event_data before the static tail, 2-space
 * indented like the app's: controller_id cycles "1".."6", lap increases per
 * controller, bench_id = i. Returns the length written.
 */
static size_t format_data_head(char *buf, size_t cap, long i)
{
    long lap = i / NCONTROLLERS + 1;
    int raw = lap_raw_ms(i);
    int n = snprintf(buf, cap,
                     "    \"controller_id\": \"%d\",\n"
                     "    \"bench_id\": %ld,\n"
                     "    \"lap\": %ld,\n"
                     "    \"laptime\": \"0:%02d.%03d\",\n"
                     "    \"laptime_raw\": %d,\n"
                     "    \"lap_pb\": %s,\n",
                     lap_controller(i), i, lap, raw / 1000, raw % 1000, raw,
                     (i % 5 == 0) ? "true" : "false");
    if (n < 0 || (size_t)n >= cap) {
        fprintf(stderr, "bench: event head too long\n");
        exit(1);
    }
    return (size_t)n;
}

/* Writes the whole HTTP request for event i into buf; returns its length. */
static size_t build_request(char *buf, size_t cap, long i, int64_t mono)
{
    int c = lap_controller(i) - 1;
    char head[320];
    int hl = snprintf(head, sizeof head,
                      "{\n"
                      "  \"time\": %" PRId64 ",\n"
                      "  \"event_type\": \"ui.lap_update\",\n"
                      "  \"event_data\": {\n",
                      epoch_ms_now(mono));
    if (hl < 0 || (size_t)hl >= sizeof head) {
        fprintf(stderr, "bench: event head too long\n");
        exit(1);
    }
    hl += (int)format_data_head(head + hl, sizeof head - (size_t)hl, i);
    size_t body = (size_t)hl + tail_len[c];
    body_len_sample = body;
    int rl = snprintf(buf, cap,
                      "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      request_target, opt.host, opt.port, body);
    if (rl < 0 || (size_t)rl + body > cap) {
        fprintf(stderr, "bench: request too long\n");
        exit(1);
    }
    memcpy(buf + rl, head, (size_t)hl);
    memcpy(buf + rl + hl, tails[c], tail_len[c]);
    return (size_t)rl + body;
}

/* Appends printf output at *len; exits when cap is too small. */
__attribute__((format(printf, 4, 5))) static void append(char *buf, size_t cap, size_t *len,
                                                         const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *len) {
        fprintf(stderr, "bench: payload too long\n");
        exit(1);
    }
    *len += (size_t)n;
}

/*
 * Event i as the gateway publishes it on smartrace/lap/<c> (SPEC section 2,
 * gateway/smartrace.c): event_type, time, the event_data as sent in compact
 * form, controller_id, laptime_ms, and seq last (here i + 1).
 */
static size_t build_lap_payload(char *buf, size_t cap, long i, int64_t mono)
{
    int c = lap_controller(i) - 1;
    char head[320];
    size_t hl = format_data_head(head, sizeof head, i);
    size_t len = 0;
    append(buf, cap, &len, "{\"event_type\":\"ui.lap_update\",\"time\":%" PRId64 ",\"data\":{",
           epoch_ms_now(mono));
    if (hl + ctail_len[c] >= cap - len) {
        fprintf(stderr, "bench: payload too long\n");
        exit(1);
    }
    len += json_compact(buf + len, head, hl);
    memcpy(buf + len, ctails[c], ctail_len[c]);
    len += ctail_len[c];
    append(buf, cap, &len, ",\"controller_id\":\"%d\",\"laptime_ms\":%d,\"seq\":%ld}", c + 1,
           lap_raw_ms(i), i + 1);
    return len;
}

/*
 * Passing i as the gateway publishes a decoder passing on
 * raceresult/<device>/passing (SPEC section 3, gateway/raceresult.c): the
 * common fields, then the record as received in "raw", with the members and
 * roughly the values tests/fakerr gives a Decoder. id = <device>/<file>/<no>
 * with PASSINGS_PER_FILE passings per file, so the ids are those of the
 * gateway for the same backlog.
 */
static size_t build_passing_payload(char *buf, size_t cap, long i)
{
    static const char alphabet[] = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789";
    long file = 1 + i / PASSINGS_PER_FILE, no = 1 + i % PASSINGS_PER_FILE;
    uint64_t h = (uint64_t)(i + 1) * 0x9E3779B97F4A7C15u;
    char code[8];
    for (int k = 0; k < 7; k++)
        code[k] = alphabet[(h >> (k * 5)) % (sizeof alphabet - 1)];
    code[7] = '\0';
    /* A passing every 150 ms from 2025-05-19T08:00:00Z on. */
    int64_t ms = INT64_C(1747641600000) + (int64_t)i * 150;
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char when[64];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    int loop = 1 + (int)((h >> 24) % 4), channel = 1 + (int)((h >> 8) % 8);
    int hits = 1 + (int)((h >> 16) % 40), rssi = -(40 + (int)((h >> 40) % 50));
    int battery_dv = 25 + (int)((h >> 12) % 12), temp = 15 + (int)((h >> 48) % 20);
    size_t len = 0;
    append(buf, cap, &len,
           "{\"id\":\"%s/%ld/%ld\",\"device\":\"%s\",\"file\":%ld,\"no\":%ld,\"kind\":\"passing\","
           "\"transponder\":\"%s\",\"time\":\"%s\",\"time_ms\":%" PRId64 ",\"loop\":%d,"
           "\"channel\":%d,\"hits\":%d,\"rssi\":%d,\"battery\":%d.%d,",
           opt.device, file, no, opt.device, file, no, code, when, ms, loop, channel, hits, rssi,
           battery_dv / 10, battery_dv % 10);
    append(buf, cap, &len,
           "\"raw\":{\"Battery\":%d.%d,\"Channel\":%d,\"Code\":\"%s\",\"Customer\":846,"
           "\"DeviceID\":\"%s\",\"DeviceName\":\"%s\",\"FileNo\":%ld,\"Hits\":%d,"
           "\"InternalActiveData\":0,\"InternalData\":\"%08" PRIX32 "\",\"IsActive\":true,"
           "\"IsRunTime\":false,\"LoopID\":%d,\"LoopOnly\":%s,\"MaxRSSIAntenna\":0,"
           "\"OrderID\":%ld,\"PassingNo\":%ld,\"Position\":{\"Altitude\":547,\"Flag\":\"S\","
           "\"Latitude\":48.9867,\"Longitude\":11.3782},\"RSSI\":%d,\"RealTime\":\"%s\","
           "\"RunTime\":0,\"Temp\":%d,\"UTCOffset\":0,\"WUC\":%d}}",
           battery_dv / 10, battery_dv % 10, channel, code, opt.device, opt.device, file, hits,
           (uint32_t)h, loop, no % 20 == 0 ? "true" : "false", 100 + (i * 7) % 900, no, rssi, when,
           temp, (int)((h >> 20) % 65536));
    return len;
}

/* Topic and payload of event i on the direct path; returns the payload length. */
static size_t build_direct(char *topic, size_t tcap, char *buf, size_t cap, long i, int64_t mono)
{
    if (opt.payload == PAYLOAD_PASSING) {
        snprintf(topic, tcap, "raceresult/%s/passing", opt.device);
        return build_passing_payload(buf, cap, i);
    }
    snprintf(topic, tcap, "smartrace/lap/%d", lap_controller(i));
    return build_lap_payload(buf, cap, i, mono);
}

/* --------------------------------------------------------------- subscriber */

struct dlv {
    int64_t seq;
    int64_t bench_id;
    int64_t t;
};

static struct dlv *dlog;
static size_t dlog_cap;
static atomic_size_t dlog_n;
static atomic_long dlog_overflow;
static atomic_long unparsed;
static atomic_long reordered;
static unsigned char *seen; /* by bench_id: delivered at least once */
static atomic_long uniq_warm, uniq_meas;
static int64_t last_seq_ctrl[NCONTROLLERS + 1];
static atomic_int mqtt_lost;
static struct reorder {
    int ctrl;
    int64_t after, seq;
} reorder_ex[4]; /* the first out-of-order deliveries, for the report */

static pthread_mutex_t mq_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t mq_cv = PTHREAD_COND_INITIALIZER;
static int mq_state; /* 0 pending, 1 ok, -1 failed */
static int mq_granted;

/* Integer after "key" (then optional spaces, ':', spaces), INT64_MIN if absent. */
static int64_t int_after(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    bool neg = false;
    if (p < end && *p == '-') {
        neg = true;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return INT64_MIN;
    int64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    return neg ? -v : v;
}

/* Searches from the end: the gateway puts "seq" last, after the ~1.5 KB data. */
static int64_t find_int_rev(const char *p, size_t len, const char *key)
{
    size_t kl = strlen(key);
    if (len < kl)
        return INT64_MIN;
    for (size_t i = len - kl + 1; i-- > 0;)
        if (p[i] == key[0] && memcmp(p + i, key, kl) == 0)
            return int_after(p + i + kl, p + len);
    return INT64_MIN;
}

static int64_t find_int_fwd(const char *p, size_t len, const char *key)
{
    size_t kl = strlen(key);
    const char *hit = memmem(p, len, key, kl);
    return hit ? int_after(hit + kl, p + len) : INT64_MIN;
}

static int on_message(void *ctx, char *topic, int topiclen, MQTTAsync_message *m)
{
    (void)ctx;
    int64_t t = now_ns();
    const char *p = m->payload;
    size_t len = m->payloadlen > 0 ? (size_t)m->payloadlen : 0;
    int64_t seq = INT64_MIN, bid = INT64_MIN;
    if (opt.payload == PAYLOAD_PASSING) {
        /* "file" and "no" come first, before the record in "raw". */
        int64_t file = find_int_fwd(p, len, "\"file\"");
        int64_t no = find_int_fwd(p, len, "\"no\"");
        if (file >= 1 && file <= INT32_MAX && no >= 1 && no <= PASSINGS_PER_FILE)
            bid = (file - 1) * PASSINGS_PER_FILE + no - 1;
    } else {
        seq = find_int_rev(p, len, "\"seq\"");
        bid = find_int_fwd(p, len, "\"bench_id\"");
    }
    if (seq == INT64_MIN && bid == INT64_MIN) {
        atomic_fetch_add(&unparsed, 1);
    } else {
        size_t k = atomic_fetch_add(&dlog_n, 1);
        if (k < dlog_cap)
            dlog[k] = (struct dlv){seq, bid, t};
        else
            atomic_fetch_add(&dlog_overflow, 1);
        if (bid >= 0 && bid < n_total && !seen[bid]) {
            seen[bid] = 1;
            atomic_fetch_add(bid < opt.warmup ? &uniq_warm : &uniq_meas, 1);
        }
        /* Per-topic order: smartrace/lap/<controller>. */
        size_t tl = topiclen > 0 ? (size_t)topiclen : strlen(topic);
        int ctrl = 0;
        if (tl >= 2 && topic[tl - 2] == '/' && topic[tl - 1] >= '1' &&
            topic[tl - 1] <= '0' + NCONTROLLERS)
            ctrl = topic[tl - 1] - '0';
        /* Per-topic order by seq; by bench_id it is checked after the run. */
        if (!opt.match_id && seq != INT64_MIN) {
            if (seq < last_seq_ctrl[ctrl]) {
                long r = atomic_fetch_add(&reordered, 1);
                if (r < 4)
                    reorder_ex[r] = (struct reorder){ctrl, last_seq_ctrl[ctrl], seq};
            } else
                last_seq_ctrl[ctrl] = seq;
        }
    }
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

static void on_lost(void *ctx, char *cause)
{
    (void)ctx;
    atomic_store(&mqtt_lost, 1);
    fprintf(stderr, "bench: subscriber lost the broker connection: %s\n",
            cause ? cause : "(no cause)");
}

static void mq_signal(int state)
{
    pthread_mutex_lock(&mq_mu);
    mq_state = state;
    pthread_cond_signal(&mq_cv);
    pthread_mutex_unlock(&mq_mu);
}

static void on_ok(void *ctx, MQTTAsync_successData *r)
{
    (void)ctx;
    if (r)
        mq_granted = r->alt.qos;
    mq_signal(1);
}

static void on_fail(void *ctx, MQTTAsync_failureData *r)
{
    (void)ctx;
    fprintf(stderr, "bench: MQTT request failed: %d %s\n", r ? r->code : 0,
            r && r->message ? r->message : "");
    mq_signal(-1);
}

static void on_conn_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    (void)ctx;
    (void)r;
    mq_signal(1);
}

/* One topic: the granted QoS is the reason code (alt.sub is for several). */
static void on_sub_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    (void)ctx;
    if (r)
        mq_granted = r->reasonCode;
    mq_signal(1);
}

static void on_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    (void)ctx;
    fprintf(stderr, "bench: MQTT request failed: %d %s\n", r ? r->code : 0,
            r && r->message ? r->message : "");
    mq_signal(-1);
}

static int mq_wait(int seconds)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += seconds;
    pthread_mutex_lock(&mq_mu);
    while (mq_state == 0)
        if (pthread_cond_timedwait(&mq_cv, &mq_mu, &dl) == ETIMEDOUT)
            break;
    int s = mq_state;
    mq_state = 0;
    pthread_mutex_unlock(&mq_mu);
    return s;
}

/*
 * A paho client with the id race2mqtt-bench<role>-<pid> for opt.broker, no
 * persistence; max_buffered 0 keeps paho's default. Exits on failure.
 */
static MQTTAsync mqtt_create(const char *role, int version, int max_buffered,
                             MQTTAsync_connectionLost *lost, MQTTAsync_messageArrived *arrived)
{
    MQTTAsync cl;
    char id[64];
    snprintf(id, sizeof id, "race2mqtt-bench%s-%ld", role, (long)getpid());
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    co.MQTTVersion = version;
    if (max_buffered > 0)
        co.maxBufferedMessages = max_buffered;
    int rc =
        MQTTAsync_createWithOptions(&cl, opt.broker, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        fprintf(stderr, "bench: MQTTAsync_create(%s): %d\n", opt.broker, rc);
        exit(1);
    }
    MQTTAsync_setCallbacks(cl, NULL, lost, arrived, NULL);
    return cl;
}

static MQTTAsync subscribe_start(void)
{
    MQTTAsync cl = mqtt_create("", opt.mqtt_version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1, 0,
                               on_lost, on_message);
    int rc;

    MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer;
    if (opt.mqtt_version == 5) {
        MQTTAsync_connectOptions o5 = MQTTAsync_connectOptions_initializer5;
        o = o5;
        o.cleanstart = 1;
        o.onSuccess5 = on_conn_ok5;
        o.onFailure5 = on_fail5;
    } else {
        o.MQTTVersion = MQTTVERSION_3_1_1;
        o.cleansession = 1;
        o.onSuccess = on_ok;
        o.onFailure = on_fail;
    }
    o.keepAliveInterval = 30;
    o.connectTimeout = 5;
    rc = MQTTAsync_connect(cl, &o);
    if (rc != MQTTASYNC_SUCCESS || mq_wait(10) != 1) {
        fprintf(stderr, "bench: cannot connect the subscriber to %s (%d)\n", opt.broker, rc);
        exit(1);
    }

    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    if (opt.mqtt_version == 5) {
        ro.onSuccess5 = on_sub_ok5;
        ro.onFailure5 = on_fail5;
    } else {
        ro.onSuccess = on_ok;
        ro.onFailure = on_fail;
    }
    mq_granted = -1;
    char filter[DEVICE_MAX + 32];
    if (opt.payload == PAYLOAD_PASSING)
        snprintf(filter, sizeof filter, "raceresult/%s/passing", opt.device);
    else
        snprintf(filter, sizeof filter, "smartrace/lap/#");
    rc = MQTTAsync_subscribe(cl, filter, 1, &ro);
    if (rc != MQTTASYNC_SUCCESS || mq_wait(10) != 1) {
        fprintf(stderr, "bench: subscribe failed (%d)\n", rc);
        exit(1);
    }
    if (mq_granted != 1) {
        fprintf(stderr, "bench: broker granted QoS/reason %d instead of 1\n", mq_granted);
        exit(1);
    }
    return cl;
}

/* Disconnects and destroys a client (subscriber or publisher). */
static void mqtt_stop(MQTTAsync cl)
{
    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
    d.timeout = 1000;
    MQTTAsync_disconnect(cl, &d);
    for (int i = 0; i < 100 && MQTTAsync_isConnected(cl); i++)
        usleep(10000);
    MQTTAsync_destroy(&cl);
}

/* ------------------------------------------------------- direct publisher */

/*
 * --direct: the broker alone. A paho client of its own (MQTT 3.1.1, clean
 * session) publishes each event at QoS 1 the moment it is due; at most
 * --conns publishes await their PUBACK, like --conns HTTP requests in flight.
 * The PUBACK plays the part of the 200 answer (evs[].resp, status 200).
 */
static pthread_mutex_t pub_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pub_cv; /* on CLOCK_MONOTONIC, see pub_start() */
static int pub_inflight;
static long pub_done;
static atomic_long pub_failed;

static void pub_finish(long i, int status)
{
    int64_t t = now_ns();
    pthread_mutex_lock(&pub_mu);
    evs[i].resp = t;
    evs[i].status = status;
    pub_inflight--;
    pub_done++;
    pthread_cond_signal(&pub_cv);
    pthread_mutex_unlock(&pub_mu);
}

static void on_pub_ok(void *ctx, MQTTAsync_successData *r)
{
    (void)r;
    pub_finish((long)(intptr_t)ctx, 200);
}

static void on_pub_fail(void *ctx, MQTTAsync_failureData *r)
{
    if (atomic_fetch_add(&pub_failed, 1) < 5)
        fprintf(stderr, "bench: publish of event %ld failed: %d %s\n", (long)(intptr_t)ctx,
                r ? r->code : 0, r && r->message ? r->message : "");
    pub_finish((long)(intptr_t)ctx, 0);
}

static void on_pub_lost(void *ctx, char *cause)
{
    (void)ctx;
    /* Clean session and no reconnect: what is in flight is gone, the run is void. */
    fprintf(stderr, "bench: publisher lost the broker connection: %s\n",
            cause ? cause : "(no cause)");
    exit(1);
}

static MQTTAsync pub_start(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&pub_cv, &ca);
    pthread_condattr_destroy(&ca);

    /* paho refuses a publish when this many of the client's are queued
     * (default 100); the bound here is --conns, so leave room as the gateway does. */
    MQTTAsync cl = mqtt_create("-pub", MQTTVERSION_3_1_1, opt.conns + 1024, on_pub_lost, NULL);
    MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer;
    o.MQTTVersion = MQTTVERSION_3_1_1;
    o.cleansession = 1;
    o.keepAliveInterval = 30;
    o.connectTimeout = 5;
    o.maxInflight = opt.conns; /* the bench's own bound is the same, paho never queues */
    o.onSuccess = on_ok;
    o.onFailure = on_fail;
    int rc = MQTTAsync_connect(cl, &o);
    if (rc != MQTTASYNC_SUCCESS || mq_wait(10) != 1) {
        fprintf(stderr, "bench: cannot connect the publisher to %s (%d)\n", opt.broker, rc);
        exit(1);
    }
    return cl;
}

/* Waits on pub_cv (pub_mu held) at most until the next 100 ms or the deadline. */
static void pub_wait(int64_t deadline, long count)
{
    int64_t now = now_ns();
    if (now > deadline) {
        fprintf(stderr, "bench: timeout: %ld of %ld acknowledgements after --timeout-s %ld\n",
                pub_done, count, opt.timeout_s);
        exit(1);
    }
    int64_t until = now + 100000000;
    struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
    pthread_cond_timedwait(&pub_cv, &pub_mu, &ts);
}

/* Publishes events [first, first+count) and waits for every acknowledgement. */
static void pub_phase(MQTTAsync cl, long first, long count, double rate, int64_t deadline)
{
    int64_t t0 = now_ns() + 1000000;
    double interval = rate > 0 ? 1e9 / rate : 0;
    char topic[DEVICE_MAX + 32], buf[PAYLOAD_MAX];
    pthread_mutex_lock(&pub_mu);
    pub_done = 0;
    for (long k = 0; k < count; k++) {
        long i = first + k;
        while (pub_inflight >= opt.conns)
            pub_wait(deadline, count);
        int64_t due = 0;
        if (rate > 0) {
            due = t0 + (int64_t)((double)k * interval);
            pthread_mutex_unlock(&pub_mu);
            struct timespec ts = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
            pthread_mutex_lock(&pub_mu);
        }
        pub_inflight++;
        pthread_mutex_unlock(&pub_mu);

        int64_t t = now_ns();
        size_t len = build_direct(topic, sizeof topic, buf, sizeof buf, i, t);
        body_len_sample = len;
        MQTTAsync_message m = MQTTAsync_message_initializer;
        m.payload = buf; /* paho copies it */
        m.payloadlen = (int)len;
        m.qos = 1;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        ro.onSuccess = on_pub_ok;
        ro.onFailure = on_pub_fail;
        ro.context = (void *)(intptr_t)i;
        evs[i].sched = due ? due : t;
        evs[i].sent = now_ns();
        int rc = MQTTAsync_sendMessage(cl, topic, &m, &ro);

        pthread_mutex_lock(&pub_mu);
        if (rc != MQTTASYNC_SUCCESS) {
            if (atomic_fetch_add(&pub_failed, 1) < 5)
                fprintf(stderr, "bench: MQTTAsync_sendMessage: %d\n", rc);
            evs[i].resp = now_ns();
            evs[i].status = 0;
            pub_inflight--;
            pub_done++;
        }
    }
    while (pub_done < count)
        pub_wait(deadline, count);
    pthread_mutex_unlock(&pub_mu);
}

/* ------------------------------------------------------------ PSS sampler */

/*
 * The kernel keeps a peak RSS (VmHWM) but no peak PSS; PSS (the process's
 * share of the pages it maps, shared libraries split between their users) is
 * sampled from /proc/PID/smaps_rollup while the bench runs.
 */
static atomic_long pss_peak_kb = -1;
static atomic_int pss_stop;

static long pss_read_kb(long pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%ld/smaps_rollup", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Pss:", 4) == 0) {
            kb = strtol(line + 4, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

static void pss_note(long kb)
{
    long old = atomic_load(&pss_peak_kb);
    while (kb > old && !atomic_compare_exchange_weak(&pss_peak_kb, &old, kb))
        ;
}

static void *pss_sampler(void *arg)
{
    (void)arg;
    while (!atomic_load(&pss_stop)) {
        pss_note(pss_read_kb(opt.pid));
        usleep(PSS_SAMPLE_US);
    }
    return NULL;
}

/* ------------------------------------------------------------- HTTP client */

enum cstate { C_DOWN, C_CONNECTING, C_IDLE, C_SENDING, C_WAITING };

struct conn {
    int fd;
    enum cstate st;
    bool want_out; /* EPOLLOUT in the interest set */
    long ev;       /* event in flight, -1 none */
    int fails;     /* consecutive connect/transport failures */
    size_t wlen, woff;
    size_t rlen;
    char wbuf[3072];
    char rbuf[8192];
};

static struct conn *conns;
static int epfd, tfd;
static struct addrinfo *server;
static int idle_stack[MAX_CONNS];
static int nidle;
static long phase_done;
static long status_count[600]; /* [0] = transport error */
static long reconnects, no_seq_200;

static void conn_open(int i);

static void fatal_if_failing(struct conn *c)
{
    if (++c->fails > 50) {
        fprintf(stderr, "bench: giving up: %d consecutive connection failures to %s:%s\n", c->fails,
                opt.host, opt.port);
        exit(1);
    }
}

static void finish_event(struct conn *c, int status, int64_t seq)
{
    if (c->ev >= 0) {
        struct ev *e = &evs[c->ev];
        e->resp = now_ns();
        e->status = status;
        e->seq = seq;
        status_count[status >= 0 && status < 600 ? status : 0]++;
        phase_done++;
        c->ev = -1;
    }
}

/* Transport failure: the request in flight (if any) counts as status 0. */
static void conn_fail(int i, const char *why)
{
    struct conn *c = &conns[i];
    if (c->ev >= 0) {
        if (status_count[0] < 5)
            fprintf(stderr, "bench: connection %d: %s (event %ld)\n", i, why, c->ev);
        finish_event(c, 0, -1);
    }
    fatal_if_failing(c);
    if (c->st == C_IDLE) {
        for (int k = 0; k < nidle; k++)
            if (idle_stack[k] == i) {
                idle_stack[k] = idle_stack[--nidle];
                break;
            }
    }
    close(c->fd);
    c->fd = -1;
    c->st = C_DOWN;
    reconnects++;
    conn_open(i);
}

static void set_out(int i, bool on)
{
    struct conn *c = &conns[i];
    if (c->want_out == on)
        return;
    struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u),
                             .data.u32 = (uint32_t)i};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ee);
    c->want_out = on;
}

static void make_idle(int i)
{
    conns[i].st = C_IDLE;
    idle_stack[nidle++] = i;
}

static void conn_open(int i)
{
    struct conn *c = &conns[i];
    int fd = socket(server->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("bench: socket");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->rlen = 0;
    c->ev = -1;
    c->want_out = false;
    struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)i};
    if (connect(fd, server->ai_addr, server->ai_addrlen) == 0) {
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ee);
        make_idle(i);
    } else if (errno == EINPROGRESS) {
        ee.events |= EPOLLOUT;
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ee);
        c->want_out = true;
        c->st = C_CONNECTING;
    } else {
        fprintf(stderr, "bench: connect %s:%s: %s\n", opt.host, opt.port, strerror(errno));
        close(fd);
        c->fd = -1;
        c->st = C_DOWN;
        fatal_if_failing(c);
        usleep(10000);
        conn_open(i);
    }
}

static void conn_write(int i)
{
    struct conn *c = &conns[i];
    while (c->woff < c->wlen) {
        ssize_t w = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (w > 0) {
            c->woff += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->st = C_SENDING;
            set_out(i, true);
            return;
        } else {
            conn_fail(i, w < 0 ? strerror(errno) : "send returned 0");
            return;
        }
    }
    c->st = C_WAITING;
    set_out(i, false);
}

static void send_event(int i, long ev, int64_t sched)
{
    struct conn *c = &conns[i];
    int64_t t = now_ns();
    c->wlen = build_request(c->wbuf, sizeof c->wbuf, ev, t);
    c->woff = 0;
    c->ev = ev;
    evs[ev].sched = sched ? sched : t;
    evs[ev].sent = now_ns();
    conn_write(i);
}

/*
 * Tries to parse one complete response from rbuf. Returns 1 if one was
 * consumed, 0 if more bytes are needed, -1 on a protocol error.
 * at_eof: the peer closed (a body without length ends there).
 */
static int try_response(int i, bool at_eof)
{
    struct conn *c = &conns[i];
    char *buf = c->rbuf;
    size_t len = c->rlen;
    char *eoh = memmem(buf, len, "\r\n\r\n", 4);
    if (!eoh)
        return len >= sizeof c->rbuf ? -1 : 0;
    size_t hlen = (size_t)(eoh - buf) + 4;
    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0)
        return -1;
    int status = atoi(buf + 9);
    long clen = -1;
    bool chunked = false, close_after = strncmp(buf, "HTTP/1.0", 8) == 0;
    for (char *line = memchr(buf, '\n', hlen); line && line < eoh;
         line = memchr(line, '\n', (size_t)(eoh - line))) {
        line++;
        if (strncasecmp(line, "content-length:", 15) == 0) {
            clen = strtol(line + 15, NULL, 10);
        } else if (strncasecmp(line, "transfer-encoding:", 18) == 0) {
            chunked = memmem(line, (size_t)(eoh - line), "chunked", 7) != NULL;
        } else if (strncasecmp(line, "connection:", 11) == 0) {
            char *nl = memchr(line, '\r', (size_t)(eoh + 2 - line));
            size_t ll = nl ? (size_t)(nl - line) : 0;
            if (memmem(line, ll, "close", 5))
                close_after = true;
            else if (memmem(line, ll, "keep-alive", 10))
                close_after = false;
        }
    }
    size_t total;
    if (clen >= 0) {
        total = hlen + (size_t)clen;
        if (total > sizeof c->rbuf)
            return -1;
        if (len < total)
            return 0;
    } else if (chunked) {
        char *end = memmem(buf + hlen, len - hlen, "0\r\n\r\n", 5);
        if (!end)
            return len >= sizeof c->rbuf ? -1 : 0;
        total = (size_t)(end - buf) + 5;
    } else if (status == 204 || status == 304 || (status >= 100 && status < 200)) {
        total = hlen;
    } else {
        if (!at_eof)
            return len >= sizeof c->rbuf ? -1 : 0;
        total = len;
        close_after = true;
    }
    int64_t seq = -1;
    if (status == 200 && !opt.match_id) {
        int64_t s = find_int_fwd(buf + hlen, total - hlen, "\"seq\"");
        if (s == INT64_MIN)
            no_seq_200++;
        else
            seq = s;
    }
    c->fails = 0;
    finish_event(c, status, seq);
    memmove(buf, buf + total, len - total);
    c->rlen = len - total;
    if (close_after) {
        close(c->fd);
        c->fd = -1;
        c->st = C_DOWN;
        reconnects++;
        conn_open(i);
    } else {
        make_idle(i);
    }
    return 1;
}

static void conn_readable(int i)
{
    struct conn *c = &conns[i];
    for (;;) {
        if (c->rlen >= sizeof c->rbuf) {
            conn_fail(i, "response too large");
            return;
        }
        ssize_t r = recv(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen, 0);
        if (r > 0) {
            c->rlen += (size_t)r;
            if (c->rlen < sizeof c->rbuf)
                break;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* EOF or error. */
        if (c->st == C_WAITING && c->rlen > 0 && try_response(i, true) == 1)
            return;
        if (c->ev < 0 && c->st == C_IDLE) {
            /* The server closed an idle keep-alive connection: just reopen. */
            for (int k = 0; k < nidle; k++)
                if (idle_stack[k] == i) {
                    idle_stack[k] = idle_stack[--nidle];
                    break;
                }
            close(c->fd);
            c->fd = -1;
            c->st = C_DOWN;
            reconnects++;
            conn_open(i);
            return;
        }
        conn_fail(i, r < 0 ? strerror(errno) : "connection closed by the gateway");
        return;
    }
    if (c->st != C_WAITING && c->st != C_SENDING) {
        conn_fail(i, "unexpected bytes from the gateway");
        return;
    }
    int rc = try_response(i, false);
    if (rc < 0)
        conn_fail(i, "malformed HTTP response");
}

static void conn_event(int i, uint32_t events)
{
    struct conn *c = &conns[i];
    if (c->st == C_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            conn_fail(i, err ? strerror(err) : "connect failed");
            return;
        }
        set_out(i, false);
        make_idle(i);
        return;
    }
    if ((events & EPOLLOUT) && c->st == C_SENDING)
        conn_write(i);
    if (c->fd >= 0 && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        conn_readable(i);
}

static void arm_timer(int64_t due)
{
    struct itimerspec its = {0};
    its.it_value.tv_sec = due / 1000000000;
    its.it_value.tv_nsec = due % 1000000000;
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Sends events [first, first+count) and waits for every answer. */
static void run_phase(long first, long count, double rate, int64_t deadline)
{
    long next = first, end = first + count;
    phase_done = 0;
    int64_t t0 = now_ns() + 1000000;
    double interval = rate > 0 ? 1e9 / rate : 0;
    int64_t armed = -1;
    struct epoll_event evbuf[128];
    while (phase_done < count) {
        int64_t now = now_ns();
        if (now > deadline) {
            fprintf(stderr, "bench: timeout: %ld of %ld answers after --timeout-s %ld\n",
                    phase_done, count, opt.timeout_s);
            exit(1);
        }
        while (next < end && nidle > 0) {
            int64_t due = 0;
            if (rate > 0) {
                due = t0 + (int64_t)((double)(next - first) * interval);
                if (due > now) {
                    if (armed != due) {
                        arm_timer(due);
                        armed = due;
                    }
                    break;
                }
            }
            send_event(idle_stack[--nidle], next++, due);
        }
        int n = epoll_wait(epfd, evbuf, 128, 100);
        if (n < 0 && errno != EINTR) {
            perror("bench: epoll_wait");
            exit(1);
        }
        for (int k = 0; k < n; k++) {
            if (evbuf[k].data.u32 == TIMER_TAG) {
                uint64_t x;
                if (read(tfd, &x, sizeof x) < 0 && errno != EAGAIN)
                    perror("bench: timerfd");
                armed = -1;
                continue;
            }
            conn_event((int)evbuf[k].data.u32, evbuf[k].events);
        }
    }
}

static void http_start(void)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int gai = getaddrinfo(opt.host, opt.port, &hints, &server);
    if (gai) {
        fprintf(stderr, "bench: %s:%s: %s\n", opt.host, opt.port, gai_strerror(gai));
        exit(1);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0) {
        perror("bench: epoll/timerfd");
        exit(1);
    }
    struct epoll_event te = {.events = EPOLLIN, .data.u32 = TIMER_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &te);
    for (int i = 0; i < opt.conns; i++)
        conn_open(i);
}

static void http_stop(void)
{
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].fd >= 0)
            close(conns[i].fd);
    freeaddrinfo(server);
}

/* Sends events [first, first+count) one way or the other, and waits for every answer. */
static void send_phase(MQTTAsync pub, long first, long count, int64_t deadline)
{
    if (pub)
        pub_phase(pub, first, count, opt.rate, deadline);
    else
        run_phase(first, count, opt.rate, deadline);
}

/* Waits until every accepted event of the phase was seen or grace_ms passed. */
static void wait_deliveries(long first, long count, atomic_long *uniq, int64_t deadline)
{
    long want = 0;
    for (long i = first; i < first + count; i++)
        if (evs[i].status == 200)
            want++;
    int64_t until = now_ns() + (int64_t)opt.grace_ms * 1000000;
    if (until > deadline)
        until = deadline;
    while (atomic_load(uniq) < want && now_ns() < until)
        usleep(1000);
}

/* ------------------------------------------------------------------ results */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

struct seqidx {
    int64_t seq;
    long idx;
};

static int cmp_seqidx(const void *a, const void *b)
{
    const struct seqidx *x = a, *y = b;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

/* Nearest-rank percentile of a sorted array, in ms. */
static double pct_ms(const int64_t *v, size_t n, double q)
{
    if (n == 0)
        return NAN;
    size_t k = (size_t)ceil(q * (double)n);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return (double)v[k - 1] / 1e6;
}

static void print_lat(const char *name, int64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_i64);
    if (n == 0) {
        printf("%-26s n/a\n", name);
        return;
    }
    printf("%-26s p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (n=%zu)\n", name, pct_ms(v, n, 0.50),
           pct_ms(v, n, 0.99), pct_ms(v, n, 0.999), (double)v[n - 1] / 1e6, n);
}

struct proc_sample {
    long hwm_kb, rss_kb, pss_kb;
    double cpu_s;
    int64_t t; /* when it was taken */
    bool ok;
};

static struct proc_sample proc_read(long pid)
{
    struct proc_sample s = {-1, -1, -1, -1, now_ns(), false};
    if (pid <= 0)
        return s;
    s.pss_kb = pss_read_kb(pid);
    pss_note(s.pss_kb);
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return s;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmHWM:", 6) == 0)
            s.hwm_kb = strtol(line + 6, NULL, 10);
        else if (strncmp(line, "VmRSS:", 6) == 0)
            s.rss_kb = strtol(line + 6, NULL, 10);
    }
    fclose(f);
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    f = fopen(path, "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        char *p = strrchr(buf, ')');
        unsigned long ut = 0, st = 0;
        /* After ")": state(3) ... utime(14) stime(15). */
        if (p &&
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            s.cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    }
    s.ok = true;
    return s;
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void report(struct proc_sample p0, struct proc_sample p1, double cpu0, double cpu1)
{
    long W = opt.warmup, N = opt.n;
    size_t nd = atomic_load(&dlog_n);
    if (nd > dlog_cap)
        nd = dlog_cap;

    /* seq -> event, over every accepted request (warmup too). */
    struct seqidx *map = malloc(sizeof *map * (size_t)n_total);
    size_t nm = 0;
    for (long i = 0; i < n_total; i++)
        if (evs[i].status == 200 && evs[i].seq >= 0)
            map[nm++] = (struct seqidx){evs[i].seq, i};
    qsort(map, nm, sizeof *map, cmp_seqidx);
    long seq_reused = 0;
    for (size_t k = 1; k < nm; k++)
        if (map[k].seq == map[k - 1].seq)
            seq_reused++;

    /*
     * Without a seq there is no order the target promised, and requests in
     * flight at the same time on different connections have none either. So
     * with --match id a delivery is out of order when an event on the same
     * topic that was sent only after this one had been answered arrived
     * before it.
     */
    int64_t latest_sent[NCONTROLLERS + 1];
    long latest_idx[NCONTROLLERS + 1];
    for (int c = 0; c <= NCONTROLLERS; c++) {
        latest_sent[c] = INT64_MIN;
        latest_idx[c] = -1;
    }
    long unmatched = 0, mismatched = 0, dups = 0, dups_warm = 0;
    for (size_t k = 0; k < nd; k++) {
        const struct dlv *d = &dlog[k];
        long idx = -1;
        if (!opt.match_id && d->seq != INT64_MIN) {
            struct seqidx key = {d->seq, 0};
            const struct seqidx *hit = bsearch(&key, map, nm, sizeof *map, cmp_seqidx);
            if (hit)
                idx = hit->idx;
        } else if (d->bench_id >= 0 && d->bench_id < n_total && evs[d->bench_id].status == 200) {
            idx = (long)d->bench_id; /* --match id, or a payload without seq */
        }
        if (idx < 0) {
            unmatched++;
            continue;
        }
        if (d->bench_id != INT64_MIN && d->bench_id != idx)
            mismatched++;
        if (evs[idx].deliv == 0) {
            evs[idx].deliv = d->t;
            int c = opt.payload == PAYLOAD_LAP ? lap_controller(idx) : 0;
            if (opt.match_id && evs[idx].resp < latest_sent[c]) {
                long r = atomic_fetch_add(&reordered, 1);
                if (r < 4)
                    reorder_ex[r] = (struct reorder){c, latest_idx[c], idx};
            }
            if (opt.match_id && evs[idx].sent > latest_sent[c]) {
                latest_sent[c] = evs[idx].sent;
                latest_idx[c] = idx;
            }
        } else if (idx >= W)
            dups++;
        else
            dups_warm++;
    }
    free(map);

    long sent = 0, accepted = 0, delivered = 0, lost = 0;
    int64_t first_send = INT64_MAX, last_resp = 0, first_dl = INT64_MAX, last_dl = 0;
    int64_t *lat_sent = malloc(sizeof(int64_t) * (size_t)N);
    int64_t *lat_sched = malloc(sizeof(int64_t) * (size_t)N);
    int64_t *lat_http = malloc(sizeof(int64_t) * (size_t)N);
    int64_t *late = malloc(sizeof(int64_t) * (size_t)N);
    size_t nls = 0, nlh = 0;
    static long mstatus[600]; /* measured events by status, [0] = transport error */
    for (long i = W; i < n_total; i++) {
        const struct ev *e = &evs[i];
        if (e->status < 0)
            continue;
        sent++;
        mstatus[e->status < 600 ? e->status : 0]++;
        if (e->sent < first_send)
            first_send = e->sent;
        if (e->resp > last_resp)
            last_resp = e->resp;
        if (e->status > 0)
            lat_http[nlh++] = e->resp - e->sent;
        late[sent - 1] = e->sent - e->sched;
        if (e->status != 200)
            continue;
        accepted++;
        if (!e->deliv) {
            lost++;
            continue;
        }
        delivered++;
        if (e->deliv < first_dl)
            first_dl = e->deliv;
        if (e->deliv > last_dl)
            last_dl = e->deliv;
        lat_sent[nls] = e->deliv - e->sent;
        lat_sched[nls] = e->deliv - e->sched;
        nls++;
    }

    double acc_win = (double)(last_resp - first_send) / 1e9;
    double dl_win = delivered > 1 ? (double)(last_dl - first_dl) / 1e9 : 0;
    double dl_all = delivered > 0 ? (double)(last_dl - first_send) / 1e9 : 0;
    double rate_all = dl_all > 0 ? (double)delivered / dl_all : 0;
    const char *acc_name = opt.direct ? "acknowledged (PUBACK)" : "accepted (200)";

    char title[256];
    const char *what = opt.direct ? (opt.payload == PAYLOAD_PASSING ? "broker alone, passings, "
                                                                    : "broker alone, ")
                                  : "";
    const char *unit = opt.direct ? "in flight" : "conns";
    if (opt.rate > 0)
        snprintf(title, sizeof title, "%s%s%s%.0f events/s paced, %d %s",
                 opt.label ? opt.label : "", opt.label ? ": " : "", what, opt.rate, opt.conns,
                 unit);
    else
        snprintf(title, sizeof title, "%s%s%sfull speed, %d %s", opt.label ? opt.label : "",
                 opt.label ? ": " : "", what, opt.conns, unit);
    printf("=== race2mqtt bench: %s ===\n", title);
    printf("%-26s %ld  (+%ld warmup, not counted; %s ~%zu bytes)\n",
           opt.direct ? "events published" : "events sent", sent, W,
           opt.direct ? "payloads" : "bodies", body_len_sample);
    printf("%-26s %ld\n", acc_name, accepted);
    printf("%-26s %ld", opt.direct ? "failed" : "rejected", sent - accepted);
    if (sent - accepted > 0) {
        printf("  [");
        const char *sep = "";
        for (int s = 0; s < 600; s++) {
            long cnt = mstatus[s];
            if (s != 200 && cnt) {
                if (s)
                    printf("%s%d: %ld", sep, s, cnt);
                else
                    printf("%s%s: %ld", sep, opt.direct ? "no PUBACK" : "transport error", cnt);
                sep = ", ";
            }
        }
        printf("]");
    }
    printf("\n");
    printf("%-26s %.0f  (first send -> last %s, %.3f s)\n",
           opt.direct ? "acknowledged/s" : "accepted/s",
           acc_win > 0 ? (double)accepted / acc_win : 0, opt.direct ? "PUBACK" : "answer", acc_win);
    if (opt.subscribe) {
        printf("%-26s %ld\n", "delivered", delivered);
        printf("%-26s %.0f  (first -> last delivery, %.3f s)\n", "delivered/s (window)",
               dl_win > 0 ? (double)delivered / dl_win : 0, dl_win);
        printf("%-26s %.0f  (first send -> last delivery, %.3f s)\n", "delivered/s (overall)",
               rate_all, dl_all);
        printf("%-26s %ld  (%s, not delivered %ld ms after the last %s)\n", "lost", lost,
               opt.direct ? "acknowledged" : "accepted", opt.grace_ms,
               opt.direct ? "PUBACK" : "answer");
        printf("%-26s %ld\n", "duplicates", dups);
    } else {
        printf("%-26s n/a (--no-subscribe)\n", "delivered");
    }
    long anomalies = unmatched + mismatched + seq_reused + no_seq_200 + atomic_load(&unparsed) +
                     atomic_load(&dlog_overflow) + dups_warm;
    if (anomalies)
        printf("%-26s unmatched %ld, seq/bench_id mismatch %ld, seq reused %ld, "
               "200 without seq %ld, unparsable %ld, log overflow %ld, warmup dups %ld\n",
               "anomalies", unmatched, mismatched, seq_reused, no_seq_200, atomic_load(&unparsed),
               atomic_load(&dlog_overflow), dups_warm);
    long nre = atomic_load(&reordered);
    if (opt.subscribe) {
        const char *key = opt.match_id ? "id" : "seq";
        printf("%-26s %ld", opt.match_id ? "out of order (causal)" : "out of order (per topic)",
               nre);
        for (long k = 0; k < nre && k < 4; k++)
            printf("%s topic %d %s %" PRId64 " after %" PRId64, k ? "," : "  [", reorder_ex[k].ctrl,
                   key, reorder_ex[k].seq, reorder_ex[k].after);
        printf("%s\n", nre ? "]" : "");
    }
    double lat_p50 = NAN, lat_p99 = NAN, lat_p999 = NAN, lat_max = NAN;
    double sch_p50 = NAN, sch_p99 = NAN, sch_p999 = NAN;
    if (opt.subscribe) {
        print_lat(opt.direct ? "latency publish->sub ms" : "latency POST->sub ms", lat_sent, nls);
        if (nls) {
            lat_p50 = pct_ms(lat_sent, nls, 0.50);
            lat_p99 = pct_ms(lat_sent, nls, 0.99);
            lat_p999 = pct_ms(lat_sent, nls, 0.999);
            lat_max = (double)lat_sent[nls - 1] / 1e6;
        }
        qsort(lat_sched, nls, sizeof *lat_sched, cmp_i64);
        if (nls) {
            sch_p50 = pct_ms(lat_sched, nls, 0.50);
            sch_p99 = pct_ms(lat_sched, nls, 0.99);
            sch_p999 = pct_ms(lat_sched, nls, 0.999);
        }
        if (opt.rate > 0)
            print_lat("latency sched->sub ms", lat_sched, nls);
    }
    if (opt.rate > 0) {
        qsort(late, (size_t)sent, sizeof *late, cmp_i64);
        printf("%-26s p99 %.3f  max %.3f\n", "send behind schedule ms",
               pct_ms(late, (size_t)sent, 0.99), sent ? (double)late[sent - 1] / 1e6 : 0.0);
    }
    print_lat(opt.direct ? "PUBACK ms" : "HTTP answer ms", lat_http, nlh);

    double tcpu = NAN, tcpu_pct = NAN, tcpu_us = NAN;
    long pss_peak = atomic_load(&pss_peak_kb);
    if (p1.ok) {
        printf("%-26s peak (VmHWM) %.2f MiB, VmRSS %.2f MiB before, %.2f MiB after\n", "target RSS",
               (double)p1.hwm_kb / 1024, (double)p0.rss_kb / 1024, (double)p1.rss_kb / 1024);
        if (pss_peak >= 0)
            printf("%-26s peak %.2f MiB (sampled every %d ms), %.2f MiB after\n", "target PSS",
                   (double)pss_peak / 1024, PSS_SAMPLE_US / 1000, (double)p1.pss_kb / 1024);
        double win = (double)(p1.t - p0.t) / 1e9;
        if (p0.cpu_s >= 0 && p1.cpu_s >= 0 && win > 0) {
            tcpu = p1.cpu_s - p0.cpu_s;
            tcpu_pct = 100 * tcpu / win;
            tcpu_us = accepted > 0 ? tcpu * 1e6 / (double)accepted : NAN;
            printf("%-26s %.2f s  (%.0f%% of one core over %.2f s, %.1f us per %s event)\n",
                   "target CPU", tcpu, tcpu_pct, win, tcpu_us, opt.direct ? "acked" : "accepted");
        }
    } else if (opt.pid) {
        printf("%-26s n/a (cannot read /proc/%ld)\n", "target RSS", opt.pid);
    }
    printf("%-26s %.2f s  (%s)\n", "bench CPU", cpu1 - cpu0,
           opt.direct ? "publisher + subscriber" : "client + subscriber");
    if (reconnects)
        printf("%-26s %ld\n", "HTTP reconnects", reconnects);
    bool sub_lost = atomic_load(&mqtt_lost) != 0;
    if (sub_lost)
        printf("%-26s YES (results incomplete)\n", "subscriber disconnected");
    printf("=== end ===\n");

    /* One line for scripts; "nan" where a figure does not apply. */
    printf("RESULT mode=%s payload=%s rate=%.0f conns=%d n=%ld sent=%ld accepted=%ld "
           "accepted_per_s=%.0f",
           opt.direct ? "direct" : "http", opt.payload == PAYLOAD_PASSING ? "passing" : "lap",
           opt.rate, opt.conns, N, sent, accepted, acc_win > 0 ? (double)accepted / acc_win : 0);
    if (opt.subscribe)
        printf(" delivered=%ld delivered_per_s=%.0f lost=%ld dups=%ld reordered=%ld", delivered,
               rate_all, lost, dups, nre);
    printf(" anomalies=%ld lat_p50_ms=%.3f lat_p99_ms=%.3f lat_p999_ms=%.3f lat_max_ms=%.3f "
           "sched_p50_ms=%.3f sched_p99_ms=%.3f sched_p999_ms=%.3f",
           anomalies, lat_p50, lat_p99, lat_p999, lat_max, sch_p50, sch_p99, sch_p999);
    printf(" cpu_s=%.3f cpu_pct=%.1f cpu_us_per_event=%.1f hwm_mib=%.2f pss_peak_mib=%.2f "
           "bench_cpu_s=%.3f sub_lost=%d\n",
           tcpu, tcpu_pct, tcpu_us, p1.ok ? (double)p1.hwm_kb / 1024 : NAN,
           pss_peak >= 0 ? (double)pss_peak / 1024 : NAN, cpu1 - cpu0, sub_lost);
    fflush(stdout);
    free(lat_sent);
    free(lat_sched);
    free(lat_http);
    free(late);
}

/* --------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); /* precise pacing */
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    mono_base = now_ns();
    epoch_ms_base = (int64_t)rt.tv_sec * 1000 + rt.tv_nsec / 1000000;
    int64_t deadline = mono_base + (int64_t)opt.timeout_s * 1000000000;

    n_total = opt.warmup + opt.n;
    evs = calloc((size_t)n_total, sizeof *evs);
    seen = calloc((size_t)n_total, 1);
    dlog_cap = (size_t)n_total * 2 + 4096;
    dlog = malloc(dlog_cap * sizeof *dlog);
    conns = calloc((size_t)opt.conns, sizeof *conns);
    if (!evs || !seen || !dlog || !conns) {
        fprintf(stderr, "bench: out of memory\n");
        return 1;
    }
    for (long i = 0; i < n_total; i++) {
        evs[i].status = -1;
        evs[i].seq = -1;
    }
    for (int c = 0; c <= NCONTROLLERS; c++)
        last_seq_ctrl[c] = INT64_MIN;
    build_tails();

    /* The subscriber is connected and subscribed before the first event. */
    MQTTAsync sub = opt.subscribe ? subscribe_start() : NULL;
    pthread_t sampler;
    bool sampling = opt.pid > 0 && pthread_create(&sampler, NULL, pss_sampler, NULL) == 0;
    MQTTAsync pub = opt.direct ? pub_start() : NULL;
    if (!opt.direct)
        http_start();

    if (opt.warmup > 0) {
        send_phase(pub, 0, opt.warmup, deadline);
        if (opt.subscribe)
            wait_deliveries(0, opt.warmup, &uniq_warm, deadline);
    }
    struct proc_sample p0 = proc_read(opt.pid);
    double cpu0 = self_cpu_s();
    send_phase(pub, opt.warmup, opt.n, deadline);
    if (opt.subscribe)
        wait_deliveries(opt.warmup, opt.n, &uniq_meas, deadline);
    /* CPU up to the end of the grace wait; VmHWM is monotonic anyway. */
    struct proc_sample p1 = proc_read(opt.pid);
    double cpu1 = self_cpu_s();

    if (pub)
        mqtt_stop(pub);
    else
        http_stop();
    if (sampling) {
        atomic_store(&pss_stop, 1);
        pthread_join(sampler, NULL);
    }
    if (sub)
        mqtt_stop(sub);

    report(p0, p1, cpu0, cpu1);
    free(evs);
    free(seen);
    free(dlog);
    free(conns);
    return 0;
}
