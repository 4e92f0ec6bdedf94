/*
 * discovery.h - Home Assistant MQTT discovery payloads: which devices and
 * entities the gateway offers, and the topics they live on. Pure: no I/O, no
 * globals, no locks.
 *
 * One retained device-based config per device, on
 *   <prefix>/device/<node_id>/<object_id>/config
 * with "dev", "o" and "cmps" (what Home Assistant >= 2024.11 reads; see
 * reference/homeassistant-mqtt-discovery.md). Every entity reads a topic the
 * gateway publishes anyway (bridge state and info, smartrace/state/..., the
 * lap and passing events, raceresult/<dev>/status): discovery only describes
 * them, it never needs topics of its own.
 *
 * Ids: node_id is this gateway's ([A-Za-z0-9_-], from config), object ids are
 * "gateway", "race", "controller_<id>" and "decoder_<id>", where <id> is the
 * topic level with every character outside [A-Za-z0-9-] written as _xx (hex),
 * so that distinct levels never share an object id and HA's topic matcher
 * accepts every one. unique_id = <node_id>_<object_id>_<component>: stable
 * across restarts, distinct for two gateways with different node ids.
 */
#ifndef RACE2MQTT_DISCOVERY_H
#define RACE2MQTT_DISCOVERY_H

#include <stdbool.h>
#include <stddef.h>

#include "race2mqtt/topic.h"

/* Longest object id: "controller_" + a 64-byte level, each byte as _xx. */
#define DISCOVERY_OBJECT_MAX (sizeof "controller_" + TOPIC_LEVEL_MAX * 3)

/* The names everything is built from; all borrowed. */
struct discovery_names {
    const char *prefix;          /* homeassistant.prefix */
    const char *node_id;         /* homeassistant.node_id */
    const char *bridge_base;     /* mqtt.base_topic */
    const char *smartrace_base;  /* smartrace.base_topic */
    const char *raceresult_base; /* raceresult.base_topic */
    const char *version;         /* the gateway's, for o.sw and dev.sw */
    const char *page_url;        /* dev.configuration_url of the gateway, or NULL */
};

enum discovery_kind {
    DISCOVERY_GATEWAY,
    DISCOVERY_RACE,
    DISCOVERY_CONTROLLER,
    DISCOVERY_DECODER,
};

struct discovery_device {
    enum discovery_kind kind;
    const char *level; /* controller or decoder topic level; NULL otherwise */
    const char *name;  /* decoder: DeviceName, or NULL */
    const char *model; /* decoder: "Decoder", "TrackBox", "Ubidium", or NULL */
};

/* The device's object id into out[cap]; false if it does not fit or the
 * level is not a sanitised topic level. */
bool discovery_object_id(const struct discovery_device *d, char *out, size_t cap);

/* <prefix>/device/<node_id>/<object_id>/config into out[cap]; false if too long. */
bool discovery_topic(const struct discovery_names *n, const char *object_id, char *out, size_t cap);

/*
 * If topic is one of this node's config topics, writes its object id to
 * out[cap] and returns true. Anything else (another node, another shape) is
 * false.
 */
bool discovery_topic_object(const struct discovery_names *n, const char *topic, char *out,
                            size_t cap);

/* Object id back to kind and level (level[TOPIC_LEVEL_MAX + 1] gets "" for
 * the gateway and the race); false if it is none of ours. */
bool discovery_parse_object(const char *object_id, enum discovery_kind *kind,
                            char level[TOPIC_LEVEL_MAX + 1]);

/*
 * The retained config of device d: malloc'd JSON text (caller frees) and its
 * length in *len (may be NULL), or NULL on no memory or an unusable d.
 */
char *discovery_config(const struct discovery_names *n, const struct discovery_device *d,
                       size_t *len);

#endif
