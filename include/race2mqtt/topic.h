/*
 * topic.h - turning untrusted ids into one MQTT topic level.
 *
 * Characters outside [A-Za-z0-9._-] become '_', an empty id becomes "_", and the
 * result is cut at TOPIC_LEVEL_MAX bytes, so no input can ever put '+', '#', '/'
 * or NUL inside a level.
 */
#ifndef RACE2MQTT_TOPIC_H
#define RACE2MQTT_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

#define TOPIC_LEVEL_MAX 64

/* Writes the sanitised form of in[0..len) to out (NUL-terminated). */
void topic_level(char out[TOPIC_LEVEL_MAX + 1], const char *in, size_t len);

/*
 * keep = false: '.' becomes '_' as well (mqtt.topic_dots = false), for
 * brokers that refuse it in topics. NATS closes the connection on such a
 * publish, which would hold back everything behind it. Call once at start,
 * before any thread uses topic_level(); the default keeps dots.
 */
void topic_keep_dots(bool keep);

#endif
