/*
 * hass.h - the Home Assistant extension: keeps the discovery configs of
 * discovery.c on the broker, in step with what the gateway knows.
 *
 * It owns <prefix>/device/<node_id>/+/config and nothing else. It learns the
 * controllers from the race state (ingest_controllers(), the same state the
 * retained topics come from) and the decoders from the poller's device list,
 * publishes a retained config for each wanted device, clears (empty retained
 * payload) the ones no longer wanted and any retained config of this node
 * that it does not produce (orphans left by an earlier run), and publishes
 * everything again on every broker connect and, after
 * homeassistant.birth_delay_ms, when Home Assistant announces "online" on
 * <prefix>/status. With homeassistant.enabled = false it only clears.
 *
 * One thread does all of it; the hand-offs below copy and signal.
 */
#ifndef RACE2MQTT_HASS_H
#define RACE2MQTT_HASS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct ingest;
struct mqtt;
struct mqtt_message;
struct hass;

struct hass_hooks {
    /* Home Assistant restarted: publish all retained state again (bridge,
     * race state, decoder status). Called on hass's thread. */
    void (*republish)(void *ctx);
    void *ctx;
};

/* A decoder in the poller's device list; pointers valid during the call. */
struct hass_decoder {
    const char *level; /* topic level */
    const char *name;  /* DeviceName, may be "" */
    const char *model; /* "Decoder", "TrackBox", "Ubidium", "unknown" */
    bool connected;
    bool has_file_no, has_records;
    int64_t file_no, records;
};

/* cfg, in (may be NULL without SmartRace) and hooks are borrowed; page_url
 * (may be NULL) is copied. NULL on no memory. */
struct hass *hass_new(const struct config *cfg, struct ingest *in, const struct hass_hooks *hooks,
                      const char *page_url);

int hass_start(struct hass *h, struct mqtt *m, char *err, size_t errlen);

/* Stops the thread. Safe twice; hass_free(NULL) is fine. */
void hass_stop(struct hass *h);
void hass_free(struct hass *h);

/* paho threads: connected; a message that may be ours (true if it was). */
void hass_connected(struct hass *h);
bool hass_message(struct hass *h, const struct mqtt_message *msg);

/* The poller's thread: one call per device of a list it read, then
 * hass_decoders_listed() once the whole list was seen. */
void hass_decoder_seen(struct hass *h, const struct hass_decoder *d);
void hass_decoders_listed(struct hass *h);

#endif
