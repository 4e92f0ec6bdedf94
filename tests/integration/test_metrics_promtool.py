#!/usr/bin/python3
"""
GET /metrics as Prometheus sees it: Debian's `promtool check metrics` finds
nothing to complain about after a run that moves every family.

One gateway, behind tests/integration/faultproxy.py, with the socket fault of
tests/faults/sockfault.c preloaded, a token and a 1 MiB journal, polling the
fake RACE RESULT API (tests/fakerr). In order: a burst of events breaks the
broker socket under one PUBLISH (an abandoned paho client, failed
publishes), an event the "broker" keeps dropping the connection at (a
stall), the broker stopped until the journal is full (503 refusals,
reconnects), one SmartRace event of every family, refused requests (400,
401, 405, 413), every kind of GET, a preflight, RACE RESULT passings, a
failing API request and a decoder command, and a live page stream held open.
Then /metrics must pass `promtool check metrics` with no output at all,
every family declared with # TYPE must have a sample, and every counter the
run moved must be above 0. The families and labels the run cannot move are
listed in UNMOVABLE with the reason; a family the test does not know yet
fails it, so that a new counter comes with a way to move it.
"""
import json
import os
import re
import shutil
import socket
import subprocess

import faultproxy
import harness

# scripts/deps.sh takes it out of Debian's prometheus package (see there why).
PROMTOOL = "/usr/local/lib/race2mqtt-test/promtool"
if not os.access(PROMTOOL, os.X_OK):
    PROMTOOL = shutil.which("promtool") or PROMTOOL
TOKEN = "tok-promtool-5d1e"
KEY = "rr-promtool-key-0c4f"
CID = 846
DEV = "D-1"
# The QoS 1 PUBLISH under which sockfault breaks the socket: past everything
# the gateway publishes at startup (asserted), inside the burst.
FAULT_AT = 120
BURST = 300
MARKER = "STALL-MARKER-93b1"
PAD = "p" * 60000  # 60 KB events: a 1 MiB journal is full after about 16

# Counters that stay 0 whatever the run does, by family and label value
# (None: the unlabelled sample), with the reason.
UNMOVABLE = {
    ("race2mqtt_http_responses_total", "500"): "answered only when the gateway runs out "
                                               "of memory",
    ("race2mqtt_http_responses_total", "other"): "no answer has a status outside the "
                                                 "table in gateway/metrics.c",
}
COUNTERS = {
    "race2mqtt_events_in_total", "race2mqtt_events_out_total",
    "race2mqtt_http_responses_total", "race2mqtt_events_rejected_total",
    "race2mqtt_events_refused_total", "race2mqtt_journal_commits_total",
    "race2mqtt_mqtt_publish_failed_total", "race2mqtt_state_published_total",
    "race2mqtt_raceresult_passings_total", "race2mqtt_raceresult_requests_total",
    "race2mqtt_raceresult_errors_total", "race2mqtt_mqtt_stalls_total",
    "race2mqtt_mqtt_clients_abandoned_total", "race2mqtt_mqtt_reconnects_total",
    "race2mqtt_raceresult_commands_total",
}
COMMANDS = 'race2mqtt_raceresult_commands_total{result="%s"}'
HISTOGRAMS = {"race2mqtt_publish_latency_seconds"}
# Gauges and the value this run leaves them at (a callable checks it).
GAUGES = {
    "race2mqtt_broker_connected": lambda v: v == 1,
    "race2mqtt_mqtt_stalled": lambda v: v == 0,
    "race2mqtt_queue_depth": lambda v: v == 0,
    "race2mqtt_journal_bytes": lambda v: v >= 0,
    "race2mqtt_journal_max_bytes": lambda v: v == 1 << 20,
    "race2mqtt_last_seq": lambda v: v > BURST,
    "race2mqtt_http_streams": lambda v: v == 1,
    "race2mqtt_broker_server": lambda v: v == 1,
    "race2mqtt_broker_info": lambda v: v == 1,
}
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse_metrics(text):
    """({family: type}, {family: [(sample name, labels text, value)]})."""
    types = {}
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^# TYPE (\S+) (\S+)$", line)
        if m:
            types[m.group(1)] = m.group(2)
            samples.setdefault(m.group(1), [])
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not a sample line: %r" % line
        name = m.group(1)
        family = name
        if name not in types:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert family in types, "sample %s before its # TYPE" % name
        samples[family].append((name, m.group(2) or "", float(m.group(3))))
    return types, samples


def label_value(labels):
    """The one label's value of '{k="v"}', None for no labels."""
    m = re.match(r'^\{[a-z_]+="([^"]*)"', labels)
    return m.group(1) if m else None


class MetricsPromtoolTests(harness.IntegrationCase):

    def metrics(self, gw):
        r = gw.request("GET", "/metrics")
        self.assertEqual(r.status, 200, r)
        return r.body.decode("utf-8")

    def gauge(self, gw, name):
        return harness.metric(gw, name)

    def wait_metric(self, gw, name, pred, timeout, what):
        v = harness.wait_until(lambda: (lambda x: x is not None and pred(x))(
            self.gauge(gw, name)), timeout, 0.1)
        self.assertTrue(v, "%s: %s = %s after %ds" % (what, name, self.gauge(gw, name), timeout))

    def drained(self, gw, what):
        self.wait_metric(gw, "race2mqtt_queue_depth", lambda v: v == 0, 30, what)

    def publishes_from(self, broker, gw):
        """First-time QoS 1 PUBLISHes the broker received from the gateway."""
        return len(harness.log_lines(broker.log_path, r"Received PUBLISH from %s \(d0, q1,"
                                     % re.escape(gw.client_id)))

    def test_promtool_after_every_family_moved(self):
        self.assertTrue(os.access(PROMTOOL, os.X_OK), "promtool missing: bash "
                        "scripts/deps.sh takes it out of the prometheus package")
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world={
            "devices": [{"id": DEV, "type": "Decoder", "name": "Finish", "files": {"1": 0}}]})
        self.track(harness._Stoppable(rr))
        broker = self.start_broker(d)
        proxy = self.track(faultproxy.FaultProxy(broker.port)).start()
        # Screens every connection from now on; a clean session ends it.
        proxy.refuse(MARKER.encode(), unless_clean_start=True)
        sub = self.subscribe(broker.port, ["smartrace/#", "raceresult/#"], qos=1)
        extra = harness.rr_extra(rr, KEY, CID, start="all")
        extra["store"] = {"max_bytes": "1M", "segment_bytes": "64K"}
        gw = self.track(harness.Gateway(d, proxy.port, token=TOKEN, extra=extra,
                                        env=harness.sockfault_env(FAULT_AT)))
        gw.start()
        ret = harness.wait_until(lambda: sub.on_topic("raceresult/%s/availability" % DEV), 15)
        self.assertTrue(ret, "no availability of %s" % DEV)

        # Startup published what it publishes once things are quiet.
        counts = []

        def quiet():
            counts.append(self.publishes_from(broker, gw))
            return len(counts) > 10 and counts[-1] == counts[-11]
        harness.wait_until(quiet, 15, 0.1)
        startup = counts[-1]
        print("startup: %d QoS 1 publishes" % startup)
        self.assertLess(startup, FAULT_AT - 20, "startup publishes more than before: raise "
                        "FAULT_AT so that the fault still hits the burst")

        # 1. The socket breaks under one publish of the burst.
        for i in range(BURST):
            r = gw.post({"time": 1700000000000 + i, "event_type": "test.burst",
                         "event_data": {"i": i}})
            self.assertEqual(r.status, 200, r)
        self.assertTrue(harness.wait_until(lambda: harness.log_lines(
            gw.log_path, r"sockfault: shut the broker socket down"), 10), "no fault injected")
        self.drained(gw, "after the socket fault")

        # 2. The broker drops the connection at one event until a clean session.
        self.assertOk(gw.post({"time": 1700000001000, "event_type": "test.stall",
                               "event_data": {"mark": MARKER}}))
        self.wait_metric(gw, "race2mqtt_mqtt_stalls_total", lambda v: v >= 1, 60, "stall")
        self.drained(gw, "after the stall")

        # 3. Broker down: the journal fills, then 503.
        broker.stop()
        self.assertTrue(gw.wait_readyz(503, 20), "/readyz not 503 with the broker down")
        full = None
        for i in range(60):
            r = gw.post({"event_type": "test.full", "event_data": {"i": i, "pad": PAD}})
            if r.status != 200:
                full = r
                break
        self.assertIsNotNone(full, "60 x 60 KB accepted into a 1 MiB journal")
        self.assertJsonError(full, 503)
        broker.start()
        self.assertTrue(gw.wait_readyz(200, 40), "no reconnect after the broker came back")
        self.drained(gw, "after the outage")
        self.assertTrue(harness.wait_until(lambda: gw.post(
            {"event_type": "test.after", "event_data": {}}).status == 200, 30, 0.5),
            "events still refused after the broker came back")

        # 4. One event of every family (the fixtures cover the SPEC table).
        fixtures = harness.load_fixture_dir(os.path.join(harness.FIXTURES, "smartrace"))
        families = set()
        for name, raw in fixtures:
            r = gw.post(raw)
            self.assertEqual(r.status, 200, "%s: %r" % (name, r))
            families.add(harness.expected_topic(json.loads(raw)).split("/")[1])
        print("families posted: %s" % " ".join(sorted(families)))

        # 5. Refused and other HTTP answers.
        self.assertJsonError(gw.post(b'{"event_type": '), 400)
        self.assertJsonError(harness.post(gw.http_port, "/", {"event_type": "x"}), 401)
        self.assertJsonError(gw.post({"event_type": "x"}, path="/metrics"), 405)
        self.assertJsonError(gw.post({"event_type": "x", "event_data": "p" * 70000}), 413)
        self.assertEqual(gw.request("PUT", "/").status, 405)
        self.assertEqual(gw.request("GET", "/no/such/page").status, 404)
        self.assertEqual(gw.request("OPTIONS", "/", headers={
            "Access-Control-Request-Method": "POST"}).status, 204)
        for path in ("/", "/api/state", "/api/events", "/healthz", "/readyz"):
            self.assertEqual(gw.request("GET", path + "?token=" + TOKEN).status, 200, path)

        # 6. RACE RESULT: passings, a failing request, a command.
        rr.add_detections(DEV, 25)
        self.wait_metric(gw, "race2mqtt_raceresult_passings_total", lambda v: v >= 25, 15,
                         "passings")
        errors = self.gauge(gw, "race2mqtt_raceresult_errors_total")
        rr.fail_next(1, 500, path_prefix="/customers")
        self.wait_metric(gw, "race2mqtt_raceresult_errors_total", lambda v: v > errors, 15,
                         "API error")
        harness.wait_subscribed(broker, gw.client_id, ["raceresult/+/cmd"], {})
        harness.publish(broker.port, "raceresult/%s/cmd" % DEV, "GETSTATUS")
        self.assertTrue(sub.wait_message(lambda m: m.topic == "raceresult/%s/cmd/response"
                                         % DEV, 15), "no command response")
        self.wait_metric(gw, COMMANDS % "ok", lambda v: v == 1, 15, "command answered")
        harness.publish(broker.port, "raceresult/%s/cmd" % DEV, json.dumps({"command": 5}))
        self.wait_metric(gw, COMMANDS % "error", lambda v: v == 1, 15, "malformed command")
        # Retained: kept as such by Retain As Published (MQTT 5), never run.
        harness.publish(broker.port, "raceresult/%s/cmd" % DEV, "GETSTATUS", retain=True)
        self.wait_metric(gw, COMMANDS % "ignored", lambda v: v >= 1, 15, "retained command")
        harness.publish(broker.port, "raceresult/%s/cmd" % DEV, b"", retain=True)
        self.assertEqual(self.gauge(gw, COMMANDS % "ok"), 1, "a retained command ran")
        self.drained(gw, "at the end")

        # 7. A live page stream open while /metrics is read.
        stream = socket.create_connection(("127.0.0.1", gw.http_port), timeout=10)
        try:
            stream.sendall(("GET /events?token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % TOKEN).encode())
            head = stream.recv(4096)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:100])
            self.wait_metric(gw, "race2mqtt_http_streams", lambda v: v == 1, 10, "stream")
            text = self.metrics(gw)
        finally:
            stream.close()

        print("GET /metrics:\n" + text)
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        lint = p.stdout.decode("utf-8", "replace")
        print("promtool check metrics: exit status %d, %d bytes of output%s"
              % (p.returncode, len(lint), (":\n" + lint) if lint else ""))
        self.assertEqual((p.returncode, lint), (0, ""), "promtool on:\n" + text)

        types, samples = parse_metrics(text)
        known = COUNTERS | HISTOGRAMS | set(GAUGES)
        self.assertEqual(sorted(set(types) - known), [],
                         "families this test does not know: say how to move them")
        self.assertEqual(sorted(known - set(types)), [], "families gone from /metrics")
        for fam in COUNTERS:
            self.assertEqual(types[fam], "counter", fam)
        for fam in HISTOGRAMS:
            self.assertEqual(types[fam], "histogram", fam)
        for fam in GAUGES:
            self.assertEqual(types[fam], "gauge", fam)
        empty = sorted(f for f, s in samples.items() if not s)
        self.assertEqual(empty, [], "families declared without a sample")

        zero = []
        moved = 0
        for fam in sorted(COUNTERS):
            for name, labels, value in samples[fam]:
                key = (fam, label_value(labels))
                if key in UNMOVABLE:
                    continue
                moved += 1
                if value <= 0:
                    zero.append("%s%s" % (name, labels))
        for fam in HISTOGRAMS:
            count = [v for n, _, v in samples[fam] if n == fam + "_count"]
            moved += 1
            if count != [count[0]] or count[0] <= 0:
                zero.append(fam + "_count")
        print("counters checked above 0: %d samples; left out: %s"
              % (moved, ", ".join("%s{%s} (%s)" % (f, l, why)
                                 for (f, l), why in sorted(UNMOVABLE.items()))))
        self.assertEqual(zero, [], "counters this run moved are still 0")
        in_families = {label_value(l) for _, l, _ in samples["race2mqtt_events_in_total"]}
        self.assertEqual(families | {"other"}, in_families,
                         "the fixtures do not cover every event family")

        wrong = []
        for fam, ok in sorted(GAUGES.items()):
            vals = [v for _, _, v in samples[fam]]
            if len(vals) != 1 or not ok(vals[0]):
                wrong.append("%s = %r" % (fam, vals))
        self.assertEqual(wrong, [], "gauges")
        info = [l for _, l, _ in samples["race2mqtt_broker_info"]]
        self.assertEqual(len(info), 1, info)
        self.assertRegex(info[0], r'^\{url="[a-z]+://127\.0\.0\.1:%d",protocol="5"\}$'
                         % proxy.port)


if __name__ == "__main__":
    harness.main()
