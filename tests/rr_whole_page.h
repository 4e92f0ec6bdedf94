/*
 * rr_whole_page.h - a detections page read the way rr_parse_detections() read
 * it before it walked the page record by record: the whole body through
 * jsonutil_parse() into one tree, then rr_passing_read() and
 * rr_passing_payload() on each element of the top-level array. The unit tests
 * and the fuzz target hold the gateway's reading against it: the same
 * decision, the same records, the same payload bytes.
 *
 * Include after race2mqtt/raceresult.h and race2mqtt/jsonutil.h.
 */
#ifndef RACE2MQTT_RR_WHOLE_PAGE_H
#define RACE2MQTT_RR_WHOLE_PAGE_H

#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

/*
 * Reads body into out (release with rr_passing_list_cleanup()) and, on
 * RR_OK, *root (the page's tree, caller puts; NULL for a null page).
 * RR_ERR_NOMEM also stands for any allocation failure on the way.
 */
static inline enum rr_error rr_whole_page(const char *body, size_t len, const char *device,
                                          struct rr_passing_list *out, struct json_object **root)
{
    memset(out, 0, sizeof *out);
    *root = NULL;
    switch (jsonutil_parse(body, len, NULL, 0, RR_MAX_DEPTH, root, NULL, 0)) {
    case JSONUTIL_OK:
        break;
    case JSONUTIL_ERR_NOMEM:
        return RR_ERR_NOMEM;
    default:
        return RR_ERR_JSON;
    }
    if (*root && !json_object_is_type(*root, json_type_array)) {
        json_object_put(*root);
        *root = NULL;
        return RR_ERR_SHAPE;
    }
    size_t n = *root ? json_object_array_length(*root) : 0;
    out->items = calloc(n ? n : 1, sizeof *out->items);
    if (!out->items)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        struct json_object *rec = json_object_array_get_idx(*root, i);
        struct rr_passing *p = &out->items[out->count];
        p->index = i;
        if (!rr_passing_read(p, rec)) {
            out->skipped++;
            continue;
        }
        p->payload = rr_passing_payload(p, rec, device, &p->payload_len);
        if (!p->payload)
            goto nomem;
        out->count++;
    }
    return RR_OK;
nomem:
    rr_passing_list_cleanup(out);
    json_object_put(*root);
    *root = NULL;
    return RR_ERR_NOMEM;
}

/* NULL when a and b hold the same records with the same payload bytes, else
 * what differs first. */
static inline const char *rr_page_difference(const struct rr_passing_list *a,
                                             const struct rr_passing_list *b)
{
    if (a->count != b->count)
        return "record count";
    if (a->skipped != b->skipped)
        return "skipped count";
    for (size_t i = 0; i < a->count; i++) {
        const struct rr_passing *x = &a->items[i], *y = &b->items[i];
        if (x->kind != y->kind || x->file != y->file || x->no != y->no || x->index != y->index)
            return "record kind, file, number or index";
        if (x->payload_len != y->payload_len || memcmp(x->payload, y->payload, x->payload_len))
            return "payload";
    }
    return NULL;
}

#endif
