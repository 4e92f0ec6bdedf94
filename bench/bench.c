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
            "  --mqtt5              subscribe with MQTT 5 (default 3.1.1)\n");
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
static char request_target[1024];
static size_t body_len_sample;

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
    }
    const char *sep = strchr(opt.path, '?') ? "&" : "?";
    if (opt.token)
        snprintf(request_target, sizeof request_target, "%s%stoken=%s", opt.path, sep, opt.token);
    else
        snprintf(request_target, sizeof request_target, "%s", opt.path);
}

/*
 * Writes the whole HTTP request for event i into buf; returns its length.
 * controller_id cycles "1".."6", lap increases per controller, bench_id = i.
 */
static size_t build_request(char *buf, size_t cap, long i, int64_t mono)
{
    int c = (int)(i % NCONTROLLERS);
    long lap = i / NCONTROLLERS + 1;
    int raw = 9000 + (int)((i * 7919) % 3000);
    char head[320];
    int hl = snprintf(head, sizeof head,
                      "{\n"
                      "  \"time\": %" PRId64 ",\n"
                      "  \"event_type\": \"ui.lap_update\",\n"
                      "  \"event_data\": {\n"
                      "    \"controller_id\": \"%d\",\n"
                      "    \"bench_id\": %ld,\n"
                      "    \"lap\": %ld,\n"
                      "    \"laptime\": \"0:%02d.%03d\",\n"
                      "    \"laptime_raw\": %d,\n"
                      "    \"lap_pb\": %s,\n",
                      epoch_ms_now(mono), c + 1, i, lap, raw / 1000, raw % 1000, raw,
                      (i % 5 == 0) ? "true" : "false");
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
    int64_t seq = find_int_rev(p, len, "\"seq\"");
    int64_t bid = find_int_fwd(p, len, "\"bench_id\"");
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
        if (seq != INT64_MIN) {
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

static MQTTAsync subscribe_start(void)
{
    MQTTAsync cl;
    char id[64];
    snprintf(id, sizeof id, "race2mqtt-bench-%ld", (long)getpid());
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    co.MQTTVersion = opt.mqtt_version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    int rc =
        MQTTAsync_createWithOptions(&cl, opt.broker, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        fprintf(stderr, "bench: MQTTAsync_create(%s): %d\n", opt.broker, rc);
        exit(1);
    }
    MQTTAsync_setCallbacks(cl, NULL, on_lost, on_message, NULL);

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
    rc = MQTTAsync_subscribe(cl, "smartrace/lap/#", 1, &ro);
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

static void subscribe_stop(MQTTAsync cl)
{
    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
    d.timeout = 1000;
    MQTTAsync_disconnect(cl, &d);
    for (int i = 0; i < 100 && MQTTAsync_isConnected(cl); i++)
        usleep(10000);
    MQTTAsync_destroy(&cl);
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
    if (status == 200) {
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
    long hwm_kb, rss_kb;
    double cpu_s;
    bool ok;
};

static struct proc_sample proc_read(long pid)
{
    struct proc_sample s = {-1, -1, -1, false};
    if (pid <= 0)
        return s;
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

    long unmatched = 0, mismatched = 0, dups = 0, dups_warm = 0;
    for (size_t k = 0; k < nd; k++) {
        const struct dlv *d = &dlog[k];
        long idx = -1;
        if (d->seq != INT64_MIN) {
            struct seqidx key = {d->seq, 0};
            const struct seqidx *hit = bsearch(&key, map, nm, sizeof *map, cmp_seqidx);
            if (hit)
                idx = hit->idx;
        } else if (d->bench_id >= 0 && d->bench_id < n_total && evs[d->bench_id].status == 200) {
            idx = (long)d->bench_id; /* payload without seq: fall back to bench_id */
        }
        if (idx < 0) {
            unmatched++;
            continue;
        }
        if (d->bench_id != INT64_MIN && d->bench_id != idx)
            mismatched++;
        if (evs[idx].deliv == 0)
            evs[idx].deliv = d->t;
        else if (idx >= W)
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

    char title[256];
    if (opt.rate > 0)
        snprintf(title, sizeof title, "%s%s%.0f events/s paced, %d conns",
                 opt.label ? opt.label : "", opt.label ? ": " : "", opt.rate, opt.conns);
    else
        snprintf(title, sizeof title, "%s%sfull speed, %d conns", opt.label ? opt.label : "",
                 opt.label ? ": " : "", opt.conns);
    printf("=== race2mqtt bench: %s ===\n", title);
    printf("%-26s %ld  (+%ld warmup, not counted; bodies ~%zu bytes)\n", "events sent", sent, W,
           body_len_sample);
    printf("%-26s %ld\n", "accepted (200)", accepted);
    printf("%-26s %ld", "rejected", sent - accepted);
    if (sent - accepted > 0) {
        printf("  [");
        const char *sep = "";
        for (int s = 0; s < 600; s++) {
            long cnt = mstatus[s];
            if (s != 200 && cnt) {
                if (s)
                    printf("%s%d: %ld", sep, s, cnt);
                else
                    printf("%stransport error: %ld", sep, cnt);
                sep = ", ";
            }
        }
        printf("]");
    }
    printf("\n");
    printf("%-26s %.0f  (first send -> last answer, %.3f s)\n", "accepted/s",
           acc_win > 0 ? (double)accepted / acc_win : 0, acc_win);
    printf("%-26s %ld\n", "delivered", delivered);
    printf("%-26s %.0f  (first -> last delivery, %.3f s)\n", "delivered/s (window)",
           dl_win > 0 ? (double)delivered / dl_win : 0, dl_win);
    printf("%-26s %.0f  (first send -> last delivery, %.3f s)\n", "delivered/s (overall)",
           dl_all > 0 ? (double)delivered / dl_all : 0, dl_all);
    printf("%-26s %ld  (accepted, not delivered %ld ms after the last answer)\n", "lost", lost,
           opt.grace_ms);
    printf("%-26s %ld\n", "duplicates", dups);
    if (unmatched || mismatched || seq_reused || no_seq_200 || atomic_load(&unparsed) ||
        atomic_load(&dlog_overflow) || dups_warm)
        printf("%-26s unmatched %ld, seq/bench_id mismatch %ld, seq reused %ld, "
               "200 without seq %ld, unparsable %ld, log overflow %ld, warmup dups %ld\n",
               "anomalies", unmatched, mismatched, seq_reused, no_seq_200, atomic_load(&unparsed),
               atomic_load(&dlog_overflow), dups_warm);
    long nre = atomic_load(&reordered);
    printf("%-26s %ld", "out of order (per topic)", nre);
    for (long k = 0; k < nre && k < 4; k++)
        printf("%s lap/%d seq %" PRId64 " after %" PRId64, k ? "," : "  [", reorder_ex[k].ctrl,
               reorder_ex[k].seq, reorder_ex[k].after);
    printf("%s\n", nre ? "]" : "");
    print_lat("latency POST->sub ms", lat_sent, nls);
    if (opt.rate > 0) {
        print_lat("latency sched->sub ms", lat_sched, nls);
        qsort(late, (size_t)sent, sizeof *late, cmp_i64);
        printf("%-26s p99 %.3f  max %.3f\n", "send behind schedule ms",
               pct_ms(late, (size_t)sent, 0.99), sent ? (double)late[sent - 1] / 1e6 : 0.0);
    }
    print_lat("HTTP answer ms", lat_http, nlh);
    if (p1.ok) {
        printf("%-26s peak (VmHWM) %.2f MiB, VmRSS %.2f MiB before, %.2f MiB after\n",
               "gateway RSS", (double)p1.hwm_kb / 1024, (double)p0.rss_kb / 1024,
               (double)p1.rss_kb / 1024);
        if (p0.cpu_s >= 0 && p1.cpu_s >= 0 && acc_win > 0)
            printf("%-26s %.2f s  (%.0f%% of one core over the answer window)\n", "gateway CPU",
                   p1.cpu_s - p0.cpu_s, 100 * (p1.cpu_s - p0.cpu_s) / acc_win);
    } else if (opt.pid) {
        printf("%-26s n/a (cannot read /proc/%ld)\n", "gateway RSS", opt.pid);
    }
    printf("%-26s %.2f s  (client + subscriber)\n", "bench CPU", cpu1 - cpu0);
    if (reconnects)
        printf("%-26s %ld\n", "HTTP reconnects", reconnects);
    if (atomic_load(&mqtt_lost))
        printf("%-26s YES (results incomplete)\n", "subscriber disconnected");
    printf("=== end ===\n");
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

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int gai = getaddrinfo(opt.host, opt.port, &hints, &server);
    if (gai) {
        fprintf(stderr, "bench: %s:%s: %s\n", opt.host, opt.port, gai_strerror(gai));
        return 1;
    }

    /* The subscriber is connected and subscribed before the first POST. */
    MQTTAsync sub = subscribe_start();

    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0) {
        perror("bench: epoll/timerfd");
        return 1;
    }
    struct epoll_event te = {.events = EPOLLIN, .data.u32 = TIMER_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &te);
    for (int i = 0; i < opt.conns; i++)
        conn_open(i);

    if (opt.warmup > 0) {
        run_phase(0, opt.warmup, opt.rate, deadline);
        wait_deliveries(0, opt.warmup, &uniq_warm, deadline);
    }

    struct proc_sample p0 = proc_read(opt.pid);
    double cpu0 = self_cpu_s();
    run_phase(opt.warmup, opt.n, opt.rate, deadline);
    wait_deliveries(opt.warmup, opt.n, &uniq_meas, deadline);
    /* CPU up to the end of the grace wait; VmHWM is monotonic anyway. */
    struct proc_sample p1 = proc_read(opt.pid);
    double cpu1 = self_cpu_s();

    for (int i = 0; i < opt.conns; i++)
        if (conns[i].fd >= 0)
            close(conns[i].fd);
    subscribe_stop(sub);

    report(p0, p1, cpu0, cpu1);
    freeaddrinfo(server);
    free(evs);
    free(seen);
    free(dlog);
    free(conns);
    return 0;
}
