/*
 * log.h - one line per event to stderr: "<iso time> <level> <message>", or
 * under journald "<priority>message" (see log_detect_journal()).
 * Thread-safe; lines are never interleaved. Never log a secret.
 */
#ifndef RACE2MQTT_LOG_H
#define RACE2MQTT_LOG_H

#include <stdbool.h>

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "error", "warn", "info", "debug"; returns 0 or -1. */
int log_level_parse(const char *name, enum log_level *out);

/* Switches to journald's form when stderr is the stream named in
 * JOURNAL_STREAM (systemd sets it for a service logging to the journal);
 * returns whether it did. Call once, before threads start. */
bool log_detect_journal(void);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
