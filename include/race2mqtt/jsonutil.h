/*
 * jsonutil.h - strict intake of untrusted JSON, shared by every parser of
 * input from outside (SmartRace webhook bodies, RACE RESULT REST answers).
 * Pure: no I/O, no globals, no locks.
 *
 * json-c on its own is laxer than RFC 8259 in ways that matter to subscribers:
 * it stops at a NUL byte and reports success on the part before it, its
 * JSON_TOKENER_VALIDATE_UTF8 lets overlong forms, surrogates and code points
 * above U+10FFFF through, and it accepts NaN, Infinity, "1." and "-.5", which
 * it later prints back verbatim so that a re-serialised payload is no longer
 * JSON; even in STRICT mode it takes a single-quoted object key. jsonutil_parse()
 * closes all of these in one place. Raw control characters inside strings are
 * tolerated: json-c takes them and always writes them back escaped.
 */
#ifndef RACE2MQTT_JSONUTIL_H
#define RACE2MQTT_JSONUTIL_H

#include <stdbool.h>
#include <stddef.h>

struct json_object;

enum jsonutil_error {
    JSONUTIL_OK = 0,
    JSONUTIL_ERR_JSON,  /* not JSON, truncated, trailing garbage, NUL, invalid UTF-8, bad number */
    JSONUTIL_ERR_DEPTH, /* nested deeper than max_depth */
    JSONUTIL_ERR_NOMEM,
};

/*
 * Parses a[0..alen) followed by b[0..blen) (b may be NULL/empty) as exactly one
 * strict JSON text: json-c STRICT, strict UTF-8, no NUL byte, no single quote
 * outside a string, only whitespace after the value, RFC 8259 numbers only, at
 * most max_depth levels of
 * containers. The second chunk lets a caller complete a stored prefix without
 * copying it. On success *out is the caller's to json_object_put() (NULL for
 * a top-level JSON null). detail (may be NULL) gets a one-line reason that
 * names byte offsets but never echoes input.
 */
enum jsonutil_error jsonutil_parse(const char *a, size_t alen, const char *b, size_t blen,
                                   int max_depth, struct json_object **out, char *detail,
                                   size_t detail_len);

/* Formats a one-line reason into detail (either may be NULL/0: nothing). The
 * one formatter of the parsers' error details. */
void jsonutil_detail(char *detail, size_t detail_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Offset of the first byte of s[0..len) that is not strict UTF-8 (RFC 3629), or len. */
size_t jsonutil_utf8_check(const unsigned char *s, size_t len);

/* True when every number in the tree (borrowed) was written as RFC 8259 allows. */
bool jsonutil_numbers_ok(struct json_object *o);

#endif
