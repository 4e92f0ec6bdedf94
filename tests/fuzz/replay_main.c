/*
 * replay_main.c - runs a fuzz target's LLVMFuzzerTestOneInput() on files,
 * without libFuzzer, so that any compiler (gcc included) and any build
 * (plain or ASan) can replay the seed corpus and every crash ever found.
 *
 * Usage: fuzz_<name>_replay PATH...   (a directory means every file in it,
 * sorted, dot files skipped; a missing PATH is an error). Exits 1 when no
 * input was run at all, so that a test pointed at an empty place fails
 * instead of passing on nothing. A bug shows as a crash or an abort.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#define REPLAY_MAX_BYTES (16 * 1024 * 1024)

static int run_file(const char *path, size_t *count)
{
    FILE *fp = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = -1;

    if (!fp) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fseek(fp, 0, SEEK_END) != 0)
        goto out;
    long size = ftell(fp);
    if (size < 0 || size > REPLAY_MAX_BYTES || fseek(fp, 0, SEEK_SET) != 0) {
        fprintf(stderr, "replay: %s: unreadable or larger than %d bytes\n", path, REPLAY_MAX_BYTES);
        goto out;
    }
    /* An exact-size copy, so that ASan sees a read past the input's end. */
    buf = malloc(size > 0 ? (size_t)size : 1);
    if (!buf)
        goto out;
    len = fread(buf, 1, (size_t)size, fp);
    if (len != (size_t)size) {
        fprintf(stderr, "replay: %s: short read\n", path);
        goto out;
    }
    fprintf(stderr, "replay: %s (%zu bytes)\n", path, len);
    LLVMFuzzerTestOneInput(buf, len);
    (*count)++;
    rc = 0;
out:
    free(buf);
    fclose(fp);
    return rc;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *dir, size_t *count)
{
    DIR *d = opendir(dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;

    if (!d) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) {
                rc = -1;
                goto out;
            }
            names = grown;
        }
        if (!(names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2))) {
            rc = -1;
            goto out;
        }
        sprintf(names[n++], "%s/%s", dir, e->d_name);
    }
    if (n > 0)
        qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode))
            rc = run_file(names[i], count);
    }
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    closedir(d);
    return rc;
}

int main(int argc, char **argv)
{
    size_t count = 0;

    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if ((S_ISDIR(st.st_mode) ? run_dir(argv[i], &count) : run_file(argv[i], &count)) != 0)
            return 1;
    }
    fprintf(stderr, "replay: %zu inputs, no crash\n", count);
    return count > 0 ? 0 : 1;
}
