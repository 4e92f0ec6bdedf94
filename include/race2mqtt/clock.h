/*
 * clock.h - the clocks the threads use. Intervals and deadlines are
 * measured on CLOCK_MONOTONIC; pthread_cond_timedwait() takes CLOCK_REALTIME
 * (the condition variables keep the default clock), so a wait is turned
 * into a realtime instant only where it is handed to it.
 */
#ifndef RACE2MQTT_CLOCK_H
#define RACE2MQTT_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static inline uint64_t mono_ms(void)
{
    return mono_us() / 1000u;
}

/* The CLOCK_REALTIME instant us microseconds from now, for
 * pthread_cond_timedwait(). */
static inline struct timespec realtime_in_us(uint64_t us)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += (time_t)(us / 1000000u);
    t.tv_nsec += (long)(us % 1000000u) * 1000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

#endif
