/*
 * fuzz_raceresult.c - the RACE RESULT REST answers: device lists, detection
 * pages and their time strings, and the MQTT payloads built from them.
 *
 * Every input is offered as a device list, as a detections page and (as a
 * NUL-terminated string) to both time parsers. Checks beyond the sanitizers:
 * every payload is strict JSON; a device has a usable id and topic level; a
 * detections page is accepted or refused exactly when the same body parsed
 * whole as one tree is (rr_whole_page.h), with the same records and payload
 * bytes, so the scanner that walks a page can neither let through what the
 * strict parser refuses nor cut a record wrong; a page of N records has
 * count + skipped == N, kept in order; a passing's file and number are
 * positive, its raw is the record received, its payload names the same id
 * as rr_passing_id() and its time_ms agrees with rr_parse_time_parts() of
 * its time; the two time parsers agree with each other.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "race2mqtt/raceresult.h"

#include "../rr_whole_page.h"

static struct json_object *member(struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    FUZZ_ASSERT(json_object_object_get_ex(o, key, &v), "payload member missing");
    return v;
}

static void check_level(const char *level)
{
    FUZZ_ASSERT(level[0] && strlen(level) <= TOPIC_LEVEL_MAX, "bad topic level length");
    FUZZ_ASSERT(
        strspn(level, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") ==
            strlen(level),
        "unsafe character in a topic level");
}

static void devices(const char *body, size_t len)
{
    struct rr_device_list list;
    char detail[256];

    enum rr_error err = rr_parse_devices(body, len, &list, detail, sizeof detail);
    FUZZ_ASSERT(rr_strerror(err) != NULL, "strerror NULL");
    if (err != RR_OK) {
        FUZZ_ASSERT(!list.root && !list.devices && !list.count, "list not zeroed on error");
        rr_device_list_cleanup(&list);
        return;
    }
    for (size_t i = 0; i < list.count; i++) {
        const struct rr_device *d = &list.devices[i];
        size_t plen = 0;
        FUZZ_ASSERT(d->id[0] && strlen(d->id) <= RR_ID_MAX, "bad device id");
        check_level(d->level);
        FUZZ_ASSERT(rr_device_type_name(d->type) != NULL, "type name NULL");
        char *payload = rr_status_payload(d, &plen);
        FUZZ_ASSERT(payload && strlen(payload) == plen, "status payload length");
        struct json_object *o = fuzz_json("status payload is not JSON", payload, plen);
        FUZZ_ASSERT(json_object_is_type(o, json_type_object), "status payload not an object");
        member(o, "device");
        member(o, "raw");
        json_object_put(o);
        free(payload);
    }
    rr_device_list_cleanup(&list);
    rr_device_list_cleanup(&list);
}

static void check_time_ms(struct json_object *payload)
{
    struct json_object *time = member(payload, "time"), *ms = member(payload, "time_ms");
    int64_t sec;
    int32_t nsec;
    /* A time with an embedded NUL has no time_ms: its prefix is not the time. */
    if (!json_object_is_type(time, json_type_string) ||
        strlen(json_object_get_string(time)) != (size_t)json_object_get_string_len(time) ||
        rr_parse_time_parts(json_object_get_string(time), &sec, &nsec) != 0)
        return;
    int64_t want = sec * 1000 + nsec / 1000000;
    FUZZ_ASSERT(json_object_is_type(ms, json_type_int) && json_object_get_int64(ms) == want,
                "time_ms disagrees with rr_parse_time_parts");
}

static void detections(const char *body, size_t len, const char *device)
{
    struct rr_passing_list list, whole;
    struct json_object *root = NULL;
    char detail[256];

    enum rr_error err = rr_parse_detections(body, len, device, &list, detail, sizeof detail);
    enum rr_error want = rr_whole_page(body, len, device, &whole, &root);
    FUZZ_ASSERT(rr_strerror(err) != NULL, "strerror NULL");
    FUZZ_ASSERT(err == want || err == RR_ERR_NOMEM || want == RR_ERR_NOMEM,
                "page accepted or refused unlike the page parsed whole");
    if (err != RR_OK) {
        FUZZ_ASSERT(!list.items && !list.count && !list.skipped, "list not zeroed on error");
        goto out;
    }
    if (want == RR_OK) {
        FUZZ_ASSERT(rr_page_difference(&list, &whole) == NULL,
                    "records differ from the page parsed whole");
        size_t n = root ? json_object_array_length(root) : 0;
        FUZZ_ASSERT(list.count + list.skipped == n, "count + skipped != records");
    }
    for (size_t i = 0; i < list.count; i++) {
        const struct rr_passing *p = &list.items[i];
        char id[RR_PASSING_ID_MAX + 1];

        FUZZ_ASSERT(p->file >= 1 && p->no >= 1, "file or number not positive");
        FUZZ_ASSERT(i == 0 || p->index > list.items[i - 1].index, "records out of order");
        rr_passing_id(id, sizeof id, device, p->file, p->no);
        FUZZ_ASSERT(p->payload && strlen(p->payload) == p->payload_len, "passing payload length");
        struct json_object *o =
            fuzz_json("passing payload is not JSON", p->payload, p->payload_len);
        FUZZ_ASSERT(json_object_is_type(o, json_type_object), "passing payload not an object");
        struct json_object *pid = member(o, "id");
        FUZZ_ASSERT(json_object_is_type(pid, json_type_string) &&
                        strcmp(json_object_get_string(pid), id) == 0,
                    "payload id differs from rr_passing_id()");
        if (root)
            FUZZ_ASSERT(
                json_object_equal(member(o, "raw"), json_object_array_get_idx(root, p->index)),
                "raw is not the record as received");
        check_time_ms(o);
        json_object_put(o);
    }
out:
    json_object_put(root);
    rr_passing_list_cleanup(&whole);
    rr_passing_list_cleanup(&list);
    rr_passing_list_cleanup(&list);
}

static void times(const char *s)
{
    int64_t ns = 0, sec = 0;
    int32_t nsec = 0;
    int a = rr_parse_time(s, &ns);
    int b = rr_parse_time_parts(s, &sec, &nsec);
    FUZZ_ASSERT(a == 0 || a == -1, "rr_parse_time result");
    FUZZ_ASSERT(b == 0 || b == -1, "rr_parse_time_parts result");
    if (b == 0)
        FUZZ_ASSERT(nsec >= 0 && nsec <= 999999999, "nsec out of range");
    if (a == 0) {
        FUZZ_ASSERT(b == 0, "rr_parse_time takes what rr_parse_time_parts refuses");
        /* 128 bits: sec * 1e9 alone leaves int64 at the range ends. */
        FUZZ_ASSERT((__int128)sec * 1000000000 + nsec == ns, "the two time parsers disagree");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy for the parsers (reads past it are caught), and a
     * NUL-terminated one for the string APIs. */
    char *body = malloc(size ? size : 1);
    char *str = malloc(size + 1);
    FUZZ_ASSERT(body && str, "out of memory");
    memcpy(body, data, size);
    memcpy(str, data, size);
    str[size] = '\0';

    devices(body, size);
    /* The device the poller asked for: the input itself (long, not UTF-8),
     * one with a '/', or none. */
    detections(body, size, size % 3 == 0 ? str : size % 3 == 1 ? "D-4013/x" : NULL);
    times(str);

    free(str);
    free(body);
    return 0;
}
