/*
 * cursor.c - per-device passing cursors on disk.
 *
 * Format: one line "<file> <next_no>\n" in <dir>/<level>.cursor. Text, so an
 * operator can read it and, to re-read a device, edit or delete it while the
 * gateway is stopped. Written to a temp file that is fsynced and renamed over
 * the old one, then the directory is fsynced: the cursor on disk is always a
 * complete one, and once cursor_save() returns it survives a power loss.
 */
#include "race2mqtt/cursor.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int cursor_path(char *out, size_t cap, const char *dir, const char *level,
                       const char *suffix)
{
    int n = snprintf(out, cap, "%s/%s.cursor%s", dir, level, suffix);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

int cursor_load(const char *dir, const char *level, struct cursor *c, char *err, size_t errlen)
{
    char path[PATH_MAX], text[64];
    if (cursor_path(path, sizeof path, dir, level, "") != 0) {
        snprintf(err, errlen, "cursor path too long");
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n < 0) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    text[n] = '\0';
    struct cursor got;
    int used = 0;
    if (sscanf(text, "%" SCNd64 " %" SCNd64 "%n", &got.file, &got.next_no, &used) != 2 ||
        got.file < 1 || got.next_no < 1 || strspn(text + used, "\n") != strlen(text + used)) {
        snprintf(err, errlen, "%s is not a cursor (want \"<file> <next>\")", path);
        return -1;
    }
    *c = got;
    return 1;
}

int cursor_save(const char *dir, const char *level, const struct cursor *c, char *err,
                size_t errlen)
{
    char path[PATH_MAX], tmp[PATH_MAX], text[64];
    if (cursor_path(path, sizeof path, dir, level, "") != 0 ||
        cursor_path(tmp, sizeof tmp, dir, level, ".tmp") != 0) {
        snprintf(err, errlen, "cursor path too long");
        return -1;
    }
    int len = snprintf(text, sizeof text, "%" PRId64 " %" PRId64 "\n", c->file, c->next_no);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, (size_t)len) != len || fsync(fd) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}
