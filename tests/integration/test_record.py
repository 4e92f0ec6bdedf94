#!/usr/bin/python3
"""
smartrace.record end to end: a gateway records every accepted event (and
nothing it refused) with the body byte for byte and its arrival time, and
race2mqtt-replay plays the recording into a second gateway, which publishes
the same messages.
"""
import json
import os
import subprocess
import time

import harness

from harness import REPLAY


def event_msgs(sub):
    """{seq: payload dict without seq} of the event messages received."""
    out = {}
    for m in sub.snapshot():
        if m.topic.startswith("smartrace/") and not m.topic.startswith("smartrace/state/"):
            p = m.json()
            out.setdefault(p.pop("seq"), (m.topic, p))
    return out


class RecordTests(harness.IntegrationCase):

    def test_record_and_replay(self):
        d = self.tmpdir()
        rec = os.path.join(d, "rec", "race.jsonl")
        os.makedirs(os.path.dirname(rec))
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["smartrace/#"], qos=1)
        gw = self.start_gateway(d, broker, extra={"smartrace": {"record": rec}})
        bodies = [raw for _, raw in
                  harness.load_fixture_dir(os.path.join(harness.FIXTURES, "smartrace"))]
        self.assertGreater(len(bodies), 10)
        t0 = int(time.time() * 1000)
        seqs = []
        for i, raw in enumerate(bodies):
            seqs.append(self.assertOk(gw.post(raw)))
            if i == 3:
                self.assertEqual(gw.post(b'{"no_event_type": 1}').status, 400)
        t1 = int(time.time() * 1000)
        self.assertEqual(os.stat(rec).st_mode & 0o777, 0o640)
        with open(rec, "rb") as f:
            lines = f.read().split(b"\n")
        self.assertEqual(lines[-1], b"", "the recording does not end in a newline")
        records = [json.loads(line) for line in lines[:-1]]
        self.assertEqual([r["body"].encode() for r in records], bodies)
        ats = [r["at_ms"] for r in records]
        self.assertEqual(ats, sorted(ats))
        self.assertTrue(t0 - 1000 <= ats[0] and ats[-1] <= t1 + 1000, (t0, ats, t1))
        self.assertIsNotNone(sub.wait_for(lambda m: set(seqs) <= set(event_msgs(sub)), 30))
        first = event_msgs(sub)

        broker2 = self.start_broker(d)
        sub2 = self.subscribe(broker2.port, ["smartrace/#"], qos=1)
        gw2 = self.start_gateway(d, broker2)
        p = subprocess.run([REPLAY, "-q", "--speed", "0", "--url",
                            "http://127.0.0.1:%d/" % gw2.http_port, rec],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIsNotNone(sub2.wait_for(lambda m: len(event_msgs(sub2)) >= len(bodies), 30))
        second = event_msgs(sub2)
        self.assertEqual([second[s] for s in sorted(second)], [first[s] for s in seqs])


if __name__ == "__main__":
    harness.main()
