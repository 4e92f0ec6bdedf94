/*
 * command.c - decoder command requests and responses.
 *
 * Wire format in (MQTT payload on <base>/<device>/cmd):
 *   GETSTATUS                                  plain text, the command itself
 *   {"command": "GETSTATUS", "transaction": 7} JSON; transaction is any value
 * Wire format out (<base>/<device>/cmd/response and the MQTT 5 Response Topic):
 *   {"status":"ok","device":"D-1","command":"GETSTATUS","response":"...",
 *    "http_status":200,"transaction":7}
 *
 * The allow-list names commands by their first word: RACE RESULT's decoder
 * protocol separates a command from its parameters with ';' (and some take
 * "NAME=value"), so "SETTIME;12:00:00" is the command SETTIME. Control
 * characters are refused: the command travels in a URL and to a device.
 */
#include "race2mqtt/command.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "race2mqtt/jsonutil.h"

#define REQUEST_MAX_DEPTH 16

static bool printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return false;
    }
    return true;
}

/* Copies s[0..n) trimmed of surrounding spaces into req->command; -1 if unfit. */
static int set_command(struct command_request *req, const char *s, size_t n, char *err,
                       size_t errlen)
{
    while (n > 0 && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    if (n == 0) {
        snprintf(err, errlen, "empty command");
        return -1;
    }
    if (n > COMMAND_MAX) {
        snprintf(err, errlen, "command longer than %d bytes", COMMAND_MAX);
        return -1;
    }
    if (!printable(s, n)) {
        snprintf(err, errlen, "command contains control or non-ASCII characters");
        return -1;
    }
    memcpy(req->command, s, n);
    req->command[n] = '\0';
    return 0;
}

int command_parse(const void *body, size_t len, struct command_request *req, char *err,
                  size_t errlen)
{
    memset(req, 0, sizeof *req);
    const char *text = body;
    size_t start = 0;
    while (start < len && isspace((unsigned char)text[start]))
        start++;
    if (start == len || text[start] != '{')
        return set_command(req, text, len, err, errlen);

    struct json_object *o = NULL, *cmd = NULL, *tx = NULL;
    char detail[160] = "not an object";
    int rc = -1;
    if (jsonutil_parse(text, len, NULL, 0, REQUEST_MAX_DEPTH, &o, detail, sizeof detail) !=
            JSONUTIL_OK ||
        !json_object_is_type(o, json_type_object)) {
        snprintf(err, errlen, "request starts like JSON but is not a JSON object (%s)", detail);
        goto out;
    }
    if (json_object_object_get_ex(o, "transaction", &tx)) {
        size_t tlen;
        const char *t = json_object_to_json_string_length(
            tx, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &tlen);
        if (tlen > COMMAND_TRANSACTION_MAX) {
            snprintf(err, errlen, "transaction larger than %d bytes", COMMAND_TRANSACTION_MAX);
            goto out;
        }
        req->transaction = strdup(t);
        if (!req->transaction) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
    }
    if (!json_object_object_get_ex(o, "command", &cmd) ||
        !json_object_is_type(cmd, json_type_string)) {
        snprintf(err, errlen, "\"command\" missing or not a string");
        goto out;
    }
    rc = set_command(req, json_object_get_string(cmd), (size_t)json_object_get_string_len(cmd),
                     err, errlen);
out:
    json_object_put(o);
    return rc;
}

void command_request_cleanup(struct command_request *req)
{
    free(req->transaction);
    req->transaction = NULL;
}

void command_name(const char *command, char *name, size_t cap)
{
    size_t n = strcspn(command, "; =");
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++)
        name[i] = (char)toupper((unsigned char)command[i]);
    name[n] = '\0';
}

bool command_allowed(const char *command, const char *allowed)
{
    char name[COMMAND_MAX + 1];
    command_name(command, name, sizeof name);
    if (!allowed || name[0] == '\0')
        return false;
    size_t n = strlen(name);
    for (const char *s = allowed; *s;) {
        size_t len = strcspn(s, ",");
        const char *a = s;
        size_t alen = len;
        while (alen > 0 && *a == ' ') {
            a++;
            alen--;
        }
        while (alen > 0 && a[alen - 1] == ' ')
            alen--;
        if (alen == n && strncasecmp(a, name, n) == 0)
            return true;
        s += len + (s[len] == ',');
    }
    return false;
}

/*
 * The decoder's reply comes from outside and goes into a JSON string: bytes
 * that are not UTF-8, and NUL, become '?' so that the answer stays strict JSON
 * for every subscriber (an HTML error page from a proxy, say, is often
 * ISO-8859-1).
 */
static char *utf8_text(const char *body, size_t len)
{
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    memcpy(out, body, len);
    out[len] = '\0';
    size_t at = 0;
    while (at < len) {
        size_t bad = at + jsonutil_utf8_check((const unsigned char *)out + at, len - at);
        if (bad >= len)
            break;
        out[bad] = '?';
        at = bad + 1;
    }
    for (size_t i = 0; i < len; i++) {
        if (out[i] == '\0')
            out[i] = '?';
    }
    return out;
}

char *command_response(const struct command_result *r, size_t *len)
{
    struct json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "status", json_object_new_string(r->ok ? "ok" : "error"));
    json_object_object_add(o, "device", json_object_new_string(r->device ? r->device : ""));
    json_object_object_add(o, "command", r->command ? json_object_new_string(r->command) : NULL);
    char *reply = r->response ? utf8_text(r->response, strlen(r->response)) : NULL;
    json_object_object_add(o, "response", reply ? json_object_new_string(reply) : NULL);
    free(reply);
    json_object_object_add(o, "http_status", json_object_new_int64(r->http_status));
    if (!r->ok)
        json_object_object_add(o, "error", json_object_new_string(r->error ? r->error : "error"));
    if (r->transaction) {
        /* The transaction was valid JSON when it came in: parse it back to
         * embed it as a value, not as a string. */
        struct json_object *tx = json_tokener_parse(r->transaction);
        if (tx || strcmp(r->transaction, "null") == 0)
            json_object_object_add(o, "transaction", tx);
    }
    size_t n;
    const char *s = json_object_to_json_string_length(
        o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    char *out = s ? strdup(s) : NULL;
    if (out && len)
        *len = n;
    json_object_put(o);
    return out;
}

char *command_reply(const char *body, size_t len)
{
    struct json_object *o = NULL, *resp = NULL;
    char *out = NULL;
    if (jsonutil_parse(body, len, NULL, 0, REQUEST_MAX_DEPTH, &o, NULL, 0) == JSONUTIL_OK &&
        json_object_is_type(o, json_type_object) &&
        json_object_object_get_ex(o, "Response", &resp) &&
        json_object_is_type(resp, json_type_string))
        out = utf8_text(json_object_get_string(resp), (size_t)json_object_get_string_len(resp));
    else
        out = utf8_text(body, len);
    json_object_put(o);
    return out;
}
