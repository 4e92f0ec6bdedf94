#!/usr/bin/python3
"""
selftest.py - checks that the fake RACE RESULT server does what its README says:
token and auth, the three device shapes, files, detections paging across files,
commands, every fault knob, request recording, the control endpoints and the
command line. Standard library only; exits 0 when all pass.

  /usr/bin/python3 tests/fakerr/selftest.py
"""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fake_raceresult import FakeRaceResult  # noqa: E402

KEY = "selftest-key"
CID = 846
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")

WORLD = {"devices": [
    {"id": "D-1", "type": "Decoder", "name": "Finish", "files": {"1": 25, "2": 7}},
    {"id": "T-1", "type": "TrackBox", "connected": False, "files": {"3": 4}},
    {"id": "U-1", "type": "Ubidium", "files": [2, 5]},
    {"id": "D-BIG", "type": "Decoder", "files": {"1": 10001}},
]}


class FakeTest(unittest.TestCase):
    def setUp(self):
        self.rr = FakeRaceResult(api_key=KEY, customer=CID, world=WORLD).start()
        self.addCleanup(self.rr.stop)
        self.token = None

    # ---- helpers ----------------------------------------------------------

    def call(self, method, target, headers=None, auth=True, timeout=5, raw=False):
        """(status, headers, body bytes or decoded JSON) over a fresh
        connection with Connection: close, as the gateway does."""
        h = {"Connection": "close"}
        if auth:
            if self.token is None:
                self.token = self.get_token()
            h["Authorization"] = "Bearer " + self.token
        h.update(headers or {})
        c = http.client.HTTPConnection("127.0.0.1", self.rr.port, timeout=timeout)
        try:
            c.request(method, target, headers=h)
            r = c.getresponse()
            body = r.read()
            if not raw and r.getheader("Content-Type", "").startswith("application/json"):
                body = json.loads(body)
            return r.status, r, body
        finally:
            c.close()

    def get_token(self):
        st, _, body = self.call("POST", "/token", {"apikey": KEY}, auth=False)
        self.assertEqual(st, 200, body)
        return body["access_token"]

    def dets(self, dev, from_file, from_no, amount):
        st, _, body = self.call(
            "GET", "/customers/%d/devices/%s/detections?fromFile=%d&fromDetection=%d&amount=%d"
            % (CID, dev, from_file, from_no, amount))
        self.assertEqual(st, 200, body)
        return body

    def control(self, op, args=None):
        c = http.client.HTTPConnection("127.0.0.1", self.rr.port, timeout=5)
        try:
            c.request("POST", "/_control/" + op, body=json.dumps(args or {}),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, json.loads(r.read())
        finally:
            c.close()

    # ---- auth -------------------------------------------------------------

    def test_token_and_auth(self):
        st, _, body = self.call("POST", "/token", {"apikey": KEY}, auth=False)
        self.assertEqual(st, 200)
        self.assertEqual(body["token_type"], "Bearer")
        self.assertEqual(body["expires_in"], 7200)
        self.assertTrue(body["access_token"])
        self.assertEqual(self.call("POST", "/token", {"apikey": "wrong"}, auth=False)[0], 401)
        self.assertEqual(self.call("POST", "/token", auth=False)[0], 401)
        self.assertEqual(self.call("GET", "/token", {"apikey": KEY}, auth=False)[0], 405)
        self.assertEqual(self.call("GET", "/customers/846/devices", auth=False)[0], 401)
        st, _, body = self.call("GET", "/customers/846/devices",
                                {"Authorization": "Bearer nope"}, auth=False)
        self.assertEqual(st, 401)
        self.assertIn("Message", body)
        self.assertEqual(self.call("GET", "/customers/846/devices")[0], 200)
        self.rr.expire_tokens()
        self.assertEqual(self.call("GET", "/customers/846/devices")[0], 401)
        self.token = None
        self.assertEqual(self.call("GET", "/customers/846/devices")[0], 200)

    def test_token_ttl(self):
        self.rr.set_token_ttl(0.4)
        self.token = self.get_token()
        self.assertEqual(self.call("GET", "/customers/846/devices/D-1")[0], 200)
        time.sleep(0.5)
        self.assertEqual(self.call("GET", "/customers/846/devices/D-1")[0], 401)

    def test_routing_errors(self):
        st, r, body = self.call("GET", "/health", auth=False, raw=True)
        self.assertEqual((st, body), (200, b"OK"))
        self.assertEqual(self.call("GET", "/customers/999/devices")[0], 403)
        self.assertEqual(self.call("GET", "/customers/abc/devices")[0], 400)
        self.assertEqual(self.call("GET", "/customers/846/devices/NOPE")[0], 404)
        self.assertEqual(self.call("GET", "/customers/846/devices/D-1/files/9")[0], 404)
        self.assertEqual(self.call("GET", "/nothing/here")[0], 404)
        self.assertEqual(self.call("POST", "/customers/846/devices")[0], 405)
        self.assertEqual(self.call("GET", "/customers/846/devices?connected=maybe")[0], 400)

    # ---- devices and files ------------------------------------------------

    def test_device_shapes_and_filters(self):
        st, _, body = self.call("GET", "/customers/846/devices")
        self.assertEqual(st, 200)
        devs = body["Devices"]
        self.assertEqual(len(devs), 4)
        d, t, u = devs[0], devs[1], devs[2]
        self.assertEqual((d["DeviceType"], d["DeviceID"], d["FileNo"], d["RecordsCount"]),
                         ("Decoder", "D-1", 2, 7))
        self.assertIn("IsInTimingMode", d["DecoderStatus"])
        self.assertIn("ErrorFlags", d["DecoderStatus"])
        self.assertEqual((t["DeviceType"], t["FileNo"], t["RecordsCount"], t["Connected"]),
                         ("TrackBox", 3, 4, False))
        self.assertIn("TrackboxStatus", t)
        self.assertNotIn("DeviceType", u)
        self.assertEqual(u["System"]["DeviceID"], "U-1")
        self.assertEqual((u["Data"]["FileNumber"], u["Data"]["PassingNo"]), (2, 5))
        self.assertEqual(u["ConnStatus"], 1)
        self.assertIn("Battery1", u["Power"])
        for s in (d["RealTime"], d["Received"], u["Time"]["Time"]):
            self.assertRegex(s, TIME_RE)

        ids = lambda b: [x.get("DeviceID") or x["System"]["DeviceID"] for x in b["Devices"]]
        self.assertEqual(ids(self.call("GET", "/customers/846/devices?connected=true")[2]),
                         ["D-1", "U-1", "D-BIG"])
        self.assertEqual(ids(self.call("GET", "/customers/846/devices?deviceIDs=U-1,T-1,X")[2]),
                         ["T-1", "U-1"])
        st, _, one = self.call("GET", "/customers/846/devices/T-1")
        self.assertEqual((st, one["DeviceID"]), (200, "T-1"))

    def test_counters_follow_data(self):
        self.assertEqual(self.rr.add_detections("D-1", 5), {"file": 2, "count": 12})
        self.assertEqual(self.rr.new_file("U-1", count=3), 3)
        self.rr.set_device("D-1", connected=False, BatteryCharge=-1,
                           DecoderStatus={"ErrorFlags": 16}, omit=["TimeZoneName"])
        _, _, d = self.call("GET", "/customers/846/devices/D-1")
        self.assertEqual((d["FileNo"], d["RecordsCount"], d["Connected"]), (2, 12, False))
        self.assertEqual((d["BatteryCharge"], d["DecoderStatus"]["ErrorFlags"]), (-1, 16))
        self.assertTrue(d["DecoderStatus"]["IsInTimingMode"])
        self.assertNotIn("TimeZoneName", d)
        _, _, u = self.call("GET", "/customers/846/devices/U-1")
        self.assertEqual((u["Data"]["FileNumber"], u["Data"]["PassingNo"]), (3, 3))

    def test_files(self):
        _, _, body = self.call("GET", "/customers/846/files?deviceIDs=D-1,U-1")
        self.assertEqual([(f["DeviceID"], f["FileNo"], f["Count"]) for f in body["Files"]],
                         [("D-1", 1, 25), ("D-1", 2, 7), ("U-1", 1, 2), ("U-1", 2, 5)])
        _, _, body = self.call("GET", "/customers/846/devices/D-1/files?files=2,x,9")
        self.assertEqual([f["FileNo"] for f in body["Files"]], [2])
        _, _, body = self.call("GET", "/customers/846/devices/D-1/files?latest=true")
        self.assertEqual(body["File"]["FileNo"], 2)
        _, _, meta = self.call("GET", "/customers/846/devices/D-1/files/1")
        self.assertEqual(sorted(meta), ["Count", "Created", "Customer", "DeviceID",
                                        "FileNo", "FilePos"])
        self.assertEqual(meta["Count"], 25)

    # ---- detections -------------------------------------------------------

    def test_paging_across_files(self):
        seen, f, n = [], 1, 1
        while True:
            page = self.dets("D-1", f, n, 10)
            if not page:
                break
            seen += [(p["FileNo"], p["PassingNo"]) for p in page]
            f, n = page[-1]["FileNo"], page[-1]["PassingNo"] + 1
        self.assertEqual(seen, [(1, i) for i in range(1, 26)] + [(2, i) for i in range(1, 8)])
        # The vendor's example: fromDetection applies to the first file only.
        page = self.dets("D-1", 1, 24, 4)
        self.assertEqual([(p["FileNo"], p["PassingNo"]) for p in page],
                         [(1, 24), (1, 25), (2, 1), (2, 2)])
        self.assertEqual(page[2], self.rr.detection("D-1", 2, 1))
        # New data shows up after the cursor.
        self.rr.add_detections("D-1", 2)
        self.assertEqual([p["PassingNo"] for p in self.dets("D-1", 2, 8, 100)], [8, 9])

    def test_record_shapes(self):
        u = self.dets("U-1", 1, 1, 100)
        self.assertEqual([(r["no"]["file"], r["no"]["no"]) for r in u],
                         [(1, 1), (1, 2)] + [(2, i) for i in range(1, 6)])
        self.assertTrue(all(r["transp"]["id"] and r["src"]["device_id"] == "U-1" for r in u))
        self.assertEqual(set(u[0]["act_data"]) - {"flags"}, {"channel", "loop_id"})
        t = self.dets("T-1", 1, 1, 100)
        self.assertEqual([(r["FileNo"], r["TrackpingNo"]) for r in t], [(3, i) for i in range(1, 5)])
        d = self.dets("D-1", 1, 1, 25)
        digits, zones = set(), set()
        for r in d + u + t:
            s = r.get("RealTime") or r.get("time") or r["Time"]
            self.assertRegex(s, TIME_RE)
            m = TIME_RE.match(s)
            digits.add(len(m.group(1) or ".") - 1)
            zones.add(m.group(2))
        self.assertEqual(digits, set(range(10)))
        self.assertEqual(zones, {"Z", "+02:00"})
        self.assertEqual(d[3]["Code"], self.rr.detection("D-1", 1, 4)["Code"])
        st, _, body = self.call("GET", "/customers/846/devices/D-1/files/1/detections"
                                "?fromDetection=20&amount=3")
        self.assertEqual([p["PassingNo"] for p in body], [20, 21, 22])

    def test_runtime_file_and_new_device(self):
        self.rr.add_device(id="D-RT", type="Decoder", files={"1": 2}, runtime_files=[1],
                           replies={"GETSTATUS": "STATUS;42"})
        r = self.dets("D-RT", 1, 2, 1)[0]
        self.assertTrue(r["IsRunTime"])
        self.assertTrue(r["RealTime"].startswith("0001-01-01T00:00:0"), r["RealTime"])
        self.assertGreater(r["RunTime"], 0)
        self.assertEqual(self.call("POST", "/customers/846/devices/D-RT/cmd?command=GETSTATUS")[2],
                         {"Response": "STATUS;42"})
        self.rr.remove_device("D-RT")
        self.assertEqual(self.call("GET", "/customers/846/devices/D-RT")[0], 404)

    def test_amount_limit(self):
        base = "/customers/846/devices/D-BIG/"
        self.assertEqual(self.call("GET", base + "detections?amount=10001")[0], 400)
        self.assertEqual(self.call("GET", base + "detections")[0], 400)
        self.assertEqual(self.call("GET", base + "files/1/detections")[0], 400)
        self.assertEqual(self.call("GET", base + "detections?amount=0")[0], 400)
        st, _, body = self.call("GET", base + "detections?amount=10000")
        self.assertEqual((st, len(body)), (200, 10000))
        st, _, body = self.call("GET", base + "detections?fromDetection=2")
        self.assertEqual((st, len(body)), (200, 10000))

    # ---- commands ---------------------------------------------------------

    def test_cmd(self):
        base = "/customers/846/devices/D-1/cmd?command="
        st, _, body = self.call("POST", base + "GETSTATUS")
        self.assertEqual((st, body), (200, {"Response": "OK GETSTATUS"}))
        self.rr.set_cmd_reply("SETTIME", "ERR busy")
        self.rr.set_cmd_reply("CLEARFILES", "denied", status=500)
        self.assertEqual(self.call("POST", base + "SETTIME%2012%3A00")[2], {"Response": "ERR busy"})
        self.assertEqual(self.call("POST", base + "CLEARFILES")[0], 500)
        self.assertEqual(self.call("POST", base)[0], 400)
        self.assertEqual(self.call("GET", base + "GETSTATUS")[0], 405)
        self.assertEqual([c["command"] for c in self.rr.commands()],
                         ["GETSTATUS", "SETTIME 12:00", "CLEARFILES"])

    # ---- faults -----------------------------------------------------------

    def test_fail_next_order_and_prefix(self):
        self.token = self.get_token()
        self.rr.fail_next(1, 500, path_prefix="/customers/846/devices/D-1")
        self.rr.fail_next(2, 503)
        self.assertEqual(self.call("GET", "/customers/846/devices/U-1")[0], 503)
        self.assertEqual(self.call("GET", "/customers/846/devices/D-1")[0], 500)
        self.assertEqual(self.call("GET", "/customers/846/devices/D-1")[0], 503)
        self.assertEqual(self.call("GET", "/customers/846/devices/D-1")[0], 200)
        self.rr.fail_next(1, 200, body={"Devices": "wrong shape"})
        self.assertEqual(self.call("GET", "/customers/846/devices")[2],
                         {"Devices": "wrong shape"})
        self.rr.fail_next(5, 500)
        self.rr.reset_faults()
        self.assertEqual(self.rr.faults(), [])
        self.assertEqual(self.call("GET", "/customers/846/devices")[0], 200)

    def test_refuse_token(self):
        self.rr.refuse_token_next(1)
        self.rr.refuse_token_next(1, status=429, retry_after=3)
        self.assertEqual(self.call("POST", "/token", {"apikey": KEY}, auth=False)[0], 406)
        st, r, _ = self.call("POST", "/token", {"apikey": KEY}, auth=False)
        self.assertEqual((st, r.getheader("Retry-After")), (429, "3"))
        self.assertEqual(self.call("POST", "/token", {"apikey": KEY}, auth=False)[0], 200)
        self.assertEqual(self.rr.tokens(), 1)

    def test_slow_next(self):
        self.token = self.get_token()
        self.rr.slow_next(1, 1.0, path_prefix="/customers")
        with self.assertRaises(socket.timeout):
            self.call("GET", "/customers/846/devices", timeout=0.3)
        t = time.monotonic()
        self.assertEqual(self.call("GET", "/customers/846/devices")[0], 200)
        self.assertLess(time.monotonic() - t, 0.5)
        # Delay and answer faults combine; where="body" stalls mid-body.
        self.rr.slow_next(1, 0.4, where="body")
        self.rr.fail_next(1, 502)
        t = time.monotonic()
        self.assertEqual(self.call("GET", "/customers/846/devices")[0], 502)
        self.assertGreaterEqual(time.monotonic() - t, 0.35)

    def test_truncate(self):
        self.token = self.get_token()
        self.rr.truncate_next(1, path_prefix="/customers/846/devices")
        st, r, body = self.call("GET", "/customers/846/devices", raw=True)
        self.assertEqual(st, 200)
        self.assertEqual(int(r.getheader("Content-Length")), len(body))
        self.assertTrue(body.startswith(b'{"Devices":['))
        with self.assertRaises(ValueError):
            json.loads(body)
        for mode in ("close", "reset"):
            self.rr.truncate_next(1, mode=mode)
            with self.assertRaises((http.client.IncompleteRead, ConnectionError)):
                self.call("GET", "/customers/846/devices", raw=True)
        self.assertEqual(self.call("GET", "/customers/846/devices")[0], 200)
        self.assertEqual([r["fault"] for r in self.rr.requests()][-4:],
                         ["truncate-cut", "truncate-close", "truncate-reset", None])

    def test_invalid_json(self):
        self.token = self.get_token()
        self.rr.invalid_json_next(1)
        st, r, body = self.call("GET", "/customers/846/devices", raw=True)
        self.assertEqual(st, 200)
        self.assertTrue(r.getheader("Content-Type").startswith("application/json"))
        with self.assertRaises(ValueError):
            json.loads(body)

    def test_oversize(self):
        self.token = self.get_token()
        size = 8 * 1024 * 1024 + 1
        self.rr.oversize_next(1, size)
        self.rr.oversize_next(1, 1000, chunked=True)
        st, r, body = self.call("GET", "/customers/846/devices", raw=True)
        self.assertEqual((st, int(r.getheader("Content-Length")), len(body)), (200, size, size))
        self.assertEqual(len(json.loads(body)), (size - 1) // 2)
        st, r, body = self.call("GET", "/customers/846/devices", raw=True)
        self.assertEqual((r.getheader("Transfer-Encoding"), len(body)), ("chunked", 1000))
        json.loads(body)
        for size in (2, 3, 4):
            self.rr.oversize_next(1, size)
            body = self.call("GET", "/x", raw=True)[2]
            self.assertEqual((len(body), json.loads(body)), (size, [0] * (size > 2)))
        # A client that gives up early does not hurt the server.
        self.rr.oversize_next(1, 64 * 1024 * 1024)
        s = socket.create_connection(("127.0.0.1", self.rr.port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(65536)
        s.close()
        self.assertEqual(self.call("GET", "/health", auth=False, raw=True)[2], b"OK")

    # ---- recording, connections, control ----------------------------------

    def test_recording_and_stats(self):
        self.token = self.get_token()
        self.call("GET", "/customers/846/devices/D-1/detections?fromFile=2&amount=5",
                  {"X-Mixed-Case": "yes"})
        reqs = self.rr.requests()
        self.assertEqual(len(reqs), 2)
        tok, det = reqs
        self.assertEqual((tok["method"], tok["path"], tok["status"]), ("POST", "/token", 200))
        self.assertEqual(tok["headers"]["apikey"], KEY)
        self.assertEqual(det["query"], {"fromFile": "2", "amount": "5"})
        self.assertEqual(det["headers"]["X-Mixed-Case"], "yes")
        self.assertEqual(det["headers"]["Connection"], "close")
        self.assertTrue(det["connection_close"])
        self.assertEqual(det["route"], "GET /customers/{cid}/devices/{dev}/detections")
        self.assertEqual(self.rr.stats(), {"POST /token": 1,
                                           "GET /customers/{cid}/devices/{dev}/detections": 1})
        self.rr.clear_requests()
        self.assertEqual(self.rr.requests(), [])

    def test_server_closes_connections(self):
        s = socket.create_connection(("127.0.0.1", self.rr.port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")   # no Connection: close
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break                                           # server closed it
            data += chunk
        s.close()
        self.assertIn(b"\r\nConnection: close\r\n", data)
        self.assertFalse(self.rr.requests()[-1]["connection_close"])
        # Keep-alive mode: one connection serves two requests.
        self.rr.set_keep_alive(True)
        c = http.client.HTTPConnection("127.0.0.1", self.rr.port, timeout=5)
        for _ in range(2):
            c.request("GET", "/health")
            c.getresponse().read()
        c.close()
        conns = [r["conn"] for r in self.rr.requests()[-2:]]
        self.assertEqual(conns[0], conns[1])

    def test_control_endpoints(self):
        self.assertEqual(self.control("add_detections", {"device": "T-1", "count": 2}),
                         (200, {"file": 3, "count": 6}))
        self.assertEqual(self.control("new_file", {"device": "T-1"}), (200, 4))
        self.assertEqual(self.control("set_device", {"device": "T-1", "connected": True})[0], 200)
        self.assertEqual(self.control("fail_next", {"n": 1, "status": 500})[0], 200)
        self.assertEqual(self.call("GET", "/health", auth=False)[0], 500)
        st, world = self.control("world")
        self.assertEqual([(d["id"], d["current_file"], d["connected"]) for d in world][1],
                         ("T-1", 4, True))
        st, reqs = self.control("requests")
        self.assertEqual([r["path"] for r in reqs], ["/health"])   # /_control/ not recorded
        self.assertEqual(self.control("nope")[0], 404)
        self.assertEqual(self.control("add_detections", {"device": "X", "count": 1})[0], 404)
        self.assertEqual(self.control("add_detections", {"bogus": 1})[0], 400)
        st, rec = self.control("detection", {"device": "D-1", "file": 1, "no": 3})
        self.assertEqual(rec, self.rr.detection("D-1", 1, 3))


class CommandLineTest(unittest.TestCase):
    def test_listening_and_sigterm(self):
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_raceresult.py"),
                              "--port", "0", "--api-key", "K", "--customer", "7"],
                             stdout=subprocess.PIPE, text=True)
        try:
            line = p.stdout.readline()
            m = re.fullmatch(r"LISTENING (\d+)\n", line)
            self.assertTrue(m, line)
            c = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=5)
            c.request("POST", "/token", headers={"apikey": "K"})
            self.assertEqual(c.getresponse().status, 200)
            c.close()
            p.terminate()
            self.assertEqual(p.wait(10), 0)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
