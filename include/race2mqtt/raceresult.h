/*
 * raceresult.h - the RACE RESULT devices REST API's JSON: device list ->
 * normalised device status, detections -> passings, and the MQTT payloads
 * of both. Pure: no I/O, no globals, no locks.
 *
 * Wire formats (reference/raceresult-rest-api.md, fixtures/raceresult/):
 * - GET /customers/{cid}/devices answers {"Devices": [...]} with three record
 *   shapes: Decoder and TrackBox (DeviceID, DeviceName, Connected, FileNo,
 *   RecordsCount, BatteryCharge (-1 = no reading), Temperature, Position,
 *   DecoderStatus / TrackboxStatus) and Ubidium (no DeviceType;
 *   System.DeviceID, System.DeviceName, ConnStatus (0 disconnected,
 *   1 connected, 2 bad connection), Data.FileNumber, Data.PassingNo, Power...).
 * - GET .../devices/{dev}/detections answers an array mixing decoder passings
 *   (PascalCase: FileNo, PassingNo, Code, RealTime, ...), Ubidium detections
 *   (snake_case: no.file, no.no, transp.id, time, ...) and trackpings
 *   (FileNo, TrackpingNo, Code, Time, ...).
 * Time strings carry 0-9 fractional digits and "Z" or "+hh:mm"/"-hh:mm".
 */
#ifndef RACE2MQTT_RACERESULT_H
#define RACE2MQTT_RACERESULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "race2mqtt/topic.h"

struct json_object;

#define RR_MAX_DEPTH 32 /* JSON nesting accepted from the API */
#define RR_ID_MAX 128   /* device id bytes kept (as sent, cut) */
#define RR_PASSING_ID_MAX (RR_ID_MAX + 48)
#define RR_NAME_MAX 96 /* device name bytes kept */

enum rr_error {
    RR_OK = 0,
    RR_ERR_JSON,  /* not JSON, truncated, trailing garbage, invalid UTF-8, too deep */
    RR_ERR_SHAPE, /* JSON, but not the documented top-level shape */
    RR_ERR_NOMEM,
};

/* A short English reason, never NULL. */
const char *rr_strerror(enum rr_error err);

enum rr_device_type { RR_DEVICE_UNKNOWN, RR_DEVICE_DECODER, RR_DEVICE_TRACKBOX, RR_DEVICE_UBIDIUM };

/* "Decoder", "TrackBox", "Ubidium", "unknown". */
const char *rr_device_type_name(enum rr_device_type t);

struct rr_device {
    char id[RR_ID_MAX + 1];          /* DeviceID / System.DeviceID, as sent (cut) */
    char level[TOPIC_LEVEL_MAX + 1]; /* id sanitised as a topic level */
    char name[RR_NAME_MAX + 1];      /* DeviceName / System.DeviceName (cut, no NUL), or "" */
    enum rr_device_type type;
    bool connected; /* Connected, or ConnStatus == 1 */
    /* Change detectors: the poller asks for detections only when one of these
     * moved (and at a slow safety-net interval). */
    bool has_file_no;
    int64_t file_no; /* FileNo / Data.FileNumber */
    bool has_records;
    int64_t records;         /* RecordsCount / Data.PassingNo */
    struct json_object *raw; /* borrowed from the list's root */
};

struct rr_device_list {
    struct json_object *root; /* owned */
    struct rr_device *devices;
    size_t count;
    size_t skipped; /* records without a usable device id */
};

/*
 * Parses a device list body. On success out owns what it holds (release with
 * rr_device_list_cleanup()); records without a device id are counted in
 * skipped, not fatal. detail (may be NULL) gets a one-line reason on error
 * (never input text). "Devices": null is an empty list (Go's empty slice).
 * A device id is a non-empty string without NUL or a JSON integer (printed in
 * decimal); counters are JSON integers or decimal digit strings; a field of
 * the wrong type counts as absent. On error out is zeroed (cleanup harmless).
 */
enum rr_error rr_parse_devices(const char *body, size_t len, struct rr_device_list *out,
                               char *detail, size_t detail_len);
void rr_device_list_cleanup(struct rr_device_list *list);

/*
 * Thread use: a device list and the payloads built from it belong to one
 * thread at a time. Building a payload takes and drops json-c references on
 * the borrowed raw records, and json-c's reference counts are not atomic.
 */

/*
 * The retained status payload of SPEC section 3: device, name, type,
 * connected, battery (null for -1 or absent), temperature, file, timing_mode,
 * error_flags, position {latitude, longitude, altitude, flag} when present,
 * firmware, records (RecordsCount / Data.PassingNo: passings in the current
 * file) and raw (the record as received). Returns malloc'd JSON text (caller frees)
 * and its length, or NULL on no memory.
 * Every member is always there, null when the record lacks it: battery is
 * BatteryCharge >= 0 or an installed Ubidium battery's Level; timing_mode is
 * DecoderStatus.IsInTimingMode (bool), TrackboxStatus.ReaderStatus (string) or
 * null; position is null unless Latitude/Longitude are numbers other than
 * 0/0 (Go's zero value); firmware is DecoderStatus.Firmware or System.Firmware.
 * Numbers are copied with the text the API sent. len may be NULL.
 */
char *rr_status_payload(const struct rr_device *dev, size_t *len);

enum rr_record_kind { RR_PASSING, RR_UBIDIUM_DETECTION, RR_TRACKPING };

struct rr_passing {
    enum rr_record_kind kind;
    int64_t file;       /* file number */
    int64_t no;         /* detection number within the file */
    size_t index;       /* position of the record in the page, from 0 */
    char *payload;      /* rr_passing_payload() of the record, owned by the list */
    size_t payload_len; /* bytes of payload, without its NUL */
};

struct rr_passing_list {
    struct rr_passing *items; /* in the order received */
    size_t count;
    size_t skipped; /* records without a usable file and number */
};

/*
 * Parses a detections body (a JSON array) and builds the passing payload of
 * every kept record for device (see rr_passing_payload(); NULL counts as "").
 * Records whose file or number is missing or not a positive integer are
 * counted in skipped; all others are kept in order (rr_passing_read()).
 * Release with rr_passing_list_cleanup(); the list does not refer to body.
 * A top-level null is an empty page. A page of N records has
 * count + skipped == N.
 *
 * The body must be one strict JSON text exactly as jsonutil_parse() wants it
 * (at most RR_MAX_DEPTH levels, the page array counting as one), or the whole
 * page is refused and out is zeroed: nothing of a refused page survives, so
 * the poller cannot publish part of it. It is not parsed into one tree: a
 * json-c tree costs about 14 times the JSON text it holds, which made a page
 * of 10,000 records cost 60 MiB. A scanner walks the top-level array and each
 * record is parsed on its own, turned into its payload and freed, so memory
 * is the body plus the payloads (the records plus ~200 bytes each).
 */
enum rr_error rr_parse_detections(const char *body, size_t len, const char *device,
                                  struct rr_passing_list *out, char *detail, size_t detail_len);
void rr_passing_list_cleanup(struct rr_passing_list *list);

/*
 * Classifies one detection record (borrowed) into p->kind, p->file and p->no
 * (nothing else of p is touched); false when it is to be skipped.
 * A record with a "no" object is an Ubidium detection, else one with
 * "TrackpingNo" a trackping, else one with "PassingNo" a decoder passing.
 * Numbers are JSON integers or decimal digit strings ("12"), and >= 1.
 */
bool rr_passing_read(struct rr_passing *p, struct json_object *rec);

/*
 * The passing payload of SPEC section 3 for the record rec (borrowed) that
 * rr_passing_read() classified into p: id ("<device>/<file>/<no>", device as
 * given), device, file, no, kind ("passing", "detection", "trackping"),
 * transponder, time (as sent), time_ms (UTC epoch ms when the time parses),
 * loop, channel, hits, rssi, battery (volts) when present, and raw. device is
 * the id the poller asked for (the record's own id is in raw). Returns
 * malloc'd JSON text (caller frees), or NULL on no memory.
 * Every member is always there, null when the record lacks it or has the
 * wrong type. time_ms is rounded down (also before 1970) and covers the years
 * 0000/0001 of zero-start devices. device is cut at RR_ID_MAX and at its first
 * invalid UTF-8 byte (same cut in id and device); NULL counts as "". Parse an
 * id from the right: a device id may contain '/'. len may be NULL.
 */
char *rr_passing_payload(const struct rr_passing *p, struct json_object *rec, const char *device,
                         size_t *len);

/* Writes "<device>/<file>/<no>" into out (RR_PASSING_ID_MAX + 1 bytes). */
void rr_passing_id(char *out, size_t cap, const char *device, int64_t file, int64_t no);

/*
 * Parses an RFC 3339 time as the API writes it ("2025-05-18T15:01:36.499868446+01:00",
 * 0-9 fractional digits, "Z" or a +hh:mm / -hh:mm offset) into UTC nanoseconds
 * since the epoch. Returns 0, or -1 for anything else (nothing written).
 * int64 nanoseconds only reach 1677-09-21..2262-04-11: a valid time outside
 * that range (the API writes years 0000/0001 for zero-start run-time devices)
 * also returns -1 here; rr_parse_time_parts() takes those.
 */
int rr_parse_time(const char *s, int64_t *utc_ns);

/*
 * The same grammar, any year 0000-9999: whole UTC seconds since the epoch
 * (negative before 1970) and the nanoseconds within that second (0..999999999,
 * so the instant is *utc_sec + *nsec / 1e9 even before 1970). A leap second
 * ":60" is accepted and counts as the next second. Returns 0, or -1 (nothing
 * written).
 */
int rr_parse_time_parts(const char *s, int64_t *utc_sec, int32_t *nsec);

#endif
