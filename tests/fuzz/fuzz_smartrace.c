/*
 * fuzz_smartrace.c - the SmartRace webhook path, from body to retained state.
 *
 * The input is one or more webhook bodies separated by NUL bytes (a body
 * never holds a NUL: smartrace_parse() refuses it, so nothing is lost), at
 * most FUZZ_MAX_EVENTS of them, so that the state sees sequences of events.
 * Each body goes the way ingest_event() sends it: parse, map, seal; the
 * sealed payload must be strict JSON carrying event_type and seq; the head
 * must rebuild into the same event (journal replay at start), and a state
 * fed the replayed events must end up equal to the state fed the live ones.
 * At the end the state is emitted (changed and all), saved, loaded into a
 * fresh state and saved again: the snapshot must survive the round trip.
 * The whole input is also offered to state_load() as a hostile snapshot.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "race2mqtt/smartrace.h"
#include "race2mqtt/state.h"

#define BASE "smartrace"
#define FUZZ_MAX_EVENTS 64

static void check_topic(const char *topic)
{
    size_t len = strlen(topic);
    FUZZ_ASSERT(strncmp(topic, BASE "/", sizeof BASE) == 0, "topic outside the base topic");
    FUZZ_ASSERT(!strpbrk(topic, "+#"), "wildcard in a topic");
    FUZZ_ASSERT(!strstr(topic, "//") && topic[len - 1] != '/', "empty topic level");
    FUZZ_ASSERT(jsonutil_utf8_check((const unsigned char *)topic, len) == len,
                "topic is not UTF-8");
}

static void check_emit(void *ctx, const char *topic, const char *payload, size_t len)
{
    const char *suffix = topic + sizeof BASE "/state/" - 1;
    (void)ctx;
    check_topic(topic);
    FUZZ_ASSERT(strncmp(topic, BASE "/state/", sizeof BASE "/state/" - 1) == 0,
                "state topic outside base/state/");
    if (!payload) {
        FUZZ_ASSERT(len == 0, "deletion with a length");
        FUZZ_ASSERT(strncmp(suffix, "controller/", 11) == 0, "deletion of a non-controller topic");
        return;
    }
    FUZZ_ASSERT(!memchr(payload, '\0', len), "NUL inside a state payload");
    if (strcmp(suffix, "flag") == 0) {
        static const char *const flags[] = {"none", "start",     "green",    "yellow",
                                            "red",  "checkered", "jumpstart"};
        bool known = false;
        for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
            known = known || (strlen(flags[i]) == len && memcmp(flags[i], payload, len) == 0);
        FUZZ_ASSERT(known, "flag outside the documented values");
        return;
    }
    if (strcmp(suffix, "status") && strcmp(suffix, "weather") && strcmp(suffix, "vsc"))
        json_object_put(fuzz_json("state payload is not JSON", payload, len));
}

static void check_sealed(const struct sr_event *ev, const char *sealed, size_t len, uint64_t seq)
{
    struct json_object *root = fuzz_json("sealed payload is not JSON", sealed, len);
    struct json_object *v = NULL;
    FUZZ_ASSERT(json_object_is_type(root, json_type_object), "sealed payload not an object");
    FUZZ_ASSERT(json_object_object_get_ex(root, "seq", &v) &&
                    json_object_is_type(v, json_type_int) && json_object_get_uint64(v) == seq,
                "sealed payload lost its seq");
    FUZZ_ASSERT(json_object_object_get_ex(root, "event_type", &v) &&
                    json_object_is_type(v, json_type_string) &&
                    strcmp(json_object_get_string(v), ev->type) == 0,
                "sealed payload lost its event_type");
    json_object_put(root);
}

static void check_same_event(const struct sr_event *a, const struct sr_event *b)
{
    FUZZ_ASSERT(strcmp(a->type, b->type) == 0, "replayed event_type differs");
    FUZZ_ASSERT(a->kind == b->kind, "replayed kind differs");
    FUZZ_ASSERT(a->has_time == b->has_time && (!a->has_time || a->time_ms == b->time_ms),
                "replayed time differs");
    FUZZ_ASSERT(a->per_controller == b->per_controller, "replayed per_controller differs");
    if (a->per_controller) {
        FUZZ_ASSERT(a->has_controller == b->has_controller, "replayed has_controller differs");
        FUZZ_ASSERT(strcmp(a->controller_level, b->controller_level) == 0,
                    "replayed controller level differs");
    }
}

/* One body through parse -> map -> seal -> state, and its replay. */
static void one_event(const char *body, size_t len, uint64_t seq, struct state *live,
                      struct state *replay)
{
    struct sr_event ev, back;
    struct sr_message msg;
    char detail[256];

    enum sr_error err = smartrace_parse(body, len, &ev, detail, sizeof detail);
    FUZZ_ASSERT(smartrace_strerror(err) != NULL, "strerror NULL");
    if (err != SR_OK) {
        FUZZ_ASSERT(memchr(detail, '\0', sizeof detail), "detail not terminated");
        /* A refused body still takes a seq nowhere: nothing to apply. */
        return;
    }
    FUZZ_ASSERT(ev.root && ev.type, "parsed event without root or type");
    FUZZ_ASSERT(smartrace_map(&ev, BASE, &msg) == 0, "smartrace_map failed");
    check_topic(msg.topic);
    FUZZ_ASSERT(strlen(msg.head) == msg.head_len, "head length differs from its text");

    size_t cap = msg.head_len + SMARTRACE_SEAL_EXTRA;
    char *sealed = malloc(cap);
    FUZZ_ASSERT(sealed, "out of memory");
    FUZZ_ASSERT(smartrace_seal(sealed, msg.head_len, msg.head, msg.head_len, seq) == 0,
                "seal into a too small buffer");
    size_t n = smartrace_seal(sealed, cap, msg.head, msg.head_len, seq);
    FUZZ_ASSERT(n > 0 && n < cap && strlen(sealed) == n, "seal failed");
    check_sealed(&ev, sealed, n, seq);

    state_apply(live, &ev, seq);
    FUZZ_ASSERT(state_seq(live) == seq, "state seq did not advance");

    FUZZ_ASSERT(smartrace_event_from_payload(msg.head, msg.head_len, &back) == SR_OK,
                "payload head does not rebuild an event");
    check_same_event(&ev, &back);
    state_apply(replay, &back, seq);
    smartrace_event_cleanup(&back);
    FUZZ_ASSERT(smartrace_event_from_payload(sealed, n, &back) == SR_OK,
                "sealed payload does not rebuild an event");
    check_same_event(&ev, &back);
    smartrace_event_cleanup(&back);
    smartrace_event_cleanup(&back); /* safe twice, as promised */

    free(sealed);
    smartrace_message_cleanup(&msg);
    smartrace_event_cleanup(&ev);
}

static void check_state(struct state *live, struct state *replay)
{
    /* Compared before emitting: emission forgets pending deletions. */
    char *saved_live = state_save(live);
    char *saved_replay = state_save(replay);
    FUZZ_ASSERT(saved_live && saved_replay, "state_save failed");
    if (strcmp(saved_live, saved_replay) != 0) {
        fprintf(stderr, "live:   %s\nreplay: %s\n", saved_live, saved_replay);
        fuzz_fail("state from replayed payloads differs from live state", NULL, 0);
    }
    free(saved_replay);
    free(saved_live);

    state_emit(live, false, check_emit, NULL);
    FUZZ_ASSERT(!state_dirty(live), "dirty after emit");
    state_emit(live, true, check_emit, NULL);

    char *saved = state_save(live);
    FUZZ_ASSERT(saved, "state_save failed");
    json_object_put(fuzz_json("snapshot is not JSON", saved, strlen(saved)));
    struct state *loaded = state_new(BASE);
    FUZZ_ASSERT(loaded, "out of memory");
    FUZZ_ASSERT(state_load(loaded, saved, strlen(saved)) == 0, "own snapshot refused");
    char *again = state_save(loaded);
    if (!again || strcmp(saved, again) != 0) {
        fprintf(stderr, "saved:  %s\nloaded: %s\n", saved, again ? again : "(null)");
        fuzz_fail("snapshot does not survive save/load", NULL, 0);
    }
    state_emit(loaded, true, check_emit, NULL);

    free(again);
    state_free(loaded);
    free(saved);
}

static void hostile_snapshot(const char *text, size_t len)
{
    struct state *st = state_new(BASE);
    FUZZ_ASSERT(st, "out of memory");
    if (state_load(st, text, len) == 0) {
        state_emit(st, true, check_emit, NULL);
        char *saved = state_save(st);
        FUZZ_ASSERT(saved, "state_save failed");
        json_object_put(fuzz_json("snapshot is not JSON", saved, strlen(saved)));
        free(saved);
    }
    state_free(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    struct state *live = state_new(BASE), *replay = state_new(BASE);
    uint64_t seq = 0;

    FUZZ_ASSERT(live && replay, "out of memory");
    for (int i = 0; i < FUZZ_MAX_EVENTS && p <= end; i++) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        size_t len = nul ? (size_t)(nul - p) : (size_t)(end - p);
        /* Each body in its own exact-size buffer: ASan sees reads past it. */
        char *body = malloc(len ? len : 1);
        FUZZ_ASSERT(body, "out of memory");
        memcpy(body, p, len);
        one_event(body, len, ++seq, live, replay);
        free(body);
        if (!nul)
            break;
        p = nul + 1;
    }
    check_state(live, replay);
    state_free(replay);
    state_free(live);

    hostile_snapshot((const char *)data, size);
    return 0;
}
