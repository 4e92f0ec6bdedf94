/*
 * fault.h - test-only fault switches: RACE2MQTT_FAULT=<name> in the
 * environment makes one named place of the gateway misbehave the way a bug
 * would, so that a test can show what notices it (the systemd watchdog: a
 * thread that hangs must stop its pings).
 *
 * Compiled in only with the test suite (RACE2MQTT_FAULTS, set when
 * RACE2MQTT_TESTS is on); a packaged build has none of it.
 *
 *   hang-publisher  the publisher thread stops for good after its first event
 *   hang-http       the HTTP worker that takes a POST never answers it
 */
#ifndef RACE2MQTT_FAULT_H
#define RACE2MQTT_FAULT_H

#include <stdbool.h>

#ifdef RACE2MQTT_FAULTS
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline bool fault_on(const char *name)
{
    const char *f = getenv("RACE2MQTT_FAULT");
    return f && strcmp(f, name) == 0;
}

/* As a deadlock would: this thread never comes back. */
static inline void fault_hang(void)
{
    for (;;)
        sleep(60);
}
#else
static inline bool fault_on(const char *name)
{
    (void)name;
    return false;
}

static inline void fault_hang(void) {}
#endif

#endif
