/*
 * cursor.h - where the passings of one RACE RESULT device were read up to:
 * the file number and the next detection number to ask for. One small file
 * per device under a directory, replaced atomically, so a crash at any point
 * leaves either the old or the new cursor on disk, never a torn one.
 */
#ifndef RACE2MQTT_CURSOR_H
#define RACE2MQTT_CURSOR_H

#include <stddef.h>
#include <stdint.h>

struct cursor {
    int64_t file;    /* file number, >= 1 */
    int64_t next_no; /* next detection number within the file, >= 1 */
};

/*
 * Reads the cursor of the device whose topic level is `level` (safe as a file
 * name: no '/'). Returns 1 when found, 0 when the device has none yet, -1 when
 * the file exists but cannot be read or is not a cursor (reason in err).
 */
int cursor_load(const char *dir, const char *level, struct cursor *c, char *err, size_t errlen);

/* Writes it: temp file, fsync, rename, fsync of the directory. 0 or -1 (err). */
int cursor_save(const char *dir, const char *level, const struct cursor *c, char *err,
                size_t errlen);

#endif
