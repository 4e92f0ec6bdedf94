/*
 * fuzz_command.c - decoder commands over MQTT: the request payload, the
 * allow-list, the decoder's reply and the response payload.
 *
 * The input is used as the request body and as the decoder's HTTP reply.
 * Checks: a parsed command is 1..COMMAND_MAX bytes of printable ASCII; its
 * name is a prefix of it, upper-cased; an allow-list naming exactly that name
 * allows it and an empty one allows nothing; the transaction is JSON text of
 * at most COMMAND_TRANSACTION_MAX bytes; every response payload (ok and
 * error, with the reply, the error text and the transaction) is strict JSON
 * that echoes the transaction.
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "race2mqtt/command.h"

static void check_command(const char *cmd)
{
    size_t n = strlen(cmd);
    char name[COMMAND_MAX + 1], allow[COMMAND_MAX + 16];

    FUZZ_ASSERT(n >= 1 && n <= COMMAND_MAX, "command length");
    for (size_t i = 0; i < n; i++)
        FUZZ_ASSERT(cmd[i] >= 0x20 && cmd[i] <= 0x7e, "command not printable ASCII");
    command_name(cmd, name, sizeof name);
    size_t m = strlen(name);
    FUZZ_ASSERT(m <= n && strncasecmp(name, cmd, m) == 0, "name not a prefix of the command");
    for (size_t i = 0; i < m; i++)
        FUZZ_ASSERT(!islower((unsigned char)name[i]) && !strchr("; =", name[i]), "name chars");
    FUZZ_ASSERT(!command_allowed(cmd, NULL) && !command_allowed(cmd, ""),
                "allowed by an empty list");
    if (m > 0 && !strchr(name, ',')) {
        snprintf(allow, sizeof allow, "X, %s ,Y", name);
        FUZZ_ASSERT(command_allowed(cmd, allow), "not allowed by a list naming it");
    }
}

static void respond(const struct command_result *r)
{
    size_t len = 0;
    char *payload = command_response(r, &len);
    FUZZ_ASSERT(payload && strlen(payload) == len, "response length");
    struct json_object *o = fuzz_json("command response is not JSON", payload, len);
    struct json_object *tx = NULL;
    FUZZ_ASSERT(json_object_is_type(o, json_type_object), "response not an object");
    if (r->transaction)
        FUZZ_ASSERT(json_object_object_get_ex(o, "transaction", &tx), "transaction not echoed");
    json_object_put(o);
    free(payload);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct command_request req;
    char err[256];
    char *body = malloc(size ? size : 1);
    FUZZ_ASSERT(body, "out of memory");
    memcpy(body, data, size);

    int rc = command_parse(body, size, &req, err, sizeof err);
    FUZZ_ASSERT(rc == 0 || rc == -1, "command_parse result");
    if (rc == 0)
        check_command(req.command);
    if (req.transaction) {
        size_t tlen = strlen(req.transaction);
        FUZZ_ASSERT(tlen <= COMMAND_TRANSACTION_MAX, "transaction too long");
        json_object_put(fuzz_json("transaction is not JSON", req.transaction, tlen));
    }

    char *reply = command_reply(body, size);
    FUZZ_ASSERT(reply, "command_reply failed");

    struct command_result ok = {.ok = true,
                                .device = "D-4013",
                                .command = rc == 0 ? req.command : NULL,
                                .response = reply,
                                .http_status = 200,
                                .transaction = req.transaction};
    respond(&ok);
    /* As cmdworker answers a refused request, or an API error status. */
    struct command_result bad = {.device = "D-4013",
                                 .command = rc == 0 ? req.command : NULL,
                                 .response = rc == 0 ? reply : NULL,
                                 .http_status = rc == 0 ? 500 : 0,
                                 .error = rc == 0 ? "the API answered HTTP 500" : err,
                                 .transaction = req.transaction};
    respond(&bad);

    free(reply);
    command_request_cleanup(&req);
    command_request_cleanup(&req);
    free(body);
    return 0;
}
