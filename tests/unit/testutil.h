/*
 * testutil.h - small helpers shared by the cmocka unit tests.
 * Include after <cmocka.h> (it uses its assertions).
 */
#ifndef RACE2MQTT_TESTUTIL_H
#define RACE2MQTT_TESTUTIL_H

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>

/* The whole file, NUL-terminated (caller frees), or NULL when it cannot be opened. */
static inline char *test_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *p = realloc(buf, cap);
            assert_non_null(p);
            buf = p;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* o's member key (borrowed); a missing member fails the test. */
static inline struct json_object *test_member(struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v))
        fail_msg("member %s missing in %s", key, json_object_to_json_string(o));
    return v;
}

#endif
