/*
 * command.h - decoder commands over MQTT: request parsing, the allow-list and
 * the response payload. Pure: no I/O, no globals, no locks.
 *
 * Request on <base>/<device>/cmd: a plain string ("GETSTATUS") or JSON
 * {"command": "GETSTATUS", "transaction": <any JSON value>}. Response:
 * {"status": "ok"|"error", "device", "command", "response": <decoder reply>,
 *  "http_status": <int>, "error": <text, on error>, "transaction": <echoed>}.
 */
#ifndef RACE2MQTT_COMMAND_H
#define RACE2MQTT_COMMAND_H

#include <stdbool.h>
#include <stddef.h>

#define COMMAND_MAX 256          /* bytes of a command */
#define COMMAND_TRANSACTION_MAX 1024 /* bytes of the transaction as JSON text */

struct command_request {
    char command[COMMAND_MAX + 1];
    char *transaction; /* JSON text of the transaction value, or NULL; owned (free()) */
};

/*
 * Parses a request body. A body that is a JSON object is read as
 * {"command", "transaction"}; anything else is the command itself, as plain
 * text (trimmed). The command must be 1..COMMAND_MAX bytes of printable ASCII
 * (spaces, ';', '&' and the like allowed; no control characters). Returns 0,
 * or -1 with a reason in err (the transaction, if it could be read, is kept in
 * req so that the error response can echo it). Release with
 * command_request_cleanup().
 */
int command_parse(const void *body, size_t len, struct command_request *req, char *err,
                  size_t errlen);
void command_request_cleanup(struct command_request *req);

/*
 * The command's name (what the allow-list names): its first word, up to ';',
 * ' ', '=' or the end, upper-cased, into name (at most COMMAND_MAX + 1 bytes).
 */
void command_name(const char *command, char *name, size_t cap);

/* True when the command's name is in allowed (comma-separated, any case). */
bool command_allowed(const char *command, const char *allowed);

struct command_result {
    bool ok;
    const char *device;
    const char *command;     /* may be NULL when the request had none */
    const char *response;    /* the decoder's reply, verbatim, or NULL */
    long http_status;        /* 0 when the API was not called */
    const char *error;       /* NULL when ok */
    const char *transaction; /* JSON text to echo, or NULL */
};

/* The response payload (malloc'd JSON text, caller frees), or NULL on no memory. */
char *command_response(const struct command_result *r, size_t *len);

/*
 * The decoder's reply from the cmd endpoint's body {"Response": "..."}: a
 * malloc'd copy of the string (caller frees), or of the whole body when it is
 * not that shape, with bytes that are not UTF-8 (and NUL) replaced by '?' so
 * that it can go into a JSON string. NULL on no memory.
 */
char *command_reply(const char *body, size_t len);

#endif
