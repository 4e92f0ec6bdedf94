/*
 * test_topic.c - topic_level(): an untrusted id never becomes more than one
 * clean topic level ([A-Za-z0-9._-], "_" when empty, at most 64 bytes).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "race2mqtt/topic.h"

static void level_of(char out[TOPIC_LEVEL_MAX + 1], const char *in)
{
    topic_level(out, in, strlen(in));
}

static void check_clean(const char *level)
{
    size_t len = strlen(level);
    assert_true(len >= 1 && len <= TOPIC_LEVEL_MAX);
    for (size_t i = 0; i < len; i++) {
        char c = level[i];
        assert_true((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-');
    }
}

static void test_plain_ids_unchanged(void **state)
{
    (void)state;
    char out[TOPIC_LEVEL_MAX + 1];
    level_of(out, "2");
    assert_string_equal(out, "2");
    level_of(out, "ui.lap_update");
    assert_string_equal(out, "ui.lap_update");
    level_of(out, "Dev-42_a.B");
    assert_string_equal(out, "Dev-42_a.B");
}

static void test_mqtt_specials_replaced(void **state)
{
    (void)state;
    char out[TOPIC_LEVEL_MAX + 1];
    level_of(out, "a/b");
    assert_string_equal(out, "a_b");
    level_of(out, "+");
    assert_string_equal(out, "_");
    level_of(out, "#");
    assert_string_equal(out, "_");
    level_of(out, "x/+/#");
    assert_string_equal(out, "x____");
    level_of(out, "$SYS");
    assert_string_equal(out, "_SYS");
    level_of(out, " sp ace\t");
    assert_string_equal(out, "_sp_ace_");
}

static void test_nul_in_middle_is_replaced(void **state)
{
    (void)state;
    char out[TOPIC_LEVEL_MAX + 1];
    const char in[] = {'a', '\0', 'b', '/', '\0'};
    topic_level(out, in, 4);
    assert_int_equal(strlen(out), 4);
    assert_string_equal(out, "a_b_");
}

static void test_utf8_bytes_each_become_underscore(void **state)
{
    (void)state;
    char out[TOPIC_LEVEL_MAX + 1];
    level_of(out, "J\xc3\xbcrgen"); /* "Jürgen": ü is two bytes */
    assert_string_equal(out, "J__rgen");
    level_of(out, "\xf0\x9f\x8f\x81"); /* one 4-byte emoji */
    assert_string_equal(out, "____");
    level_of(out, "\xff\xfe");
    assert_string_equal(out, "__");
}

static void test_empty_is_underscore(void **state)
{
    (void)state;
    char out[TOPIC_LEVEL_MAX + 1];
    memset(out, 'x', sizeof out);
    topic_level(out, "", 0);
    assert_string_equal(out, "_");
    memset(out, 'x', sizeof out);
    topic_level(out, NULL, 0);
    assert_string_equal(out, "_");
    /* len 0 wins over a non-empty buffer */
    topic_level(out, "abc", 0);
    assert_string_equal(out, "_");
}

static void test_cap_at_64_bytes(void **state)
{
    (void)state;
    char out[TOPIC_LEVEL_MAX + 2];
    char in[200];

    memset(in, 'a', sizeof in);
    out[TOPIC_LEVEL_MAX + 1] = 'Z'; /* canary past the documented size */
    topic_level(out, in, 64);
    assert_int_equal(strlen(out), 64);
    topic_level(out, in, 65);
    assert_int_equal(strlen(out), 64);
    topic_level(out, in, 63);
    assert_int_equal(strlen(out), 63);
    topic_level(out, in, sizeof in);
    assert_int_equal(strlen(out), TOPIC_LEVEL_MAX);
    assert_int_equal(out[TOPIC_LEVEL_MAX + 1], 'Z');

    /* multi-byte input: the cap counts output bytes, one per input byte */
    char utf8[200];
    for (size_t i = 0; i + 1 < sizeof utf8; i += 2) {
        utf8[i] = '\xc3';
        utf8[i + 1] = '\xa9';
    }
    topic_level(out, utf8, sizeof utf8);
    assert_int_equal(strlen(out), TOPIC_LEVEL_MAX);
    check_clean(out);
}

static void test_long_hostile_input(void **state)
{
    (void)state;
    size_t len = 1 << 20;
    char *in = malloc(len);
    assert_non_null(in);
    for (size_t i = 0; i < len; i++)
        in[i] = (char)(i * 7 + 3); /* every byte value, NULs included */
    char out[TOPIC_LEVEL_MAX + 1];
    topic_level(out, in, len);
    check_clean(out);
    assert_int_equal(strlen(out), TOPIC_LEVEL_MAX);
    free(in);
}

static void test_every_byte_value(void **state)
{
    (void)state;
    char out[TOPIC_LEVEL_MAX + 1];
    for (int b = 0; b < 256; b++) {
        char in[1] = {(char)b};
        topic_level(out, in, 1);
        assert_int_equal(strlen(out), 1);
        int keep = (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') ||
                   b == '.' || b == '_' || b == '-';
        assert_int_equal((unsigned char)out[0], keep ? b : '_');
    }
}

/* mqtt.topic_dots = false: '.' goes too (NATS refuses it), nothing else changes. */
static void test_dots_replaced_when_asked(void **state)
{
    (void)state;
    char out[TOPIC_LEVEL_MAX + 1];
    topic_keep_dots(false);
    level_of(out, "ui.lap_update");
    assert_string_equal(out, "ui_lap_update");
    level_of(out, "Dev-42_a.B+#/");
    assert_string_equal(out, "Dev-42_a_B___");
    level_of(out, ".");
    assert_string_equal(out, "_");
    topic_keep_dots(true);
    level_of(out, "ui.lap_update");
    assert_string_equal(out, "ui.lap_update");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_ids_unchanged),
        cmocka_unit_test(test_mqtt_specials_replaced),
        cmocka_unit_test(test_nul_in_middle_is_replaced),
        cmocka_unit_test(test_utf8_bytes_each_become_underscore),
        cmocka_unit_test(test_empty_is_underscore),
        cmocka_unit_test(test_cap_at_64_bytes),
        cmocka_unit_test(test_long_hostile_input),
        cmocka_unit_test(test_every_byte_value),
        cmocka_unit_test(test_dots_replaced_when_asked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
