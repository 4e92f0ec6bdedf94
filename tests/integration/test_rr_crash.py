#!/usr/bin/python3
"""
RACE RESULT passings across crashes and broker outages (SPEC sections 3 and
7.2): the cursor moves only past passings the broker acknowledged, and is
stored atomically, so

- SIGKILL in the middle of a backlog, twice, and a restart on the same store:
  every id is delivered, at most one page again per kill, the cursor files
  always read "<file> <next>\\n" and never point past what the subscriber got;
- the broker stopped during a backlog and started again: nothing fetched while
  it is away, no passing skipped (persistent-session subscriber);
- a restart after catching up (SIGTERM and SIGKILL) publishes nothing again.
"""
import time

import harness

KEY = "rr-crash-key-55aa"
CID = 846
DEV = "D-K"
AMOUNT = 2000


class RaceResultCrashTests(harness.IntegrationCase):

    def setup_rr(self, files, **keys):
        d = self.tmpdir()
        rr, broker, sub = harness.rr_decoder_world(self, d, files, KEY, CID, DEV, "r2m-it-rrcrash")
        cfg = dict(start="all", amount=AMOUNT)
        cfg.update(keys)
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(rr, KEY, CID, **cfg))
        return rr, broker, sub, gw, harness.PassingCollector(sub)

    def assert_cursor_not_ahead(self, gw, col, files):
        """The stored cursor may only be past passings the subscriber gets."""
        cur = harness.rr_read_cursors(gw.store_dir)
        self.assertEqual(sorted(cur), [DEV])
        f, nxt = cur[DEV]
        below = [i for i in harness.rr_ids(DEV, files)
                 if (int(i.split("/")[1]), int(i.split("/")[2])) < (f, nxt)]
        missing = col.wait_ids(below, 10)
        self.assertEqual(sorted(missing)[:10], [], "cursor %d/%d is past passings that never "
                         "arrived (%d)" % (f, nxt, len(missing)))
        return f, nxt

    def test_kill_9_mid_backlog(self):
        files = {1: 24000, 2: 6000}
        rr, broker, sub, gw, col = self.setup_rr(files)
        expected = harness.rr_ids(DEV, files)
        cursors = []
        for n, at in enumerate((6500, 17300), 1):
            got = col.wait_total(at, 40)
            self.assertGreaterEqual(got, at, "backlog too slow")
            self.assertEqual(gw.kill(), -9)
            received = col.wait_total(0, 0)
            cur = self.assert_cursor_not_ahead(gw, col, files)
            cursors.append(cur)
            print("kill %d after %d passings received: cursor %d/%d" % (n, received, *cur))
            gw.start()
        missing = col.wait_ids(expected, 40)
        self.assertEqual(sorted(missing)[:10], [], "%d passings lost" % len(missing))
        col.settle(0.5)
        col.check(self, expected, fake=rr, label="kill -9", check_all_raw=False)
        delivered, dups, _ = col.summary("rr_crash kill", expected)
        self.assertLessEqual(dups, 2 * AMOUNT, "more than one page again per kill")
        self.assertEqual(len(cursors), 2)
        self.assertEqual(gw.stop(), 0)
        self.assertEqual(harness.rr_read_cursors(gw.store_dir), {DEV: (2, 6001)})

    def test_broker_outage_mid_backlog(self):
        # Pages of 10,000 take about a second to publish (the subscriber lags
        # behind, the broker queues): the broker goes away a moment after the
        # second page was served, with part of that page acknowledged.
        files = {1: 30000}
        rr, broker, sub, gw, col = self.setup_rr(files, amount=10000)
        expected = harness.rr_ids(DEV, files)
        rr.wait_requests(2, route="GET /customers/{cid}/devices/{dev}/detections", timeout=30)
        time.sleep(0.35)
        broker.stop()
        t_down = time.time()
        self.assertTrue(gw.wait_readyz(503, 20))
        time.sleep(2.5)
        t_up = time.time()
        fetched = [r["target"] for r in rr.requests()
                   if t_down + 1.0 < r["time"] < t_up and r["route"].endswith("/detections")]
        self.assertEqual(fetched, [], "detections fetched while the broker was away")
        cur = harness.rr_read_cursors(gw.store_dir)[DEV]
        print("broker stopped with %d passings received; cursor %d/%d"
              % (col.wait_total(0, 0), *cur))
        broker.start()
        self.assertTrue(gw.wait_readyz(200, 40), "gateway did not reconnect")
        missing = col.wait_ids(expected, 40)
        self.assertEqual(sorted(missing)[:10], [], "%d passings skipped" % len(missing))
        col.settle(0.5)
        col.check(self, expected, fake=rr, label="broker outage", check_all_raw=False)
        delivered, dups, _ = col.summary("rr_crash broker outage", expected)
        self.assertLessEqual(dups, 10000, "more than one page again after the outage")
        self.assertEqual(gw.stop(), 0)
        self.assertEqual(harness.rr_read_cursors(gw.store_dir), {DEV: (1, 30001)})

    def test_status_republished_after_broker_restart(self):
        """A broker that lost its retained messages gets status and
        availability again after the reconnect (SPEC 7.3), unchanged or not."""
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world={"devices": [
            {"id": DEV, "files": [3]}, {"id": "T-K", "type": "TrackBox", "connected": False}]})
        self.track(harness._Stoppable(rr))
        broker = self.start_broker(d, persistence=False)
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(rr, KEY, CID))
        want = sorted("raceresult/%s/%s" % (dev, leaf) for dev in (DEV, "T-K")
                      for leaf in ("status", "availability"))
        topics = ["raceresult/+/status", "raceresult/+/availability"]
        self.assertTrue(harness.wait_until(
            lambda: sorted(harness.retained(broker.port, topics)) == want, 10))
        broker.restart(persistence=False)  # the retained messages are gone
        self.assertTrue(gw.wait_readyz(200, 30), "gateway did not reconnect")
        got = harness.wait_until(lambda: (lambda r: r if sorted(r) == want else None)(
            harness.retained(broker.port, topics)), 10)
        self.assertIsNotNone(got, "status/availability not published again after reconnect")
        self.assertEqual(got["raceresult/T-K/availability"].payload, b"offline")
        self.assertEqual(got["raceresult/%s/availability" % DEV].payload, b"online")
        self.assertEqual(got["raceresult/%s/status" % DEV].json().get("device"), DEV)
        self.assertTrue(all(m.retain for m in got.values()))

    def test_restart_after_catching_up(self):
        files = {1: 6000}
        rr, broker, sub, gw, col = self.setup_rr(files, amount=1000)
        self.assertEqual(sorted(col.wait_ids(harness.rr_ids(DEV, files), 30)), [])
        col.settle(0.5)
        for how in ("SIGTERM", "SIGKILL"):
            # The subscriber can have a passing a moment before the gateway has
            # its PUBACK and the cursor on disk: wait for the cursor first.
            want = {DEV: (1, files[1] + 1)}
            harness.wait_until(lambda: harness.rr_read_cursors(gw.store_dir) == want, 5)
            before = col.total
            dets = len(rr.requests(route="GET /customers/{cid}/devices/{dev}/detections"))
            if how == "SIGTERM":
                self.assertEqual(gw.stop(), 0)
            else:
                self.assertEqual(gw.kill(), -9)
            self.assertEqual(harness.rr_read_cursors(gw.store_dir), want)
            gw.start()
            # The restarted gateway asks from its cursor at least once.
            self.assertTrue(harness.wait_until(lambda: len(rr.requests(
                route="GET /customers/{cid}/devices/{dev}/detections")) > dets, 10))
            time.sleep(1.0)
            col.settle(0.5)
            again = col.total - before
            print("restart after %s: %d passings published again" % (how, again))
            self.assertEqual(again, 0, "restart after catching up published passings again")
            first = rr.requests(route="GET /customers/{cid}/devices/{dev}/detections")[dets]
            self.assertEqual((first["query"]["fromFile"], first["query"]["fromDetection"]),
                             ("1", str(files[1] + 1)))
            rr.add_detections(DEV, 5)
            files[1] += 5
            self.assertEqual(sorted(col.wait_ids(harness.rr_ids(DEV, files), 10)), [])
        col.settle(0.5)
        col.check(self, harness.rr_ids(DEV, files), fake=rr, label="restart")
        self.assertEqual(col.duplicates(), 0)


if __name__ == "__main__":
    harness.main()
