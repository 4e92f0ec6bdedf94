/*
 * mqtt.c - the broker connection, on paho MQTTAsync.
 *
 * What this file owns: turning mqtt.* configuration into paho options (URL
 * scheme, TLS, MQTT 5 or 3.1.1, persistent session, last will), keeping the
 * connection up, and reporting connection changes and publish outcomes to one
 * set of callbacks.
 *
 * Why it is shaped like this:
 * - paho keeps no state on disk here (MQTTCLIENT_PERSISTENCE_NONE): the
 *   journal is the durable copy, and the publisher resends from it after every
 *   reconnect. paho also drops its in-flight state when the broker answers
 *   "no session present", so trusting paho to resend would lose messages.
 * - paho's automatic reconnect only starts after a first successful connect.
 *   Until then a small supervisor thread retries with the same backoff, so a
 *   gateway started before its broker comes up on its own.
 * - Callbacks run on paho's threads: they only translate and hand off.
 */
#include "race2mqtt/mqtt.h"

#include <MQTTAsync.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "race2mqtt/config.h"
#include "race2mqtt/log.h"

#define RECONNECT_MIN_S 1
#define RECONNECT_MAX_S 10
#define CONNECT_TIMEOUT_S 10

struct mqtt {
    MQTTAsync client;
    const struct config *cfg;
    struct mqtt_callbacks cb;
    char uri[512];
    char state_topic[256];

    /* Connect options live here because paho reads them again on reconnect. */
    MQTTAsync_connectOptions conn_opts;
    MQTTAsync_willOptions will;
    MQTTAsync_SSLOptions ssl;
    MQTTProperties connect_props;

    _Atomic bool connected;
    _Atomic bool ever_connected;
    _Atomic uint64_t connects;

    /* Supervisor: retries the first connect until one succeeds. */
    pthread_t supervisor;
    bool supervisor_running;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool connect_failed; /* a first connect attempt failed: retry after backoff */
    bool stopping;
    bool stopped;
    bool warned_unreachable;
    bool retry_seen; /* the first failure report after a loss was seen */
    bool tls;
    char tls_error[256]; /* OpenSSL's last complaint, for the next log line */
};

/* Per-publish context handed to paho and given back in the response callback. */
struct pub_ctx {
    struct mqtt *m;
    uint64_t tag;
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

static void on_connected(void *context, char *cause)
{
    struct mqtt *m = context;
    (void)cause;
    bool again = atomic_exchange(&m->ever_connected, true);
    atomic_store(&m->connected, true);
    atomic_fetch_add(&m->connects, 1);
    log_info("mqtt: connected to %s%s", m->uri, again ? " again" : "");
    pthread_mutex_lock(&m->lock);
    m->warned_unreachable = false;
    m->retry_seen = false;
    pthread_mutex_unlock(&m->lock);
    if (m->cb.on_connected)
        m->cb.on_connected(m->cb.ctx);
}

static void on_connection_lost(void *context, char *cause)
{
    struct mqtt *m = context;
    atomic_store(&m->connected, false);
    log_warn("mqtt: lost connection to %s%s%s", m->uri, cause ? ": " : "", cause ? cause : "");
    if (m->cb.on_connection_lost)
        m->cb.on_connection_lost(m->cb.ctx, cause ? cause : "");
}

/* Translates paho's message and hands it on; paho frees it when we return 1. */
static int on_message(void *context, char *topic, int topic_len, MQTTAsync_message *msg)
{
    struct mqtt *m = context;
    (void)topic_len; /* topics from the broker hold no NUL: paho passes 0 here */
    struct mqtt_message out = {
        .topic = topic,
        .payload = msg->payload,
        .len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0,
        .qos = msg->qos,
        .retained = msg->retained != 0,
    };
    char *response_topic = NULL;
    MQTTProperty *rt = MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
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
static void explain(struct mqtt *m, int code, const char *message, char *out, size_t cap)
{
    bool v5 = m->cfg->mqtt.protocol == CONFIG_MQTT_5;
    if (v5 && code >= 0x80) {
        snprintf(out, cap, "broker refused: %s%s", MQTTReasonCode_toString(code),
                 code == 0x86 || code == 0x87 ? "; check mqtt.username and mqtt.password" : "");
    } else if (!v5 && code >= 1 && code <= 5) {
        static const char *const refusals[] = {"", "unacceptable protocol version",
                                               "client id rejected", "server unavailable",
                                               "bad user name or password",
                                               "not authorised"};
        snprintf(out, cap, "broker refused: %s%s", refusals[code],
                 code >= 4 ? "; check mqtt.username and mqtt.password" : "");
    } else if (m->tls && m->tls_error[0]) {
        /* e.g. "...:certificate verify failed:..." */
        const char *why = strstr(m->tls_error, "certificate verify failed") ? "certificate verify failed"
                                                                             : m->tls_error;
        snprintf(out, cap, "TLS: %s; check mqtt.ca_file%s", why,
                 m->cfg->mqtt.ca_file ? "" : " (none set: the system's CA store was used)");
    } else if (m->tls) {
        snprintf(out, cap, "%d: %s; the broker is unreachable, or its certificate is not "
                 "trusted (mqtt.ca_file) or not issued for this host name",
                 code, message ? message : "TLS connect failure");
    } else {
        snprintf(out, cap, "%d%s%s", code, message ? ": " : "", message ? message : "");
    }
}

static void connect_failed(struct mqtt *m, int code, const char *message)
{
    pthread_mutex_lock(&m->lock);
    /* One line when the broker becomes unreachable, not one per retry. After a
     * lost connection paho reports a failed attempt at once, before it has
     * tried anything: that one is not news. */
    if (!m->warned_unreachable && atomic_load(&m->ever_connected) && !m->retry_seen) {
        m->retry_seen = true;
        log_debug("mqtt: reconnecting to %s (%d)", m->uri, code);
    } else if (!m->warned_unreachable) {
        char why[512];
        explain(m, code, message, why, sizeof why);
        log_warn("mqtt: cannot connect to %s (%s); retrying every %d..%d s", m->uri, why,
                 RECONNECT_MIN_S, RECONNECT_MAX_S);
        m->warned_unreachable = true;
    } else {
        log_debug("mqtt: connect to %s failed (%d)", m->uri, code);
    }
    m->tls_error[0] = '\0';
    if (!atomic_load(&m->ever_connected)) {
        m->connect_failed = true;
        pthread_cond_signal(&m->cond);
    }
    pthread_mutex_unlock(&m->lock);
}

static void on_connect_failure(void *context, MQTTAsync_failureData *resp)
{
    connect_failed(context, resp ? resp->code : -1, resp ? resp->message : NULL);
}

static void on_connect_failure5(void *context, MQTTAsync_failureData5 *resp)
{
    connect_failed(context, resp ? resp->code : -1, resp ? resp->message : NULL);
}

static void on_publish_success(void *context, MQTTAsync_successData *resp)
{
    struct pub_ctx *pc = context;
    (void)resp;
    if (pc->m->cb.on_delivered)
        pc->m->cb.on_delivered(pc->m->cb.ctx, pc->tag);
    free(pc);
}

static void on_publish_success5(void *context, MQTTAsync_successData5 *resp)
{
    struct pub_ctx *pc = context;
    /* MQTT 5: a PUBACK with a reason code >= 0x80 is a refusal, not delivery. */
    bool ok = !resp || resp->reasonCode < 0x80;
    if (ok && pc->m->cb.on_delivered)
        pc->m->cb.on_delivered(pc->m->cb.ctx, pc->tag);
    else if (!ok && pc->m->cb.on_failed)
        pc->m->cb.on_failed(pc->m->cb.ctx, pc->tag);
    free(pc);
}

static void on_publish_failure(void *context, MQTTAsync_failureData *resp)
{
    struct pub_ctx *pc = context;
    (void)resp;
    if (pc->m->cb.on_failed)
        pc->m->cb.on_failed(pc->m->cb.ctx, pc->tag);
    free(pc);
}

static void on_publish_failure5(void *context, MQTTAsync_failureData5 *resp)
{
    struct pub_ctx *pc = context;
    (void)resp;
    if (pc->m->cb.on_failed)
        pc->m->cb.on_failed(pc->m->cb.ctx, pc->tag);
    free(pc);
}

static int start_connect(struct mqtt *m)
{
    return MQTTAsync_connect(m->client, &m->conn_opts);
}

/* Retries the first connect with backoff; paho takes over once connected. */
static void *supervise(void *arg)
{
    struct mqtt *m = arg;
    int delay_s = RECONNECT_MIN_S;
    pthread_mutex_lock(&m->lock);
    while (!m->stopping) {
        if (!m->connect_failed) {
            pthread_cond_wait(&m->cond, &m->lock);
            continue;
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += delay_s;
        while (!m->stopping && pthread_cond_timedwait(&m->cond, &m->lock, &until) == 0)
            ;
        if (m->stopping)
            break;
        m->connect_failed = false;
        delay_s = delay_s * 2 > RECONNECT_MAX_S ? RECONNECT_MAX_S : delay_s * 2;
        pthread_mutex_unlock(&m->lock);
        int rc = start_connect(m);
        pthread_mutex_lock(&m->lock);
        if (rc != MQTTASYNC_SUCCESS) {
            log_debug("mqtt: connect call refused (%d)", rc);
            m->connect_failed = true;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

int mqtt_new(struct mqtt **out, const struct config *cfg, const struct mqtt_callbacks *cb,
             char *err, size_t errlen)
{
    *out = NULL;
    struct mqtt *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->cfg = cfg;
    m->cb = *cb;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    snprintf(m->state_topic, sizeof m->state_topic, "%s/bridge/state", cfg->mqtt.base_topic);

    bool tls = false;
    if (build_uri(m->uri, sizeof m->uri, cfg->mqtt.url, &tls) != 0) {
        snprintf(err, errlen, "mqtt.url: not an mqtt:// or mqtts:// URL: '%s'", cfg->mqtt.url);
        goto fail;
    }

    bool v5 = cfg->mqtt.protocol == CONFIG_MQTT_5;
    MQTTAsync_createOptions create_opts = MQTTAsync_createOptions_initializer;
    create_opts.MQTTVersion = v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    /* Nothing is published while disconnected: the journal holds it instead. */
    create_opts.sendWhileDisconnected = 0;
    /* paho counts every queued, not yet sent command against this limit even
     * while connected (default 100) and refuses the rest. The publisher's
     * window bounds what we queue; leave room for a burst of retained state. */
    create_opts.maxBufferedMessages = cfg->mqtt.max_inflight + 1024;
    int rc = MQTTAsync_createWithOptions(&m->client, m->uri, cfg->mqtt.client_id,
                                         MQTTCLIENT_PERSISTENCE_NONE, NULL, &create_opts);
    if (rc != MQTTASYNC_SUCCESS) {
        snprintf(err, errlen, "mqtt: cannot create client for %s: %s", m->uri,
                 MQTTAsync_strerror(rc));
        goto fail;
    }
    MQTTAsync_setCallbacks(m->client, m, on_connection_lost, on_message, NULL);
    MQTTAsync_setConnected(m->client, m, on_connected);

    if (v5) {
        MQTTAsync_connectOptions init5 = MQTTAsync_connectOptions_initializer5;
        m->conn_opts = init5;
        /* A persistent session: the broker keeps our subscriptions and queued
         * QoS 1 messages across reconnects for session_expiry_s. */
        m->conn_opts.cleanstart = 0;
        MQTTProperties props = MQTTProperties_initializer;
        m->connect_props = props;
        MQTTProperty expiry = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
        expiry.value.integer4 = (unsigned int)cfg->mqtt.session_expiry_s;
        MQTTProperties_add(&m->connect_props, &expiry);
        m->conn_opts.connectProperties = &m->connect_props;
        m->conn_opts.onFailure5 = on_connect_failure5;
    } else {
        MQTTAsync_connectOptions init = MQTTAsync_connectOptions_initializer;
        m->conn_opts = init;
        m->conn_opts.cleansession = 0;
        m->conn_opts.onFailure = on_connect_failure;
    }
    m->conn_opts.context = m;
    m->conn_opts.keepAliveInterval = cfg->mqtt.keepalive_s;
    m->conn_opts.connectTimeout = CONNECT_TIMEOUT_S;
    m->conn_opts.maxInflight = cfg->mqtt.max_inflight + 64; /* + retained state bursts */
    m->conn_opts.automaticReconnect = 1;
    m->conn_opts.minRetryInterval = RECONNECT_MIN_S;
    m->conn_opts.maxRetryInterval = RECONNECT_MAX_S;
    m->conn_opts.username = cfg->mqtt.username;
    m->conn_opts.password = cfg->mqtt.password;

    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
    m->will = will;
    m->will.topicName = m->state_topic;
    m->will.message = "offline";
    m->will.retained = 1;
    m->will.qos = 1;
    m->conn_opts.will = &m->will;

    if (tls) {
        MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
        m->ssl = ssl;
        m->ssl.trustStore = cfg->mqtt.ca_file;
        m->ssl.keyStore = cfg->mqtt.cert_file;
        m->ssl.privateKey = cfg->mqtt.key_file;
        m->ssl.enableServerCertAuth = cfg->mqtt.tls_verify;
        m->ssl.verify = cfg->mqtt.tls_verify; /* host name check too */
        m->ssl.ssl_error_cb = on_ssl_error;
        m->ssl.ssl_error_context = m;
        m->conn_opts.ssl = &m->ssl;
        m->tls = true;
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
    log_info("mqtt: connecting to %s as '%s' (MQTT %s)", m->uri, m->cfg->mqtt.client_id,
             m->cfg->mqtt.protocol == CONFIG_MQTT_5 ? "5" : "3.1.1");
    int rc = start_connect(m);
    if (rc != MQTTASYNC_SUCCESS)
        connect_failed(m, rc, MQTTAsync_strerror(rc));
    return 0;
}

int mqtt_publish(struct mqtt *m, const char *topic, const void *payload, size_t len, int qos,
                 bool retain, uint64_t tag)
{
    if (!atomic_load(&m->connected) || len > INT32_MAX)
        return -1;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    struct pub_ctx *pc = NULL;
    if (tag != 0) {
        pc = malloc(sizeof *pc);
        if (!pc)
            return -1;
        pc->m = m;
        pc->tag = tag;
        ro.context = pc;
        if (m->cfg->mqtt.protocol == CONFIG_MQTT_5) {
            ro.onSuccess5 = on_publish_success5;
            ro.onFailure5 = on_publish_failure5;
        } else {
            ro.onSuccess = on_publish_success;
            ro.onFailure = on_publish_failure;
        }
    }
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    /* paho copies the payload before sendMessage returns. */
    msg.payload = (void *)(uintptr_t)payload;
    msg.payloadlen = (int)len;
    msg.qos = qos;
    msg.retained = retain;
    int rc = MQTTAsync_sendMessage(m->client, topic, &msg, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        log_debug("mqtt: publish to %s refused: %s", topic, MQTTAsync_strerror(rc));
        free(pc);
        return -1;
    }
    return 0;
}

int mqtt_publish_reply(struct mqtt *m, const char *topic, const void *payload, size_t len,
                       const void *correlation, size_t correlation_len)
{
    if (!atomic_load(&m->connected) || len > INT32_MAX || correlation_len > 65535)
        return -1;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    msg.payload = (void *)(uintptr_t)payload;
    msg.payloadlen = (int)len;
    msg.qos = 1;
    if (correlation && m->cfg->mqtt.protocol == CONFIG_MQTT_5) {
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_CORRELATION_DATA};
        p.value.data.data = (char *)(uintptr_t)correlation;
        p.value.data.len = (int)correlation_len;
        MQTTProperties_add(&msg.properties, &p); /* copies the data */
    }
    int rc = MQTTAsync_sendMessage(m->client, topic, &msg, &ro);
    MQTTProperties_free(&msg.properties);
    if (rc != MQTTASYNC_SUCCESS) {
        log_debug("mqtt: reply to %s refused: %s", topic, MQTTAsync_strerror(rc));
        return -1;
    }
    return 0;
}

int mqtt_subscribe(struct mqtt *m, const char *filter, int qos)
{
    if (!atomic_load(&m->connected))
        return -1;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    if (m->cfg->mqtt.protocol == CONFIG_MQTT_5)
        ro.subscribeOptions.retainAsPublished = 1;
    int rc = MQTTAsync_subscribe(m->client, filter, qos, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        log_warn("mqtt: cannot subscribe to %s: %s", filter, MQTTAsync_strerror(rc));
        return -1;
    }
    log_debug("mqtt: subscribed to %s", filter);
    return 0;
}

bool mqtt_is_connected(struct mqtt *m)
{
    return atomic_load(&m->connected);
}

uint64_t mqtt_reconnects(struct mqtt *m)
{
    uint64_t n = atomic_load(&m->connects);
    return n > 0 ? n - 1 : 0;
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
    if (!m->client)
        return;

    if (atomic_load(&m->connected)) {
        /* The will covers a crash; a clean stop says "offline" itself because a
         * normal DISCONNECT discards the will. */
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        MQTTAsync_message msg = MQTTAsync_message_initializer;
        msg.payload = (void *)(uintptr_t) "offline";
        msg.payloadlen = 7;
        msg.qos = 1;
        msg.retained = 1;
        if (MQTTAsync_sendMessage(m->client, m->state_topic, &msg, &ro) == MQTTASYNC_SUCCESS) {
            if (MQTTAsync_waitForCompletion(m->client, ro.token, (unsigned long)timeout_ms) !=
                MQTTASYNC_SUCCESS)
                log_warn("mqtt: broker did not acknowledge 'offline' within %d ms", timeout_ms);
        }
    }
    MQTTAsync_disconnectOptions dopts = MQTTAsync_disconnectOptions_initializer;
    if (m->cfg->mqtt.protocol == CONFIG_MQTT_5) {
        MQTTAsync_disconnectOptions d5 = MQTTAsync_disconnectOptions_initializer5;
        dopts = d5;
    }
    dopts.timeout = timeout_ms;
    MQTTAsync_disconnect(m->client, &dopts);
    /* MQTTAsync_disconnect returns before the socket closes; give it the time
     * it asked for, bounded, so "offline" is not cut off by process exit. */
    for (int waited = 0; MQTTAsync_isConnected(m->client) && waited < timeout_ms; waited += 10) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&m->connected, false);
}

void mqtt_free(struct mqtt *m)
{
    if (!m)
        return;
    mqtt_stop(m, 1000);
    if (m->client)
        MQTTAsync_destroy(&m->client);
    MQTTProperties_free(&m->connect_props);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
