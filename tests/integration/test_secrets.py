#!/usr/bin/python3
"""
Secrets stay secret (SPEC section 7.5): the RACE RESULT API key, the ingest
token and the MQTT password, given through the config file, the environment
and the *_file keys (one run each), never appear in anything the gateway
produces, at log level debug, through every path we can drive:

- a broker that refuses the gateway's password until its password file is
  fixed (SIGHUP), then accepts it;
- the fake RACE RESULT API refusing the token (401), answering a token it
  cannot use, answering 500, revoking tokens and refusing detections (401);
- decoder commands over MQTT: ok, refused by the API (500), not allowed;
- webhooks: accepted (token in the URL and as Bearer), missing or wrong token
  (401), malformed JSON and no event_type (400), too large (413), wrong method
  (405), OPTIONS, and raw requests that libmicrohttpd refuses;
- --check-config (the secrets shown as ***) and configuration errors.

Searched, case-insensitively, for each secret and for every token the fake
API issued: the gateway's log (stdout and stderr), every MQTT message (topic
and payload, live on '#' and retained afterwards), GET /metrics, GET /, every
HTTP answer (headers and body), --check-config output and error messages, and
the files under store.dir (journal, cursors). The wrong tokens clients sent
must not be logged either (a typo of the real token is nearly the token).
"""
import json
import os
import re
import signal
import time

import paho.mqtt.client as mqtt

import harness

CID = 846
DEV = "D-SEC"
USER = "race2mqtt"
READER = "reader"
READER_PASSWORD = "reader-pass-7d1e"
MAX_BODY = 4096


def secrets_for(mode):
    """Distinct secrets per run, so a leak names the path it came through. The
    second element is the part searched for: a distinctive core, so a
    truncated or re-cased copy is found too."""
    return {
        "raceresult.api_key": "SeCrEt-ApIkEy-7f3a-" + mode,
        "http.token": "SeCrEt-InGeSt-9b1c-" + mode,
        "mqtt.password": "SeCrEt-MqTtPw-4d2e-" + mode,
    }


def core(secret):
    """'SeCrEt-ApIkEy-7f3a-conf' -> 'ApIkEy-7f3a': found in any copy of the
    secret that keeps its middle."""
    return secret.split("-", 1)[1].rsplit("-", 1)[0]


def find_leaks(sources, needles):
    """sources {label: bytes}, needles {name: text} -> ['name in label: ...context']."""
    found = []
    for label, data in sources.items():
        low = data.lower()
        for name, text in needles.items():
            i = low.find(text.lower().encode())
            if i >= 0:
                ctx = data[max(0, i - 80):i + len(text) + 40].decode("utf-8", "replace")
                found.append("%s in %s: ...%s..." % (name, label, ctx))
    return found


class VerboseGateway(harness.Gateway):
    """A Gateway started with -v (debug logging) over log.level = info."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.sections["log"]["level"] = "info"

    def _spawn(self, argv, env=None):
        super()._spawn(argv + ["-v"], env)


class SecretsTests(harness.IntegrationCase):

    def test_scanner_finds_a_planted_secret(self):
        """The search itself works: a secret, or its core in another case, is found."""
        s = secrets_for("self")
        needles = {k: core(v) for k, v in s.items()}
        self.assertEqual(find_leaks({"x": b"nothing here"}, needles), [])
        self.assertEqual(len(find_leaks({"x": b"key=" + s["raceresult.api_key"].encode()},
                                        needles)), 1)
        self.assertEqual(len(find_leaks({"x": core(s["mqtt.password"]).upper().encode()},
                                        needles)), 1)

    def test_secrets_from_config_file(self):
        self.run_every_path("conf")

    def test_secrets_from_environment(self):
        self.run_every_path("env")

    def test_secrets_from_files(self):
        self.run_every_path("file")

    # ---------------------------------------------------------------------

    def gateway_config(self, d, mode, rr, broker, sec):
        """A Gateway whose three secrets come from the config file, the
        environment or *_file keys."""
        extra = harness.rr_extra(rr, sec["raceresult.api_key"], CID, start="all",
                                 amount=10, poll_interval_ms=200)
        extra["mqtt"] = {"username": USER}
        extra["http"] = {"max_body": str(MAX_BODY)}
        env = {}
        if mode == "conf":
            extra["mqtt"]["password"] = sec["mqtt.password"]
            extra["http"]["token"] = sec["http.token"]
        else:
            del extra["raceresult"]["api_key"]
            if mode == "env":
                env = {"RACE2MQTT_RACERESULT_API_KEY": sec["raceresult.api_key"],
                       "RACE2MQTT_HTTP_TOKEN": sec["http.token"],
                       "RACE2MQTT_MQTT_PASSWORD": sec["mqtt.password"]}
            else:
                for key, value in sec.items():
                    section, name = key.split(".")
                    path = os.path.join(d, "secret-" + name)
                    with open(path, "w") as f:
                        f.write(value + "\n")   # one trailing newline is dropped
                    extra[section][name + "_file"] = path
        return self.track(VerboseGateway(d, broker.port, extra=extra, env=env))

    def run_every_path(self, mode):
        t0 = time.monotonic()
        sec = secrets_for(mode)
        token = sec["http.token"]
        wrong = {"wrong token (query)": "SeCrEt-WrOnGq-31c7-" + mode,
                 "wrong token (bearer)": "SeCrEt-WrOnGb-52d8-" + mode}
        bad_api_token = "SeCrEt-UnUsAbLe-0a9f " + mode   # a space: not usable in a header
        d = self.tmpdir()

        # RACE RESULT: refuse the key once (401), or (env run) hand out a token
        # the gateway cannot use; each costs a backoff of 2 s or more.
        rr = harness.fake_raceresult(api_key=sec["raceresult.api_key"], customer=CID, world={
            "devices": [{"id": DEV, "type": "Decoder", "files": {"1": 12},
                         "replies": {"GETSTATUS": "STATUS;1;OK",
                                     "GETINFO": {"status": 500, "reply": "decoder busy"}}}]})
        self.track(harness._Stoppable(rr))
        if mode == "env":
            rr.fail_next(1, 200, path_prefix="/token",
                         body={"access_token": bad_api_token, "expires_in": 60})
        else:
            rr.refuse_token_next(1, 401)

        # The broker does not know the gateway's password yet.
        pw = harness.make_password_file(d, {USER: "an-older-password-1",
                                            READER: READER_PASSWORD})
        broker = self.track(harness.Broker(d, persistence=False,
                                           extra_conf=harness.broker_security_conf(
                                               password_file=pw))).start()
        auth = dict(username=READER, password=READER_PASSWORD)
        sub = self.track(harness.SecureSubscriber(broker.port, ["#"], protocol=mqtt.MQTTv5,
                                                  **auth)).start()
        col = harness.PassingCollector(sub)

        gw = self.gateway_config(d, mode, rr, broker, sec)
        gw.start(wait=False)
        gw.wait_healthy()
        refused = harness.wait_until(lambda: harness.log_lines(
            gw.log_path, r"mqtt: cannot connect"), 10)
        self.assertTrue(refused, "the broker's refusal of the password is not logged")
        harness.make_password_file(d, {USER: sec["mqtt.password"], READER: READER_PASSWORD})
        broker.proc.send_signal(signal.SIGHUP)
        gw.wait_ready(20)
        conn = harness.log_lines(broker.log_path, r"New client connected .* as %s .*u'%s'"
                                 % (re.escape(gw.client_id), USER))
        self.assertTrue(conn, "the gateway did not log in as %s" % USER)

        # Every passing arrives despite the faults (the API key was used).
        ids = harness.rr_ids(DEV, {1: 12})
        self.assertEqual(sorted(col.wait_ids(ids, 30)), [])
        tok_reqs = rr.requests(route="POST /token")
        self.assertEqual([(r["status"], r["fault"]) for r in tok_reqs[:2]],
                         [(200 if mode == "env" else 401, "fail"), (200, None)], tok_reqs)
        self.assertEqual({r["headers"].get("apikey") for r in tok_reqs},
                         {sec["raceresult.api_key"]})

        # Tokens revoked, a 500, and a 401 on detections that survives one
        # renewal, then a 500 there.
        rr.expire_tokens()
        det = "/customers/%d/devices/%s/detections" % (CID, DEV)
        rr.fail_next(1, 500, path_prefix="/customers")
        rr.fail_next(2, 401, path_prefix=det)
        rr.fail_next(1, 500, path_prefix=det)
        rr.add_detections(DEV, 5)
        ids = harness.rr_ids(DEV, {1: 17})
        self.assertEqual(sorted(col.wait_ids(ids, 20)), [])

        # Decoder commands over MQTT.
        pub = self.track(harness.SecurePublisher(broker.port, **auth)).start()
        harness.wait_until(lambda: harness.log_lines(gw.log_path, r"decoder commands on"), 5)
        cmd = "raceresult/%s/cmd" % DEV
        pub.publish(cmd, "GETSTATUS")
        pub.publish(cmd, json.dumps({"command": "GETINFO", "transaction": 7}))
        pub.publish(cmd, "CLEARFILES")
        pub.publish(cmd, "GETTIME", response_topic="secrets/replies", correlation=b"c-1")
        pub.wait_all()
        answers = sub.wait_for(lambda msgs: [m for m in msgs if m.topic == cmd + "/response"]
                               if len([m for m in msgs if m.topic == cmd + "/response"]) >= 4
                               else None, 15)
        self.assertTrue(answers, "4 command answers")
        self.assertEqual(sorted(json.loads(m.payload)["status"] for m in answers),
                         ["error", "error", "ok", "ok"])

        # Webhooks, right and wrong.
        http_out = []

        def keep(label, resp):
            head = "".join("%s: %s\n" % kv for kv in sorted(resp.headers.items()))
            http_out.append(("%s -> %s\n%s\n" % (label, resp.status, head)).encode() + resp.body)
            return resp

        ev = {"event_type": "ui.lap_update",
              "event_data": {"controller_id": "1", "lap": 3, "laptime": "0:10.008"}}
        port = gw.http_port
        self.assertOk(keep("token in query", harness.post(port, "/", ev, token=token)))
        self.assertOk(keep("bearer", harness.post(port, "/", ev, bearer=token)))
        expect = [
            ("no token", 401, dict(body=ev)),
            ("wrong token (query)", 401, dict(body=ev, token=wrong["wrong token (query)"])),
            ("wrong token (bearer)", 401, dict(body=ev, bearer=wrong["wrong token (bearer)"])),
            ("malformed JSON", 400, dict(body=b'{"event_type": ', token=token)),
            ("no event_type", 400, dict(body={"event_data": {}}, token=token)),
            ("too large", 413, dict(body=b"x" * (MAX_BODY + 1), token=token)),
            ("other path", 200, dict(path="/webhook/x", body=ev, token=token)),
        ]
        for label, status, kw in expect:
            path = kw.pop("path", "/")
            r = keep(label, harness.post(port, path, **kw))
            self.assertEqual(r.status, status, "%s: %r" % (label, r))
        q = "?token=" + token
        for method, path, status in (("PUT", "/" + q, 405), ("DELETE", "/x" + q, 405),
                                     ("OPTIONS", "/" + q, 204), ("GET", "/" + q, 200),
                                     ("GET", "/healthz" + q, 200), ("GET", "/readyz" + q, 200),
                                     ("GET", "/metrics" + q, 200)):
            r = keep("%s %s?token=<token>" % (method, path[:-len(q)]), gw.request(method, path))
            self.assertEqual(r.status, status, "%s %s: %r" % (method, path, r))
        raw = [
            b"GET /?token=%s HTTP/9.9\r\nHost: x\r\n\r\n" % token.encode(),
            b"POST /?token=%s HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
            % token.encode(),
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Token %s\r\n\r\n" % token.encode(),
            b"POST /?token=%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\n" % token.encode(),
            b"POST /?token=%s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\""
            % token.encode(),
        ]
        for i, data in enumerate(raw):
            http_out.append(b"raw %d -> " % i + harness.raw_http(port, data, timeout=3,
                                                                shutdown_write=True))

        # What a user or a scraper can read.
        pages = {path: gw.request("GET", path)
                 for path in ("/metrics", "/", "/api/state", "/api/state" + q,
                              "/api/events?limit=100&" + q[1:])}
        self.assertEqual(pages["/metrics"].status, 200)
        self.assertEqual(pages["/"].status, 401)          # the page is behind the token
        self.assertEqual(pages["/api/state"].status, 401)
        self.assertEqual(pages["/api/state" + q].status, 200)
        self.assertEqual(pages["/api/events?limit=100&" + q[1:]].status, 200)
        late = harness.secure_retained(broker.port, ["#"], **auth)
        self.assertIn("race2mqtt/bridge/info", late, "no retained bridge/info")
        info = late["race2mqtt/bridge/info"].json()
        for key in sec:   # the redacted configuration shows each secret as set
            name = key.split(".")[1]
            self.assertEqual(harness.find_values(info, name), ["***"],
                             "bridge/info: %s not shown as ***: %r" % (key, info))

        self.assertEqual(gw.stop(), 0)
        sub.sync()
        msgs = sub.snapshot() + list(late.values())
        mqtt_text = b"".join(m.topic.encode() + b" " + m.payload + b"\n" for m in msgs)

        # --check-config: the secrets masked, and configuration errors.
        rc, check = harness.run_cli(["-v", "-c", gw.conf_path, "--check-config"], env=gw.env)
        self.assertEqual(rc, 0, check)
        for key in sec:
            section, name = key.split(".")
            want = "%s = ***" % name
            block = check.split("[%s]" % section, 1)[-1].split("\n[", 1)[0]
            self.assertIn(want, block.splitlines(), "--check-config: %s not masked" % key)
        errors = self.config_errors(d, mode, gw, sec)

        # Everything the gateway produced.
        with open(gw.log_path, "rb") as f:
            log = f.read()
        self.assertIn(b" debug ", log, "-v did not turn on debug logging")
        sources = {
            "gateway log": log,
            "MQTT messages": mqtt_text,
            "GET /metrics": pages["/metrics"].body,
            "GET /": pages["/"].body,
            "GET /api/state": pages["/api/state" + q].body,
            "GET /api/events": pages["/api/events?limit=100&" + q[1:]].body,
            "HTTP answers": b"\n".join(http_out),
            "--check-config": check.encode(),
            "config errors": errors.encode(),
        }
        api_tokens = sorted({r["headers"]["Authorization"].split(" ", 1)[1]
                             for r in rr.requests() if "Authorization" in r["headers"]})
        self.assertTrue(api_tokens, "the gateway never used an API token")
        needles = {k: core(v) for k, v in sec.items()}
        needles["unusable API token"] = bad_api_token
        for i, t in enumerate(api_tokens):
            needles["API token %d" % (i + 1)] = t[:16]
        leaks = find_leaks(sources, needles)
        leaks += find_leaks({"gateway log": log}, {k: core(v) for k, v in wrong.items()})
        store = {}
        for root, _, files in os.walk(gw.store_dir):
            for n in files:
                with open(os.path.join(root, n), "rb") as f:
                    store[os.path.relpath(os.path.join(root, n), gw.store_dir)] = f.read()
        leaks += find_leaks({"store.dir/" + k: v for k, v in store.items()}, needles)

        print("\n%s: %d secrets + %d API tokens + %d wrong tokens searched in: gateway log "
              "%d B (%d lines), %d MQTT messages %d B, /metrics %d B, / %d B, HTTP answers "
              "%d B (%d), --check-config %d B, config errors %d B, store.dir %d files %d B; "
              "%.1f s" % (mode, len(sec), len(api_tokens), len(wrong), len(log),
                          log.count(b"\n"), len(msgs), len(mqtt_text),
                          len(pages["/metrics"].body), len(pages["/"].body),
                          sum(map(len, http_out)), len(http_out), len(check), len(errors),
                          len(store), sum(map(len, store.values())), time.monotonic() - t0))
        self.assertEqual(leaks, [], "secrets found (%s)" % mode)

    def config_errors(self, d, mode, gw, sec):
        """Configuration errors that involve a secret: a value the gateway
        refuses, and a secret set twice. Each must exit 2 without echoing it."""
        out = []
        bad_token = sec["http.token"] + "/not-url-safe"
        if mode == "conf":
            cases = [({"http": {"token": bad_token}}, {}, ""),
                     ({"mqtt": {"password_file": os.path.join(d, "none")}}, {}, ""),
                     # A secret under the wrong key, and on a line without '='.
                     ({"mqtt": {"token": sec["http.token"]}}, {}, ""),
                     ({}, {}, "[mqtt]\npassword %s\n" % sec["mqtt.password"])]
        elif mode == "env":
            cases = [({}, {"RACE2MQTT_HTTP_TOKEN": bad_token}, ""),
                     ({}, {"RACE2MQTT_MQTT_PASSWORD_FILE": os.path.join(d, "none")}, ""),
                     ({}, {"RACE2MQTT_RACERESULT_API_KEY": sec["raceresult.api_key"] + "\t"},
                      "")]
        else:
            path = os.path.join(d, "bad-token")
            with open(path, "w") as f:
                f.write(bad_token + "\n")
            cases = [({"http": {"token_file": path}}, {}, ""),
                     ({"raceresult": {"api_key": "x"}}, {}, "")]
        for i, (change, env_change, raw) in enumerate(cases):
            g = harness.Gateway(d, gw.broker_port, extra={s: dict(kv) for s, kv in
                                                          gw.sections.items()})
            for s, kv in change.items():
                g.sections.setdefault(s, {}).update(kv)
            g.conf_path = os.path.join(d, "config-error-%d.conf" % i)
            g.write_conf()
            with open(g.conf_path, "a") as f:
                f.write(raw)
            env = dict(gw.env)
            env.update(env_change)
            rc, text = harness.run_cli(["-v", "-c", g.conf_path, "--check-config"], env=env)
            self.assertEqual(rc, 2, "config error case %d (%s) accepted:\n%s" % (i, mode, text))
            self.assertRegex(text, r"race2mqtt: .*: ", "case %d: no error message" % i)
            out.append(text)
        return "\n".join(out)


if __name__ == "__main__":
    harness.main()
