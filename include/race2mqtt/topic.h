/*
 * topic.h - turning untrusted ids into one MQTT topic level.
 *
 * Characters outside [A-Za-z0-9._-] become '_', an empty id becomes "_", and the
 * result is cut at TOPIC_LEVEL_MAX bytes, so no input can ever put '+', '#', '/'
 * or NUL inside a level.
 */
#ifndef RACE2MQTT_TOPIC_H
#define RACE2MQTT_TOPIC_H

#include <stddef.h>

#define TOPIC_LEVEL_MAX 64

/* Writes the sanitised form of in[0..len) to out (NUL-terminated). */
void topic_level(char out[TOPIC_LEVEL_MAX + 1], const char *in, size_t len);

#endif
