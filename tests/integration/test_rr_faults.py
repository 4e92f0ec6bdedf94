#!/usr/bin/python3
"""
RACE RESULT API faults (SPEC sections 3 and 7.4): 500s, answers slower than
timeout_ms (before the headers and in the middle of the body), truncated JSON
(a complete answer with half a body, a connection closed or reset in the
middle), bodies that are not JSON, JSON of the wrong shape, and answers larger
than max_response (with Content-Length and chunked), first on the detections
of ten devices at once, then on the device list. Each fault comes twice in a
row (one episode, two failed attempts). Every passing must still be delivered
at the end, in order per device, and the log must report each episode once
("... retrying with backoff" / "API unreachable") and its end once ("reachable
again"), not every retry.
"""
import json
import time

import paho.mqtt.client as mqtt

import harness

KEY = "rr-faults-key-4b1e"
CID = 846
AMOUNT = 400
BIG = 2 * 1024 * 1024   # > max_response
LIST_PATH = "/customers/%d/devices" % CID


def det_path(dev):
    return "%s/%s/detections" % (LIST_PATH, dev)


# device -> how to break its next two detections requests
DETECTION_FAULTS = {
    "D-500": lambda rr, p: rr.fail_next(2, 500, path_prefix=p),
    "D-503": lambda rr, p: rr.fail_next(2, 503, path_prefix=p,
                                        headers={"Retry-After": "1"}),
    "D-slow": lambda rr, p: rr.slow_next(2, 3, path_prefix=p),
    "D-slowbody": lambda rr, p: rr.slow_next(2, 3, path_prefix=p, where="body"),
    "D-cut": lambda rr, p: rr.truncate_next(2, path_prefix=p, mode="cut"),
    "D-close": lambda rr, p: rr.truncate_next(2, path_prefix=p, mode="close"),
    "D-reset": lambda rr, p: rr.truncate_next(2, path_prefix=p, mode="reset"),
    "D-invalid": lambda rr, p: rr.invalid_json_next(2, path_prefix=p, body="[{\"FileNo\": 1,"),
    "D-shape": lambda rr, p: rr.fail_next(2, 200, path_prefix=p,
                                          body={"Message": "not a list"}),
    "D-big": lambda rr, p: rr.oversize_next(2, bytes=BIG, path_prefix=p),
    "D-bigchunk": lambda rr, p: rr.oversize_next(2, bytes=BIG, path_prefix=p, chunked=True),
}

# Device list episodes: faults consumed by consecutive device list requests.
LIST_EPISODES = [
    ("500, then invalid JSON", lambda rr: (rr.fail_next(1, 500, path_prefix=LIST_PATH),
                                           rr.invalid_json_next(1, path_prefix=LIST_PATH))),
    ("truncated: cut, then closed", lambda rr: (
        rr.truncate_next(1, path_prefix=LIST_PATH, mode="cut"),
        rr.truncate_next(1, path_prefix=LIST_PATH, mode="close"))),
    ("truncated: reset, then oversize", lambda rr: (
        rr.truncate_next(1, path_prefix=LIST_PATH, mode="reset"),
        rr.oversize_next(1, bytes=BIG, path_prefix=LIST_PATH))),
    ("oversize chunked, then wrong shape", lambda rr: (
        rr.oversize_next(1, bytes=BIG, path_prefix=LIST_PATH, chunked=True),
        rr.fail_next(1, 200, path_prefix=LIST_PATH, body={"Devices": {"x": 1}}))),
    ("slow beyond timeout_ms", lambda rr: rr.slow_next(1, 3, path_prefix=LIST_PATH)),
]


class RaceResultFaultTests(harness.IntegrationCase):

    def setup_rr(self, world, **keys):
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world=world)
        self.track(harness._Stoppable(rr))
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["raceresult/+/passing"], protocol=mqtt.MQTTv5)
        cfg = dict(start="all", amount=AMOUNT, max_response="1M", timeout_ms=1500,
                   connect_timeout_ms=1000)
        cfg.update(keys)
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(rr, KEY, CID, **cfg))
        return rr, broker, sub, gw

    def wait_recovered(self, gw, pattern, count, timeout=30):
        ok = harness.wait_until(lambda: len(harness.log_lines(gw.log_path, pattern)) >= count,
                                timeout, 0.1)
        self.assertTrue(ok, "no %d log lines matching %r within %d s" % (count, pattern,
                                                                        timeout))

    def test_detection_faults(self):
        devs = sorted(DETECTION_FAULTS)
        files = {dev: {1: 1000} for dev in devs}
        world = {"devices": [{"id": dev, "type": "Decoder", "files": {"1": 1000}}
                             for dev in devs]}
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world=world)
        self.track(harness._Stoppable(rr))
        # Phase 1: the first two detections requests of every device fail.
        for dev in devs:
            DETECTION_FAULTS[dev](rr, det_path(dev))
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["raceresult/+/passing"], protocol=mqtt.MQTTv5)
        t0 = time.monotonic()
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(
            rr, KEY, CID, start="all", amount=AMOUNT, max_response="1M", timeout_ms=1500,
            connect_timeout_ms=1000))
        col = harness.PassingCollector(sub)
        expected = [i for dev in devs for i in harness.rr_ids(dev, files[dev])]
        missing = col.wait_ids(expected, 40)
        print("phase 1: %d passings of %d devices after %.1f s"
              % (len(expected), len(devs), time.monotonic() - t0))
        self.assertEqual(sorted(missing)[:10], [], "%d passings lost" % len(missing))
        self.assertEqual(rr.faults(), [], "faults not consumed")
        for dev in devs:
            self.wait_recovered(gw, r"raceresult: device %s: reachable again" % dev, 1)

        # Phase 2: the device has a cursor in the middle of file 1; new passings
        # (more than a page) arrive and the next two requests fail again.
        for dev in devs:
            DETECTION_FAULTS[dev](rr, det_path(dev))
        for dev in devs:
            rr.add_detections(dev, 700)
            files[dev][1] += 700
        t1 = time.monotonic()
        expected = [i for dev in devs for i in harness.rr_ids(dev, files[dev])]
        missing = col.wait_ids(expected, 40)
        print("phase 2: %d more passings after %.1f s" % (700 * len(devs),
                                                           time.monotonic() - t1))
        self.assertEqual(sorted(missing)[:10], [], "%d passings lost" % len(missing))
        self.assertEqual(rr.faults(), [], "faults not consumed")
        for dev in devs:
            self.wait_recovered(gw, r"raceresult: device %s: reachable again" % dev, 2)
        col.settle(0.5)
        col.check(self, expected, fake=rr, label="detection faults", check_all_raw=False)
        delivered, dups, _ = col.summary("rr_faults detections", expected)

        # Every fault was seen by the gateway as a failed request (4 per device).
        reqs = rr.requests(route="GET /customers/{cid}/devices/{dev}/detections")
        faulted = {}
        for r in reqs:
            if r["fault"]:
                dev = r["path"].split("/")[4]
                faulted[dev] = faulted.get(dev, 0) + 1
        self.assertEqual(faulted, {dev: 4 for dev in devs})
        self.assertTrue(all(int(r["query"]["amount"]) == AMOUNT for r in reqs))

        # One warning per episode and device, one recovery line, nothing per retry.
        report = {}
        for dev in devs:
            warn = harness.log_lines(gw.log_path, r"raceresult: device %s: .*retrying" % dev)
            back = harness.log_lines(gw.log_path, r"raceresult: device %s: reachable again"
                                     % dev)
            report[dev] = (len(warn), len(back))
            print("%-11s %s" % (dev, warn[0].split("raceresult: ", 1)[-1] if warn else "-"))
        self.assertEqual(report, {dev: (2, 2) for dev in devs},
                         "(warnings, recoveries) per device: want one each per episode")
        for dev, code in (("D-500", "500"), ("D-503", "503")):
            self.assertIn(code, harness.log_lines(gw.log_path, r"device %s: .*retrying"
                                                  % dev)[0])
        self.assertEqual(harness.log_lines(gw.log_path, r"API unreachable"), [])
        # A restart resumes from the cursors: no passing published again.
        self.assertEqual(gw.stop(), 0)
        cur = harness.rr_read_cursors(gw.store_dir)
        self.assertEqual(cur, {dev: (1, 1701) for dev in devs})

    def test_device_list_faults(self):
        world = {"devices": [{"id": "D-L", "type": "Decoder", "files": {"1": 900}},
                             {"id": "U-L", "type": "Ubidium", "files": {"2": 10}}]}
        rr, broker, sub, gw = self.setup_rr(world)
        files = {"D-L": {1: 900}, "U-L": {2: 10}}
        col = harness.PassingCollector(sub)

        def expected():
            return harness.rr_ids("D-L", files["D-L"]) + harness.rr_ids("U-L", files["U-L"])

        self.assertEqual(sorted(col.wait_ids(expected(), 20)), [])
        status = self.subscribe(broker.port, ["raceresult/+/status"], protocol=mqtt.MQTTv5)
        for n, (what, inject) in enumerate(LIST_EPISODES, 1):
            t0 = time.monotonic()
            before = len(rr.requests(route="GET /customers/{cid}/devices"))
            inject(rr)
            # Once the first fault was served, the API counts as failing and only
            # the device list is asked for: new passings now must wait, not vanish.
            self.assertTrue(harness.wait_until(
                lambda: any(r["fault"] for r in
                            rr.requests(route="GET /customers/{cid}/devices")[before:]), 10))
            rr.add_detections("D-L", 150)
            files["D-L"][1] += 150
            rr.add_detections("U-L", 3)
            files["U-L"][2] += 3
            self.wait_recovered(gw, r"raceresult: API reachable again", n)
            missing = col.wait_ids(expected(), 20)
            self.assertEqual(sorted(missing)[:10], [], "%s: passings lost" % what)
            self.assertEqual(rr.faults(), [], "%s: faults not consumed" % what)
            print("device list episode %d (%s): recovered and delivered after %.1f s"
                  % (n, what, time.monotonic() - t0))
        col.settle(0.5)
        col.check(self, expected(), fake=rr, label="device list faults", check_all_raw=False)
        col.summary("rr_faults device list", expected())
        warn = harness.log_lines(gw.log_path, r"raceresult: API unreachable")
        back = harness.log_lines(gw.log_path, r"raceresult: API reachable again")
        for line in warn:
            print(line.split("raceresult: ", 1)[-1])
        self.assertEqual((len(warn), len(back)), (len(LIST_EPISODES), len(LIST_EPISODES)),
                         "one 'unreachable' and one 'reachable again' per episode")
        self.assertIn("500", warn[0])
        self.assertEqual(harness.log_lines(gw.log_path, r"raceresult: device .*retrying"), [],
                         "device list faults blamed on a device")
        # Status went on being published with the right counters.
        st = status.wait_message(lambda m: m.topic == "raceresult/D-L/status"
                                 and m.json().get("file") == 1, 5)
        self.assertIsNotNone(st)
        self.assertTrue(st.retain)
        self.assertEqual(gw.stop(), 0)
        self.assertEqual(harness.rr_read_cursors(gw.store_dir),
                         {"D-L": (1, files["D-L"][1] + 1), "U-L": (2, files["U-L"][2] + 1)})

    def test_empty_page_while_behind_does_not_stall(self):
        """A spurious empty detections page while the device list promises
        records must not park the device until recheck_s (300 s here)."""
        d = self.tmpdir()
        world = {"devices": [{"id": "D-E", "type": "Decoder", "connected": True,
                              "files": {"1": 1000}}]}
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world=world)
        self.track(harness._Stoppable(rr))
        rr.fail_next(1, 200, path_prefix=det_path("D-E"), body=[])
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["raceresult/+/passing"], protocol=mqtt.MQTTv5)
        col = harness.PassingCollector(sub)
        self.start_gateway(d, broker, extra=harness.rr_extra(rr, KEY, CID, start="all",
                                                             amount=AMOUNT, recheck_s=300))
        want = harness.rr_ids("D-E", {"1": 1000})

        def all_there():
            col.update()
            return all(i in col.count for i in want)
        ok = harness.wait_until(all_there, 20, 0.2)
        self.assertEqual(rr.faults(), [], "the empty page was never asked for")
        self.assertTrue(ok, "%d of %d passings within 20 s after an empty page"
                        % (sum(1 for i in want if i in col.count), len(want)))
        self.assertEqual(col.problems, [])

    def test_page_with_one_bad_record_publishes_nothing(self):
        """A page that is valid up to its last record is refused whole: not one
        of its passings goes out and the cursor stays, until a good page comes.
        A gateway that published records as it read them would fail here."""
        d = self.tmpdir()
        world = {"devices": [{"id": "D-B", "type": "Decoder", "files": {"1": 60}}]}
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world=world)
        self.track(harness._Stoppable(rr))
        good = ",".join(json.dumps(rr.detection("D-B", 1, no)) for no in range(1, 61))
        bad = [
            '{"FileNo": 1, "PassingNo": 61, "RSSI": NaN}',  # not a number
            "{\"FileNo\": 1, \"PassingNo\": 61, 'Code': \"a\"}",  # a single quote
            '{"FileNo": 1, "PassingNo": 61, "Code": "a"}] x',  # garbage after the page
        ]
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["raceresult/+/passing"], protocol=mqtt.MQTTv5)
        col = harness.PassingCollector(sub)
        for rec in bad:
            rr.invalid_json_next(1, path_prefix=det_path("D-B"), body="[%s,%s]" % (good, rec))
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(
            rr, KEY, CID, start="all", amount=AMOUNT))
        refused = r"raceresult: device D-B: invalid detections"
        self.assertTrue(harness.wait_until(
            lambda: rr.faults() == [] and harness.log_lines(gw.log_path, refused), 30, 0.1),
            "the bad pages were not all asked for and refused")
        # The good page after them is what gets published, each passing once.
        want = harness.rr_ids("D-B", {"1": 60})
        self.assertEqual(sorted(col.wait_ids(want, 30)), [])
        col.settle(0.5)
        col.check(self, want, fake=rr, label="after bad pages")
        self.assertEqual(col.duplicates(), 0, "passings of a refused page went out")
        reqs = rr.requests(route="GET /customers/{cid}/devices/{dev}/detections")
        self.assertEqual([r["query"]["fromDetection"] for r in reqs[:len(bad) + 1]],
                         ["1"] * (len(bad) + 1), "the cursor moved on a refused page")
        self.assertEqual(gw.stop(), 0)
        self.assertEqual(harness.rr_read_cursors(gw.store_dir), {"D-B": (1, 61)})


if __name__ == "__main__":
    harness.main()
