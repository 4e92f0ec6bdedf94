/*
 * test_config.c - the configuration module: defaults, the shipped example,
 * every value type, errors that name file:line:key or the variable, the
 * environment, secret files, masking, and RACE RESULT's auto-enable.
 *
 * Config files are written to temporary files from the text in each test, so
 * the line numbers an error must name are visible next to the assertion.
 * Every RACE2MQTT_* variable is cleared before and after each test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "race2mqtt/config.h"

#define EXAMPLE_CONF R2M_FIXTURES "/../../config/race2mqtt.conf"

extern char **environ;

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (!h_ || !strstr(h_, n_))                                                                \
            fail_msg("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_);                    \
    } while (0)

#define assert_lacks(hay, needle)                                                                  \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (h_ && strstr(h_, n_))                                                                  \
            fail_msg("\"%s\" contains \"%s\"", h_, n_);                                            \
    } while (0)

static int clear_env(void **state)
{
    (void)state;
    for (;;) {
        char name[256] = "";
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "RACE2MQTT_", 10) == 0) {
                size_t n = strcspn(*e, "=");
                if (n < sizeof name) {
                    memcpy(name, *e, n);
                    name[n] = '\0';
                }
                break;
            }
        }
        if (!name[0])
            return 0;
        unsetenv(name);
    }
}

/* Writes text to a new temporary file; returns its path (free and unlink it). */
static char *temp_file(const char *text, size_t len)
{
    char *path = strdup("/tmp/r2m-test-config-XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

static void drop_file(char *path)
{
    unlink(path);
    free(path);
}

/*
 * Loads text as a config file. Returns config_load's result; the file's path
 * is left in *path (drop_file it) so that messages can be checked against it.
 */
static int load_text(struct config *cfg, const char *text, char *err, size_t errlen, char **path)
{
    *path = temp_file(text, strlen(text));
    return config_load(cfg, *path, err, errlen);
}

/* Loads text that must be refused; checks the message has "<path>:<where>". */
static void expect_error(const char *text, const char *where, const char *reason)
{
    struct config cfg;
    char err[512], *path, prefix[512];
    assert_int_equal(load_text(&cfg, text, err, sizeof err, &path), -1);
    snprintf(prefix, sizeof prefix, "%s:%s", path, where);
    assert_contains(err, prefix);
    assert_contains(err, reason);
    config_free(&cfg);
    drop_file(path);
}

static char *print_to_string(const struct config *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    assert_non_null(out);
    config_print(cfg, out);
    fclose(out);
    return buf;
}

static char *json_text(const struct config *cfg)
{
    struct json_object *j = config_to_json(cfg);
    assert_non_null(j);
    char *text = strdup(
        json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(j);
    return text;
}

static void test_defaults(void **state)
{
    (void)state;
    struct config c;
    char host[65] = "", id[96];
    gethostname(host, sizeof host - 1);
    snprintf(id, sizeof id, "race2mqtt-%s", host);

    config_defaults(&c);
    assert_string_equal(c.mqtt.url, "mqtt://127.0.0.1:1883");
    assert_string_equal(c.mqtt.client_id, id);
    assert_null(c.mqtt.username);
    assert_null(c.mqtt.password);
    assert_null(c.mqtt.password_file);
    assert_null(c.mqtt.ca_file);
    assert_null(c.mqtt.cert_file);
    assert_null(c.mqtt.key_file);
    assert_true(c.mqtt.tls_verify);
    assert_int_equal(c.mqtt.protocol, CONFIG_MQTT_AUTO);
    assert_string_equal(c.mqtt.base_topic, "race2mqtt");
    assert_int_equal(c.mqtt.keepalive_s, 30);
    assert_int_equal(c.mqtt.max_inflight, 256);
    assert_int_equal(c.mqtt.session_expiry_s, 86400);
    assert_string_equal(c.http.bind, "0.0.0.0");
    assert_int_equal(c.http.port, 8080);
    assert_null(c.http.token);
    assert_null(c.http.token_file);
    assert_int_equal(c.http.max_body, 65536);
    assert_string_equal(c.http.cors_origin, "*");
    assert_int_equal(c.http.max_connections, 512);
    assert_int_equal(c.http.max_connections_per_ip, 0);
    assert_int_equal(c.http.timeout_s, 10);
    assert_int_equal(c.http.threads, 2);
    assert_true(c.smartrace.enabled);
    assert_string_equal(c.smartrace.base_topic, "smartrace");
    assert_int_equal(c.smartrace.qos, 1);
    assert_int_equal(c.raceresult.enabled, -1);
    assert_string_equal(c.raceresult.base_url, "https://rest.devices.raceresult.com");
    assert_null(c.raceresult.customer_id);
    assert_null(c.raceresult.api_key);
    assert_null(c.raceresult.api_key_file);
    assert_null(c.raceresult.devices);
    assert_int_equal(c.raceresult.poll_interval_ms, 1000);
    assert_string_equal(c.raceresult.base_topic, "raceresult");
    assert_contains(c.raceresult.commands_allowed, "GETSTATUS");
    assert_contains(c.raceresult.commands_allowed, "STARTOPERATION");
    assert_lacks(c.raceresult.commands_allowed, "CLEARFILES");
    assert_lacks(c.raceresult.commands_allowed, "NEWFILE");
    assert_null(c.raceresult.command_group);
    assert_true(c.homeassistant.enabled);
    assert_string_equal(c.homeassistant.prefix, "homeassistant");
    assert_string_equal(c.store.dir, "./var");
    assert_int_equal(c.store.max_bytes, 128 * 1024 * 1024);
    assert_int_equal(c.store.segment_bytes, 8 * 1024 * 1024);
    assert_int_equal(c.store.flush_timeout_ms, 5000);
    assert_string_equal(c.log.level, "info");
    config_free(&c);
}

static void test_no_file_is_defaults_with_auto_resolved(void **state)
{
    (void)state;
    struct config c, d;
    char err[256];
    assert_int_equal(config_load(&c, NULL, err, sizeof err), 0);
    assert_int_equal(c.raceresult.enabled, 0);
    config_defaults(&d);
    d.raceresult.enabled = 0;
    /* Derived at load from the client id, like raceresult.enabled. */
    d.homeassistant.node_id = strdup(c.homeassistant.node_id);
    char *a = print_to_string(&c), *b = print_to_string(&d);
    assert_string_equal(a, b);
    free(a);
    free(b);
    config_free(&c);
    config_free(&d);
}

static void test_node_id_derived_and_checked(void **state)
{
    (void)state;
    struct config c;
    char err[256] = "";
    char path[] = "/tmp/r2m_cfg_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char text[] = "[mqtt]\nclient_id = race2mqtt-Pit.Lane/2\n";
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    assert_int_equal(config_load(&c, path, err, sizeof err), 0);
    assert_string_equal(c.homeassistant.node_id, "race2mqtt-Pit_Lane_2");
    config_free(&c);

    setenv("RACE2MQTT_HOMEASSISTANT_NODE_ID", "club.track", 1);
    assert_int_not_equal(config_load(&c, path, err, sizeof err), 0);
    assert_non_null(strstr(err, "RACE2MQTT_HOMEASSISTANT_NODE_ID"));
    config_free(&c);
    setenv("RACE2MQTT_HOMEASSISTANT_NODE_ID", "club_track-2", 1);
    assert_int_equal(config_load(&c, path, err, sizeof err), 0);
    assert_string_equal(c.homeassistant.node_id, "club_track-2");
    config_free(&c);
    unsetenv("RACE2MQTT_HOMEASSISTANT_NODE_ID");
    unlink(path);
}

static void test_example_loads_as_defaults(void **state)
{
    (void)state;
    struct config c, d;
    char err[256] = "";
    if (config_load(&c, EXAMPLE_CONF, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(config_load(&d, NULL, err, sizeof err), 0);
    char *a = print_to_string(&c), *b = print_to_string(&d);
    assert_string_equal(a, b);
    free(a);
    free(b);
    config_free(&c);
    config_free(&d);
}

/* Each "key = default" that config_print shows is in the example, commented, in its section. */
static void test_example_documents_every_key(void **state)
{
    (void)state;
    struct config d;
    config_defaults(&d);
    free(d.mqtt.client_id);
    d.mqtt.client_id = strdup("race2mqtt-<hostname>");
    char *printed = print_to_string(&d);
    config_free(&d);

    FILE *f = fopen(EXAMPLE_CONF, "r");
    assert_non_null(f);
    char *example = NULL;
    size_t cap = 0;
    /* The example as "section.# key = value" lines, one string. */
    FILE *norm = open_memstream(&example, &cap);
    char line[512], section[64] = "";
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '[')
            sscanf(line, "[%63[^]]", section);
        else if (strncmp(line, "# ", 2) == 0 && strstr(line, " ="))
            fprintf(norm, "%s.%s", section, line);
    }
    fclose(f);
    fclose(norm);

    int keys = 0;
    section[0] = '\0';
    for (char *p = printed, *nl; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        *nl = '\0';
        if (p[0] == '[') {
            sscanf(p, "[%63[^]]", section);
        } else if (p[0] && p[0] != '#') {
            char want[512];
            snprintf(want, sizeof want, "%s.# %s\n", section, p);
            assert_contains(example, want);
            keys++;
        }
    }
    assert_true(keys >= 43);
    free(printed);
    free(example);
}

static void test_every_type_parses(void **state)
{
    (void)state;
    char text[4096], err[512], *path;
    struct config c;
    snprintf(text, sizeof text,
             "[mqtt]\n"
             "url = mqtts://broker.example:8883\n"
             "client_id = rig-1\n"
             "username = alice\n"
             "ca_file = %s\n"
             "tls_verify = off\n"
             "protocol = 3.1.1\n"
             "base_topic = site/a\n"
             "keepalive_s = 60\n"
             "max_inflight = 10\n"
             "session_expiry_s = 0\n"
             "[http]\n"
             "  bind = 127.0.0.1\n"
             "  port = 9000 ; inline comment\n"
             "max_body = 1M\n"
             "cors_origin = https://app.example\n"
             "max_connections = 5\n"
             "timeout_s = 3\n"
             "threads = 4\n"
             "[smartrace]\n"
             "enabled = no\n"
             "base_topic = sr\n"
             "qos = 2\n"
             "[raceresult]\n"
             "enabled = false\n"
             "base_url = http://127.0.0.1:8999//\n"
             "customer_id = 12345\n"
             "devices = D-1 , T-2,D-3\n"
             "poll_interval_ms = 250\n"
             "base_topic = rr\n"
             "commands_allowed = GETSTATUS, CLEARFILES\n"
             "command_group = gw\n"
             "[homeassistant]\n"
             "enabled = 0\n"
             "prefix = ha\n"
             "[store]\n"
             "dir = /var/lib/race2mqtt\n"
             "max_bytes = 2G\n"
             "segment_bytes = 16MiB\n"
             "flush_timeout_ms = 0\n"
             "[log]\n"
             "level = debug\n",
             EXAMPLE_CONF);
    if (load_text(&c, text, err, sizeof err, &path) != 0)
        fail_msg("%s", err);
    assert_string_equal(c.mqtt.url, "mqtts://broker.example:8883");
    assert_string_equal(c.mqtt.client_id, "rig-1");
    assert_string_equal(c.mqtt.username, "alice");
    assert_string_equal(c.mqtt.ca_file, EXAMPLE_CONF);
    assert_false(c.mqtt.tls_verify);
    assert_int_equal(c.mqtt.protocol, CONFIG_MQTT_311);
    assert_string_equal(c.mqtt.base_topic, "site/a");
    assert_int_equal(c.mqtt.keepalive_s, 60);
    assert_int_equal(c.mqtt.max_inflight, 10);
    assert_int_equal(c.mqtt.session_expiry_s, 0);
    assert_string_equal(c.http.bind, "127.0.0.1");
    assert_int_equal(c.http.port, 9000);
    assert_int_equal(c.http.max_body, 1024 * 1024);
    assert_string_equal(c.http.cors_origin, "https://app.example");
    assert_int_equal(c.http.max_connections, 5);
    assert_int_equal(c.http.timeout_s, 3);
    assert_int_equal(c.http.threads, 4);
    assert_false(c.smartrace.enabled);
    assert_string_equal(c.smartrace.base_topic, "sr");
    assert_int_equal(c.smartrace.qos, 2);
    assert_int_equal(c.raceresult.enabled, 0);
    assert_string_equal(c.raceresult.base_url, "http://127.0.0.1:8999");
    assert_string_equal(c.raceresult.customer_id, "12345");
    assert_string_equal(c.raceresult.devices, "D-1,T-2,D-3");
    assert_int_equal(c.raceresult.poll_interval_ms, 250);
    assert_string_equal(c.raceresult.base_topic, "rr");
    assert_string_equal(c.raceresult.commands_allowed, "GETSTATUS,CLEARFILES");
    assert_string_equal(c.raceresult.command_group, "gw");
    assert_false(c.homeassistant.enabled);
    assert_string_equal(c.homeassistant.prefix, "ha");
    assert_string_equal(c.store.dir, "/var/lib/race2mqtt");
    assert_true(c.store.max_bytes == INT64_C(2) * 1024 * 1024 * 1024);
    assert_int_equal(c.store.segment_bytes, 16 * 1024 * 1024);
    assert_int_equal(c.store.flush_timeout_ms, 0);
    assert_string_equal(c.log.level, "debug");
    config_free(&c);
    drop_file(path);
}

/* A failover list is kept as written (mqtt.c splits it); each URL is checked. */
static void test_mqtt_url_list(void **state)
{
    (void)state;
    char err[512], *path;
    struct config c;
    if (load_text(&c,
                  "[mqtt]\nurl = mqtt://n1:1883, mqtt://n2:1884 ,mqtts://n3\n"
                  "protocol = auto\n",
                  err, sizeof err, &path) != 0)
        fail_msg("%s", err);
    assert_string_equal(c.mqtt.url, "mqtt://n1:1883, mqtt://n2:1884 ,mqtts://n3");
    assert_int_equal(c.mqtt.protocol, CONFIG_MQTT_AUTO);
    config_free(&c);
    unlink(path);
    free(path);
}

static void test_list_has(void **state)
{
    (void)state;
    assert_true(config_list_has("D-1,D-2,T-10", "D-1"));
    assert_true(config_list_has("D-1,D-2,T-10", "D-2"));
    assert_true(config_list_has("D-1,D-2,T-10", "T-10"));
    assert_false(config_list_has("D-1,D-2,T-10", "T-1"));
    assert_false(config_list_has("D-1,D-2,T-10", "D-"));
    assert_false(config_list_has("D-1,D-2,T-10", "D-1,D-2"));
    assert_false(config_list_has("D-1", "d-1"));
    assert_false(config_list_has(NULL, "D-1"));
}

static void test_bool_spellings(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool value;
    } cases[] = {
        {"true", true},   {"yes", true}, {"on", true},   {"1", true},  {"TRUE", true},
        {"false", false}, {"no", false}, {"off", false}, {"0", false}, {"Off", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[128], err[512], *path;
        struct config c;
        snprintf(text, sizeof text, "[homeassistant]\nenabled = %s\n", cases[i].text);
        if (load_text(&c, text, err, sizeof err, &path) != 0)
            fail_msg("%s: %s", cases[i].text, err);
        if (c.homeassistant.enabled != cases[i].value)
            fail_msg("'%s' read as %d", cases[i].text, c.homeassistant.enabled);
        config_free(&c);
        drop_file(path);
    }
}

static void test_unknown_key_names_file_line_key(void **state)
{
    (void)state;
    expect_error("# comment\n"
                 "[mqtt]\n"
                 "url = mqtt://broker:1883\n"
                 "\n"
                 "bogus = 1\n"
                 "client_id = x\n",
                 "5: mqtt.bogus: unknown key", "unknown key");
}

static void test_unknown_section_names_file_line_key(void **state)
{
    (void)state;
    expect_error("[http]\n"
                 "port = 9000\n"
                 "[nope]\n"
                 "; comment\n"
                 "thing = 1\n",
                 "5: nope.thing:", "unknown section [nope]");
}

static void test_key_outside_section(void **state)
{
    (void)state;
    expect_error("\nport = 9000\n[http]\n", "2: port:", "outside any section");
}

static void test_syntax_error_names_line(void **state)
{
    (void)state;
    expect_error("[http]\nport = 9000\njust words\n", "3: syntax error", "expected");
    /* inih's own error comes before a value error further down: the first is reported. */
    expect_error("[http]\n[broken\nport = x\n", "2: syntax error", "expected");
}

static void test_long_line_is_refused(void **state)
{
    (void)state;
    char text[512];
    char value[300];
    memset(value, 'a', sizeof value - 1);
    value[sizeof value - 1] = '\0';
    snprintf(text, sizeof text, "[mqtt]\nclient_id = %s\nport = 1\n", value);
    expect_error(text, "2: line too long", "197");
}

static void test_line_at_limit_is_accepted(void **state)
{
    (void)state;
    char text[512], err[512], *path, value[200];
    struct config c;
    /* "client_id = " is 12 characters: 12 + 185 = 197, with CR LF. */
    memset(value, 'b', 185);
    value[185] = '\0';
    snprintf(text, sizeof text, "[mqtt]\r\nclient_id = %s\r\n", value);
    if (load_text(&c, text, err, sizeof err, &path) != 0)
        fail_msg("%s", err);
    assert_string_equal(c.mqtt.client_id, value);
    config_free(&c);
    drop_file(path);
}

/* inih would read an indented line as a continuation of the previous value. */
static void test_indented_key_is_not_a_continuation(void **state)
{
    (void)state;
    char err[512], *path;
    struct config c;
    if (load_text(&c, "[http]\nbind = 127.0.0.1\n    port = 9000\n\tthreads = 3\n", err, sizeof err,
                  &path) != 0)
        fail_msg("%s", err);
    assert_string_equal(c.http.bind, "127.0.0.1");
    assert_int_equal(c.http.port, 9000);
    assert_int_equal(c.http.threads, 3);
    config_free(&c);
    drop_file(path);
}

static void test_bad_values(void **state)
{
    (void)state;
    static const struct {
        const char *text;  /* line 2 holds the bad value */
        const char *where; /* after "<path>:" */
        const char *reason;
    } cases[] = {
        {"[http]\nport = 80x\n", "2: http.port:", "not an integer: '80x'"},
        {"[http]\nport = 70000\n", "2: http.port:", "out of range: '70000' (allowed 1..65535)"},
        {"[http]\nport = 0\n", "2: http.port:", "out of range"},
        {"[http]\nport =\n", "2: http.port:", "not an integer: ''"},
        {"[http]\nport = 99999999999999999999\n", "2: http.port:", "out of range"},
        {"[mqtt]\ntls_verify = maybe\n", "2: mqtt.tls_verify:", "not a boolean"},
        {"[mqtt]\nprotocol = 4\n", "2: mqtt.protocol:", "must be one of: auto, 5, 3.1.1"},
        {"[raceresult]\nenabled = sometimes\n", "2: raceresult.enabled:", "must be auto or"},
        {"[http]\nmax_body = 17M\n", "2: http.max_body:", "out of range"},
        {"[http]\nmax_body = 0\n", "2: http.max_body:", "out of range"},
        {"[http]\nmax_body = 12Q\n", "2: http.max_body:", "not a size"},
        {"[smartrace]\nqos = 0\n", "2: smartrace.qos:", "QoS 0"},
        {"[smartrace]\nqos = 3\n", "2: smartrace.qos:", "out of range"},
        {"[mqtt]\nurl = http://broker:1883\n", "2: mqtt.url:", "mqtt:// or mqtts://"},
        {"[mqtt]\nurl = tcp://broker:1883\n", "2: mqtt.url:", "mqtt:// or mqtts://"},
        {"[mqtt]\nurl = mqtt://\n", "2: mqtt.url:", "no host"},
        {"[mqtt]\nurl = mqtt://a:1883,\n", "2: mqtt.url:", "empty entry"},
        {"[mqtt]\nurl = mqtt://a:1883, ,mqtt://b\n", "2: mqtt.url:", "empty entry"},
        {"[mqtt]\nurl = mqtt://a:1883,http://b:1883\n", "2: mqtt.url:", "each URL of a list"},
        {"[mqtt]\nurl = mqtt://a:1883,mqtt://:1884\n", "2: mqtt.url:", "no host"},
        {"[mqtt]\nurl = mqtt://a b:1883\n", "2: mqtt.url:", "space inside"},
        {"[mqtt]\nurl = mqtt://a,mqtt://u:pw@b:1883\n", "2: mqtt.url:", "user:password@"},
        {"[mqtt]\nurl = mqtt://a,mqtt://b,mqtt://c,mqtt://d,mqtt://e,mqtt://f,mqtt://g,"
         "mqtt://h,mqtt://i\n",
         "2: mqtt.url:", "more than 8"},
        {"[mqtt]\nclient_id =\n", "2: mqtt.client_id:", "must not be empty"},
        {"[mqtt]\nbase_topic = a/+/b\n", "2: mqtt.base_topic:", "wildcards"},
        {"[mqtt]\nbase_topic = a/\n", "2: mqtt.base_topic:", "start or end"},
        {"[mqtt]\nca_file = /nonexistent/ca.pem\n", "2: mqtt.ca_file:", "cannot read"},
        {"[raceresult]\nbase_url = ftp://x\n", "2: raceresult.base_url:", "https://"},
        {"[raceresult]\ndevices = D-1,,D-2\n", "2: raceresult.devices:", "empty item"},
        {"[raceresult]\ndevices = D 1\n", "2: raceresult.devices:", "may contain only"},
        {"[raceresult]\ncommand_group = a/b\n", "2: raceresult.command_group:", "one topic level"},
        {"[raceresult]\npoll_interval_ms = 10\n",
         "2: raceresult.poll_interval_ms:", "out of range"},
        {"[log]\nlevel = verbose\n", "2: log.level:", "error, warn, info, debug"},
        {"[store]\nmax_bytes = 1M\nsegment_bytes = 8M\n",
         "2: store.max_bytes:", "at least store.segment_bytes"},
        {"[store]\nflush_timeout_ms = 5s\n", "2: store.flush_timeout_ms:", "not an integer"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].text, cases[i].where, cases[i].reason);
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        long value;
    } cases[] = {
        {"65536", 65536}, {"64K", 65536},   {"64k", 65536},    {"64KiB", 65536},
        {"2M", 2097152},  {"2MB", 2097152}, {"16M", 16777216}, {"1", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[128], err[512], *path;
        struct config c;
        snprintf(text, sizeof text, "[http]\nmax_body = %s\n", cases[i].text);
        if (load_text(&c, text, err, sizeof err, &path) != 0)
            fail_msg("%s: %s", cases[i].text, err);
        if (c.http.max_body != cases[i].value)
            fail_msg("'%s' read as %ld", cases[i].text, c.http.max_body);
        config_free(&c);
        drop_file(path);
    }
}

static void test_duplicate_key_last_wins(void **state)
{
    (void)state;
    char err[512], *path;
    struct config c;
    assert_int_equal(load_text(&c, "[mqtt]\nusername = a\nusername = b\n", err, sizeof err, &path),
                     0);
    assert_string_equal(c.mqtt.username, "b");
    config_free(&c);
    drop_file(path);
}

static void test_missing_file(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(config_load(&c, "/nonexistent/race2mqtt.conf", err, sizeof err), -1);
    assert_contains(err, "/nonexistent/race2mqtt.conf: cannot open");
    config_free(&c);
}

static void test_env_beats_file(void **state)
{
    (void)state;
    char err[512], *path;
    struct config c;
    setenv("RACE2MQTT_HTTP_PORT", "9100", 1);
    setenv("RACE2MQTT_MQTT_URL", "mqtt://broker:1884", 1);
    setenv("RACE2MQTT_SMARTRACE_ENABLED", "off", 1);
    setenv("RACE2MQTT_STORE_MAX_BYTES", "256M", 1);
    setenv("RACE2MQTT_MQTT_USERNAME", "", 1);
    if (load_text(&c,
                  "[http]\nport = 9000\n[mqtt]\nurl = mqtt://file:1883\nusername = bob\n"
                  "[store]\nmax_bytes = 64M\n",
                  err, sizeof err, &path) != 0)
        fail_msg("%s", err);
    assert_int_equal(c.http.port, 9100);
    assert_string_equal(c.mqtt.url, "mqtt://broker:1884");
    assert_false(c.smartrace.enabled);
    assert_int_equal(c.store.max_bytes, 256 * 1024 * 1024);
    assert_null(c.mqtt.username);
    config_free(&c);
    drop_file(path);
}

static void test_env_error_names_variable(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    setenv("RACE2MQTT_HTTP_PORT", "abc", 1);
    assert_int_equal(config_load(&c, NULL, err, sizeof err), -1);
    assert_string_equal(err, "environment RACE2MQTT_HTTP_PORT: not an integer: 'abc'");
    config_free(&c);

    setenv("RACE2MQTT_HTTP_PORT", "8080", 1);
    setenv("RACE2MQTT_HTTP_CORS_ORIGIN", "x\r\nSet-Cookie: a", 1);
    assert_int_equal(config_load(&c, NULL, err, sizeof err), -1);
    assert_string_equal(err,
                        "environment RACE2MQTT_HTTP_CORS_ORIGIN: contains a control character");
    config_free(&c);
}

static void test_secret_files(void **state)
{
    (void)state;
    char *pw = temp_file("s3cret-pw\n", 10);
    char *tok = temp_file("tok-en_1\r\n", 10);
    char *key = temp_file("api key with spaces", 19);
    char text[1024], err[512], *path;
    struct config c;
    snprintf(text, sizeof text,
             "[mqtt]\npassword_file = %s\n[http]\ntoken_file = %s\n"
             "[raceresult]\napi_key_file = %s\ncustomer_id = 42\n",
             pw, tok, key);
    if (load_text(&c, text, err, sizeof err, &path) != 0)
        fail_msg("%s", err);
    assert_string_equal(c.mqtt.password, "s3cret-pw");
    assert_string_equal(c.mqtt.password_file, pw);
    assert_string_equal(c.http.token, "tok-en_1");
    assert_string_equal(c.raceresult.api_key, "api key with spaces");
    assert_int_equal(c.raceresult.enabled, 1);

    char *printed = print_to_string(&c);
    char want[512];
    snprintf(want, sizeof want, "\npassword_file = %s\n", pw);
    assert_contains(printed, want);
    assert_contains(printed, "\npassword = ***\n");
    assert_lacks(printed, "s3cret-pw");
    free(printed);
    config_free(&c);
    drop_file(path);

    /* Only one trailing newline is dropped: a second one is refused, not kept. */
    char *two = temp_file("pw\n\n", 4);
    snprintf(text, sizeof text, "[mqtt]\npassword_file = %s\n", two);
    assert_int_equal(load_text(&c, text, err, sizeof err, &path), -1);
    assert_contains(err, "control character");
    config_free(&c);
    drop_file(path);

    drop_file(two);
    drop_file(pw);
    drop_file(tok);
    drop_file(key);
}

static void test_secret_and_file_both_set(void **state)
{
    (void)state;
    char *pw = temp_file("from-file\n", 10);
    char text[1024], err[512], *path;
    struct config c;
    snprintf(text, sizeof text, "[mqtt]\npassword = inline-secret\n\npassword_file = %s\n", pw);
    assert_int_equal(load_text(&c, text, err, sizeof err, &path), -1);
    char want[512];
    snprintf(want, sizeof want, "%s:4: mqtt.password_file: mqtt.password is also set", path);
    assert_contains(err, want);
    assert_lacks(err, "inline-secret");
    assert_lacks(err, "from-file");
    config_free(&c);
    drop_file(path);

    /* The environment's secret and the file's *_file clash as well. */
    setenv("RACE2MQTT_MQTT_PASSWORD", "env-secret", 1);
    snprintf(text, sizeof text, "[mqtt]\npassword_file = %s\n", pw);
    assert_int_equal(load_text(&c, text, err, sizeof err, &path), -1);
    assert_contains(err, "mqtt.password is also set");
    assert_lacks(err, "env-secret");
    config_free(&c);
    drop_file(path);
    drop_file(pw);
}

static void test_secret_file_errors(void **state)
{
    (void)state;
    char big[5000];
    memset(big, 'x', sizeof big);
    char *large = temp_file(big, sizeof big);
    char *empty = temp_file("\n", 1);
    char *badtok = temp_file("bad&token\n", 10);
    static const char *const missing = "/nonexistent/secret";
    const struct {
        const char *section;
        const char *key;
        const char *file;
        const char *reason;
    } cases[] = {
        {"mqtt", "password_file", missing, "No such file"},
        {"raceresult", "api_key_file", large, "larger than 4096 bytes"},
        {"http", "token_file", empty, "is empty"},
        {"http", "token_file", badtok, "may contain only"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[1024], err[512], *path, want[512];
        struct config c;
        snprintf(text, sizeof text, "[%s]\n%s = %s\n", cases[i].section, cases[i].key,
                 cases[i].file);
        assert_int_equal(load_text(&c, text, err, sizeof err, &path), -1);
        snprintf(want, sizeof want, "%s:2: %s.%s: secret file '%s': %s", path, cases[i].section,
                 cases[i].key, cases[i].file, cases[i].reason);
        assert_contains(err, want);
        assert_lacks(err, "xxxx");
        assert_lacks(err, "bad&token");
        config_free(&c);
        drop_file(path);
    }
    drop_file(large);
    drop_file(empty);
    drop_file(badtok);
}

static void test_print_and_json_mask_secrets(void **state)
{
    (void)state;
    char err[512], *path;
    struct config c;
    if (load_text(&c,
                  "[mqtt]\nusername = alice\npassword = pw-SECRET\n"
                  "[raceresult]\napi_key = key-SECRET\ncustomer_id = 7\n",
                  err, sizeof err, &path) != 0)
        fail_msg("%s", err);
    setenv("RACE2MQTT_HTTP_TOKEN", "tok-SECRET", 1);
    config_free(&c);
    if (config_load(&c, path, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(c.http.token, "tok-SECRET");

    char *printed = print_to_string(&c);
    assert_contains(printed, "\n[mqtt]\n");
    assert_contains(printed, "\nusername = alice\n");
    assert_contains(printed, "\npassword = ***\n");
    assert_contains(printed, "\ntoken = ***\n");
    assert_contains(printed, "\napi_key = ***\n");
    assert_contains(printed, "\npassword_file =\n");
    assert_contains(printed, "\nenabled = true\n");
    assert_lacks(printed, "SECRET");
    free(printed);

    char *json = json_text(&c);
    assert_contains(json, "\"password\":\"***\"");
    assert_contains(json, "\"token\":\"***\"");
    assert_contains(json, "\"api_key\":\"***\"");
    assert_contains(json, "\"username\":\"alice\"");
    assert_contains(json, "\"port\":8080");
    assert_contains(json, "\"protocol\":\"auto\"");
    assert_contains(json, "\"tls_verify\":true");
    assert_contains(json, "\"max_bytes\":134217728");
    assert_lacks(json, "SECRET");
    free(json);
    config_free(&c);

    /* Unset secrets: empty in the INI text, null in JSON. */
    unsetenv("RACE2MQTT_HTTP_TOKEN");
    assert_int_equal(config_load(&c, NULL, err, sizeof err), 0);
    printed = print_to_string(&c);
    assert_contains(printed, "\npassword =\n");
    assert_lacks(printed, "= ***");
    free(printed);
    json = json_text(&c);
    assert_contains(json, "\"password\":null");
    assert_contains(json, "\"mqtt\":{\"url\":\"mqtt://127.0.0.1:1883\"");
    free(json);
    config_free(&c);
    drop_file(path);
}

/* Every way a load with secrets in it can fail: the message never holds them. */
static void test_no_secret_in_error_messages(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "[raceresult]\napi_key = key-SECRET\n",
        "[http]\ntoken = tok SECRET\n",
        "[http]\ntoken = tok&SECRET\n",
        "[mqtt]\npassword = pw-SECRET\npassword_file = /nonexistent\n",
        "[mqtt]\npassword = pw-SECRET\n[http]\nport = x\n",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        char err[512], *path;
        struct config c;
        assert_int_equal(load_text(&c, texts[i], err, sizeof err, &path), -1);
        assert_true(strlen(err) > 0);
        assert_lacks(err, "SECRET");
        config_free(&c);
        drop_file(path);
    }

    char err[512];
    struct config c;
    setenv("RACE2MQTT_HTTP_TOKEN", "env SECRET", 1);
    assert_int_equal(config_load(&c, NULL, err, sizeof err), -1);
    assert_contains(err, "environment RACE2MQTT_HTTP_TOKEN:");
    assert_lacks(err, "SECRET");
    config_free(&c);
}

static void test_raceresult_auto_enable(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int rc;
        int enabled;
        const char *error; /* after "<path>:" */
    } cases[] = {
        {"[raceresult]\n", 0, 0, NULL},
        {"[raceresult]\napi_key = k\ncustomer_id = 1\n", 0, 1, NULL},
        {"[raceresult]\nenabled = auto\napi_key = k\ncustomer_id = 1\n", 0, 1, NULL},
        {"[raceresult]\nenabled = false\napi_key = k\n", 0, 0, NULL},
        {"[raceresult]\ncustomer_id = 1\n", 0, 0, NULL},
        {"[raceresult]\n\napi_key = k\n", -1, 0,
         "3: raceresult.api_key: raceresult.customer_id is required"},
        {"[raceresult]\nenabled = true\n", -1, 0,
         "2: raceresult.enabled: RACE RESULT is enabled but raceresult.api_key is not set"},
        {"[raceresult]\nenabled = yes\napi_key = k\n", -1, 0,
         "2: raceresult.enabled: RACE RESULT is enabled but raceresult.customer_id is not set"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "", *path;
        struct config c;
        int rc = load_text(&c, cases[i].text, err, sizeof err, &path);
        if (rc != cases[i].rc)
            fail_msg("case %zu: rc %d, %s", i, rc, err);
        if (rc == 0) {
            assert_int_equal(c.raceresult.enabled, cases[i].enabled);
        } else {
            char want[512];
            snprintf(want, sizeof want, "%s:%s", path, cases[i].error);
            assert_contains(err, want);
        }
        config_free(&c);
        drop_file(path);
    }

    /* From the environment alone, as in a container. */
    char err[512];
    struct config c;
    setenv("RACE2MQTT_RACERESULT_API_KEY", "k", 1);
    setenv("RACE2MQTT_RACERESULT_CUSTOMER_ID", "99", 1);
    assert_int_equal(config_load(&c, NULL, err, sizeof err), 0);
    assert_int_equal(c.raceresult.enabled, 1);
    config_free(&c);
}

static void test_free_is_safe(void **state)
{
    (void)state;
    struct config c;
    char err[512], *path;
    config_defaults(&c);
    config_free(&c);
    config_free(&c);
    assert_null(c.mqtt.url);
    config_free(NULL);

    assert_int_equal(load_text(&c, "[http]\ntoken = ok\nport = x\n", err, sizeof err, &path), -1);
    config_free(&c);
    config_free(&c);
    drop_file(path);

    /* A NULL error buffer is allowed. */
    assert_int_equal(config_load(&c, "/nonexistent", NULL, 0), -1);
    config_free(&c);
}

#define T(f) cmocka_unit_test_setup_teardown(f, clear_env, clear_env)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_defaults),
        T(test_no_file_is_defaults_with_auto_resolved),
        T(test_example_loads_as_defaults),
        T(test_node_id_derived_and_checked),
        T(test_example_documents_every_key),
        T(test_every_type_parses),
        T(test_mqtt_url_list),
        T(test_list_has),
        T(test_bool_spellings),
        T(test_unknown_key_names_file_line_key),
        T(test_unknown_section_names_file_line_key),
        T(test_key_outside_section),
        T(test_syntax_error_names_line),
        T(test_long_line_is_refused),
        T(test_line_at_limit_is_accepted),
        T(test_indented_key_is_not_a_continuation),
        T(test_bad_values),
        T(test_sizes),
        T(test_duplicate_key_last_wins),
        T(test_missing_file),
        T(test_env_beats_file),
        T(test_env_error_names_variable),
        T(test_secret_files),
        T(test_secret_and_file_both_set),
        T(test_secret_file_errors),
        T(test_print_and_json_mask_secrets),
        T(test_no_secret_in_error_messages),
        T(test_raceresult_auto_enable),
        T(test_free_is_safe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
