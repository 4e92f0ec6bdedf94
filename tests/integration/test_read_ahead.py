#!/usr/bin/python3
"""
Publishing does not wait for the disk (journal read-ahead), the answer does.

With tests/faults/slowsync.c every journal fdatasync takes SLOW_MS longer, so
the window between "queued" and "durable" is long and known:

- an event reaches the subscriber before the gateway answers 200, and the 200
  still comes only after the fdatasync (SPEC 7.1: durable before the answer);
- a gateway killed inside that window has published an event it never
  answered, and after the restart that event's seq is never given to another
  event (the journal's seq lease), while the seqs go on increasing.
"""
import threading
import time

import harness

SLOW_MS = 600
LAP = "smartrace/lap/1"


def lap(i):
    return {"time": 1700000000000 + i, "event_type": "ui.lap_update",
            "event_data": {"controller_id": "1", "lap": i, "laptime_raw": 9000 + i}}


def seq_of(m):
    return m.json().get("seq")


class ReadAheadTests(harness.IntegrationCase):

    def test_published_before_durable(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, env=harness.slowsync_env(SLOW_MS))
        sub = self.subscribe(broker.port, [LAP])
        leads = []
        for i in range(1, 6):
            t_post = time.monotonic()
            r = harness.post(gw.http_port, "/", lap(i), timeout=10)
            t_answer = time.monotonic()
            self.assertEqual(r.status, 200, r.body)
            seq = r.json["seq"]
            m = sub.wait_message(lambda m, s=seq: seq_of(m) == s, 5)
            self.assertIsNotNone(m, "seq %d never delivered" % seq)
            self.assertEqual(m.json()["data"]["lap"], i)
            # The answer waited for the slowed fdatasync ...
            self.assertGreaterEqual(t_answer - t_post, SLOW_MS / 1000.0,
                                    "answered before the fdatasync could have finished")
            # ... the subscriber did not.
            self.assertLess(m.t - t_post, SLOW_MS / 2000.0,
                            "delivery waited for the disk (%.3f s after the POST)"
                            % (m.t - t_post))
            leads.append((m.t - t_post, t_answer - t_post))
        print("delivered / answered, s after the POST: %s"
              % ", ".join("%.3f/%.3f" % x for x in leads))
        self.assertEqual(gw.stop(), 0)

    def test_killed_before_durable(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, env=harness.slowsync_env(5000))
        sub = self.subscribe(broker.port, [LAP])
        gw_env = gw.env
        answer = {}

        def poster():
            try:
                answer["r"] = harness.post(gw.http_port, "/", lap(1), timeout=30)
            except Exception as e:  # noqa: BLE001 - the gateway is killed under it
                answer["error"] = e

        th = threading.Thread(target=poster)
        th.start()
        early = sub.wait_message(lambda m: m.topic == LAP, 3)
        self.assertIsNotNone(early, "not delivered while the fdatasync ran")
        self.assertEqual(gw.kill(), -9)
        th.join(40)
        self.assertNotIn("r", answer, "answered although killed before durable: %r"
                         % answer.get("r"))
        early_seq = seq_of(early)

        gw.env = {k: v for k, v in gw_env.items()
                  if k not in ("LD_PRELOAD", "R2M_SLOWSYNC_MS")}
        gw.start()
        seqs = []
        for i in range(2, 5):
            r = harness.post(gw.http_port, "/", lap(i), timeout=10)
            self.assertEqual(r.status, 200, r.body)
            seqs.append(r.json["seq"])
        for s in seqs:
            self.assertIsNotNone(sub.wait_message(lambda m, s=s: seq_of(m) == s, 10))
        print("published before the kill: seq %d; after the restart: %s" % (early_seq, seqs))
        self.assertGreater(min(seqs), early_seq, "a seq at or below the lost one was reused")
        self.assertEqual(seqs, sorted(seqs))
        # The lost event is never published again, and no other event has its seq.
        same = [m for m in sub.snapshot() if seq_of(m) == early_seq]
        self.assertEqual({m.payload for m in same}, {early.payload})
        self.assertEqual(gw.stop(), 0)


if __name__ == "__main__":
    harness.main()
