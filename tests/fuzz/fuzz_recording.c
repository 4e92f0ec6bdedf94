/*
 * fuzz_recording.c - a race recording's lines (race2mqtt-replay reads files
 * that users write by hand, and bug reports carry them).
 *
 * Checks: a refused line has a reason and no body; an accepted one has a
 * NUL-terminated body of the stated length and an at_ms that fits int64; the
 * line recording_line() writes for it reads back as the same at_ms and the
 * same bytes. The input as a raw body, when it is UTF-8, makes a line that
 * reads back as exactly that body.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "race2mqtt/recording.h"

static void round_trip(uint64_t at_ms, const char *body, size_t len, const char *tag)
{
    size_t line_len = 0;
    char *line = recording_line(at_ms, body, len, &line_len);
    FUZZ_ASSERT(line && line_len > 0 && line[line_len - 1] == '\n', tag);
    FUZZ_ASSERT(memchr(line, '\n', line_len - 1) == NULL, "a line with a newline inside");
    uint64_t at2 = 0;
    char *body2 = NULL;
    size_t len2 = 0;
    const char *why = NULL;
    if (recording_parse_line(line, line_len, &at2, &body2, &len2, &why) != 0)
        fuzz_fail(why ? why : tag, line, line_len);
    FUZZ_ASSERT(at2 == at_ms && len2 == len && memcmp(body2, body, len) == 0, tag);
    free(body2);
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    uint64_t at_ms = 0;
    char *body = NULL;
    size_t len = 0;
    const char *why = NULL;
    if (recording_parse_line(text, size, &at_ms, &body, &len, &why) == 0) {
        FUZZ_ASSERT(body && body[len] == '\0' && at_ms <= INT64_MAX, "accepted line");
        /* A body of an object line is JSON text; a string one can be anything. */
        if (jsonutil_utf8_check((const unsigned char *)body, len) == len)
            round_trip(at_ms, body, len, "accepted line does not round-trip");
        free(body);
    } else {
        FUZZ_ASSERT(why && why[0] && !body, "refused line without a reason");
    }
    if (size > 0 && jsonutil_utf8_check(data, size) == size)
        round_trip(1718035017321u, text, size, "raw body does not round-trip");
    return 0;
}
