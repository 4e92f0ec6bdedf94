#!/usr/bin/python3
"""
RACE RESULT passings and status (SPEC section 3) against the fake API
(tests/fakerr): a 25,000-passing backlog across two files of a decoder, a
TrackBox (trackpings, offline) and an Ubidium (detections) are read with
start = all. A real MQTT subscriber checks every passing: each id
"<device>/<file>/<no>" arrives, first arrivals in order per device, QoS 1, not
retained, raw equal to the record the API served and the common fields derived
from it. Status and availability are retained; live additions and new files
arrive within a few polls; start = file (default) and start = new begin where
they should; every request says Connection: close and carries the right
credentials, and neither the API key nor a token leaks into the log, MQTT or
/metrics.
"""
import time

import paho.mqtt.client as mqtt

import harness

KEY = "rr-api-key-7f3c9d1e-DO-NOT-LEAK"
CID = 846
POLL_S = 0.2
LIVE_TIMEOUT_S = 4.0  # "within a few polls" of 200 ms, with room for a busy CI box

# Device Status members that change on every request (clocks).
VOLATILE = {"RealTime", "RealTimeAtRequest", "Time", "Received"}


def stable(status):
    return {k: v for k, v in status.items() if k not in VOLATILE}


class RaceResultPassingsTests(harness.IntegrationCase):

    def setup_rr(self, world, **keys):
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world=world)
        self.track(harness._Stoppable(rr))
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["raceresult/#"], protocol=mqtt.MQTTv5)
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(rr, KEY, CID, **keys))
        return rr, broker, sub, gw

    def wait_live(self, col, ids, what):
        t0 = time.monotonic()
        missing = col.wait_ids(ids, 15)
        dt = time.monotonic() - t0
        self.assertEqual(sorted(missing), [], "%s: not delivered within 15 s" % what)
        print("live %s: %d passings after %.2f s" % (what, len(ids), dt))
        self.assertLess(dt, LIVE_TIMEOUT_S, "%s: took %.1f s, more than a few polls of %d ms"
                        % (what, dt, POLL_S * 1000))

    def test_backlog_status_live_and_secrets(self):
        world = {"devices": [
            {"id": "D-1", "type": "Decoder", "name": "Finish", "files": {"1": 20000, "2": 5000}},
            {"id": "T-1", "type": "TrackBox", "name": "km 5", "connected": False,
             "files": {"1": 3, "2": 4}},
            {"id": "U-1", "type": "Ubidium", "name": "Start", "files": {"7": 6}},
        ]}
        files = {d["id"]: {int(f): n for f, n in d["files"].items()} for d in world["devices"]}
        rr, broker, sub, gw = self.setup_rr(world, start="all")
        col = harness.PassingCollector(sub)
        expected = []
        for dev in ("D-1", "T-1", "U-1"):
            expected += harness.rr_ids(dev, files[dev])
        t0 = time.monotonic()
        missing = col.wait_ids(expected, 60)
        secs = time.monotonic() - t0
        col.settle(0.5)
        dups = col.duplicates()
        n_dec = len(harness.rr_ids("D-1", files["D-1"]))
        print("rr_passings: passings=%d delivered=%d duplicates=%d seconds=%.2f rate=%.0f/s"
              % (len(expected), len(expected) - len(missing), dups, secs,
                 len(expected) / secs if secs else 0))
        self.assertEqual(len(missing), 0, "ids never delivered, e.g. %s" % sorted(missing)[:10])
        self.assertEqual(n_dec, 25000)
        col.check(self, expected, fake=rr, label="backlog")
        self.assertEqual(dups, 0, "duplicates without any failure")
        kinds = {dev: {col.first[i][1]["kind"] for i in col.order[dev]} for dev in col.order}
        self.assertEqual(kinds, {"D-1": {"passing"}, "T-1": {"trackping"},
                                 "U-1": {"detection"}})

        # Status and availability: retained, seen by a late subscriber.
        ret = harness.retained(broker.port, ["raceresult/+/status", "raceresult/+/availability"])
        self.assertEqual(sorted(ret), sorted("raceresult/%s/%s" % (d, leaf)
                                             for d in ("D-1", "T-1", "U-1")
                                             for leaf in ("status", "availability")))
        for m in ret.values():
            self.assertTrue(m.retain, "%s not retained" % m.topic)
            self.assertEqual(m.qos, 1, m)
        self.assertEqual({t: m.payload for t, m in ret.items() if t.endswith("availability")},
                         {"raceresult/D-1/availability": b"online",
                          "raceresult/T-1/availability": b"offline",
                          "raceresult/U-1/availability": b"online"})
        st = {t.split("/")[1]: m.json() for t, m in ret.items() if t.endswith("/status")}
        for dev, spec in (("D-1", world["devices"][0]), ("T-1", world["devices"][1]),
                          ("U-1", world["devices"][2])):
            s = st[dev]
            api = rr.set_device(dev)  # the Device Status the API serves now
            self.assertEqual(s.get("device"), dev)
            self.assertEqual(s.get("name"), spec["name"])
            self.assertEqual(s.get("type"), spec["type"])
            self.assertEqual(s.get("connected"), spec.get("connected", True) is True, dev)
            self.assertEqual(s.get("file"), max(files[dev]), dev)
            self.assertIsInstance(s.get("raw"), dict, dev)
            self.assertEqual(stable(s["raw"]), stable(api), "%s: raw is not the API record" % dev)
            if spec["type"] != "Ubidium":
                self.assertEqual(s.get("battery"), api["BatteryCharge"], dev)
                self.assertEqual(s.get("temperature"), api["Temperature"], dev)
                self.assertEqual(s.get("position", {}).get("latitude"),
                                 api["Position"]["Latitude"], dev)
            else:
                self.assertEqual(s.get("temperature"), api["System"]["Temperature"], dev)
        self.assertIs(st["D-1"].get("timing_mode"), True)
        self.assertEqual(st["D-1"].get("error_flags"), 0)

        # BatteryCharge -1 (no reading) -> battery null; errors and connection changes.
        t_set = time.monotonic()
        rr.set_device("D-1", BatteryCharge=-1, DecoderStatus={"ErrorFlags": 16})
        rr.set_device("T-1", connected=True)
        m = sub.wait_message(lambda m: m.topic == "raceresult/D-1/status" and m.t > t_set
                             and m.json().get("battery", 0) is None, 5)
        self.assertIsNotNone(m, "no status with battery null after BatteryCharge -1")
        self.assertTrue(m.retain, "live status not published retained")
        self.assertEqual(m.json().get("error_flags"), 16)
        m = sub.wait_message(lambda m: m.topic == "raceresult/T-1/availability" and m.t > t_set,
                             5)
        self.assertIsNotNone(m, "no availability after the TrackBox connected")
        self.assertEqual((m.payload, m.retain), (b"online", True))
        ret = harness.retained(broker.port, ["raceresult/D-1/status", "raceresult/T-1/#"])
        self.assertIn("battery", ret["raceresult/D-1/status"].json())
        self.assertIsNone(ret["raceresult/D-1/status"].json()["battery"])
        self.assertTrue(ret["raceresult/D-1/status"].retain)
        self.assertEqual(ret["raceresult/T-1/availability"].payload, b"online")
        self.assertIs(ret["raceresult/T-1/status"].json().get("connected"), True)

        # Live additions and new files.
        rr.add_detections("D-1", 3)
        self.wait_live(col, ["D-1/2/5001", "D-1/2/5002", "D-1/2/5003"], "add_detections D-1")
        rr.new_file("D-1", 2)
        self.wait_live(col, ["D-1/3/1", "D-1/3/2"], "new_file D-1")
        rr.new_file("D-1", 0)
        time.sleep(3 * POLL_S)
        rr.add_detections("D-1", 2)
        self.wait_live(col, ["D-1/4/1", "D-1/4/2"], "empty new file, then detections D-1")
        rr.add_detections("T-1", 2)
        rr.add_detections("U-1", 2)
        self.wait_live(col, ["T-1/2/5", "T-1/2/6", "U-1/7/7", "U-1/7/8"], "T-1 and U-1")
        rr.new_file("U-1", 3)
        self.wait_live(col, ["U-1/8/1", "U-1/8/2", "U-1/8/3"], "new_file U-1")
        col.settle(1.0)
        expected += ["D-1/2/5001", "D-1/2/5002", "D-1/2/5003", "D-1/3/1", "D-1/3/2",
                     "D-1/4/1", "D-1/4/2", "T-1/2/5", "T-1/2/6", "U-1/7/7", "U-1/7/8",
                     "U-1/8/1", "U-1/8/2", "U-1/8/3"]
        expected.sort(key=lambda i: (i.split("/")[0], int(i.split("/")[1]),
                                     int(i.split("/")[2])))
        col.check(self, expected, fake=rr, label="after live additions", check_all_raw=False)
        self.assertEqual(col.duplicates(), 0, "duplicates without any failure")

        # Requests: Connection: close everywhere, the key only on /token, the
        # bearer token everywhere else, amount never above 10,000.
        reqs = rr.requests()
        tokens = set()
        amounts = set()
        bad = []
        for r in reqs:
            h = {k.lower(): v for k, v in r["headers"].items()}
            if h.get("connection", "").lower() != "close":
                bad.append((r["seq"], r["target"], "Connection", h.get("connection")))
            if r["route"] == "POST /token":
                if h.get("apikey") != KEY or "authorization" in h:
                    bad.append((r["seq"], r["target"], "token auth", sorted(h)))
            else:
                auth = h.get("authorization", "")
                if not auth.startswith("Bearer ") or len(auth) < 10 or "apikey" in h:
                    bad.append((r["seq"], r["target"], "bearer", sorted(h)))
                tokens.add(auth[len("Bearer "):])
            if r["route"].endswith("/detections"):
                amounts.add(r["query"].get("amount"))
                if not 1 <= int(r["query"].get("amount", "0")) <= 10000:
                    bad.append((r["seq"], r["target"], "amount"))
            if r["status"] != 200:
                bad.append((r["seq"], r["target"], "status", r["status"]))
        self.assertEqual(bad[:10], [], "requests without Connection: close / right auth")
        routes = rr.stats()
        print("requests: %r, amount=%s" % (routes, "/".join(sorted(amounts))))
        self.assertEqual(len(amounts), 1, "amount (default) changes between requests")
        self.assertEqual(routes.get("POST /token"), 1, "token not reused")
        self.assertGreaterEqual(routes.get("GET /customers/{cid}/devices", 0), 10)

        # Secrets: nowhere in the log, MQTT or /metrics.
        metrics = gw.request("GET", "/metrics")
        self.assertEqual(metrics.status, 200)
        self.assertEqual(gw.stop(), 0)
        with open(gw.log_path, "rb") as f:
            log = f.read()
        msgs = sub.snapshot()
        for secret in [KEY] + sorted(tokens):
            s = secret.encode()
            self.assertNotIn(s, log, "secret in the gateway log")
            self.assertNotIn(s, metrics.body, "secret in /metrics")
            leaks = [m.topic for m in msgs if s in m.payload or s in m.topic.encode()]
            self.assertEqual(leaks[:5], [], "secret in MQTT messages")

    def test_start_file_default(self):
        """A device without a cursor starts at the beginning of its current
        file: nothing from older files."""
        world = {"devices": [
            {"id": "D-3", "type": "Decoder", "files": [5, 5, 4]},
            {"id": "U-3", "type": "Ubidium", "files": {"5": 2, "6": 3}},
        ]}
        rr, broker, sub, gw = self.setup_rr(world)
        col = harness.PassingCollector(sub)
        expected = harness.rr_ids("D-3", {3: 4}) + harness.rr_ids("U-3", {6: 3})
        self.assertEqual(sorted(col.wait_ids(expected, 15)), [])
        time.sleep(5 * POLL_S)
        col.check(self, expected, fake=rr, label="start=file")
        first = rr.requests(path_prefix="/customers/%d/devices/D-3/detections" % CID)[0]
        self.assertEqual((first["query"].get("fromFile"), first["query"].get("fromDetection")),
                         ("3", "1"))
        rr.add_detections("D-3", 2)
        self.wait_live(col, ["D-3/3/5", "D-3/3/6"], "add_detections D-3")
        col.settle(0.5)
        col.check(self, expected + ["D-3/3/5", "D-3/3/6"], fake=rr, label="start=file")
        self.assertEqual(gw.stop(), 0)
        cur = harness.rr_read_cursors(gw.store_dir)
        self.assertEqual(cur, {"D-3": (3, 7), "U-3": (6, 4)})

    def test_start_new(self):
        """start = new: only passings recorded after the gateway first saw the device."""
        world = {"devices": [{"id": "D-4", "type": "Decoder", "files": [5, 5]}]}
        rr, broker, sub, gw = self.setup_rr(world, start="new")
        col = harness.PassingCollector(sub)
        self.assertTrue(rr.wait_requests(5, route="GET /customers/{cid}/devices"))
        time.sleep(5 * POLL_S)
        rr.add_detections("D-4", 2)
        self.wait_live(col, ["D-4/2/6", "D-4/2/7"], "start=new")
        col.settle(0.5)
        col.check(self, ["D-4/2/6", "D-4/2/7"], fake=rr, label="start=new")

    def test_devices_filter(self):
        """raceresult.devices: only the listed devices are asked for and published."""
        world = {"devices": [{"id": "D-5", "files": [3]}, {"id": "D-6", "files": [4]},
                             {"id": "U-7", "type": "Ubidium", "files": [2]}]}
        rr, broker, sub, gw = self.setup_rr(world, start="all", devices="D-5,U-7")
        col = harness.PassingCollector(sub)
        expected = harness.rr_ids("D-5", {1: 3}) + harness.rr_ids("U-7", {1: 2})
        self.assertEqual(sorted(col.wait_ids(expected, 10)), [])
        time.sleep(5 * POLL_S)
        col.check(self, expected, fake=rr, label="devices filter")
        self.assertEqual(sorted({m.topic.split("/")[1] for m in sub.snapshot()
                                 if m.topic.startswith("raceresult/")}), ["D-5", "U-7"])
        lists = rr.requests(route="GET /customers/{cid}/devices")
        self.assertTrue(lists)
        self.assertEqual({r["query"].get("deviceIDs") for r in lists}, {"D-5,U-7"})
        self.assertEqual(rr.requests(path_prefix="/customers/%d/devices/D-6" % CID), [])

    def test_trackbox_without_fileno_new_file(self):
        """A TrackBox whose list record has no FileNo (as in the real device
        list, fixtures/raceresult) that opens a new file with as many records as
        the old one: RecordsCount does not move, but Received does. The new
        file must still arrive within a few polls, not after recheck_s."""
        world = {"devices": [{"id": "T-9", "type": "TrackBox", "connected": False,
                              "files": {"1": 3}, "omit": ["FileNo"]}]}
        rr, broker, sub, gw = self.setup_rr(world, start="all")
        col = harness.PassingCollector(sub)
        self.assertEqual(sorted(col.wait_ids(harness.rr_ids("T-9", {1: 3}), 10)), [])
        time.sleep(5 * POLL_S)
        rr.new_file("T-9", 3)
        self.wait_live(col, ["T-9/2/1", "T-9/2/2", "T-9/2/3"], "new_file without FileNo")
        col.check(self, harness.rr_ids("T-9", {1: 3, 2: 3}), fake=rr, label="T-9")


if __name__ == "__main__":
    harness.main()
