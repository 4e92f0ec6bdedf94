/*
 * recording.c - the race recording: one JSON line per accepted event (the
 * format and why the body is a string: recording.h).
 *
 * Lines are built by json-c, never by hand, so the escaping of quotes,
 * backslashes and control characters is json-c's and reads back with json-c
 * (through jsonutil_parse(), the same strict intake as webhook bodies). A
 * line is assembled in one buffer, newline included, and handed to one
 * write(): with O_APPEND the kernel appends it as a whole, which is what keeps
 * followers and a second recorder on the same file from seeing a torn line.
 */
#include "race2mqtt/recording.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <json-c/json.h>

#include "race2mqtt/jsonutil.h"

#define RECORDING_JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

struct recorder {
    int fd;
};

struct recorder *recorder_open(const char *path, char *err, size_t errlen)
{
    struct recorder *r = malloc(sizeof *r);
    if (!r) {
        snprintf(err, errlen, "recording %s: out of memory", path);
        return NULL;
    }
    r->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (r->fd < 0) {
        snprintf(err, errlen, "cannot open recording %s: %s", path, strerror(errno));
        free(r);
        return NULL;
    }
    return r;
}

void recorder_close(struct recorder *r)
{
    if (!r)
        return;
    close(r->fd);
    free(r);
}

/* The line for one event, '\n' included, in a malloc'd buffer; NULL on no memory. */
static char *recording_line(uint64_t at_ms, const char *body, size_t len, size_t *line_len)
{
    char *line = NULL;
    struct json_object *o = json_object_new_object();
    struct json_object *at = json_object_new_uint64(at_ms);
    struct json_object *b = json_object_new_string_len(body, (int)len);

    if (!o || !at || !b) {
        json_object_put(at);
        json_object_put(b);
        goto out;
    }
    /* Insertion order is print order: at_ms first, so that a human (or grep)
     * sees the time at the start of every line. */
    if (json_object_object_add(o, "at_ms", at) != 0) {
        json_object_put(at);
        json_object_put(b);
        goto out;
    }
    if (json_object_object_add(o, "body", b) != 0) {
        json_object_put(b);
        goto out;
    }
    size_t n;
    const char *s = json_object_to_json_string_length(o, RECORDING_JSON_FLAGS, &n);
    if (!s)
        goto out;
    line = malloc(n + 1);
    if (!line)
        goto out;
    memcpy(line, s, n);
    line[n] = '\n';
    *line_len = n + 1;
out:
    json_object_put(o);
    return line;
}

int recorder_append(struct recorder *r, uint64_t at_ms, const char *body, size_t len)
{
    if (!r || !body || len == 0) {
        errno = EINVAL;
        return -1;
    }
    if (len > RECORDING_MAX_BODY) {
        errno = EMSGSIZE;
        return -1;
    }
    /* json-c copies invalid UTF-8 through unescaped, and the reader's strict
     * intake would then refuse the whole line. */
    if (jsonutil_utf8_check((const unsigned char *)body, len) != len) {
        errno = EILSEQ;
        return -1;
    }
    size_t n = 0;
    char *line = recording_line(at_ms, body, len, &n);
    if (!line) {
        errno = ENOMEM;
        return -1;
    }
    ssize_t w;
    do {
        w = write(r->fd, line, n);
    } while (w < 0 && errno == EINTR);
    int saved = errno;
    free(line);
    if (w < 0) {
        errno = saved;
        return -1;
    }
    if ((size_t)w != n) {
        /* A regular file takes less than asked only when it cannot grow (disk
         * full, file size limit). With O_APPEND the offset is now the end of
         * what was written: cut the partial line off again. */
        off_t end = lseek(r->fd, 0, SEEK_CUR);
        if (end >= (off_t)w && ftruncate(r->fd, end - (off_t)w) != 0) {
            /* Nothing better to do: the reader reports the torn line. */
        }
        errno = ENOSPC;
        return -1;
    }
    return 0;
}

/* A malloc'd NUL-terminated copy of s[0..n). */
static char *recording_dup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

int recording_parse_line(const char *line, size_t len, uint64_t *at_ms, char **body,
                         size_t *body_len, const char **why)
{
    struct json_object *root = NULL, *v = NULL;
    const char *s = NULL;
    size_t n = 0;
    int rc = -1;

    *body = NULL;
    *body_len = 0;
    *at_ms = 0;
    if (len > RECORDING_MAX_LINE) {
        *why = "line too long";
        return -1;
    }
    switch (jsonutil_parse(line, len, NULL, 0, RECORDING_MAX_DEPTH, &root, NULL, 0)) {
    case JSONUTIL_OK:
        break;
    case JSONUTIL_ERR_DEPTH:
        *why = "JSON nested too deeply";
        return -1;
    case JSONUTIL_ERR_NOMEM:
        *why = "out of memory";
        return -1;
    case JSONUTIL_ERR_JSON:
        *why = "not one JSON value (invalid, truncated or trailing garbage)";
        return -1;
    }
    if (!json_object_is_type(root, json_type_object)) {
        *why = "line is not a JSON object";
        goto out;
    }
    if (!json_object_object_get_ex(root, "at_ms", &v) || !v) {
        *why = "missing at_ms";
        goto out;
    }
    if (!json_object_is_type(v, json_type_int)) {
        *why = "at_ms must be an integer number of milliseconds";
        goto out;
    }
    /* json-c keeps values above INT64_MAX as uint64; the gateway's clock is an
     * int64, so those cannot be arrival times. */
    if (json_object_get_int64(v) < 0) {
        *why = "at_ms is negative";
        goto out;
    }
    if (json_object_get_int64(v) == INT64_MAX && json_object_get_uint64(v) > INT64_MAX) {
        *why = "at_ms out of range";
        goto out;
    }
    uint64_t at = (uint64_t)json_object_get_int64(v);

    if (!json_object_object_get_ex(root, "body", &v) || !v) {
        *why = "missing body";
        goto out;
    }
    if (json_object_is_type(v, json_type_string)) {
        s = json_object_get_string(v);
        n = (size_t)json_object_get_string_len(v);
    } else if (json_object_is_type(v, json_type_object)) {
        s = json_object_to_json_string_length(v, RECORDING_JSON_FLAGS, &n);
        if (!s) {
            *why = "out of memory";
            goto out;
        }
    } else {
        *why = "body must be a JSON string (the raw body) or a JSON object";
        goto out;
    }
    if (n == 0) {
        *why = "body is empty";
        goto out;
    }
    if (n > RECORDING_MAX_BODY) {
        *why = "body too long";
        goto out;
    }
    *body = recording_dup(s, n);
    if (!*body) {
        *why = "out of memory";
        goto out;
    }
    *body_len = n;
    *at_ms = at;
    *why = NULL;
    rc = 0;
out:
    json_object_put(root);
    return rc;
}
