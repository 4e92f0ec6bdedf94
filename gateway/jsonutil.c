/*
 * jsonutil.c - strict JSON intake (see jsonutil.h for why json-c alone is not
 * enough). Moved here from smartrace.c when the RACE RESULT parser needed the
 * same checks; both parsers now refuse exactly the same inputs.
 */
#include "race2mqtt/jsonutil.h"

#include <limits.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

void jsonutil_detail(char *detail, size_t detail_len, const char *fmt, ...)
{
    if (!detail || detail_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, detail_len, fmt, ap);
    va_end(ap);
}

static int ju_isdigit(char c)
{
    return c >= '0' && c <= '9';
}

/* RFC 8259 number grammar; json-c is laxer ("1.", "-.5", NaN, Infinity). */
static bool ju_number_text_ok(const char *s)
{
    if (*s == '-')
        s++;
    if (*s == '0') {
        s++;
    } else if (ju_isdigit(*s)) {
        while (ju_isdigit(*s))
            s++;
    } else {
        return false;
    }
    if (*s == '.') {
        s++;
        if (!ju_isdigit(*s))
            return false;
        while (ju_isdigit(*s))
            s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (!ju_isdigit(*s))
            return false;
        while (ju_isdigit(*s))
            s++;
    }
    return *s == '\0';
}

/*
 * json-c keeps the source text of a parsed double as its userdata and prints
 * it back verbatim; a double without that text came from NaN/Infinity.
 * Recursion is bounded by the tokener's depth limit.
 */
bool jsonutil_numbers_ok(struct json_object *o)
{
    switch (json_object_get_type(o)) {
    case json_type_double: {
        const char *text = json_object_get_userdata(o);
        return text && ju_number_text_ok(text);
    }
    case json_type_object: {
        struct json_object_iterator it = json_object_iter_begin(o);
        struct json_object_iterator end = json_object_iter_end(o);
        for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
            if (!jsonutil_numbers_ok(json_object_iter_peek_value(&it)))
                return false;
        }
        return true;
    }
    case json_type_array: {
        size_t n = json_object_array_length(o);
        for (size_t i = 0; i < n; i++) {
            if (!jsonutil_numbers_ok(json_object_array_get_idx(o, i)))
                return false;
        }
        return true;
    }
    default:
        return true;
    }
}

/*
 * Strict UTF-8 (RFC 3629): json-c's JSON_TOKENER_VALIDATE_UTF8 only checks the
 * byte pattern and lets overlong forms, UTF-16 surrogates and code points above
 * U+10FFFF through, which strict decoders on the subscriber side reject.
 */
size_t jsonutil_utf8_check(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* ASCII runs dominate; test eight bytes at a time. */
        if (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, sizeof w);
            if ((w & 0x8080808080808080ULL) == 0) {
                i += 8;
                continue;
            }
        }
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return i;
        }
        if (len - i < n || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        }
        i += n;
    }
    return len;
}

/* Lexical state carried across chunks by ju_quote_scan(). */
struct ju_lex {
    bool in_string;
    bool escape;
};

/*
 * json-c 0.16 with JSON_TOKENER_STRICT still takes a single-quoted object key
 * ({'a':1}) although it refuses single-quoted values. Outside a double-quoted
 * string a single quote is never JSON, so one pass finds it. Returns the
 * offset of the first such quote in s[0..len), or len.
 */
static size_t ju_quote_scan(struct ju_lex *lx, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (lx->in_string) {
            if (lx->escape)
                lx->escape = false;
            else if (c == '\\')
                lx->escape = true;
            else if (c == '"')
                lx->in_string = false;
        } else if (c == '"') {
            lx->in_string = true;
        } else if (c == '\'') {
            return i;
        }
    }
    return len;
}

enum jsonutil_error jsonutil_parse(const char *a, size_t alen, const char *b, size_t blen,
                                   int max_depth, struct json_object **out, char *detail,
                                   size_t detail_len)
{
    enum jsonutil_error rc = JSONUTIL_ERR_JSON;
    struct json_object *obj = NULL;
    struct json_tokener *tok = NULL;
    const char *nul;

    *out = NULL;
    if (!a) {
        a = "";
        alen = 0;
    }
    if (!b)
        blen = 0;
    if (alen > INT_MAX / 2 || blen > INT_MAX / 2) {
        jsonutil_detail(detail, detail_len, "invalid JSON: body too large");
        goto done;
    }
    /* json-c stops at a NUL byte and would report success on the part before it. */
    if ((nul = memchr(a, '\0', alen)) != NULL) {
        jsonutil_detail(detail, detail_len, "invalid JSON at byte %zu: NUL byte", (size_t)(nul - a));
        goto done;
    }
    if (blen && memchr(b, '\0', blen)) {
        jsonutil_detail(detail, detail_len, "invalid JSON: NUL byte");
        goto done;
    }
    size_t bad = jsonutil_utf8_check((const unsigned char *)a, alen);
    if (bad != alen || (blen && jsonutil_utf8_check((const unsigned char *)b, blen) != blen)) {
        jsonutil_detail(detail, detail_len, "invalid JSON at byte %zu: invalid UTF-8", bad);
        goto done;
    }
    /* json-c counts a scalar leaf as one more level than its container, so
     * max_depth + 1 admits max_depth levels of objects and arrays. */
    tok = json_tokener_new_ex(max_depth + 1);
    if (!tok) {
        rc = JSONUTIL_ERR_NOMEM;
        jsonutil_detail(detail, detail_len, "out of memory");
        goto done;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);

    const char *chunk[3] = {a, b, " "};
    size_t chunk_len[3] = {alen, blen, 1};
    size_t offset = 0;
    enum json_tokener_error jerr = json_tokener_continue;
    for (int i = 0; i < 3 && jerr == json_tokener_continue; i++) {
        if (i == 1 && blen == 0)
            continue;
        /* A lone top-level number or literal only ends at a delimiter; the
         * trailing " " provides one and cannot complete anything else. */
        obj = json_tokener_parse_ex(tok, chunk[i], (int)chunk_len[i]);
        jerr = json_tokener_get_error(tok);
        if (jerr == json_tokener_continue) {
            offset += chunk_len[i];
        } else if (jerr == json_tokener_success && i < 2 &&
                   json_tokener_get_parse_end(tok) != chunk_len[i]) {
            /* The terminator is not always consumed; it cannot hide garbage. */
            jerr = json_tokener_error_parse_unexpected;
        }
    }
    if (jerr != json_tokener_success) {
        if (jerr == json_tokener_error_depth) {
            rc = JSONUTIL_ERR_DEPTH;
            jsonutil_detail(detail, detail_len, "JSON nested deeper than %d levels", max_depth);
        } else if (jerr == json_tokener_continue) {
            jsonutil_detail(detail, detail_len, "invalid JSON: truncated after %zu bytes", alen + blen);
        } else {
            jsonutil_detail(detail, detail_len, "invalid JSON at byte %zu: %s",
                      offset + json_tokener_get_parse_end(tok), json_tokener_error_desc(jerr));
        }
        goto done;
    }
    struct ju_lex lx = {false, false};
    if ((bad = ju_quote_scan(&lx, a, alen)) != alen ||
        (blen && (bad = alen + ju_quote_scan(&lx, b, blen)) != alen + blen)) {
        jsonutil_detail(detail, detail_len, "invalid JSON at byte %zu: single quote", bad);
        goto done;
    }
    if (obj && !jsonutil_numbers_ok(obj)) {
        jsonutil_detail(detail, detail_len,
                  "invalid JSON: number not allowed (NaN, Infinity or malformed)");
        goto done;
    }
    *out = obj;
    obj = NULL;
    rc = JSONUTIL_OK;
done:
    json_object_put(obj);
    if (tok) /* json-c 0.16 crashes on json_tokener_free(NULL) */
        json_tokener_free(tok);
    return rc;
}
