/*
 * mqtt.c - the broker connection, on paho MQTTAsync.
 *
 * What this file owns: turning mqtt.* configuration into paho options (URL
 * scheme, TLS, MQTT 5 or 3.1.1, persistent session, last will), keeping the
 * connection up, and reporting connection changes and publish outcomes to one
 * set of callbacks.
 *
 * Why it is shaped like this:
 *
 * - One paho client per connection. paho keeps no in-flight state across a
 *   reconnect here: every (re)connect, first or not, is made by the
 *   supervisor thread below with a fresh MQTTAsync handle, and paho's own
 *   automatic reconnect is off. The journal (publisher.c) and the RACE RESULT
 *   page (rrpoll.c) are the durable copies; both resend everything not yet
 *   acknowledged after every connect, with the same seq and passing ids.
 *   Letting paho resend its in-flight list as well gains nothing (the broker
 *   kept no state about our QoS 1 publishes that a resend would complete) and
 *   cost us a stalled gateway, because that list can hold garbage:
 *
 *   paho 1.3.12 (Debian 12), MQTTAsync_processCommand(): a QoS 1 PUBLISH
 *   whose first write fails with a socket error (the broker went away in the
 *   middle of a burst) is already in the client's outboundMsgs; paho then
 *   frees the command, and with it the topic and payload that the outbound
 *   entry still points to. With a persistent session the broker answers
 *   "session present" on reconnect, paho resends that entry with DUP set from
 *   freed memory, the broker disconnects ("malformed packet" or "protocol
 *   error"), and this repeats on every reconnect, forever: every message
 *   behind it waits. The same entry is freed a second time when paho cleans
 *   the session or the client is destroyed.
 *
 *   So a client that saw such a failure (its publish failure callback reports
 *   MQTTASYNC_FAILURE, the socket error) is quarantined: never reconnected,
 *   never destroyed, left to the process. That leaks the client and its
 *   in-flight copies (at most mqtt.max_inflight messages) once per broker
 *   loss in the middle of a write, which is rare and bounded per event;
 *   destroying it would corrupt the heap. For the same reason paho must
 *   never clean that list itself, which it does at a loss when the session
 *   is not kept: a 3.1.1 clean session carries no publish (it only drops the
 *   broker's copy of our session, then we reconnect), and an MQTT 5 session
 *   expiry of 0 is sent as 1 s.
 *
 * - The broker keeps our session (clean start off): our subscriptions and the
 *   commands queued for us survive a reconnect. A fresh paho client with the
 *   same client id resumes that session; nothing of it lives in paho.
 *
 * - Progress is watched across connections. If the broker closes
 *   STALL_CONNECTIONS connections in a row after we sent events or passings
 *   on them but before it acknowledged any, something on the way refuses the
 *   oldest one (the broker, a proxy, or session state the broker keeps for
 *   us). We say so once, count it in /metrics, and connect with a clean
 *   session; the message itself is resent, never skipped.
 *
 * - Callbacks run on paho's threads with paho's lock held: they only
 *   translate and hand off. They never take client_lock, which is held
 *   around calls into paho, so the two locks cannot deadlock.
 */
#include "race2mqtt/mqtt.h"

#include <MQTTAsync.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "race2mqtt/clock.h"
#include "race2mqtt/config.h"
#include "race2mqtt/log.h"
#include "race2mqtt/metrics.h"

#define RECONNECT_MIN_S 1
#define RECONNECT_MAX_S 10
#define CONNECT_TIMEOUT_S 10
/* Connections in a row that end without one acknowledgement of ours. */
#define STALL_CONNECTIONS 3
/* Broker URLs in mqtt.url, tried in this order on every connect. */
#define MQTT_URIS 8
#define URI_MAX 512

struct pub_ctx;

/* One paho client: one connection attempt and, if it succeeds, that connection. */
struct conn {
    struct mqtt *m;
    MQTTAsync client;
    bool v5;               /* MQTT 5, else 3.1.1 */
    bool fallback;         /* mqtt.protocol = auto: the 3.1.1 try after MQTT 5 failed */
    bool clean;            /* asked for a clean session */
    bool reset_only;       /* 3.1.1 clean session: connected only to drop it */
    _Atomic bool up;       /* CONNACK seen */
    _Atomic bool poisoned; /* paho's state is unsafe: never destroy */
    _Atomic bool lost;     /* its loss was reported to the callbacks */
    /* Tagged publishes (events, passings) sent and acknowledged on it. */
    _Atomic uint64_t sent, acked;
    struct pub_ctx *head, *tail; /* outstanding publishes, oldest first (ctx_lock) */
    struct conn *next;           /* quarantine list */
};

/* Per-publish context handed to paho and given back in the response callback. */
struct pub_ctx {
    struct conn *c;
    uint64_t tag;
    struct pub_ctx *prev, *next;
    char topic[]; /* for the stall report */
};

/* Quarantined clients, reachable until exit (see the top). */
static struct conn *quarantined;
static pthread_mutex_t quarantine_lock = PTHREAD_MUTEX_INITIALIZER;

struct mqtt {
    const struct config *cfg;
    struct mqtt_callbacks cb;
    char uris[MQTT_URIS][URI_MAX]; /* paho's form: tcp://host:port, ssl://host:port */
    char *uri_ptrs[MQTT_URIS];
    int nuris;
    char uri_text[MQTT_URIS * (URI_MAX + 2)]; /* "tcp://a:1883, tcp://b:1883" for the log */
    char state_topic[256];
    bool tls;

    /* Connect options live here because paho reads them on every connect:
     * one set per protocol, since mqtt.protocol = auto may use both. */
    MQTTAsync_connectOptions opts5, opts3;
    MQTTAsync_willOptions will;
    MQTTAsync_SSLOptions ssl;
    MQTTProperties connect_props;

    /* Held around every call into paho that uses cur, and while the
     * supervisor replaces cur. Never taken by a callback. */
    pthread_mutex_t client_lock;
    struct conn *_Atomic cur; /* written only by the supervisor, under client_lock */

    pthread_mutex_t ctx_lock; /* every conn's pub_ctx list */

    _Atomic bool connected;
    _Atomic bool ever_connected;
    _Atomic int server;           /* 1 + index in uris of the connection, 0 before one */
    _Atomic int shared_available; /* the CONNACK's Shared Subscription Available; -1 in 3.1.1 */
    _Atomic bool fell_back;       /* auto: the broker refused MQTT 5, 3.1.1 from now on */
    _Atomic bool v5_now;          /* protocol of the current (or next) connection */
    _Atomic uint64_t connected_since_ms; /* wall clock of the last connect, for the page */
    _Atomic uint64_t connects;
    _Atomic bool stalled;
    _Atomic uint64_t stalled_since_ms;

    /* Supervisor: makes every connection. Under lock. */
    pthread_t supervisor;
    bool supervisor_running;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool need_connect; /* the current client failed or lost its connection */
    bool stopping;
    bool stopped;
    bool warned_unreachable;
    char tls_error[256];  /* OpenSSL's last complaint, for the next log line */
    char v5_failure[512]; /* auto: why MQTT 5 failed, said when 3.1.1 works or fails too */
    bool v5_refused;      /* ... and it was the broker's doing, not an unreachable one */

    /* Supervisor thread only. */
    unsigned no_progress; /* connections in a row that acknowledged nothing */
    uint64_t stuck_tag;
};

/* paho wants tcp:// and ssl://; users write mqtt:// and mqtts://. */
static int build_uri(char *out, size_t cap, const char *url, bool *tls)
{
    const char *rest;
    const char *scheme;
    int default_port;
    if (strncmp(url, "mqtt://", 7) == 0 || strncmp(url, "tcp://", 6) == 0) {
        rest = url + (url[0] == 'm' ? 7 : 6);
        scheme = "tcp://";
        default_port = 1883;
        *tls = false;
    } else if (strncmp(url, "mqtts://", 8) == 0 || strncmp(url, "ssl://", 6) == 0) {
        rest = url + (url[0] == 'm' ? 8 : 6);
        scheme = "ssl://";
        default_port = 8883;
        *tls = true;
    } else {
        return -1;
    }
    size_t hostlen = strcspn(rest, "/");
    if (hostlen == 0)
        return -1;
    /* A port is present when the host part ends in :digits (IPv6 has ']'). */
    const char *colon = memrchr(rest, ':', hostlen);
    const char *bracket = memrchr(rest, ']', hostlen);
    bool has_port = colon && (!bracket || colon > bracket);
    int n = has_port ? snprintf(out, cap, "%s%.*s", scheme, (int)hostlen, rest)
                     : snprintf(out, cap, "%s%.*s:%d", scheme, (int)hostlen, rest, default_port);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* mqtt.url: one URL or a comma-separated list, in the order to try them. */
static int parse_uris(struct mqtt *m, const char *list)
{
    m->nuris = 0;
    size_t used = 0;
    for (const char *s = list;; s++) {
        size_t len = strcspn(s, ",");
        char one[URI_MAX];
        const char *b = s, *e = s + len;
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        bool tls = false;
        if (m->nuris == MQTT_URIS || (size_t)(e - b) >= sizeof one)
            return -1;
        snprintf(one, sizeof one, "%.*s", (int)(e - b), b);
        if (build_uri(m->uris[m->nuris], URI_MAX, one, &tls) != 0)
            return -1;
        m->tls |= tls;
        m->uri_ptrs[m->nuris] = m->uris[m->nuris];
        used += (size_t)snprintf(m->uri_text + used, sizeof m->uri_text - used, "%s%s",
                                 m->nuris ? ", " : "", m->uris[m->nuris]);
        m->nuris++;
        s += len;
        if (*s == '\0')
            return 0;
    }
}

/* The URI of the current connection, or the first before there is one. */
static const char *server_uri(struct mqtt *m)
{
    int i = atomic_load(&m->server);
    return m->uris[i > 0 ? i - 1 : 0];
}

/* Asks the supervisor for a new connection to replace c, if c is still current. */
static void want_connect(struct mqtt *m, struct conn *c)
{
    if (c != atomic_load(&m->cur))
        return;
    pthread_mutex_lock(&m->lock);
    m->need_connect = true;
    pthread_cond_signal(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

static void on_connected(void *context, char *cause)
{
    struct conn *c = context;
    struct mqtt *m = c->m;
    (void)cause;
    if (c->fallback) {
        /* 3.1.1 for good only when the broker itself answered MQTT 5 with a
         * refusal or a close. The last URL being unreachable says nothing
         * (paho reports only the last one's failure, and a broker coming up
         * between the two attempts would look the same): 5 is tried again at
         * the next reconnect. */
        pthread_mutex_lock(&m->lock);
        if (!m->v5_refused)
            log_info("mqtt: connected with MQTT 3.1.1 after MQTT 5 failed (%s); MQTT 5 is tried "
                     "again at the next reconnect",
                     m->v5_failure);
        else if (!atomic_exchange(&m->fell_back, true))
            log_warn("mqtt: the broker refused MQTT 5 (%s) and took 3.1.1: using MQTT 3.1.1 "
                     "from now on (mqtt.protocol = auto). Without MQTT 5 a command's answer "
                     "goes to <device>/cmd/response only, with its transaction, and a retained "
                     "command arriving live is not recognised as retained",
                     m->v5_failure);
        pthread_mutex_unlock(&m->lock);
    }
    if (c->clean && !c->v5) {
        /* 3.1.1 has no clean start that keeps the session afterwards, and a
         * clean-session client must never carry a publish (see the top): the
         * broker has dropped our stored session now, so go on with a
         * persistent one at once. */
        log_info("mqtt: the broker dropped our stored session; reconnecting with a new one");
        c->reset_only = true;
        want_connect(m, c);
        return;
    }
    bool again = atomic_exchange(&m->ever_connected, true);
    atomic_store(&c->up, true);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    atomic_store(&m->connected_since_ms,
                 (uint64_t)wall.tv_sec * 1000 + (uint64_t)wall.tv_nsec / 1000000);
    atomic_store(&m->connected, true);
    atomic_fetch_add(&m->connects, 1);
    char pos[48] = "";
    if (m->nuris > 1)
        snprintf(pos, sizeof pos, ", URL %d of %d", atomic_load(&m->server), m->nuris);
    log_info("mqtt: connected to %s (MQTT %s%s)%s%s", server_uri(m), c->v5 ? "5" : "3.1.1", pos,
             again ? " again" : "", c->clean ? " (clean session)" : "");
    pthread_mutex_lock(&m->lock);
    m->warned_unreachable = false;
    pthread_mutex_unlock(&m->lock);
    if (m->cb.on_connected)
        m->cb.on_connected(m->cb.ctx);
}

/* Tells the callbacks, once per connection, that c's connection is gone. */
static void report_lost(struct mqtt *m, struct conn *c, const char *cause)
{
    if (!atomic_load(&c->up) || atomic_exchange(&c->lost, true))
        return;
    atomic_store(&m->connected, false);
    log_warn("mqtt: lost connection to %s%s%s", server_uri(m), cause[0] ? ": " : "", cause);
    if (m->cb.on_connection_lost)
        m->cb.on_connection_lost(m->cb.ctx, cause);
}

static void on_connection_lost(void *context, char *cause)
{
    struct conn *c = context;
    struct mqtt *m = c->m;
    if (c != atomic_load(&m->cur))
        return; /* an abandoned client closing late: the supervisor reported it */
    report_lost(m, c, cause ? cause : "");
    want_connect(m, c);
}

/* Translates paho's message and hands it on; paho frees it when we return 1. */
static int on_message(void *context, char *topic, int topic_len, MQTTAsync_message *msg)
{
    struct conn *c = context;
    struct mqtt *m = c->m;
    (void)topic_len; /* topics from the broker hold no NUL: paho passes 0 here */
    struct mqtt_message out = {
        .topic = topic,
        .payload = msg->payload,
        .len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0,
        .qos = msg->qos,
        .retained = msg->retained != 0,
    };
    char *response_topic = NULL;
    MQTTProperty *rt =
        MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
    if (rt && rt->value.data.len > 0 &&
        !memchr(rt->value.data.data, '\0', (size_t)rt->value.data.len)) {
        response_topic = strndup(rt->value.data.data, (size_t)rt->value.data.len);
        out.response_topic = response_topic;
    }
    MQTTProperty *cd =
        MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_CORRELATION_DATA);
    if (cd && cd->value.data.len > 0) {
        out.correlation = cd->value.data.data;
        out.correlation_len = (size_t)cd->value.data.len;
    }
    if (m->cb.on_message)
        m->cb.on_message(m->cb.ctx, &out);
    free(response_topic);
    MQTTAsync_freeMessage(&msg);
    MQTTAsync_free(topic);
    return 1;
}

/* OpenSSL's error text via paho; kept for connect_failed() to explain. */
static int on_ssl_error(const char *str, size_t len, void *u)
{
    struct mqtt *m = u;
    pthread_mutex_lock(&m->lock);
    snprintf(m->tls_error, sizeof m->tls_error, "%.*s", (int)len, str);
    m->tls_error[strcspn(m->tls_error, "\n")] = '\0';
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* What a connect failure means, in words a user can act on. */
static void explain(struct mqtt *m, bool v5, int code, const char *message, char *out, size_t cap)
{
    if (v5 && code == 1) {
        /* A 3.1.1 broker's CONNACK "unacceptable protocol version" (NATS). */
        snprintf(out, cap, "broker refused: unacceptable protocol version");
    } else if (v5 && code >= 0x80) {
        snprintf(out, cap, "broker refused: %s%s", MQTTReasonCode_toString(code),
                 code == 0x86 || code == 0x87 ? "; check mqtt.username and mqtt.password" : "");
    } else if (!v5 && code >= 1 && code <= 5) {
        static const char *const refusals[] = {"",
                                               "unacceptable protocol version",
                                               "client id rejected",
                                               "server unavailable",
                                               "bad user name or password",
                                               "not authorised"};
        snprintf(out, cap, "broker refused: %s%s", refusals[code],
                 code >= 4 ? "; check mqtt.username and mqtt.password" : "");
    } else if (m->tls && m->tls_error[0]) {
        /* e.g. "...:certificate verify failed:..." */
        const char *why = strstr(m->tls_error, "certificate verify failed")
                              ? "certificate verify failed"
                              : m->tls_error;
        snprintf(out, cap, "TLS: %s; check mqtt.ca_file%s", why,
                 m->cfg->mqtt.ca_file ? "" : " (none set: the system's CA store was used)");
    } else if (m->tls) {
        snprintf(out, cap,
                 "%d: %s; the broker is unreachable, or its certificate is not "
                 "trusted (mqtt.ca_file) or not issued for this host name",
                 code, message ? message : "TLS connect failure");
    } else {
        snprintf(out, cap, "%d%s%s", code, message ? ": " : "", message ? message : "");
    }
}

/* mqtt.protocol = auto and the broker has not refused MQTT 5 yet. */
static bool may_fall_back(struct mqtt *m)
{
    return m->cfg->mqtt.protocol == CONFIG_MQTT_AUTO && !atomic_load(&m->fell_back);
}

/*
 * One line when the broker becomes unreachable, not one per retry. With
 * mqtt.protocol = auto a failed MQTT 5 attempt is followed at once by a 3.1.1
 * one (see supervise()): its reason waits for the outcome of that one.
 */
static void connect_failed(struct mqtt *m, const struct conn *c, int code, const char *message)
{
    bool v5 = c ? c->v5 : atomic_load(&m->v5_now);
    char why[512];
    pthread_mutex_lock(&m->lock);
    explain(m, v5, code, message, why, sizeof why);
    if (v5 && may_fall_back(m)) {
        snprintf(m->v5_failure, sizeof m->v5_failure, "%s", why);
        /* paho's words for "no TCP (or TLS) connection was made". */
        m->v5_refused = !(code == MQTTASYNC_FAILURE && message &&
                          strcmp(message, "TCP/TLS connect failure") == 0);
        log_debug("mqtt: MQTT 5 connect to %s failed (%s); trying 3.1.1", m->uri_text, why);
    } else if (!m->warned_unreachable) {
        if (c && c->fallback)
            log_warn("mqtt: cannot connect to %s (MQTT 5: %s; MQTT 3.1.1: %s); retrying every "
                     "%d..%d s",
                     m->uri_text, m->v5_failure, why, RECONNECT_MIN_S, RECONNECT_MAX_S);
        else
            log_warn("mqtt: cannot connect to %s (%s); retrying every %d..%d s", m->uri_text, why,
                     RECONNECT_MIN_S, RECONNECT_MAX_S);
        m->warned_unreachable = true;
    } else {
        log_debug("mqtt: connect to %s failed (%s)", m->uri_text, why);
    }
    m->tls_error[0] = '\0';
    pthread_mutex_unlock(&m->lock);
}

static void on_connect_failure(void *context, MQTTAsync_failureData *resp)
{
    struct conn *c = context;
    connect_failed(c->m, c, resp ? resp->code : -1, resp ? resp->message : NULL);
    want_connect(c->m, c);
}

static void on_connect_failure5(void *context, MQTTAsync_failureData5 *resp)
{
    struct conn *c = context;
    connect_failed(c->m, c, resp ? resp->code : -1, resp ? resp->message : NULL);
    want_connect(c->m, c);
}

/* Which of mqtt.url took the connection (paho tries them in order). */
static void note_server(struct conn *c, const char *uri)
{
    struct mqtt *m = c->m;
    int at = 1;
    for (int i = 0; uri && i < m->nuris; i++) {
        if (strcmp(uri, m->uris[i]) == 0)
            at = i + 1;
    }
    atomic_store(&m->server, at);
}

/*
 * paho forgets a connect's failure callback only when a success callback is
 * set too; without one it reports every later connection loss as a failed
 * connect. on_connected does the work.
 */
static void on_connect_success(void *context, MQTTAsync_successData *resp)
{
    struct conn *c = context;
    note_server(c, resp ? resp->alt.connect.serverURI : NULL);
    atomic_store(&c->m->shared_available, -1); /* 3.1.1 cannot say */
}

/* paho calls this before on_connected, with the CONNACK's properties. */
static void on_connect_success5(void *context, MQTTAsync_successData5 *resp)
{
    struct conn *c = context;
    note_server(c, resp ? resp->alt.connect.serverURI : NULL);
    /* Absent means available (MQTT 5.0, 3.2.2.3.13). */
    int shared = 1;
    if (resp && MQTTProperties_hasProperty(&resp->properties,
                                           MQTTPROPERTY_CODE_SHARED_SUBSCRIPTION_AVAILABLE))
        shared = MQTTProperties_getNumericValue(
                     &resp->properties, MQTTPROPERTY_CODE_SHARED_SUBSCRIPTION_AVAILABLE) != 0;
    atomic_store(&c->m->shared_available, shared);
}

/* ---- publish contexts ---- */

static struct pub_ctx *ctx_new(struct conn *c, const char *topic, uint64_t tag)
{
    size_t tlen = strlen(topic);
    struct pub_ctx *pc = malloc(sizeof *pc + tlen + 1);
    if (!pc)
        return NULL;
    pc->c = c;
    pc->tag = tag;
    memcpy(pc->topic, topic, tlen + 1);
    pc->next = NULL;
    pthread_mutex_lock(&c->m->ctx_lock);
    pc->prev = c->tail;
    if (c->tail)
        c->tail->next = pc;
    else
        c->head = pc;
    c->tail = pc;
    pthread_mutex_unlock(&c->m->ctx_lock);
    return pc;
}

static void ctx_unlink(struct conn *c, struct pub_ctx *pc)
{
    if (pc->prev)
        pc->prev->next = pc->next;
    else
        c->head = pc->next;
    if (pc->next)
        pc->next->prev = pc->prev;
    else
        c->tail = pc->prev;
}

static void ctx_free(struct pub_ctx *pc)
{
    struct conn *c = pc->c;
    pthread_mutex_lock(&c->m->ctx_lock);
    ctx_unlink(c, pc);
    pthread_mutex_unlock(&c->m->ctx_lock);
    free(pc);
}

static void publish_done(struct pub_ctx *pc, bool ok)
{
    struct conn *c = pc->c;
    struct mqtt *m = c->m;
    if (pc->tag != 0) {
        if (ok) {
            atomic_fetch_add(&c->acked, 1);
            if (atomic_load(&m->stalled) && atomic_exchange(&m->stalled, false))
                log_info("mqtt: the broker acknowledges again, %.1f s after the stall began",
                         (double)(mono_ms() - atomic_load(&m->stalled_since_ms)) / 1000.0);
            if (m->cb.on_delivered)
                m->cb.on_delivered(m->cb.ctx, pc->tag);
        } else if (m->cb.on_failed) {
            m->cb.on_failed(m->cb.ctx, pc->tag);
        }
    }
    ctx_free(pc);
}

static void on_publish_success(void *context, MQTTAsync_successData *resp)
{
    (void)resp;
    publish_done(context, true);
}

static void on_publish_success5(void *context, MQTTAsync_successData5 *resp)
{
    /* MQTT 5: a PUBACK with a reason code >= 0x80 is a refusal, not delivery. */
    publish_done(context, !resp || resp->reasonCode < 0x80);
}

/*
 * MQTTASYNC_FAILURE here is paho's socket error on the first write of the
 * publish, the case described at the top: from now on this client's
 * in-flight list points to freed memory. Other failures (a refusing PUBACK,
 * a request cut short by a disconnect) leave paho consistent.
 */
static void publish_failed(struct pub_ctx *pc, int code)
{
    struct conn *c = pc->c;
    if (code == MQTTASYNC_FAILURE && !atomic_exchange(&c->poisoned, true)) {
        atomic_store(&c->m->connected, false); /* nothing more for this client */
        metrics_inc(METRIC_MQTT_CLIENTS_ABANDONED);
        log_warn("mqtt: a publish to %s failed on a broken socket; this paho client is "
                 "abandoned (paho 1.3.12 keeps a dangling copy of that message) and a "
                 "fresh one takes over",
                 pc->topic);
        want_connect(c->m, c);
    }
    publish_done(pc, false);
}

static void on_publish_failure(void *context, MQTTAsync_failureData *resp)
{
    publish_failed(context, resp ? resp->code : 0);
}

static void on_publish_failure5(void *context, MQTTAsync_failureData5 *resp)
{
    publish_failed(context, resp ? resp->code : 0);
}

static void set_response(MQTTAsync_responseOptions *ro, struct pub_ctx *pc)
{
    ro->context = pc;
    if (pc->c->v5) {
        ro->onSuccess5 = on_publish_success5;
        ro->onFailure5 = on_publish_failure5;
    } else {
        ro->onSuccess = on_publish_success;
        ro->onFailure = on_publish_failure;
    }
}

/* ---- clients ---- */

/* A new paho client for the next connection; NULL (logged) on failure. */
static struct conn *conn_new(struct mqtt *m, bool clean, bool v5)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->m = m;
    c->clean = clean;
    c->v5 = v5;
    MQTTAsync_createOptions create_opts = MQTTAsync_createOptions_initializer;
    create_opts.MQTTVersion = v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    /* Nothing is published while disconnected: the journal holds it instead. */
    create_opts.sendWhileDisconnected = 0;
    /* paho counts every queued, not yet sent command against this limit even
     * while connected (default 100) and refuses the rest. The publisher's
     * window bounds what we queue; leave room for a burst of retained state. */
    create_opts.maxBufferedMessages = m->cfg->mqtt.max_inflight + 1024;
    /* With more than one URL paho takes serverURIs from the connect options. */
    int rc = MQTTAsync_createWithOptions(&c->client, m->uris[0], m->cfg->mqtt.client_id,
                                         MQTTCLIENT_PERSISTENCE_NONE, NULL, &create_opts);
    if (rc != MQTTASYNC_SUCCESS) {
        log_error("mqtt: cannot create a client for %s: %s", m->uris[0], MQTTAsync_strerror(rc));
        free(c);
        return NULL;
    }
    MQTTAsync_setCallbacks(c->client, c, on_connection_lost, on_message, NULL);
    MQTTAsync_setConnected(c->client, c, on_connected);
    return c;
}

/* The oldest tagged publish the connection never saw acknowledged. */
static const struct pub_ctx *oldest_unacked(const struct conn *c)
{
    for (const struct pub_ctx *pc = c->head; pc; pc = pc->next) {
        if (pc->tag != 0)
            return pc;
    }
    return NULL;
}

/*
 * Books a finished connection for the stall detector. Returns true when the
 * next connection should start a clean session.
 */
static bool account(struct mqtt *m, struct conn *c)
{
    if (!atomic_load(&c->up))
        return false;
    uint64_t sent = atomic_load(&c->sent), acked = atomic_load(&c->acked);
    if (acked > 0 || sent == 0) {
        if (acked > 0)
            m->no_progress = 0;
        return false;
    }
    char topic[256] = "?";
    uint64_t tag = 0;
    pthread_mutex_lock(&m->ctx_lock);
    const struct pub_ctx *pc = oldest_unacked(c);
    if (pc) {
        snprintf(topic, sizeof topic, "%s", pc->topic);
        tag = pc->tag;
    }
    pthread_mutex_unlock(&m->ctx_lock);
    if (m->no_progress++ == 0) {
        atomic_store(&m->stalled_since_ms, mono_ms());
        m->stuck_tag = tag;
    }
    if (m->no_progress < STALL_CONNECTIONS)
        return false;
    if (!atomic_exchange(&m->stalled, true)) {
        metrics_inc(METRIC_MQTT_STALLS);
        log_error("mqtt: no progress: the broker closed %u connections in a row before "
                  "acknowledging any of our publishes; the oldest was to %s (tag %llu%s). "
                  "Connecting with a clean session; nothing is skipped, it is sent again%s",
                  m->no_progress, topic, (unsigned long long)tag,
                  tag == m->stuck_tag ? ", the same each time" : "",
                  strchr(topic, '.') ? ". NATS refuses '.' in topics: with NATS set "
                                       "mqtt.topic_dots = false"
                                     : "");
    } else {
        log_debug("mqtt: still no progress after %u connections (%s)", m->no_progress, topic);
    }
    /* A clean session on the first stalled connection, then every few. */
    return (m->no_progress - STALL_CONNECTIONS) % STALL_CONNECTIONS == 0;
}

/* Frees what paho can no longer call back for; c's client is gone or dead. */
static void conn_free_ctxs(struct conn *c)
{
    pthread_mutex_lock(&c->m->ctx_lock);
    struct pub_ctx *pc = c->head;
    c->head = c->tail = NULL;
    pthread_mutex_unlock(&c->m->ctx_lock);
    while (pc) {
        struct pub_ctx *next = pc->next;
        free(pc);
        pc = next;
    }
}

/* Destroys a spent client, or quarantines it (see the top). Under client_lock. */
static void conn_retire(struct conn *c)
{
    if (!c)
        return;
    if (atomic_load(&c->poisoned)) {
        pthread_mutex_lock(&quarantine_lock);
        c->next = quarantined;
        quarantined = c;
        pthread_mutex_unlock(&quarantine_lock);
        return;
    }
    if (MQTTAsync_isConnected(c->client)) {
        /* Still up (a session reset): a DISCONNECT, so that the broker
         * discards the will instead of publishing "offline". */
        MQTTAsync_disconnectOptions dopts = MQTTAsync_disconnectOptions_initializer;
        MQTTAsync_disconnect(c->client, &dopts);
        for (int waited = 0; MQTTAsync_isConnected(c->client) && waited < 1000; waited += 10) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    /* paho calls back only with its own lock held, which destroy takes too:
     * after it no callback for c runs or will run. */
    MQTTAsync_destroy(&c->client);
    conn_free_ctxs(c);
    free(c);
}

static int start_connect(struct mqtt *m, struct conn *c)
{
    MQTTAsync_connectOptions opts = c->v5 ? m->opts5 : m->opts3;
    opts.context = c;
    if (c->v5)
        opts.cleanstart = c->clean;
    else
        opts.cleansession = c->clean;
    atomic_store(&m->v5_now, c->v5);
    return MQTTAsync_connect(c->client, &opts);
}

/* Replaces the current client with a fresh one and starts connecting it. */
static void reconnect(struct mqtt *m, bool clean, bool v5, bool fallback)
{
    pthread_mutex_lock(&m->client_lock);
    struct conn *c = conn_new(m, clean, v5);
    if (c)
        c->fallback = fallback;
    conn_retire(m->cur);
    atomic_store(&m->cur, c);
    int rc = c ? start_connect(m, c) : MQTTASYNC_FAILURE;
    pthread_mutex_unlock(&m->client_lock);
    if (rc != MQTTASYNC_SUCCESS) {
        connect_failed(m, c, rc, MQTTAsync_strerror(rc));
        want_connect(m, c);
    }
}

/* Makes every connection: the first, and one after each failure or loss. */
static void *supervise(void *arg)
{
    struct mqtt *m = arg;
    int delay_s = RECONNECT_MIN_S;
    pthread_mutex_lock(&m->lock);
    while (!m->stopping) {
        if (!m->need_connect) {
            pthread_cond_wait(&m->cond, &m->lock);
            continue;
        }
        m->need_connect = false;
        pthread_mutex_unlock(&m->lock);

        /* cur is only replaced here, so reading it without client_lock is fine. */
        struct conn *c = atomic_load(&m->cur);
        if (c)
            report_lost(m, c, atomic_load(&c->poisoned) ? "abandoned after a write error" : "");
        bool was_up = c && atomic_load(&c->up);
        bool reset = c && c->reset_only;
        bool clean = c && account(m, c);
        /* A connection that worked: back after a moment. One that acknowledged
         * nothing backs off like a failed attempt, but a clean session is
         * worth trying at once. */
        if ((was_up && m->no_progress == 0) || clean)
            delay_s = RECONNECT_MIN_S;
        /* mqtt.protocol = auto: an MQTT 5 attempt that failed is followed at
         * once by a 3.1.1 one. RabbitMQ drops an MQTT 5 CONNECT unanswered and
         * NATS refuses it, so the reason alone cannot tell "no MQTT 5" from
         * "down"; the 3.1.1 attempt can. Until one works, both are tried. */
        bool try_311 = c && c->v5 && !was_up && !reset && may_fall_back(m);
        bool v5 = m->cfg->mqtt.protocol == CONFIG_MQTT_5 ||
                  (may_fall_back(m) && !try_311 && !(reset && !c->v5));
        /* With a list, a connection that worked and was lost is replaced at
         * once: its node is probably gone and paho goes on to the next. */
        bool failover = was_up && m->no_progress == 0 && m->nuris > 1;
        int wait_s = reset || try_311 || failover ? 0 : delay_s;

        pthread_mutex_lock(&m->lock);
        struct timespec until = realtime_in_us((uint64_t)wait_s * 1000000);
        while (!m->stopping && pthread_cond_timedwait(&m->cond, &m->lock, &until) == 0)
            ;
        if (m->stopping)
            break;
        /* Set again by the old client's late report: this attempt replaces it. */
        m->need_connect = false;
        pthread_mutex_unlock(&m->lock);

        reconnect(m, clean, v5, try_311);
        if (wait_s > 0)
            delay_s = delay_s * 2 > RECONNECT_MAX_S ? RECONNECT_MAX_S : delay_s * 2;
        pthread_mutex_lock(&m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static void paho_init(void)
{
    MQTTAsync_init_options init = MQTTAsync_init_options_initializer;
    init.do_openssl_init = 0;
    MQTTAsync_global_init(&init);
}

int mqtt_new(struct mqtt **out, const struct config *cfg, const struct mqtt_callbacks *cb,
             char *err, size_t errlen)
{
    /* Before the first client: paho's own OpenSSL set-up (every error string,
     * every algorithm) is resident memory a tcp:// connection never uses;
     * OpenSSL 3 initialises itself on the first TLS use, strings included. */
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, paho_init);
    *out = NULL;
    struct mqtt *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->cfg = cfg;
    m->cb = *cb;
    bool v5 = cfg->mqtt.protocol != CONFIG_MQTT_311; /* auto starts with 5 */
    atomic_store(&m->v5_now, v5);
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->client_lock, NULL);
    pthread_mutex_init(&m->ctx_lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    snprintf(m->state_topic, sizeof m->state_topic, "%s/bridge/state", cfg->mqtt.base_topic);

    if (parse_uris(m, cfg->mqtt.url) != 0) {
        snprintf(err, errlen,
                 "mqtt.url: not an mqtt:// or mqtts:// URL, or a list of at most %d: '%s'",
                 MQTT_URIS, cfg->mqtt.url);
        goto fail;
    }
    /* The first client now: a URL paho cannot use fails the start, and
     * paho's heap must exist before MQTTProperties_add below. There is always
     * a client from here on (reconnect() creates the next before it destroys
     * the last): destroying the last one ends paho's heap under our
     * connect properties. */
    m->cur = conn_new(m, false, v5);
    if (!m->cur) {
        snprintf(err, errlen, "mqtt: cannot create a client for %s", m->uris[0]);
        goto fail;
    }

    MQTTAsync_connectOptions init5 = MQTTAsync_connectOptions_initializer5;
    m->opts5 = init5;
    /* A persistent session: the broker keeps our subscriptions and queued
     * QoS 1 messages across reconnects for session_expiry_s. */
    MQTTProperties props = MQTTProperties_initializer;
    m->connect_props = props;
    MQTTProperty expiry = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
    /* 0 would make paho clean its in-flight list at every loss, which
     * frees the copy of a publish that failed on a broken socket twice
     * (see the top); one second is what the broker keeps instead. */
    expiry.value.integer4 =
        cfg->mqtt.session_expiry_s > 0 ? (unsigned int)cfg->mqtt.session_expiry_s : 1;
    MQTTProperties_add(&m->connect_props, &expiry);
    m->opts5.connectProperties = &m->connect_props;
    m->opts5.onSuccess5 = on_connect_success5;
    m->opts5.onFailure5 = on_connect_failure5;

    MQTTAsync_connectOptions init = MQTTAsync_connectOptions_initializer;
    m->opts3 = init;
    /* The initializer's default tries 3.1 after a failed 3.1.1 connect. */
    m->opts3.MQTTVersion = MQTTVERSION_3_1_1;
    m->opts3.onSuccess = on_connect_success;
    m->opts3.onFailure = on_connect_failure;

    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
    m->will = will;
    m->will.topicName = m->state_topic;
    m->will.message = "offline";
    m->will.retained = 1;
    m->will.qos = 1;

    MQTTAsync_connectOptions *both[] = {&m->opts5, &m->opts3};
    for (size_t i = 0; i < 2; i++) {
        MQTTAsync_connectOptions *o = both[i];
        o->keepAliveInterval = cfg->mqtt.keepalive_s;
        o->connectTimeout = CONNECT_TIMEOUT_S;
        o->maxInflight = cfg->mqtt.max_inflight + 64; /* + retained state bursts */
        o->automaticReconnect = 0; /* the supervisor reconnects, with a fresh client */
        o->username = cfg->mqtt.username;
        o->password = cfg->mqtt.password;
        o->will = &m->will;
        /* In order on every connect; paho says which one took it. */
        if (m->nuris > 1) {
            o->serverURIs = m->uri_ptrs;
            o->serverURIcount = m->nuris;
        }
    }

    if (m->tls) {
        MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
        m->ssl = ssl;
        m->ssl.trustStore = cfg->mqtt.ca_file;
        m->ssl.keyStore = cfg->mqtt.cert_file;
        m->ssl.privateKey = cfg->mqtt.key_file;
        m->ssl.enableServerCertAuth = cfg->mqtt.tls_verify;
        m->ssl.verify = cfg->mqtt.tls_verify; /* host name check too */
        m->ssl.ssl_error_cb = on_ssl_error;
        m->ssl.ssl_error_context = m;
        m->opts5.ssl = &m->ssl;
        m->opts3.ssl = &m->ssl;
        if (!cfg->mqtt.tls_verify)
            log_warn("mqtt: mqtt.tls_verify = false: the broker's certificate is NOT checked; "
                     "anyone on the path can read and change the traffic");
    }

    *out = m;
    return 0;
fail:
    mqtt_free(m);
    return -1;
}

int mqtt_start(struct mqtt *m, char *err, size_t errlen)
{
    if (pthread_create(&m->supervisor, NULL, supervise, m) != 0) {
        snprintf(err, errlen, "mqtt: cannot start supervisor thread");
        return -1;
    }
    m->supervisor_running = true;
    int p = m->cfg->mqtt.protocol;
    log_info("mqtt: connecting to %s%s as '%s' (MQTT %s)", m->uri_text,
             m->nuris > 1 ? ", tried in this order" : "", m->cfg->mqtt.client_id,
             p == CONFIG_MQTT_5     ? "5"
             : p == CONFIG_MQTT_311 ? "3.1.1"
                                    : "5, else 3.1.1");
    pthread_mutex_lock(&m->client_lock);
    int rc = start_connect(m, m->cur);
    pthread_mutex_unlock(&m->client_lock);
    if (rc != MQTTASYNC_SUCCESS) {
        connect_failed(m, m->cur, rc, MQTTAsync_strerror(rc));
        want_connect(m, m->cur);
    }
    return 0;
}

/* Sends msg on the current client with a report to pc; under client_lock. */
static int send_on_current(struct mqtt *m, const char *topic, MQTTAsync_message *msg, uint64_t tag,
                           MQTTAsync_token *token)
{
    struct conn *c = m->cur;
    if (!c || !atomic_load(&m->connected))
        return -1;
    struct pub_ctx *pc = ctx_new(c, topic, tag);
    if (!pc)
        return -1;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    set_response(&ro, pc);
    int rc = MQTTAsync_sendMessage(c->client, topic, msg, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        log_debug("mqtt: publish to %s refused: %s", topic, MQTTAsync_strerror(rc));
        ctx_free(pc);
        return -1;
    }
    if (tag != 0)
        atomic_fetch_add(&c->sent, 1);
    if (token)
        *token = ro.token;
    return 0;
}

int mqtt_publish(struct mqtt *m, const char *topic, const void *payload, size_t len, int qos,
                 bool retain, uint64_t tag)
{
    if (!atomic_load(&m->connected) || len > INT32_MAX)
        return -1;
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    /* paho copies the payload before sendMessage returns. */
    msg.payload = (void *)(uintptr_t)payload;
    msg.payloadlen = (int)len;
    msg.qos = qos;
    msg.retained = retain;
    pthread_mutex_lock(&m->client_lock);
    int rc = send_on_current(m, topic, &msg, tag, NULL);
    pthread_mutex_unlock(&m->client_lock);
    return rc;
}

int mqtt_publish_reply(struct mqtt *m, const char *topic, const void *payload, size_t len,
                       const void *correlation, size_t correlation_len)
{
    if (!atomic_load(&m->connected) || len > INT32_MAX || correlation_len > 65535)
        return -1;
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    msg.payload = (void *)(uintptr_t)payload;
    msg.payloadlen = (int)len;
    msg.qos = 1;
    pthread_mutex_lock(&m->client_lock);
    if (correlation && m->cur && m->cur->v5) {
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_CORRELATION_DATA};
        p.value.data.data = (char *)(uintptr_t)correlation;
        p.value.data.len = (int)correlation_len;
        MQTTProperties_add(&msg.properties, &p); /* copies the data */
    }
    int rc = send_on_current(m, topic, &msg, 0, NULL);
    pthread_mutex_unlock(&m->client_lock);
    MQTTProperties_free(&msg.properties);
    return rc;
}

int mqtt_subscribe(struct mqtt *m, const char *filter, int qos)
{
    if (!atomic_load(&m->connected))
        return -1;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    pthread_mutex_lock(&m->client_lock);
    if (m->cur && m->cur->v5)
        ro.subscribeOptions.retainAsPublished = 1;
    int rc = m->cur ? MQTTAsync_subscribe(m->cur->client, filter, qos, &ro) : MQTTASYNC_FAILURE;
    pthread_mutex_unlock(&m->client_lock);
    if (rc != MQTTASYNC_SUCCESS) {
        log_warn("mqtt: cannot subscribe to %s: %s", filter, MQTTAsync_strerror(rc));
        return -1;
    }
    log_debug("mqtt: subscribed to %s", filter);
    return 0;
}

int mqtt_unsubscribe(struct mqtt *m, const char *filter)
{
    if (!atomic_load(&m->connected))
        return -1;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    pthread_mutex_lock(&m->client_lock);
    int rc = m->cur ? MQTTAsync_unsubscribe(m->cur->client, filter, &ro) : MQTTASYNC_FAILURE;
    pthread_mutex_unlock(&m->client_lock);
    if (rc != MQTTASYNC_SUCCESS) {
        log_warn("mqtt: cannot unsubscribe from %s: %s", filter, MQTTAsync_strerror(rc));
        return -1;
    }
    log_debug("mqtt: unsubscribed from %s", filter);
    return 0;
}

bool mqtt_is_connected(struct mqtt *m)
{
    return atomic_load(&m->connected);
}

const char *mqtt_server(struct mqtt *m)
{
    return atomic_load(&m->connected) ? server_uri(m) : NULL;
}

int mqtt_server_index(struct mqtt *m)
{
    return atomic_load(&m->connected) ? atomic_load(&m->server) : 0;
}

const char *mqtt_protocol(struct mqtt *m)
{
    return atomic_load(&m->v5_now) ? "5" : "3.1.1";
}

int mqtt_shared_available(struct mqtt *m)
{
    return atomic_load(&m->shared_available);
}

uint64_t mqtt_reconnects(struct mqtt *m)
{
    uint64_t n = atomic_load(&m->connects);
    return n > 0 ? n - 1 : 0;
}

uint64_t mqtt_connected_since_ms(struct mqtt *m)
{
    return atomic_load(&m->connected) ? atomic_load(&m->connected_since_ms) : 0;
}

bool mqtt_stalled(struct mqtt *m)
{
    return atomic_load(&m->stalled);
}

const char *mqtt_state_topic(const struct mqtt *m)
{
    return m->state_topic;
}

void mqtt_stop(struct mqtt *m, int timeout_ms)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    bool already = m->stopped;
    m->stopped = true;
    m->stopping = true;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    if (already)
        return;
    if (m->supervisor_running) {
        pthread_join(m->supervisor, NULL);
        m->supervisor_running = false;
    }
    pthread_mutex_lock(&m->client_lock);
    struct conn *c = m->cur;
    if (c && atomic_load(&m->connected)) {
        /* The will covers a crash; a clean stop says "offline" itself because a
         * normal DISCONNECT discards the will. */
        MQTTAsync_message msg = MQTTAsync_message_initializer;
        msg.payload = (void *)(uintptr_t) "offline";
        msg.payloadlen = 7;
        msg.qos = 1;
        msg.retained = 1;
        MQTTAsync_token token = 0;
        if (send_on_current(m, m->state_topic, &msg, 0, &token) == 0 &&
            MQTTAsync_waitForCompletion(c->client, token, (unsigned long)timeout_ms) !=
                MQTTASYNC_SUCCESS)
            log_warn("mqtt: broker did not acknowledge 'offline' within %d ms", timeout_ms);
    }
    if (c && !atomic_load(&c->poisoned)) {
        MQTTAsync_disconnectOptions dopts = MQTTAsync_disconnectOptions_initializer;
        if (c->v5) {
            MQTTAsync_disconnectOptions d5 = MQTTAsync_disconnectOptions_initializer5;
            dopts = d5;
        }
        dopts.timeout = timeout_ms;
        MQTTAsync_disconnect(c->client, &dopts);
        /* MQTTAsync_disconnect returns before the socket closes; give it the
         * time it asked for, bounded, so "offline" is not cut off by exit. */
        for (int waited = 0; MQTTAsync_isConnected(c->client) && waited < timeout_ms;
             waited += 10) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    atomic_store(&m->connected, false);
    pthread_mutex_unlock(&m->client_lock);
}

void mqtt_free(struct mqtt *m)
{
    if (!m)
        return;
    mqtt_stop(m, 1000);
    /* Before the last client goes, and paho's heap with it. */
    MQTTProperties_free(&m->connect_props);
    pthread_mutex_lock(&m->client_lock);
    conn_retire(m->cur);
    m->cur = NULL;
    pthread_mutex_unlock(&m->client_lock);
    /* Quarantined clients stay: destroying one would free memory twice. */
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->ctx_lock);
    pthread_mutex_destroy(&m->client_lock);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
