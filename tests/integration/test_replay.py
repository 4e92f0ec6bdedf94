#!/usr/bin/python3
"""
race2mqtt-replay ($R2M_REPLAY) against the real gateway and mosquitto: the
shipped race (tests/fixtures/replay/race.jsonl) arrives complete, in order and
byte for byte, and leaves the retained state at the end of the race; a bad
file is refused before anything is sent; a refused or unreachable gateway is
exit 1 at the first event; the recorded gaps are capped and scaled as asked
(read from the tool's output, never from a clock); --loop and SIGTERM.
"""
import json
import os
import re
import signal
import subprocess

import harness

from harness import RACE, REPLAY
S = "smartrace/state/"
LINE_RE = re.compile(r"^line=(\d+) type=(\S+) status=(\d+) seq=(\d+|-) gap_ms=(\d+)$")


def run_replay(args, timeout=120):
    """Runs the tool to its end; returns (exit status, stdout, stderr)."""
    p = subprocess.run([REPLAY] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def sent_lines(stdout):
    """[(line, type, status, seq, gap_ms)] of the tool's per-event output."""
    out = []
    for text in stdout.splitlines():
        m = LINE_RE.match(text)
        if m:
            seq = None if m.group(4) == "-" else int(m.group(4))
            out.append((int(m.group(1)), m.group(2), int(m.group(3)), seq, int(m.group(5))))
    return out


def metric_sum(gw, name):
    """The sum over every label set of a sample in /metrics."""
    total = 0.0
    for line in gw.request("GET", "/metrics").body.decode().splitlines():
        parts = line.split()
        if len(parts) == 2 and (parts[0] == name or parts[0].startswith(name + "{")):
            total += float(parts[1])
    return total


def event_seq(m):
    if not m.topic.startswith("smartrace/") or m.topic.startswith(S):
        return None
    p = m.json()
    return p.get("seq") if isinstance(p, dict) else None


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def small(at_ms_list):
    """Recording lines of ui.lap_update events arriving at at_ms_list."""
    out = []
    for i, at in enumerate(at_ms_list):
        body = {"time": 1718035000000 + at, "event_type": "ui.lap_update",
                "event_data": {"controller_id": "1", "lap": i + 1, "laptime_raw": 7000 + i}}
        out.append({"at_ms": at, "body": json.dumps(body)})
    return out


class ReplayTests(harness.ReplayCase):

    def test_full_race(self):
        with open(RACE, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        bodies = [json.loads(r["body"]) for r in records]
        broker, gw = self.world()
        sub = self.subscribe(broker.port, ["smartrace/#"], qos=1)

        rc, out, err = run_replay(["--speed", "0", "--url", self.url(gw), RACE])
        self.assertEqual(rc, 0, "stdout:\n%s\nstderr:\n%s" % (out[-2000:], err))
        sent = sent_lines(out)
        self.assertEqual(len(sent), len(records), out[-2000:])
        self.assertEqual([s[1] for s in sent], [b["event_type"] for b in bodies])
        self.assertEqual({s[2] for s in sent}, {200})
        seqs = [s[3] for s in sent]
        self.assertNotIn(None, seqs)
        self.assertEqual(seqs, sorted(set(seqs)), "seqs not strictly increasing")
        self.assertEqual({s[4] for s in sent}, {0}, "--speed 0 waited")
        self.assertEqual(metric_sum(gw, "race2mqtt_events_in_total"), len(records))

        # Every event on its topic, in order, its data exactly as recorded.
        got = sub.wait_for(lambda msgs: set(seqs) <= {event_seq(m) for m in msgs} and msgs, 60)
        self.assertIsNotNone(got, "not every replayed event was published")
        by_seq = {}
        for m in sub.snapshot():
            s = event_seq(m)
            if s is not None:
                by_seq.setdefault(s, m)
        self.assertEqual(sorted(by_seq), seqs, "events published that were not replayed")
        for seq, body in zip(seqs, bodies):
            m = by_seq[seq]
            p = m.json()
            self.assertEqual(m.topic, harness.expected_topic(body))
            self.assertEqual(p["event_type"], body["event_type"])
            self.assertEqual(p["time"], body["time"])
            self.assertEqual(p["data"], body.get("event_data"), m.topic)

        # The retained state is the end of the race.
        result = bodies[-1]["event_data"]["result"]
        self.assertEqual(bodies[-1]["event_type"], "event.end")
        want = [str(result[k]["controller_id"]) for k in sorted(result, key=int)]
        # The state topics follow the event messages (the publisher sends
        # what changed after them), so wait for the last status to arrive.
        def ended():
            snap = harness.retained(broker.port, ["smartrace/state/#"])
            st = snap.get(S + "status")
            return snap if st is not None and st.payload == b"ended" else None
        snap = harness.wait_until(ended, 30, 0.2)
        self.assertIsNotNone(snap, "smartrace/state/status never became ended: %r"
                             % harness.retained(broker.port, ["smartrace/state/#"]).get(
                                 S + "status"))
        self.assertEqual(snap[S + "flag"].payload, b"checkered")
        self.assertEqual(snap[S + "weather"].payload, b"dry")
        self.assertEqual(snap[S + "vsc"].payload, b"retracted")
        standings = snap[S + "standings"].json()
        self.assertEqual([e["controller_id"] for e in standings], want)
        self.assertTrue(all(e["official"] for e in standings), standings)
        self.assertEqual([e["laps"] for e in standings],
                         [result[k]["laps"] for k in sorted(result, key=int)])
        self.assertEqual(standings[0]["driver"], "Marc", standings[0])
        for cid in want:
            c = snap[S + "controller/" + cid].json()
            self.assertFalse(c["in_pit"], c)
            self.assertEqual(c["penalty"] if c["penalty"] is not None else 0, 0, c)
            self.assertIn(c["damage"], (None, "none"), c)

    def test_bad_file_sends_nothing(self):
        _, gw = self.world()
        with open(RACE, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f][:6]
        cases = [
            (lines[:2] + [lines[2][:40]] + lines[3:], "not one JSON value"),
            (lines[:2] + ['{"at_ms": -3, "body": "{}"}'] + lines[3:], "at_ms is negative"),
            (lines[:2] + ['{"at_ms": 3, "body": 7}'] + lines[3:], "body must be"),
            (lines[:2] + [json.dumps({"at_ms": 3, "body": '{"time": 1}'})] + lines[3:],
             "body is not a SmartRace event"),
            (lines[:2] + [json.dumps({"at_ms": 3, "body": "{\"event_type\": \"x\"} !"})]
             + lines[3:], "body is not a SmartRace event"),
        ]
        path = os.path.join(self.dir, "race.jsonl")
        for content, reason in cases:
            write_lines(path, content)
            rc, out, err = run_replay(["--speed", "0", "--url", self.url(gw), path])
            self.assertEqual(rc, 2, "stdout %r stderr %r" % (out, err))
            self.assertRegex(err, r"(^|\n)%s:3: " % re.escape(path))
            self.assertIn(reason, err)
            self.assertEqual(sent_lines(out), [])
        self.assertEqual(metric_sum(gw, "race2mqtt_events_in_total"), 0)

        rc, _, err = run_replay(["--url", self.url(gw), os.path.join(self.dir, "missing.jsonl")])
        self.assertEqual(rc, 2)
        self.assertIn("missing.jsonl", err)
        write_lines(path, ["", "  "])
        rc, _, err = run_replay(["--url", self.url(gw), path])
        self.assertEqual(rc, 2)
        self.assertIn("no events", err)
        for args in (["--speed", "-1", RACE], ["--speed", "fast", RACE], ["--max-gap-s", "x", RACE],
                     [], [RACE, RACE], ["--url", "not a url", RACE]):
            rc, _, err = run_replay(args)
            self.assertEqual(rc, 2, "%r: %s" % (args, err))
        self.assertEqual(metric_sum(gw, "race2mqtt_events_in_total"), 0)

    def test_token(self):
        _, gw = self.world(token="s3cret-token")
        path = os.path.join(self.dir, "three.jsonl")
        write_lines(path, small([1000, 1100, 1200]))

        rc, out, err = run_replay(["--speed", "0", "--url", self.url(gw), "--token", "wr0ng-t0ken",
                                   path])
        self.assertEqual(rc, 1, "stdout %r stderr %r" % (out, err))
        self.assertIn("401", err)
        self.assertIn("three.jsonl:1:", err)
        self.assertEqual(len(err.strip().splitlines()), 1, "more than one message: %r" % err)
        self.assertNotIn("wr0ng", err, "the token is echoed")
        self.assertEqual(metric_sum(gw, "race2mqtt_http_responses_total{status=\"401\"}"), 1,
                         "the replay went on after the first refusal")

        rc, out, err = run_replay(["--speed", "0", "--url", self.url(gw), path])
        self.assertEqual(rc, 1, "no token: %r" % err)

        rc, out, err = run_replay(["--speed", "0", "--url", self.url(gw), "--token",
                                   "s3cret-token", path])
        self.assertEqual(rc, 0, err)
        self.assertEqual([s[2] for s in sent_lines(out)], [200, 200, 200])
        self.assertEqual(metric_sum(gw, "race2mqtt_events_in_total"), 3)

    def test_unreachable(self):
        path = os.path.join(self.dir, "three.jsonl")
        write_lines(path, small([1000, 1100, 1200]))
        port = harness.free_port()
        rc, out, err = run_replay(["--speed", "0", "--url",
                                   "http://127.0.0.1:%d/x?token=hidden" % port, path])
        self.assertEqual(rc, 1, err)
        self.assertIn("cannot POST to http://127.0.0.1:%d/x" % port, err)
        self.assertNotIn("hidden", err)
        self.assertEqual(sent_lines(out), [])

    def test_gaps_scaled_and_capped(self):
        _, gw = self.world()
        path = os.path.join(self.dir, "gaps.jsonl")
        write_lines(path, small([1000, 3000, 5000]))

        rc, out, err = run_replay(["--speed", "1000", "--url", self.url(gw), path])
        self.assertEqual(rc, 0, err)
        self.assertEqual([s[4] for s in sent_lines(out)], [0, 2, 2])

        rc, out, err = run_replay(["--speed", "1", "--max-gap-s", "0.05", "--url", self.url(gw),
                                   path])
        self.assertEqual(rc, 0, err)
        self.assertEqual([s[4] for s in sent_lines(out)], [0, 50, 50])

        rc, out, err = run_replay(["--speed", "2", "--max-gap-s", "0.1", "--url", self.url(gw),
                                   path])
        self.assertEqual(rc, 0, err)
        self.assertEqual([s[4] for s in sent_lines(out)], [0, 50, 50])

        rc, out, err = run_replay(["-q", "--speed", "0", "--url", self.url(gw), path])
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, "")
        self.assertEqual(metric_sum(gw, "race2mqtt_events_in_total"), 12)

    def test_object_body_and_raw_bytes(self):
        broker, gw = self.world()
        sub = self.subscribe(broker.port, ["smartrace/#"], qos=1)
        raw = '{ "event_type" : "ui.show_message", "time": 5, "event_data": "caf\\u00e9 \\/ ok" }'
        path = os.path.join(self.dir, "mixed.jsonl")
        write_lines(path, [
            {"at_ms": 1, "body": raw},
            '{"at_ms": 2, "body": {"event_type": "events.weather_change", "event_data": "wet"}}',
        ])
        rc, out, err = run_replay(["--speed", "0", "--url", self.url(gw), path])
        self.assertEqual(rc, 0, err)
        seqs = [s[3] for s in sent_lines(out)]
        self.assertEqual(len(seqs), 2)
        got = sub.wait_for(lambda msgs: set(seqs) <= {event_seq(m) for m in msgs}, 20)
        self.assertIsNotNone(got)
        msgs = {event_seq(m): m for m in sub.snapshot() if event_seq(m) is not None}
        self.assertEqual(msgs[seqs[0]].topic, "smartrace/other/ui.show_message")
        self.assertEqual(msgs[seqs[0]].json()["data"], "café / ok")
        self.assertEqual(msgs[seqs[1]].topic, "smartrace/weather/change")
        self.assertEqual(msgs[seqs[1]].json()["data"], "wet")

    def test_loop_until_sigterm(self):
        _, gw = self.world()
        path = os.path.join(self.dir, "two.jsonl")
        write_lines(path, small([1000, 1001]))
        p = subprocess.Popen([REPLAY, "--loop", "--speed", "0", "-q", "--url", self.url(gw),
                              path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
        try:
            looped = harness.wait_until(
                lambda: metric_sum(gw, "race2mqtt_events_in_total") >= 6, 60)
            self.assertTrue(looped, "--loop did not start over")
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 128 + signal.SIGTERM, err)
        self.assertIn(b"stopped by signal 15", err)

    def test_sigterm_in_a_long_gap(self):
        _, gw = self.world()
        path = os.path.join(self.dir, "gap.jsonl")
        write_lines(path, small([1000, 601000]))
        p = subprocess.Popen([REPLAY, "--speed", "1", "--max-gap-s", "600", "--url",
                              self.url(gw), path], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            first = p.stdout.readline().decode()
            self.assertTrue(first.startswith("line=1 "), first)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 128 + signal.SIGINT, err)
        self.assertIn(b"after 1 events", err)
        self.assertEqual(metric_sum(gw, "race2mqtt_events_in_total"), 1)


if __name__ == "__main__":
    harness.main()
