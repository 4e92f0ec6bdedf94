/*
 * test_command.c - decoder command requests over MQTT (SPEC section 3,
 * "Commands"): request parsing (plain text and JSON), the allow-list, the
 * response payload and the decoder's reply.
 *
 * Every response payload is parsed back with the strict parser and compared
 * member by member (and its set of keys checked), never by string compare
 * alone, so a payload that is not valid JSON, or has a member too many or too
 * few, fails.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testutil.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "race2mqtt/command.h"
#include "race2mqtt/jsonutil.h"

/* ---- helpers ----------------------------------------------------------- */

/* Parses body[0..len) and expects success; the command must equal want. */
static void parse_ok_n(const char *body, size_t len, const char *want, const char *want_tx)
{
    struct command_request req;
    char err[256] = "untouched";
    int rc = command_parse(body, len, &req, err, sizeof err);
    if (rc != 0)
        fail_msg("command_parse refused %.120s: %s", body, err);
    assert_string_equal(req.command, want);
    if (want_tx) {
        if (!req.transaction)
            fail_msg("transaction missing for %.120s", body);
        assert_string_equal(req.transaction, want_tx);
    } else if (req.transaction) {
        fail_msg("unexpected transaction %s for %.120s", req.transaction, body);
    }
    command_request_cleanup(&req);
    assert_null(req.transaction);
}

static void parse_ok(const char *body, const char *want, const char *want_tx)
{
    parse_ok_n(body, strlen(body), want, want_tx);
}

/* Parses body[0..len) and expects a refusal whose reason contains reason
 * (may be NULL); returns nothing, checks the transaction kept (want_tx). */
static void parse_fail_n(const char *body, size_t len, const char *reason, const char *want_tx)
{
    struct command_request req;
    char err[256] = "";
    int rc = command_parse(body, len, &req, err, sizeof err);
    if (rc == 0)
        fail_msg("command_parse accepted %.120s as \"%s\"", body, req.command);
    assert_int_equal(rc, -1);
    if (err[0] == '\0')
        fail_msg("no reason for refusing %.120s", body);
    assert_true(strlen(err) < sizeof err);
    if (reason && !strstr(err, reason))
        fail_msg("reason for refusing %.120s is \"%s\", want it to mention \"%s\"", body, err,
                 reason);
    if (want_tx) {
        if (!req.transaction)
            fail_msg("transaction not kept when refusing %.120s", body);
        assert_string_equal(req.transaction, want_tx);
    }
    command_request_cleanup(&req);
    assert_null(req.transaction);
}

static void parse_fail(const char *body, const char *reason)
{
    parse_fail_n(body, strlen(body), reason, NULL);
}

/* A strictly parsed response payload (the caller puts it). */
static struct json_object *response_of(const struct command_result *r)
{
    size_t len = 0;
    char *text = command_response(r, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    struct json_object *o = NULL;
    char detail[128] = "";
    if (jsonutil_parse(text, len, NULL, 0, 64, &o, detail, sizeof detail) != JSONUTIL_OK)
        fail_msg("response is not strict JSON (%s): %.300s", detail, text);
    if (!json_object_is_type(o, json_type_object))
        fail_msg("response is not an object: %.300s", text);
    free(text);
    return o;
}

static bool has(struct json_object *o, const char *key)
{
    return json_object_object_get_ex(o, key, NULL);
}

static void assert_str_member(struct json_object *o, const char *key, const char *want)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_string))
        fail_msg("%s is not a string in %s", key, json_object_to_json_string(o));
    assert_int_equal(json_object_get_string_len(v), strlen(want));
    assert_string_equal(json_object_get_string(v), want);
}

static void assert_null_member(struct json_object *o, const char *key)
{
    struct json_object *v = test_member(o, key);
    if (v)
        fail_msg("%s should be null, is %s", key, json_object_to_json_string(v));
}

static void assert_int_member(struct json_object *o, const char *key, int64_t want)
{
    struct json_object *v = test_member(o, key);
    if (!json_object_is_type(v, json_type_int))
        fail_msg("%s is not an integer in %s", key, json_object_to_json_string(o));
    assert_int_equal(json_object_get_int64(v), want);
}

static void assert_keys(struct json_object *o, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        test_member(o, keys[i]);
    if ((size_t)json_object_object_length(o) != n)
        fail_msg("want %zu members, got %d: %s", n, json_object_object_length(o),
                 json_object_to_json_string(o));
}

/* The JSON value text parsed strictly (NULL for null; caller puts). */
static struct json_object *value_of(const char *text)
{
    struct json_object *o = NULL;
    char detail[128] = "";
    if (jsonutil_parse(text, strlen(text), NULL, 0, 64, &o, detail, sizeof detail) != JSONUTIL_OK)
        fail_msg("not strict JSON (%s): %.200s", detail, text);
    return o;
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* ---- command_parse: plain text ------------------------------------------ */

static void test_plain(void **state)
{
    (void)state;
    parse_ok("GETSTATUS", "GETSTATUS", NULL);
    parse_ok("getstatus", "getstatus", NULL); /* kept as sent: the decoder decides */
    parse_ok("SETTIME;12:00:00", "SETTIME;12:00:00", NULL);
    parse_ok("PASSINGS 1 10", "PASSINGS 1 10", NULL);
    parse_ok("TIMINGMODE=1", "TIMINGMODE=1", NULL);
    parse_ok("a&b+c%20d=e;f g?h#i/j\\k\"l'm<n>~", "a&b+c%20d=e;f g?h#i/j\\k\"l'm<n>~", NULL);
    parse_ok("[1]", "[1]", NULL); /* not an object: plain text */
    parse_ok("\"GETSTATUS\"", "\"GETSTATUS\"", NULL);
    parse_ok("GETSTATUS}", "GETSTATUS}", NULL);
    /* Only len bytes count: the body is not NUL-terminated. */
    parse_ok_n("GETSTATUSXYZ", 9, "GETSTATUS", NULL);
    /* Every printable ASCII character. */
    char all[0x7f - 0x20 + 1];
    for (int c = 0x20; c < 0x7f; c++)
        all[c - 0x20] = (char)c;
    all[0x7f - 0x20] = '\0';
    parse_ok(all, all + 1, NULL); /* the leading space is trimmed */
}

static void test_plain_trim(void **state)
{
    (void)state;
    parse_ok("  GETSTATUS  ", "GETSTATUS", NULL);
    parse_ok("\tGETSTATUS\r\n", "GETSTATUS", NULL);
    parse_ok("\r\n\t GETINFO \t\r\n", "GETINFO", NULL);
    parse_ok(" PASSINGS 1 10 ", "PASSINGS 1 10", NULL); /* inner spaces stay */
    parse_ok("GET  STATUS", "GET  STATUS", NULL);
}

/* ---- command_parse: JSON ------------------------------------------------ */

static void test_json(void **state)
{
    (void)state;
    parse_ok("{\"command\":\"GETSTATUS\"}", "GETSTATUS", NULL);
    parse_ok("{\"command\": \"GETSTATUS\", \"transaction\": 7}", "GETSTATUS", "7");
    parse_ok("{\"transaction\":\"t-1\",\"command\":\"GETINFO\"}", "GETINFO", "\"t-1\"");
    parse_ok("  \r\n\t{\"command\":\"GETSTATUS\"}  \n", "GETSTATUS", NULL);
    parse_ok("{\"command\":\"  GETSTATUS \\t\\r\\n\"}", "GETSTATUS", NULL);
    parse_ok("{\"command\":\"SETTIME;12:00:00 x=1 &+%\"}", "SETTIME;12:00:00 x=1 &+%", NULL);
    /* Escapes inside the command are decoded. */
    parse_ok("{\"command\":\"GET\\u0053TATUS \\\"q\\\" \\\\ \\/\"}", "GETSTATUS \"q\" \\ /", NULL);
    /* Other members are ignored. */
    parse_ok("{\"command\":\"GETSTATUS\",\"device\":\"X\",\"extra\":[1,2]}", "GETSTATUS", NULL);
    parse_ok_n("{\"command\":\"GETSTATUS\"}garbage", 23, "GETSTATUS", NULL);
}

/* Every JSON type as transaction, kept as (plain) JSON text. */
static void test_transaction_types(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"7", "7"},
        {"-3", "-3"},
        {"0", "0"},
        {"1.5", "1.5"},
        {"1.50", "1.50"},
        {"-0.25e+3", "-0.25e+3"},
        {"1E3", "1E3"},
        {"9223372036854775807", "9223372036854775807"},
        {"-9223372036854775808", "-9223372036854775808"},
        {"18446744073709551615", "18446744073709551615"},
        {"\"abc\"", "\"abc\""},
        {"\"\"", "\"\""},
        {"\"a/b \\\"q\\\" \\\\ \\n \\u0001\"", "\"a/b \\\"q\\\" \\\\ \\n \\u0001\""},
        {"\"\\u00fc \xe2\x82\xac \xf0\x9f\x98\x80\"", "\"\xc3\xbc \xe2\x82\xac \xf0\x9f\x98\x80\""},
        {"\"\\ud800\"", "\"\xef\xbf\xbd\""}, /* lone surrogate: U+FFFD */
        {"true", "true"},
        {"false", "false"},
        {"null", "null"},
        {"[]", "[]"},
        {"{}", "{}"},
        {"[1, \"a\", null, true, {\"b\": [2.5]}]", "[1,\"a\",null,true,{\"b\":[2.5]}]"},
        {"{ \"id\" : 42 , \"nested\" : { \"deep\" : [ [ [ ] ] ] } }",
         "{\"id\":42,\"nested\":{\"deep\":[[[]]]}}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"command\":\"GETSTATUS\",\"transaction\":%s}", cases[i].in);
        struct command_request req;
        char err[256] = "";
        if (command_parse(body, strlen(body), &req, err, sizeof err) != 0)
            fail_msg("refused %s: %s", body, err);
        assert_string_equal(req.command, "GETSTATUS");
        if (!req.transaction)
            fail_msg("transaction %s not kept", cases[i].in);
        if (strcmp(req.transaction, cases[i].want) != 0)
            fail_msg("transaction %s kept as %s, want %s", cases[i].in, req.transaction,
                     cases[i].want);

        /* Echoed as a JSON value (not a string holding JSON), equal to the input. */
        struct command_result r = {.ok = true,
                                   .device = "D-1",
                                   .command = req.command,
                                   .response = "OK",
                                   .http_status = 200,
                                   .transaction = req.transaction};
        struct json_object *o = response_of(&r);
        struct json_object *tx = test_member(o, "transaction");
        struct json_object *want = value_of(cases[i].in);
        if (!json_object_equal(tx, want))
            fail_msg("transaction %s echoed as %s", cases[i].in,
                     tx ? json_object_to_json_string(tx) : "null");
        if (want && json_object_is_type(want, json_type_double))
            assert_string_equal(json_object_to_json_string_ext(tx, JSON_C_TO_STRING_PLAIN),
                                cases[i].want);
        json_object_put(want);
        json_object_put(o);
        command_request_cleanup(&req);
    }
}

/* A null transaction is there (echoed as null); an absent one is not. */
static void test_transaction_null_vs_absent(void **state)
{
    (void)state;
    parse_ok("{\"command\":\"GETSTATUS\",\"transaction\":null}", "GETSTATUS", "null");
    parse_ok("{\"command\":\"GETSTATUS\"}", "GETSTATUS", NULL);

    struct command_result r = {.ok = true,
                               .device = "D-1",
                               .command = "GETSTATUS",
                               .response = "OK",
                               .http_status = 200,
                               .transaction = "null"};
    struct json_object *o = response_of(&r);
    assert_true(has(o, "transaction"));
    assert_null_member(o, "transaction");
    json_object_put(o);

    r.transaction = NULL;
    o = response_of(&r);
    assert_false(has(o, "transaction"));
    json_object_put(o);
}

static void test_transaction_size(void **state)
{
    (void)state;
    /* "x...x" with quotes: exactly COMMAND_TRANSACTION_MAX bytes of JSON text. */
    char *s = repeat('x', COMMAND_TRANSACTION_MAX - 2);
    char *body = malloc(COMMAND_TRANSACTION_MAX + 100);
    char *want = malloc(COMMAND_TRANSACTION_MAX + 1);
    assert_non_null(body);
    assert_non_null(want);
    snprintf(want, COMMAND_TRANSACTION_MAX + 1, "\"%s\"", s);
    assert_int_equal(strlen(want), COMMAND_TRANSACTION_MAX);
    sprintf(body, "{\"command\":\"GETSTATUS\",\"transaction\":%s}", want);
    parse_ok(body, "GETSTATUS", want);
    sprintf(body, "{\"command\":\"GETSTATUS\",\"transaction\":\"%sx\"}", s);
    parse_fail(body, "transaction");
    /* Measured as the JSON text we echo, not as sent: whitespace does not count. */
    sprintf(body, "{\"command\":\"GETSTATUS\",\"transaction\":  [ 1 ,\n 2 ] }");
    parse_ok(body, "GETSTATUS", "[1,2]");
    free(s);
    free(body);
    free(want);
}

static void test_transaction_nested(void **state)
{
    (void)state;
    /* The request object is level 1: 15 more levels are allowed (16 in all).
     * (jsonutil admits one level more when the innermost container is empty:
     * 17 levels of "[[...]]" pass; not asserted here.) */
    char body[512], tx[64];
    int n = 15;
    char *p = tx;
    for (int i = 0; i < n; i++)
        *p++ = '[';
    *p++ = '1';
    for (int i = 0; i < n; i++)
        *p++ = ']';
    *p = '\0';
    snprintf(body, sizeof body, "{\"command\":\"GETSTATUS\",\"transaction\":%s}", tx);
    parse_ok(body, "GETSTATUS", tx);
    /* One more level is refused. */
    snprintf(body, sizeof body, "{\"command\":\"GETSTATUS\",\"transaction\":[%s]}", tx);
    parse_fail(body, "deeper");
    snprintf(body, sizeof body, "{\"command\":\"GETSTATUS\",\"transaction\":{\"a\":%s}}", tx);
    parse_fail(body, "deeper");
    /* Mixed objects and arrays. */
    parse_ok("{\"command\":\"X\",\"transaction\":{\"a\":[{\"b\":{\"c\":[null,{}]}}]}}", "X",
             "{\"a\":[{\"b\":{\"c\":[null,{}]}}]}");
}

static void test_missing_or_bad_command(void **state)
{
    (void)state;
    parse_fail("{}", "command");
    parse_fail("{\"transaction\":1}", "command");
    parse_fail("{\"Command\":\"GETSTATUS\"}", "command"); /* member names are exact */
    parse_fail("{\"command\":5}", "command");
    parse_fail("{\"command\":null}", "command");
    parse_fail("{\"command\":true}", "command");
    parse_fail("{\"command\":[\"GETSTATUS\"]}", "command");
    parse_fail("{\"command\":{\"command\":\"GETSTATUS\"}}", "command");
    /* The transaction is kept so that the error response can echo it. */
    const char *b = "{\"transaction\":{\"id\":9},\"command\":42}";
    parse_fail_n(b, strlen(b), "command", "{\"id\":9}");
    b = "{\"transaction\":\"t\"}";
    parse_fail_n(b, strlen(b), "command", "\"t\"");
    b = "{\"transaction\":[1],\"command\":\"\\u0007\"}";
    parse_fail_n(b, strlen(b), NULL, "[1]");
}

static void test_empty(void **state)
{
    (void)state;
    parse_fail_n("", 0, "empty", NULL);
    parse_fail_n(NULL, 0, "empty", NULL); /* an MQTT message without payload */
    parse_fail("   ", "empty");
    parse_fail("\r\n\t ", "empty");
    parse_fail("{\"command\":\"\"}", "empty");
    parse_fail("{\"command\":\" \\t\\r\\n \"}", "empty");
}

static void test_length(void **state)
{
    (void)state;
    char *max = repeat('A', COMMAND_MAX);
    char *over = repeat('A', COMMAND_MAX + 1);
    char body[COMMAND_MAX + 64];

    parse_ok(max, max, NULL);
    parse_fail(over, "longer");
    snprintf(body, sizeof body, "  %s \r\n", max); /* trimmed first */
    parse_ok(body, max, NULL);
    snprintf(body, sizeof body, "{\"command\":\"%s\"}", max);
    parse_ok(body, max, NULL);
    snprintf(body, sizeof body, "{\"command\":\"%s\"}", over);
    parse_fail(body, "longer");
    snprintf(body, sizeof body, "{\"command\":\" %s \"}", max);
    parse_ok(body, max, NULL);
    /* \u0041 is one byte of command, six of JSON. */
    char *esc = malloc(COMMAND_MAX * 6 + 32);
    assert_non_null(esc);
    strcpy(esc, "{\"command\":\"");
    for (int i = 0; i < COMMAND_MAX; i++)
        strcat(esc, "\\u0041");
    strcat(esc, "\"}");
    parse_ok(esc, max, NULL);
    /* A big body, far over the limit, is refused without trouble. */
    char *huge = repeat('B', 1 << 20);
    parse_fail(huge, "longer");
    free(huge);
    free(esc);
    free(max);
    free(over);
}

static void test_control_and_non_ascii(void **state)
{
    (void)state;
    static const char *const plain[] = {
        "GET\x01STATUS",     "GET\nSTATUS",     "GET\rSTATUS",      "GET\tSTATUS",
        "GETSTATUS\x1b[0m",  "GETSTATUS\x7f",   "GETSTATUS\x80",    "GETSTATUS\xff",
        "GET\xc3\xbcSTATUS", "GET\xe2\x82\xac", "\xf0\x9f\x98\x80",
    };
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++)
        parse_fail(plain[i], "character");
    /* A NUL byte inside the body, plain and JSON. */
    parse_fail_n("GET\0STATUS", 10, NULL, NULL);
    parse_fail_n("GETSTATUS\0", 10, NULL, NULL);
    parse_fail_n("{\"command\":\"GETSTATUS\"}\0", 24, NULL, NULL);
    parse_fail_n("{\"command\":\"GET\0STATUS\"}", 24, NULL, NULL);

    static const char *const json[] = {
        "{\"command\":\"GET\\u0000STATUS\"}",  "{\"command\":\"GETSTATUS\\u0000\"}",
        "{\"command\":\"GET\\nSTATUS\"}",      "{\"command\":\"GET\\u001bSTATUS\"}",
        "{\"command\":\"GET\\u007fSTATUS\"}",  "{\"command\":\"GET\\u00fcSTATUS\"}",
        "{\"command\":\"GET\xc3\xbcSTATUS\"}", "{\"command\":\"\\ud83d\\ude00\"}",
        "{\"command\":\"GET\\tSTATUS\"}",
    };
    for (size_t i = 0; i < sizeof json / sizeof json[0]; i++)
        parse_fail(json[i], NULL);
    /* Raw control characters inside the JSON string (json-c tolerates them). */
    parse_fail("{\"command\":\"GET\x01STATUS\"}", NULL);
    parse_fail("{\"command\":\"GET\nSTATUS\"}", NULL);
}

static void test_hostile_json(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{",
        "{\"command\"",
        "{\"command\":",
        "{\"command\":\"GETSTATUS",
        "{\"command\":\"GETSTATUS\"",
        "{\"command\":\"GETSTATUS\",",
        "{\"command\":\"GETSTATUS\"}}",
        "{\"command\":\"GETSTATUS\"} x",
        "{\"command\":\"GETSTATUS\"}{}",
        "{\"command\":\"GETSTATUS\"},",
        "{command:\"GETSTATUS\"}",
        "{'command':'GETSTATUS'}",
        "{'command':\"GETSTATUS\"}",
        "{\"command\":'GETSTATUS'}",
        "{\"command\":\"GETSTATUS\",}",
        "{\"command\":\"GETSTATUS\" \"transaction\":1}",
        "{\"command\":\"GETSTATUS\",\"transaction\":NaN}",
        "{\"command\":\"GETSTATUS\",\"transaction\":Infinity}",
        "{\"command\":\"GETSTATUS\",\"transaction\":-Infinity}",
        "{\"command\":\"GETSTATUS\",\"transaction\":1.}",
        "{\"command\":\"GETSTATUS\",\"transaction\":-.5}",
        "{\"command\":\"GETSTATUS\",\"transaction\":01}",
        "{\"command\":\"GETSTATUS\",\"transaction\":+1}",
        "{\"command\":\"GETSTATUS\",\"transaction\":0x10}",
        "{\"command\":\"GETSTATUS\",\"transaction\":[1,]}",
        "{\"command\":\"GETSTATUS\",\"transaction\":undefined}",
        "{\"command\":\"GETSTATUS\",\"transaction\":\"\\x41\"}",
        "{\"command\":\"GETSTATUS\" /* c */}",
        /* invalid UTF-8: truncated, overlong, surrogate, above U+10FFFF, lone continuation */
        "{\"command\":\"GETSTATUS\",\"transaction\":\"\xc3\"}",
        "{\"command\":\"GETSTATUS\",\"transaction\":\"\xc0\xaf\"}",
        "{\"command\":\"GETSTATUS\",\"transaction\":\"\xe0\x80\xaf\"}",
        "{\"command\":\"GETSTATUS\",\"transaction\":\"\xed\xa0\x80\"}",
        "{\"command\":\"GETSTATUS\",\"transaction\":\"\xf4\x90\x80\x80\"}",
        "{\"command\":\"GETSTATUS\",\"transaction\":\"\x80\"}",
        "{\"command\":\"GETSTATUS\",\"transaction\":\"\xff\"}",
        "{\"command\":\"GETSTATUS\",\"\xc3\x28\":1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct command_request req;
        char err[256] = "";
        int rc = command_parse(bad[i], strlen(bad[i]), &req, err, sizeof err);
        if (rc == 0)
            fail_msg("accepted hostile request %s (command %s, transaction %s)", bad[i],
                     req.command, req.transaction ? req.transaction : "-");
        if (err[0] == '\0')
            fail_msg("no reason for refusing %s", bad[i]);
        command_request_cleanup(&req);
    }

    /* Very deep nesting: refused, no stack overflow. */
    size_t depth = 100000;
    char *deep = malloc(depth * 2 + 64);
    assert_non_null(deep);
    strcpy(deep, "{\"command\":\"GETSTATUS\",\"transaction\":");
    size_t off = strlen(deep);
    memset(deep + off, '[', depth);
    memset(deep + off + depth, ']', depth);
    strcpy(deep + off + 2 * depth, "}");
    parse_fail(deep, "deeper");
    /* Unclosed. */
    deep[off + depth] = '\0';
    parse_fail(deep, NULL);
    /* Deep objects in place of the command. */
    strcpy(deep, "{\"command\":");
    off = strlen(deep);
    for (size_t i = 0; i < 1000; i++)
        memcpy(deep + off + 5 * i, "{\"a\":", 5);
    deep[off + 5000] = '\0';
    parse_fail(deep, NULL);
    free(deep);

    /* A short error buffer is filled, bounded and terminated. */
    struct command_request req;
    char small[8];
    memset(small, 'Z', sizeof small);
    assert_int_equal(command_parse("{", 1, &req, small, sizeof small), -1);
    assert_int_equal(strlen(small), sizeof small - 1);
    command_request_cleanup(&req);
    memset(small, 'Z', sizeof small);
    assert_int_equal(command_parse("", 0, &req, small, sizeof small), -1);
    assert_true(strlen(small) < sizeof small);
    command_request_cleanup(&req);
}

/* The reason never echoes the request (it goes to logs and to MQTT). */
static void test_reason_does_not_echo(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "{\"command\":\"SECRET-42\",\"transaction\":NaN}",
        "{\"command\":SECRET-42}",
        "{\"command\":\"SECRET-42\x01\"}",
        "SECRET-42\x01",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        struct command_request req;
        char err[256] = "";
        assert_int_equal(command_parse(bodies[i], strlen(bodies[i]), &req, err, sizeof err), -1);
        if (strstr(err, "SECRET"))
            fail_msg("reason echoes the request: %s", err);
        command_request_cleanup(&req);
    }
}

/* ---- command_name -------------------------------------------------------- */

static void name_is(const char *command, const char *want)
{
    char name[COMMAND_MAX + 1];
    memset(name, 'Z', sizeof name);
    command_name(command, name, sizeof name);
    assert_string_equal(name, want);
}

static void test_command_name(void **state)
{
    (void)state;
    name_is("GETSTATUS", "GETSTATUS");
    name_is("getstatus", "GETSTATUS");
    name_is("GetStatus", "GETSTATUS");
    name_is("SETTIME;12:00:00", "SETTIME");
    name_is("settime;12:00:00", "SETTIME");
    name_is("PASSINGS 1 10", "PASSINGS");
    name_is("TIMINGMODE=1", "TIMINGMODE");
    name_is("a b;c=d", "A");
    name_is("x=1;y z", "X");
    name_is("GETSTATUS;", "GETSTATUS");
    name_is(";GETSTATUS", "");
    name_is(" GETSTATUS", "");
    name_is("=GETSTATUS", "");
    name_is("", "");
    /* Characters that are not separators stay in the name. */
    name_is("GETSTATUS,CLEARFILES", "GETSTATUS,CLEARFILES");
    name_is("GETSTATUS&command=CLEARFILES", "GETSTATUS&COMMAND");
    name_is("GET-STATUS_1.x", "GET-STATUS_1.X");

    /* Bounded by cap and always terminated. */
    char small[4];
    memset(small, 'Z', sizeof small);
    command_name("GETSTATUS", small, sizeof small);
    assert_string_equal(small, "GET");
    char one[1] = {'Z'};
    command_name("GETSTATUS", one, sizeof one);
    assert_int_equal(one[0], '\0');
    char *max = repeat('q', COMMAND_MAX);
    char name[COMMAND_MAX + 1];
    command_name(max, name, sizeof name);
    assert_int_equal(strlen(name), COMMAND_MAX);
    assert_int_equal(name[0], 'Q');
    free(max);
}

/* ---- command_allowed ----------------------------------------------------- */

#define SAFE                                                                                       \
    "GETSTATUS,GETINFO,GETTIME,GETPROTOCOL,GETFILENO,PASSINGS,GETPASSINGCOUNT,"                    \
    "STARTOPERATION,STOPOPERATION,STARTUPLOAD,STOPUPLOAD,SETGPSTIME"

static void test_command_allowed(void **state)
{
    (void)state;
    assert_true(command_allowed("GETSTATUS", SAFE));
    assert_true(command_allowed("getstatus", SAFE));
    assert_true(command_allowed("GetStatus", SAFE));
    assert_true(command_allowed("SETGPSTIME", SAFE)); /* the last one */
    assert_true(command_allowed("PASSINGS 1 10", SAFE));
    assert_true(command_allowed("PASSINGS;1;10", SAFE));
    assert_true(command_allowed("GETINFO=1", SAFE));
    assert_true(command_allowed("GETSTATUS;CLEARFILES", SAFE)); /* CLEARFILES is a parameter */
    assert_false(command_allowed("CLEARFILES", SAFE));
    assert_false(command_allowed("clearfiles", SAFE));
    assert_false(command_allowed("NEWFILE", SAFE));
    assert_false(command_allowed("CLEARFILES;GETSTATUS", SAFE));
    assert_false(command_allowed("CLEARFILES GETSTATUS", SAFE));
    assert_false(command_allowed("CLEARFILES=GETSTATUS", SAFE));

    /* Prefix, suffix and substring attacks. */
    assert_false(command_allowed("GETSTATUSX", SAFE));
    assert_false(command_allowed("GETSTATUS_CLEARFILES", SAFE));
    assert_false(command_allowed("GETSTATUS,CLEARFILES", SAFE));
    assert_false(command_allowed("GETSTATUS&command=CLEARFILES", SAFE));
    assert_false(command_allowed("GET", SAFE));
    assert_false(command_allowed("GETSTATU", SAFE));
    assert_false(command_allowed("STATUS", SAFE));
    assert_false(command_allowed("G", SAFE));
    assert_false(command_allowed("GETSTATUS,GETINFO", SAFE)); /* a list is not a name */
    assert_false(command_allowed("TIME", SAFE));
    assert_false(command_allowed("OPERATION", SAFE));
    assert_false(command_allowed("", SAFE));
    assert_false(command_allowed(";", SAFE));
    assert_false(command_allowed(";GETSTATUS", SAFE));
    assert_false(command_allowed(" GETSTATUS", SAFE)); /* parse trims; a name starts at 0 */
    assert_false(command_allowed("=GETSTATUS", SAFE));
    assert_false(command_allowed("*", SAFE));
    /* No wildcards: "*" in the list is only the literal name "*". */
    assert_false(command_allowed("GETSTATUS", "*"));
    assert_false(command_allowed("GETSTATUS", "GET*"));
    assert_false(command_allowed("GETSTATUS", ".*"));

    /* The list: any case, spaces around names, empty entries. */
    assert_true(command_allowed("GETSTATUS", "getstatus"));
    assert_true(command_allowed("getinfo", " GETSTATUS , GetInfo ,PASSINGS "));
    assert_true(command_allowed("PASSINGS", " GETSTATUS , GetInfo ,PASSINGS "));
    assert_true(command_allowed("GETSTATUS", " GETSTATUS , GetInfo ,PASSINGS "));
    assert_true(command_allowed("GETINFO", ",,GETINFO,,"));
    assert_true(command_allowed("GETINFO", "GETINFO,"));
    assert_true(command_allowed("GETINFO", ",GETINFO"));
    assert_false(command_allowed("GET INFO", "GET INFO")); /* the name is GET */
    assert_true(command_allowed("GET INFO", "GET"));
    assert_false(command_allowed("GETINFO", "GETINFO2,XGETINFO,GETINF"));
    assert_false(command_allowed("GETSTATUS", "GETSTATUSX"));
    assert_false(command_allowed("GETSTATUS", "GETSTATUS;X"));

    /* Empty and missing lists allow nothing. */
    assert_false(command_allowed("GETSTATUS", ""));
    assert_false(command_allowed("GETSTATUS", NULL));
    assert_false(command_allowed("GETSTATUS", ","));
    assert_false(command_allowed("GETSTATUS", " , , "));
    assert_false(command_allowed("", ""));
    assert_false(command_allowed("", ","));
    assert_false(command_allowed(";", ","));

    /* A long name does not overflow and does not match a prefix. */
    char *max = repeat('G', COMMAND_MAX);
    assert_false(command_allowed(max, "G,GG,GGG"));
    char list[COMMAND_MAX + 8];
    snprintf(list, sizeof list, "X,%s", max);
    assert_true(command_allowed(max, list));
    free(max);
}

/* ---- command_response ---------------------------------------------------- */

static void test_response_ok(void **state)
{
    (void)state;
    struct command_result r = {.ok = true,
                               .device = "D-1",
                               .command = "GETSTATUS",
                               .response = "STATUS;1;2",
                               .http_status = 200,
                               .transaction = "{\"id\":7}"};
    struct json_object *o = response_of(&r);
    static const char *const keys[] = {"status",   "device",      "command",
                                       "response", "http_status", "transaction"};
    assert_keys(o, keys, 6);
    assert_str_member(o, "status", "ok");
    assert_str_member(o, "device", "D-1");
    assert_str_member(o, "command", "GETSTATUS");
    assert_str_member(o, "response", "STATUS;1;2");
    assert_int_member(o, "http_status", 200);
    struct json_object *tx = test_member(o, "transaction");
    assert_true(json_object_is_type(tx, json_type_object));
    struct json_object *id = test_member(tx, "id");
    assert_int_equal(json_object_get_int64(id), 7);
    json_object_put(o);

    /* No transaction: no member; an empty reply stays an empty string. */
    r.transaction = NULL;
    r.response = "";
    o = response_of(&r);
    static const char *const keys5[] = {"status", "device", "command", "response", "http_status"};
    assert_keys(o, keys5, 5);
    assert_str_member(o, "response", "");
    json_object_put(o);

    /* len may be NULL. */
    char *text = command_response(&r, NULL);
    assert_non_null(text);
    free(text);
}

static void test_response_error(void **state)
{
    (void)state;
    /* Refused before the API was called: response null, http_status 0. */
    struct command_result r = {.ok = false,
                               .device = "D-1",
                               .command = "CLEARFILES",
                               .error = "command CLEARFILES is not allowed"};
    struct json_object *o = response_of(&r);
    static const char *const keys[] = {"status",   "device",      "command",
                                       "response", "http_status", "error"};
    assert_keys(o, keys, 6);
    assert_str_member(o, "status", "error");
    assert_str_member(o, "command", "CLEARFILES");
    assert_null_member(o, "response");
    assert_int_member(o, "http_status", 0);
    assert_str_member(o, "error", "command CLEARFILES is not allowed");
    json_object_put(o);

    /* No command (unparsable request), a transaction to echo. */
    r.command = NULL;
    r.error = "\"command\" missing or not a string";
    r.transaction = "[1,\"two\"]";
    o = response_of(&r);
    static const char *const keys7[] = {"status",      "device", "command",    "response",
                                        "http_status", "error",  "transaction"};
    assert_keys(o, keys7, 7);
    assert_null_member(o, "command");
    assert_str_member(o, "error", "\"command\" missing or not a string");
    struct json_object *tx = test_member(o, "transaction");
    assert_true(json_object_is_type(tx, json_type_array));
    assert_int_equal(json_object_array_length(tx), 2);
    json_object_put(o);

    /* The API answered 500: its reply and status are there too. */
    struct command_result e = {.ok = false,
                               .device = "D-1",
                               .command = "GETSTATUS",
                               .response = "{\"Message\":\"boom\"}",
                               .http_status = 500,
                               .error = "the API answered HTTP 500"};
    o = response_of(&e);
    assert_str_member(o, "status", "error");
    assert_str_member(o, "response", "{\"Message\":\"boom\"}");
    assert_int_member(o, "http_status", 500);
    assert_str_member(o, "error", "the API answered HTTP 500");
    json_object_put(o);

    /* An error without text still says something. */
    struct command_result n = {.ok = false, .device = "D-1"};
    o = response_of(&n);
    struct json_object *err = test_member(o, "error");
    assert_true(json_object_is_type(err, json_type_string));
    assert_true(json_object_get_string_len(err) > 0);
    json_object_put(o);

    /* An ok result has no error member even when error is set. */
    struct command_result k = {.ok = true,
                               .device = "D-1",
                               .command = "GETSTATUS",
                               .response = "x",
                               .http_status = 200,
                               .error = "stale"};
    o = response_of(&k);
    assert_false(has(o, "error"));
    json_object_put(o);

    /* device NULL -> "" rather than a crash. */
    struct command_result d = {
        .ok = true, .command = "GETSTATUS", .response = "x", .http_status = 200};
    o = response_of(&d);
    assert_str_member(o, "device", "");
    json_object_put(o);
}

/* Strings with quotes, backslashes, control characters and Unicode are
 * escaped so that the payload parses back to the same text. */
static void test_response_escaping(void **state)
{
    (void)state;
    const char *resp = "line1\r\nline2\t\"q\" \\ / \x01\x1f \xc3\xbc \xe2\x82\xac "
                       "\xf0\x9f\x98\x80 </script>";
    struct command_result r = {.ok = true,
                               .device = "D \"1\"\\/",
                               .command = "A;B \"c\" \\d/e",
                               .response = resp,
                               .http_status = 200,
                               .transaction = "\"</tx> \\\" \\u0001\""};
    struct json_object *o = response_of(&r);
    assert_str_member(o, "device", "D \"1\"\\/");
    assert_str_member(o, "command", "A;B \"c\" \\d/e");
    assert_str_member(o, "response", resp);
    assert_str_member(o, "transaction", "</tx> \" \x01");
    json_object_put(o);
}

/* The decoder's reply comes from outside: whatever bytes it holds, the
 * response must still be strict JSON (UTF-8) for subscribers. */
static void test_response_reply_not_utf8(void **state)
{
    (void)state;
    static const char *const replies[] = {"caf\xe9", "\xff\xfe", "\xc0\xaf", "\xed\xa0\x80",
                                          "ok\x80"};
    for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++) {
        struct command_result r = {.ok = false,
                                   .device = "D-1",
                                   .command = "GETSTATUS",
                                   .response = replies[i],
                                   .http_status = 500,
                                   .error = "the API answered HTTP 500"};
        size_t len = 0;
        char *text = command_response(&r, &len);
        assert_non_null(text);
        struct json_object *o = NULL;
        char detail[128] = "";
        enum jsonutil_error rc = jsonutil_parse(text, len, NULL, 0, 8, &o, detail, sizeof detail);
        char shown[256];
        snprintf(shown, sizeof shown, "%s", text);
        json_object_put(o);
        free(text);
        if (rc != JSONUTIL_OK)
            fail_msg("reply %zu with invalid UTF-8 makes a response that is not strict JSON "
                     "(%s): %s",
                     i, detail, shown);
    }
}

/* ---- command_reply ------------------------------------------------------- */

static void reply_is_n(const char *body, size_t len, const char *want)
{
    char *r = command_reply(body, len);
    assert_non_null(r);
    assert_string_equal(r, want);
    free(r);
}

static void reply_is(const char *body, const char *want)
{
    reply_is_n(body, strlen(body), want);
}

static void test_command_reply(void **state)
{
    (void)state;
    reply_is("{\"Response\":\"STATUS;1;2\"}", "STATUS;1;2");
    reply_is("{\"Response\": \"\"}", "");
    reply_is(" {\"Response\":\"x\"} \r\n", "x");
    reply_is("{\"Response\":\"a\\r\\nb\\t\\\"q\\\" \\u00fc \\/\"}", "a\r\nb\t\"q\" \xc3\xbc /");
    reply_is("{\"Other\":1,\"Response\":\"x\",\"More\":[1]}", "x");
    /* Not that shape: the whole body. */
    reply_is("{\"Response\":5}", "{\"Response\":5}");
    reply_is("{\"Response\":null}", "{\"Response\":null}");
    reply_is("{\"Response\":[\"x\"]}", "{\"Response\":[\"x\"]}");
    reply_is("{\"response\":\"x\"}", "{\"response\":\"x\"}");
    reply_is("{\"Message\":\"device not found\"}", "{\"Message\":\"device not found\"}");
    reply_is("[\"Response\",\"x\"]", "[\"Response\",\"x\"]");
    reply_is("\"x\"", "\"x\"");
    reply_is("OK", "OK");
    reply_is("", "");
    reply_is("{\"Response\":\"x\"", "{\"Response\":\"x\"");     /* truncated */
    reply_is("{\"Response\":\"x\"}}", "{\"Response\":\"x\"}}"); /* trailing garbage */
    reply_is("{'Response':'x'}", "{'Response':'x'}");
    /* Only len bytes count. */
    reply_is_n("{\"Response\":\"x\"}JUNK", 16, "x");
    reply_is_n("OKJUNK", 2, "OK");
    reply_is_n("", 0, "");
    /* Deeply nested bodies do not hurt. */
    size_t depth = 50000;
    char *deep = malloc(2 * depth + 1);
    assert_non_null(deep);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[2 * depth] = '\0';
    reply_is(deep, deep);
    free(deep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_plain_trim),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_transaction_types),
        cmocka_unit_test(test_transaction_null_vs_absent),
        cmocka_unit_test(test_transaction_size),
        cmocka_unit_test(test_transaction_nested),
        cmocka_unit_test(test_missing_or_bad_command),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_length),
        cmocka_unit_test(test_control_and_non_ascii),
        cmocka_unit_test(test_hostile_json),
        cmocka_unit_test(test_reason_does_not_echo),
        cmocka_unit_test(test_command_name),
        cmocka_unit_test(test_command_allowed),
        cmocka_unit_test(test_response_ok),
        cmocka_unit_test(test_response_error),
        cmocka_unit_test(test_response_escaping),
        cmocka_unit_test(test_response_reply_not_utf8),
        cmocka_unit_test(test_command_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
