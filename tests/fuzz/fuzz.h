/*
 * fuzz.h - what every fuzz target shares: the libFuzzer entry point and the
 * checks that turn a broken promise into a crash.
 *
 * A target must only crash on a bug. Sanitizers find memory errors; the
 * checks here find outputs that break what the headers promise (a payload
 * that is not strict JSON, a sealed message that does not parse back).
 * A failed check prints "fuzz-invariant: <tag>" and aborts, so that
 * scripts/fuzz.sh can name the reproducer after it.
 */
#ifndef RACE2MQTT_FUZZ_H
#define RACE2MQTT_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <json-c/json.h>

#include "race2mqtt/jsonutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Deep enough for any payload built from input bounded at depth 32. */
#define FUZZ_JSON_DEPTH 64

__attribute__((noreturn)) static inline void fuzz_fail(const char *tag, const char *text,
                                                       size_t len)
{
    fprintf(stderr, "fuzz-invariant: %s\n", tag);
    if (text)
        fprintf(stderr, "fuzz-invariant: text (%zu bytes): %.*s\n", len,
                (int)(len > 2000 ? 2000 : len), text);
    fflush(stderr);
    abort();
}

#define FUZZ_ASSERT(cond, tag)                                                                     \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fuzz_fail(tag, NULL, 0);                                                               \
    } while (0)

/*
 * Parses text[0..len) with the gateway's own strict parser (RFC 8259, strict
 * UTF-8, no NUL) and returns the tree (caller puts it); aborts with tag when
 * it is not one JSON value.
 */
static inline struct json_object *fuzz_json(const char *tag, const char *text, size_t len)
{
    struct json_object *o = NULL;
    char detail[160];
    if (!text || jsonutil_parse(text, len, NULL, 0, FUZZ_JSON_DEPTH, &o, detail, sizeof detail) !=
                     JSONUTIL_OK) {
        if (text)
            fprintf(stderr, "fuzz-invariant: %s: %s\n", tag, detail);
        fuzz_fail(tag, text, text ? len : 0);
    }
    return o;
}

#endif
