/*
 * fuzz_config.c - the configuration file parser (inih + the key table).
 *
 * The input is the file. It is written to a memfd, so the fuzzer never
 * writes files, and loaded through /proc/self/fd/N as config_load() opens a
 * path. RACE2MQTT_* variables are removed once at start so that only the
 * input decides. The input may name *_file secrets and CA files: config_load()
 * then reads or checks those paths, which is bounded (SECRET_FILE_MAX) and
 * read-only. Checks: the error is one terminated line; after a successful
 * load the printout and the JSON view are produced, and the JSON view is
 * strict JSON (it is published on race2mqtt/bridge/info).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "race2mqtt/config.h"

extern char **environ;

static int conf_fd = -1;
static FILE *devnull;
static char conf_path[64];

static void clear_environment(void)
{
    for (;;) {
        char name[256];
        char **e = environ;
        while (*e && strncmp(*e, "RACE2MQTT_", 10) != 0)
            e++;
        if (!*e)
            return;
        size_t n = strcspn(*e, "=");
        FUZZ_ASSERT(n < sizeof name, "environment name too long");
        memcpy(name, *e, n);
        name[n] = '\0';
        unsetenv(name);
    }
}

static void setup(void)
{
    clear_environment();
    conf_fd = memfd_create("race2mqtt-fuzz.conf", MFD_CLOEXEC);
    devnull = fopen("/dev/null", "w");
    FUZZ_ASSERT(conf_fd >= 0 && devnull, "memfd or /dev/null");
    snprintf(conf_path, sizeof conf_path, "/proc/self/fd/%d", conf_fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config cfg;
    char err[512];

    if (conf_fd < 0)
        setup();
    FUZZ_ASSERT(ftruncate(conf_fd, 0) == 0, "ftruncate");
    for (size_t off = 0; off < size;) {
        ssize_t n = pwrite(conf_fd, data + off, size - off, (off_t)off);
        FUZZ_ASSERT(n > 0, "pwrite");
        off += (size_t)n;
    }

    memset(err, 'x', sizeof err);
    int rc = config_load(&cfg, conf_path, err, sizeof err);
    FUZZ_ASSERT(memchr(err, '\0', sizeof err), "error message not terminated");
    if (rc == 0) {
        FUZZ_ASSERT(err[0] == '\0', "message on success");
        config_print(&cfg, devnull);
        struct json_object *o = config_to_json(&cfg);
        FUZZ_ASSERT(o, "config_to_json failed");
        size_t len;
        const char *text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN, &len);
        json_object_put(fuzz_json("config_to_json is not JSON", text, len));
        json_object_put(o);
    } else {
        FUZZ_ASSERT(rc == -1 && err[0], "failure without a message");
        FUZZ_ASSERT(!strchr(err, '\n'), "error message spans lines");
    }
    config_free(&cfg);
    config_free(&cfg);
    return 0;
}
