#!/usr/bin/python3
"""
SmartRace events -> MQTT (SPEC section 2): every event type lands on its topic
with QoS 1, not retained, with event_type, time, data (event_data exactly as
sent), controller_id on per-controller topics and a strictly increasing seq.
Also the real payloads in R2M_FIXTURES/smartrace and R2M_SHARED_FIXTURES/smartrace,
hostile controller ids and unknown event types.

The subscriber is MQTT 5 with Retain As Published and QoS 2, so the QoS and
retain flag it sees are the ones the gateway published with.
"""
import json
import os
import re
import threading

import harness
from harness import expected_topic, controller_of, is_per_controller, sanitize_level

SKIP = object()
LEVEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def strict_equal(a, b):
    """JSON equality that tells true from 1 and 1 from 1.0."""
    if type(a) != type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b))
    return a == b


def msg_seq(m):
    if not m.topic.startswith("smartrace/") or m.topic.startswith("smartrace/state/"):
        return None
    try:
        p = m.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return p.get("seq") if isinstance(p, dict) else None


LAP = {
    "time": 1705692468000,
    "event_type": "ui.lap_update",
    "event_data": {
        "controller_id": "2", "lap": 4, "laptime": "0:10.008", "laptime_raw": 10008,
        "sector_1": "0:03.100", "sector_1_pb": True, "lap_pb": True,
        "driver_data": {"id": 1, "name": "Zoë 🏁", "name_short": None, "team": "-"},
        "car_data": {"id": 4, "name": "BMW M4", "laps": 1639, "fuel": None, "tags": "[]"},
        "controller_data": {"color_bg": "rgb(254, 56, 39)", "color_text": "#000"},
        "some_future_member": {"nested": [1, 2.5, "x", None, False, {"deep": True}]},
    },
}

# One envelope per row of the SPEC table, plus the topic it must land on.
CASES = [
    (LAP, "smartrace/lap/2"),
    ({"time": 1684769957969, "event_type": "event.start",
      "event_data": {"type": "race", "laps": "50"}}, "smartrace/event/start"),
    ({"time": 1684769957969, "event_type": "event.start",
      "event_data": {"type": "race", "duration": "600"}}, "smartrace/event/start"),
    ({"time": 1684769957969, "event_type": "event.end", "event_data": {
        "type": "race", "result": {
            "1": {"driver_id": 2, "car_id": 39, "controller_id": 1, "laps": 33,
                  "best_laptime": 4915, "pitstops": 0, "gap": "", "disqualified": False,
                  "retired": False},
            "2": {"driver_id": 3, "car_id": 3, "controller_id": 3, "laps": 29,
                  "best_laptime": 4914, "pitstops": 1, "gap": "+4 Lap(s)",
                  "disqualified": False, "retired": False}}}}, "smartrace/event/end"),
    ({"time": 1684769957969, "event_type": "event.change_status",
      "event_data": {"old": "starting", "new": "running"}}, "smartrace/event/status"),
    ({"time": 1684769957970, "event_type": "events.weather_change", "event_data": "wet"},
     "smartrace/weather/change"),
    ({"time": 1684769957971, "event_type": "events.weather_change", "event_data": "dry"},
     "smartrace/weather/change"),
    ({"time": 1684769957972, "event_type": "events.weather_update",
      "event_data": "about_to_rain"}, "smartrace/weather/forecast"),
    ({"time": 1684769957973, "event_type": "events.weather_update",
      "event_data": "about_to_dry_up"}, "smartrace/weather/forecast"),
    ({"time": 1684769957974, "event_type": "race.vsc_deployed"}, "smartrace/vsc"),
    ({"time": 1684769957975, "event_type": "race.vsc_retracted", "event_data": None},
     "smartrace/vsc"),
    ({"time": 1684769957976, "event_type": "race.penalty_update",
      "event_data": {"controller_id": "2", "penalty": 10,
                     "driver_data": {"id": 1, "name": "osc"}}}, "smartrace/penalty/2"),
    ({"time": 1684769957977, "event_type": "race.damage_update",
      "event_data": {"controller_id": "3", "damage": "engine"}}, "smartrace/damage/3"),
    ({"time": 1684769957978, "event_type": "util.fuel_update",
      "event_data": {"controller_id": "4", "fuel": "50"}}, "smartrace/fuel/4"),
    ({"time": 1684769957979, "event_type": "events.tire_change",
      "event_data": {"controller_id": "5", "tire": "wet"}}, "smartrace/tire/5"),
    ({"time": 1684769957980, "event_type": "event.pit.enter",
      "event_data": {"controller_id": "6"}}, "smartrace/pit/6"),
    ({"time": 1684769957981, "event_type": "event.pit.leave",
      "event_data": {"controller_id": "6"}}, "smartrace/pit/6"),
    ({"time": 1684769957982, "event_type": "util.set_active_track", "event_data": {
        "length": "", "reference_lap_time": None, "track_svg": None, "maximum_lap_time": "",
        "id": 7, "image": "cdvfile://localhost/documents/1570470682256.jpg",
        "pitstop_delta": "25000", "name_short": None, "name": "Demo Circuit",
        "minimum_lap_time": ""}}, "smartrace/track"),
    ({"time": 1684769957983, "event_type": "ui.reset"}, "smartrace/reset"),
    ({"time": 1684769957984, "event_type": "ui.remove_car_from_session",
      "event_data": {"controller_id": "8"}}, "smartrace/remove/8"),
    ({"time": 1684769957985, "event_type": "cu.send_esc_command", "event_data": {}},
     "smartrace/esc"),
    ({"time": 1684769957986, "event_type": "app.some_new_event", "event_data": {"x": 1}},
     "smartrace/other/app.some_new_event"),
]


class EventTests(harness.IntegrationCase):
    protocol = None  # the gateway's default (MQTT 5)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        d = cls.class_tmpdir()
        cls.broker = cls.class_track(harness.Broker(d)).start()
        cls.gw = cls.class_track(harness.Gateway(d, cls.broker.port,
                                                 protocol=cls.protocol)).start()
        cls.sub = cls.class_track(harness.Subscriber(cls.broker.port, ["smartrace/#"], qos=2))
        cls.sub.start()
        cls.seqs = []  # every seq answered, in answer order (posts are sequential)

    def send(self, event=None, raw=None, path="/", topic=None, controller=None):
        # controller: the controller_id the payload must carry; None = derive it
        # from event_data; SKIP = do not check it.
        """POSTs one event, waits for its message, asserts topic/QoS/retain and the
        payload fields; returns the parsed payload."""
        body = raw if raw is not None else json.dumps(event).encode()
        if event is None:
            event = json.loads(raw)
        r = self.gw.post(body, path=path)
        seq = self.assertOk(r)
        self.assertCors(r)
        self.seqs.append(seq)
        m = self.sub.wait_message(lambda m: msg_seq(m) == seq, 10)
        self.assertIsNotNone(m, "no MQTT message with seq %d for %s (answered %r)"
                             % (seq, body[:200], r))
        want_topic = topic or expected_topic(event)
        self.assertEqual(m.topic, want_topic)
        self.assertEqual(m.qos, 1, "event published with QoS %d" % m.qos)
        self.assertFalse(m.retain, "event message on %s is retained" % m.topic)
        p = m.json()
        self.assertIsInstance(p, dict)
        self.assertEqual(p.get("event_type"), event["event_type"])
        self.assertIn("time", p)
        sent_time = event.get("time")
        ok_times = [sent_time]
        if isinstance(sent_time, str) and sent_time.isdigit():
            ok_times.append(int(sent_time))  # a numeric string may be normalised
        self.assertTrue(any(strict_equal(p["time"], t) for t in ok_times),
                        "time %r, sent %r" % (p["time"], sent_time))
        self.assertIn("data", p)
        self.assertTrue(strict_equal(p["data"], event.get("event_data")),
                        "data differs from event_data:\n sent %r\n  got %r"
                        % (event.get("event_data"), p["data"]))
        self.assertTrue(strict_equal(p.get("seq"), seq), p.get("seq"))
        if is_per_controller(event["event_type"]):
            level = m.topic.rsplit("/", 1)[1]
            self.assertRegex(level, LEVEL_RE)
            want_cid = controller if controller is not None else controller_of(
                event.get("event_data"), event["event_type"])
            if want_cid is not None and want_cid is not SKIP and want_cid != "":
                self.assertEqual(p.get("controller_id"), want_cid,
                                 "controller_id must be the id as a string")
        return p

    def test_01_every_event_type(self):
        covered = set()
        for event, topic in CASES:
            with self.subTest(event_type=event["event_type"], topic=topic):
                self.assertEqual(expected_topic(event), topic)  # the table itself
                self.send(event, topic=topic)
                covered.add(event["event_type"])
        self.assertTrue(set(harness.EVENT_TOPICS) <= covered)

    def test_02_lap_extras_kept(self):
        p = self.send(LAP)
        # A ~1.5 KB lap with unknown members arrives whole (checked in send());
        # a normalised lap time, when offered, must be the raw one.
        if "laptime_ms" in p:
            self.assertEqual(p["laptime_ms"], 10008)

    def test_03_fixtures(self):
        dirs = [os.path.join(harness.FIXTURES, "smartrace"),
                os.path.join(harness.SHARED_FIXTURES, "smartrace")]
        n = 0
        for d in dirs:
            for name, raw in harness.load_fixture_dir(d):
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue  # hostile fixtures belong to test_http's 400 cases
                if not isinstance(event, dict) or not isinstance(event.get("event_type"), str) \
                        or not event["event_type"] or len(raw) > 65536:
                    continue
                with self.subTest(fixture=os.path.join(d, name)):
                    self.send(raw=raw)
                    n += 1
        print("fixtures posted: %d (from %s)" % (n, ", ".join(d for d in dirs
                                                             if os.path.isdir(d))))

    def test_04_weather_string_data(self):
        for s in ("wet", "dry", "about_to_rain", "about_to_dry_up"):
            etype = "events.weather_update" if s.startswith("about") else "events.weather_change"
            with self.subTest(data=s):
                p = self.send({"time": 1, "event_type": etype, "event_data": s})
                self.assertEqual(p["data"], s)

    def test_05_integer_controller_id(self):
        p = self.send({"time": 2, "event_type": "race.penalty_update",
                       "event_data": {"controller_id": 7, "penalty": 10}},
                      topic="smartrace/penalty/7", controller="7")
        self.assertEqual(p["controller_id"], "7")
        self.send({"time": 3, "event_type": "ui.lap_update",
                   "event_data": {"controller_id": 12, "lap": 1, "laptime_raw": 5000}},
                  topic="smartrace/lap/12", controller="12")

    def test_06_hostile_controller_ids(self):
        cases = [
            ("a/b", "a_b"),
            ("+", "_"),
            ("#", "_"),
            ("a/+/#", "a____"),
            ("", "_"),
            ("x" * 100, "x" * 64),
            ("../..", ".._.."),
            ("$SYS", "_SYS"),
            (" 1", "_1"),
            ("Car-1.2_b", "Car-1.2_b"),
        ]
        for cid, level in cases:
            with self.subTest(controller_id=cid):
                self.send({"time": 4, "event_type": "ui.lap_update",
                           "event_data": {"controller_id": cid, "lap": 1}},
                          topic="smartrace/lap/" + level, controller=cid)
        # Non-ASCII: '_' per byte (SPEC) or per character; either way one safe level.
        for cid in ("ü1", "🏁", "a\u0000b"):
            with self.subTest(controller_id=repr(cid)):
                r = self.gw.post({"time": 5, "event_type": "race.damage_update",
                                  "event_data": {"controller_id": cid, "damage": "engine"}})
                seq = self.assertOk(r)
                self.seqs.append(seq)
                m = self.sub.wait_message(lambda m: msg_seq(m) == seq, 10)
                self.assertIsNotNone(m)
                self.assertTrue(m.topic.startswith("smartrace/damage/"), m.topic)
                level = m.topic[len("smartrace/damage/"):]
                self.assertRegex(level, LEVEL_RE)
                per_char = "".join(c if re.match(r"[A-Za-z0-9._-]", c) else "_" for c in cid)
                self.assertIn(level, (sanitize_level(cid), per_char))

    def test_07_no_usable_controller_id(self):
        for data in (None, {}, {"controller_id": None}, {"controller_id": ""},
                     {"controller_id": True}, [1], 2.5):
            with self.subTest(event_data=data):
                ev = {"time": 6, "event_type": "event.pit.enter"}
                if data is not None:
                    ev["event_data"] = data
                self.send(ev, topic="smartrace/pit/_")
        self.send({"event_type": "ui.lap_update"}, topic="smartrace/lap/_")
        self.send({"event_type": "ui.lap_update", "event_data": "3"}, topic="smartrace/lap/_")

    def test_07b_bare_controller_id(self):
        # Pit and remove events may carry only the controller id as event_data.
        self.send({"time": 9, "event_type": "event.pit.enter", "event_data": 6},
                  topic="smartrace/pit/6", controller="6")
        self.send({"time": 9, "event_type": "event.pit.leave", "event_data": "5"},
                  topic="smartrace/pit/5", controller="5")
        self.send({"time": 9, "event_type": "ui.remove_car_from_session", "event_data": "a/b"},
                  topic="smartrace/remove/a_b", controller="a/b")

    def test_08_unknown_and_hostile_event_types(self):
        cases = [
            ("foo.bar", "smartrace/other/foo.bar"),
            ("evil/+#", "smartrace/other/evil___"),
            ("$SYS/x", "smartrace/other/_SYS_x"),
            ("t" * 100, "smartrace/other/" + "t" * 64),
        ]
        for etype, topic in cases:
            with self.subTest(event_type=etype):
                self.send({"time": 7, "event_type": etype, "event_data": {"a": 1}}, topic=topic)

    def test_09_time_absent_or_null(self):
        p = self.send({"event_type": "event.start", "event_data": {"type": "race"}})
        self.assertIsNone(p["time"])
        p = self.send({"time": None, "event_type": "event.start"})
        self.assertIsNone(p["time"])
        self.assertIsNone(p["data"])

    def test_10_data_carried_exactly(self):
        data = {
            "controller_id": "1",
            "unicode": "Zoë – 🏁 \u00e9\u4e2d",
            "escapes": "quote\" backslash\\ slash/ tab\t nl\n ctl\u0001",
            "int": 9007199254740993, "neg": -42, "zero": 0, "float": 0.1, "exp": 1e300,
            "bools": [True, False], "null": None, "empty_obj": {}, "empty_arr": [],
            "numbers_as_strings": {"laps": "50", "fuel": "-1"},
            "nested": {"a": {"b": {"c": {"d": [1, [2, [3, [4]]]]}}}},
        }
        self.send({"time": 1705692468000, "event_type": "util.fuel_update", "event_data": data})

    def test_11_any_path_is_an_event(self):
        for path in ("/smartrace", "/any/deeper/path?x=1", "/index.html"):
            with self.subTest(path=path):
                self.send({"time": 8, "event_type": "event.change_status",
                           "event_data": {"old": "running", "new": "suspended"}}, path=path)

    def test_12_concurrent_posts(self):
        """4 threads x 25 events: unique seqs, every one delivered, delivered in seq order."""
        answered = []
        errors = []
        lock = threading.Lock()

        def worker(t):
            for i in range(25):
                try:
                    r = self.gw.post({"time": i, "event_type": "test.concurrent",
                                      "event_data": {"t": t, "i": i}})
                except Exception as e:  # noqa: BLE001 - recorded and asserted below
                    errors.append(repr(e))
                    continue
                with lock:
                    answered.append((r.status, r.json, t, i))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(answered), 100)
        seq_of = {}
        for status, body, t, i in answered:
            self.assertEqual(status, 200, body)
            seq_of[body["seq"]] = (t, i)
        self.assertEqual(len(seq_of), 100, "seq answered twice")

        def all_there(msgs):
            got = {msg_seq(m) for m in msgs}
            return set(seq_of) <= got
        self.assertTrue(self.sub.wait_for(all_there, 20), "not every answered event delivered")
        arrivals = [msg_seq(m) for m in self.sub.snapshot() if msg_seq(m) in seq_of]
        first = []
        for s in arrivals:
            if s not in first:
                first.append(s)
        self.assertEqual(first, sorted(first), "delivered out of seq order")
        for m in self.sub.snapshot():
            s = msg_seq(m)
            if s in seq_of:
                self.assertEqual(m.topic, "smartrace/other/test.concurrent")
                t, i = seq_of[s]
                self.assertEqual(m.json()["data"], {"t": t, "i": i}, "seq %d carries "
                                 "another event's data" % s)

    def test_99_seq_strictly_increasing_and_one_topic_each(self):
        # Runs last (name order): seqs answered to sequential posts strictly increase.
        self.assertGreater(len(self.seqs), 30)
        self.assertEqual(self.seqs, sorted(set(self.seqs)),
                         "seqs of sequential posts not strictly increasing: %r" % self.seqs)
        topics = {}
        for m in self.sub.snapshot():
            s = msg_seq(m)
            if s is not None:
                topics.setdefault(s, set()).add(m.topic)
        multi = {s: t for s, t in topics.items() if len(t) > 1}
        self.assertEqual(multi, {}, "one event published on several topics")
        # Nothing of ours is ever retained (state topics aside).
        retained_events = [m for m in self.sub.snapshot() if msg_seq(m) is not None and m.retain]
        self.assertEqual(retained_events, [])


class EventTestsMqtt311(EventTests):
    """The same with the gateway speaking MQTT 3.1.1 (mqtt.protocol = 3.1.1)."""
    protocol = "3.1.1"


if __name__ == "__main__":
    harness.main()
