/*
 * topic.c - one MQTT topic level from an untrusted id.
 *
 * Ids come from the network (SmartRace controller ids and event types, RACE
 * RESULT device ids). MQTT gives '/', '+' and '#' a meaning inside a topic and
 * forbids NUL, so an id is never copied into a topic as is: every byte outside
 * [A-Za-z0-9._-] becomes '_'. The mapping is byte for byte, so the output has
 * exactly min(len, TOPIC_LEVEL_MAX) bytes and a multi-byte UTF-8 character
 * becomes one '_' per byte. The input is read by length, so an embedded NUL is
 * just another byte to replace.
 */
#include "race2mqtt/topic.h"

/* Set once at start (topic_keep_dots()), read only afterwards. */
static bool keep_dots = true;

void topic_keep_dots(bool keep)
{
    keep_dots = keep;
}

static int topic_byte_ok(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c == '.' && keep_dots) || c == '_' || c == '-';
}

void topic_level(char out[TOPIC_LEVEL_MAX + 1], const char *in, size_t len)
{
    if (!in || len == 0) {
        out[0] = '_';
        out[1] = '\0';
        return;
    }
    if (len > TOPIC_LEVEL_MAX)
        len = TOPIC_LEVEL_MAX;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        out[i] = topic_byte_ok(c) ? (char)c : '_';
    }
    out[len] = '\0';
}
