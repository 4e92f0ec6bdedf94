#!/usr/bin/python3
"""
The live page's data (SPEC section 5; README "The live page"): GET /api/state
says what the retained topics say; it names what arrived, from where, and
every refusal with its reason (400 with the parse error, 401 missing or wrong
token, 413); GET /api/events?limit=N shows the last accepted raw events;
GET /events streams the state (Server-Sent Events), at most http.max_streams
at once, 503 beyond, while SmartRace's POSTs still get through; the broker
section follows an outage; the RACE RESULT section shows the decoders and the
API's reachability. With http.token set, the page and its data need it, and
/healthz, /readyz, /metrics do not.
"""
import http.client
import json
import socket
import time

import harness
from harness import wait_until
from test_state import ev

S = "smartrace/state/"
TOKEN = "page-tok-3141"
KEY = "page-api-key"
CID = 4711


def lap(cid, n, ms, t, name):
    return {"time": t, "event_type": "ui.lap_update", "event_data": {
        "controller_id": cid, "lap": n, "laptime_raw": ms,
        "driver_data": {"name": name}, "car_data": {"name": "Car " + cid},
        "controller_data": {"color_bg": "#102030", "color_text": "#fff"}}}


def race():
    t = 1700000000000
    out = [ev("util.set_active_track", {"id": 3, "name": "Club Ring"}, t),
           ev("event.start", {"type": "race", "laps": "20"}, t + 1),
           ev("event.change_status", {"old": "starting", "new": "running"}, t + 2),
           ev("events.weather_change", "wet", t + 3)]
    for i, (cid, n, ms) in enumerate((("1", 1, 8000), ("2", 1, 8100), ("3", 1, 7900),
                                      ("1", 2, 7800), ("2", 2, 7700), ("1", 3, 7600))):
        out.append(lap(cid, n, ms, t + 1000 * (i + 1), "Driver " + cid))
    out += [ev("race.vsc_deployed", None, t + 9000),
            ev("util.fuel_update", {"controller_id": "2", "fuel": "40"}, t + 9001),
            ev("event.pit.enter", {"controller_id": "2"}, t + 9002),
            ev("race.penalty_update", {"controller_id": "3", "penalty": 5}, t + 9003)]
    return out


def get_json(gw, path):
    r = gw.request("GET", path)
    if r.status != 200:
        raise AssertionError("GET %s: %r" % (path, r))
    return json.loads(r.body)


class Stream:
    """One GET /events held open; frames() parses what has arrived."""

    def __init__(self, port, path="/events"):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        self.conn.connect()
        self.sock = self.conn.sock  # http.client lets go of it once the answer is read
        self.conn.request("GET", path)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}

    def next_frame(self):
        """The next frame's (event name, JSON), reading as long as it takes
        (each frame comes within the 10 s heartbeat; the socket times out at 20)."""
        name = None
        while True:
            line = self.resp.readline()
            if not line:
                raise AssertionError("stream ended")
            if line.startswith(b"event: "):
                name = line[7:].strip().decode()
            elif line.startswith(b"data: "):
                return name, json.loads(line[6:])

    def frame_where(self, pred, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name, data = self.next_frame()
            if pred(data):
                return name, data
        raise AssertionError("no matching frame within %d s" % timeout)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.resp.close()
        self.sock.close()
        self.conn.close()


class ApiStateTests(harness.IntegrationCase):

    def test_state_mirrors_retained_topics(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker)
        events = race()
        seqs = [self.assertOk(gw.post(e)) for e in events]

        def settled():
            s = get_json(gw, "/api/state")
            return s if s["race"]["seq"] == seqs[-1] and s["broker"]["queue_depth"] == 0 else None
        state = wait_until(settled, 10)
        self.assertIsNotNone(state, "the race did not reach the broker")

        # The same race, as a late subscriber sees it on the retained topics.
        snap = harness.retained(broker.port, [S + "#"])
        race_view = state["race"]
        for key in ("status", "flag", "weather", "vsc"):
            m = snap.get(S + key)
            self.assertEqual(race_view[key], m.payload.decode() if m else None, key)
        for key in ("event", "track", "standings"):
            self.assertEqual(race_view[key], snap[S + key].json(), key)
        topics = {t[len(S + "controller/"):]: m.json() for t, m in snap.items()
                  if t.startswith(S + "controller/")}
        self.assertEqual({c["controller_id"]: c for c in race_view["controllers"]}, topics)
        self.assertEqual([c["controller_id"] for c in race_view["controllers"]],
                         [s["controller_id"] for s in race_view["standings"]])
        self.assertEqual(race_view["status"], "running")
        self.assertEqual(race_view["vsc"], "deployed")
        self.assertEqual([s["controller_id"] for s in race_view["standings"]], ["1", "2", "3"])

        # What arrived, counted per type, and from where.
        self.assertEqual(state["api"], 1)
        self.assertIsInstance(state["now_ms"], int)
        sr = state["smartrace"]
        self.assertEqual(sr["accepted"], len(events))
        self.assertEqual(sr["refused"], 0)
        self.assertEqual(sr["by_type"]["ui.lap_update"], 6)
        self.assertEqual(sr["by_type"]["event.change_status"], 1)
        self.assertEqual(sum(sr["by_type"].values()), len(events))
        self.assertEqual(sr["last_event"]["seq"], seqs[-1])
        self.assertEqual(sr["last_event"]["type"], "race.penalty_update")
        self.assertEqual(sr["last_event"]["from"], "127.0.0.1")
        self.assertLessEqual(sr["last_event"]["at_ms"], state["now_ms"])
        self.assertEqual(sr["url"], "http://127.0.0.1:%d/" % gw.http_port)
        self.assertFalse(sr["token_required"])
        self.assertEqual(sr["cors_origin"], "*")
        b = state["broker"]
        self.assertTrue(b["connected"])
        self.assertEqual(b["url"], "mqtt://127.0.0.1:%d" % broker.port)
        self.assertLessEqual(state["gateway"]["started_ms"], b["connected_since_ms"])
        self.assertGreater(b["journal_bytes"], 0)
        self.assertFalse(state["raceresult"]["enabled"])
        self.assertEqual(state["raceresult"]["devices"], [])

    def test_refusals_preflight_and_token(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, token=TOKEN, max_body=1024)
        q = "?token=" + TOKEN
        good = ev("ui.lap_update", {"controller_id": "1", "lap": 1, "laptime_raw": 9000})
        self.assertOk(gw.post(good))
        self.assertEqual(harness.post(gw.http_port, "/", good).status, 401)
        self.assertEqual(harness.post(gw.http_port, "/", good, token="not-" + TOKEN).status, 401)
        bad = gw.post(b'{"event_type": "ui.lap_update", ')
        self.assertEqual(bad.status, 400)
        parse_error = json.loads(bad.body)["error"]
        self.assertEqual(gw.post(b'{"event_type":"x","pad":"%s"}' % (b"p" * 2000)).status, 413)
        r = gw.request("OPTIONS", "/", headers={
            "Origin": "http://localhost", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Private-Network": "true"})
        self.assertEqual(r.status, 204)

        state = get_json(gw, "/api/state" + q)
        sr = state["smartrace"]
        self.assertTrue(sr["token_required"])
        self.assertEqual(sr["accepted"], 1)
        self.assertEqual(sr["refused"], 4)
        got = [(x["status"], x["reason"], x["from"]) for x in sr["refusals"]]
        self.assertEqual([g[0] for g in got], [413, 400, 401, 401], got)  # newest first
        self.assertEqual(got[1][1], parse_error)
        self.assertTrue(got[2][1].startswith("wrong token"), got[2])
        self.assertTrue(got[3][1].startswith("missing token"), got[3])
        self.assertTrue(all(g[2] == "127.0.0.1" for g in got))
        self.assertNotIn("not-" + TOKEN, json.dumps(state))
        self.assertNotIn(TOKEN, json.dumps(state))
        pf = sr["last_preflight"]
        self.assertEqual((pf["from"], pf["origin"], pf["private_network"]),
                         ("127.0.0.1", "http://localhost", True))

        # The page and its data need the token (Bearer works too); monitoring does not.
        for path in ("/", "/index.html", "/api/state", "/api/events", "/events"):
            with self.subTest(path=path):
                r = gw.request("GET", path)
                self.assertEqual(r.status, 401, r)
                self.assertIn("token", json.loads(r.body)["error"])
                self.assertEqual(gw.request("GET", path + "?token=wrong").status, 401)
        self.assertEqual(gw.request("GET", "/api/state", headers={
            "Authorization": "Bearer " + TOKEN}).status, 200)
        page = gw.request("GET", "/" + q)
        self.assertEqual(page.status, 200)
        self.assertEqual(page.header("content-type"), "text/html; charset=utf-8")
        self.assertEqual(page.header("cache-control"), "no-cache")
        for path in ("/healthz", "/readyz", "/metrics"):
            self.assertEqual(gw.request("GET", path).status, 200, path)
        # Looking does not count as a refusal.
        self.assertEqual(get_json(gw, "/api/state" + q)["smartrace"]["refused"], 4)

    def test_api_events_ring(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, extra={"smartrace": {"keep_events": "5"}})
        sent = [ev("x.debug", {"n": i, "text": "caf\u00e9 \"%d\"" % i}, 1700000000000 + i)
                for i in range(8)]
        seqs = [self.assertOk(gw.post(e)) for e in sent]
        got = get_json(gw, "/api/events")["events"]
        self.assertEqual([e["seq"] for e in got], seqs[-5:])   # oldest first, last 5
        self.assertEqual([e["body"] for e in got], sent[-5:])  # as sent
        self.assertTrue(all(e["type"] == "x.debug" and isinstance(e["at_ms"], int) for e in got))
        for limit, want in (("2", seqs[-2:]), ("0", []), ("100", seqs[-5:]), ("x", seqs[-5:]),
                            ("-1", seqs[-5:])):
            with self.subTest(limit=limit):
                self.assertEqual([e["seq"] for e in
                                  get_json(gw, "/api/events?limit=" + limit)["events"]], want)
        # A refused event is not among them.
        self.assertEqual(gw.post(b"{nope").status, 400)
        self.assertEqual(get_json(gw, "/api/events")["events"][-1]["seq"], seqs[-1])

        gw2 = self.start_gateway(d, broker, extra={"smartrace": {"keep_events": "0"}})
        self.assertOk(gw2.post(sent[0]))
        self.assertEqual(get_json(gw2, "/api/events")["events"], [])

    def test_streams_bounded_and_live(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, extra={"http": {"max_streams": "2",
                                                           "max_connections": "6"}})
        a = self.track_stream(Stream(gw.http_port))
        b = self.track_stream(Stream(gw.http_port))
        for s in (a, b):
            self.assertEqual(s.status, 200)
            self.assertEqual(s.headers["content-type"], "text/event-stream")
            self.assertEqual(s.headers["cache-control"], "no-cache")
            name, first = s.next_frame()
            self.assertEqual(name, "state")
            self.assertEqual(first["api"], 1)
            self.assertIn("race", first)
        self.assertEqual(harness.metric(gw, "race2mqtt_http_streams"), 2)
        r = gw.request("GET", "/events")
        self.assertEqual(r.status, 503, r)
        self.assertIn("max_streams", json.loads(r.body)["error"])
        # SmartRace still gets its slots while the streams are full.
        seqs = [self.assertOk(gw.post(ev("event.change_status", {"new": st})))
                for st in ("running", "suspended", "running")]
        self.assertEqual(gw.request("GET", "/api/state").status, 200)
        # The open streams follow: a frame with the last event arrives.
        for s in (a, b):
            _, f = s.frame_where(lambda f: f["race"]["seq"] == seqs[-1])
            self.assertEqual(f["race"]["status"], "running")
            self.assertEqual(f["smartrace"]["accepted"], 3)
        # A closed stream frees its slot (noticed at its next frame at the latest).
        a.close()
        again = wait_until(lambda: self.try_stream(gw), 30, 0.5)
        self.assertIsNotNone(again, "the slot of a closed stream was never freed")
        self.assertEqual(again.next_frame()[0], "state")

        gw_off = self.start_gateway(d, broker, extra={"http": {"max_streams": "0"}})
        r = gw_off.request("GET", "/events")
        self.assertEqual(r.status, 503, r)

    def track_stream(self, s):
        self.addCleanup(s.close)
        return s

    def try_stream(self, gw):
        s = Stream(gw.http_port)
        if s.status == 200:
            return self.track_stream(s)
        s.close()
        return None

    def test_broker_outage_shown(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, extra={"mqtt": {"keepalive_s": "5"}})
        before = get_json(gw, "/api/state")["broker"]
        self.assertTrue(before["connected"])
        self.assertEqual(before["reconnects"], 0)
        broker.stop()
        down = wait_until(lambda: (lambda b: b if not b["connected"] else None)(
            get_json(gw, "/api/state")["broker"]), 15)
        self.assertIsNotNone(down, "the page never showed the broker as disconnected")
        self.assertIsNone(down["connected_since_ms"])
        seq = self.assertOk(gw.post(ev("event.change_status", {"new": "running"})))
        self.assertGreaterEqual(get_json(gw, "/api/state")["broker"]["queue_depth"], 1)
        broker.start()
        up = wait_until(lambda: (lambda b: b if b["connected"] and b["queue_depth"] == 0
                                 else None)(get_json(gw, "/api/state")["broker"]), 30)
        self.assertIsNotNone(up, "the page never showed the broker back with the queue drained")
        self.assertGreaterEqual(up["reconnects"], 1)
        self.assertGreater(up["connected_since_ms"], before["connected_since_ms"])
        self.assertEqual(get_json(gw, "/api/state")["race"]["seq"], seq)

    def test_raceresult_devices_and_api(self):
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world={"devices": [
            {"id": "D-5012", "type": "Decoder", "name": "Finish", "files": {"3": 4}},
            {"id": "T-7", "type": "TrackBox", "name": "Pit in", "connected": False,
             "files": {"1": 0}}]})
        self.track(harness._Stoppable(rr))
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(rr, KEY, CID, start="all"))

        def devices_with_passing():
            s = get_json(gw, "/api/state")["raceresult"]
            devs = {x["device"]: x for x in s["devices"]}
            return s if devs.get("D-5012", {}).get("last_passing_ms") else None
        rrs = wait_until(devices_with_passing, 20)
        self.assertIsNotNone(rrs, "no device with a passing on the page")
        self.assertTrue(rrs["enabled"])
        self.assertTrue(rrs["api"]["ok"])
        devs = {x["device"]: x for x in rrs["devices"]}
        self.assertEqual(sorted(devs), ["D-5012", "T-7"])
        fin = devs["D-5012"]
        self.assertEqual((fin["name"], fin["connected"], fin["file"]), ("Finish", True, 3))
        self.assertEqual(fin["last_transponder"], rr.detection("D-5012", 3, 4)["Code"],
                         fin)
        status = harness.retained(broker.port, ["raceresult/D-5012/status"])
        self.assertEqual(fin["battery"], status["raceresult/D-5012/status"].json()["battery"])
        self.assertIsNotNone(fin["battery"])
        self.assertFalse(devs["T-7"]["connected"])
        self.assertIsNone(devs["T-7"]["last_passing_ms"])
        self.assertNotIn(KEY, json.dumps(rrs))

        # The API failing shows as unreachable with the reason, then recovers.
        rr.fail_next(1000, 500, path_prefix="/customers/%d/devices" % CID)
        failing = wait_until(lambda: (lambda a: a if a["ok"] is False else None)(
            get_json(gw, "/api/state")["raceresult"]["api"]), 20)
        self.assertIsNotNone(failing, "the API's failure never showed")
        self.assertIn("500", failing["last_error"])
        rr.reset_faults()
        ok = wait_until(lambda: (lambda a: a if a["ok"] else None)(
            get_json(gw, "/api/state")["raceresult"]["api"]), 30)
        self.assertIsNotNone(ok, "the API's recovery never showed")
        self.assertIn("500", ok["last_error"])  # the last error stays for the record


if __name__ == "__main__":
    harness.main()
