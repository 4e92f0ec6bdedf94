#!/usr/bin/python3
"""
The retained state topics as a contract (README "What it publishes"): a whole
race goes through the real gateway and the real broker, and every message
published under smartrace/state/# is checked against the schema below:
members present, JSON types exact (true is not 1), no members beyond the
documented ones, plain-text values from the documented sets, retain flag set,
empty payloads (deletions) only on controller topics. Computed and official
standings have the same entry. The flag follows the documented mapping and is
published only when it changes.

SCHEMA and the value sets mirror the README tables: change both together.
test_readme_documents_the_schema checks that the README names every member
and value listed here, so a member added on one side only fails one of them.
"""
import os
import re

import harness

S = "smartrace/state/"

# JSON types as Python types; bool is not an int here.
INT, STR, BOOL, NULL = "int", "string", "bool", "null"

EVENT = {"type": {STR, NULL}, "laps": {INT, NULL}, "duration": {INT, NULL},
         "start_time": {INT, NULL}, "end_time": {INT, NULL}}

CONTROLLER = {"controller_id": {STR}, "position": {INT, NULL}, "laps": {INT},
              "last_lap_ms": {INT, NULL}, "best_lap_ms": {INT, NULL}, "fuel": {INT, NULL},
              "in_pit": {BOOL}, "penalty": {INT, NULL}, "damage": {STR, NULL},
              "tire": {STR, NULL}, "driver": {STR, NULL}, "car": {STR, NULL},
              "color_bg": {STR, NULL}, "color_text": {STR, NULL}, "updated": {INT, NULL}}

STANDING = {"position": {INT}, "controller_id": {STR}, "laps": {INT},
            "best_lap_ms": {INT, NULL}, "last_lap_ms": {INT, NULL}, "driver": {STR, NULL},
            "car": {STR, NULL}, "color_bg": {STR, NULL}, "color_text": {STR, NULL},
            "gap": {STR, NULL}, "pitstops": {INT, NULL}, "retired": {BOOL, NULL},
            "disqualified": {BOOL, NULL}, "official": {BOOL}}

# Members that only the official result fills.
OFFICIAL_ONLY = ("gap", "pitstops", "retired", "disqualified")

STATUSES = {"prepare_for_start", "starting", "jumpstart", "running", "suspended",
            "restarting", "ended"}
WEATHER = {"dry", "wet"}
VSC = {"deployed", "retracted"}
FLAGS = {"none", "start", "green", "yellow", "red", "checkered", "jumpstart"}


def json_type(v):
    if v is None:
        return NULL
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, int):
        return INT
    if isinstance(v, str):
        return STR
    return type(v).__name__


def schema_errors(obj, schema, where):
    if not isinstance(obj, dict):
        return ["%s: not a JSON object: %r" % (where, obj)]
    errs = ["%s: undocumented member %r" % (where, k) for k in sorted(set(obj) - set(schema))]
    for key, types in schema.items():
        if key not in obj:
            errs.append("%s: member %r missing" % (where, key))
        elif json_type(obj[key]) not in types:
            errs.append("%s: %s is %s (%r), want %s" % (where, key, json_type(obj[key]),
                                                       obj[key], "|".join(sorted(types))))
    return errs


def contract_errors(m, track_sent):
    """What is wrong with one message of smartrace/state/#, as a list of strings."""
    topic = m.topic[len(S):]
    where = m.topic
    if not m.retain:
        return ["%s: published without the retain flag" % where]
    if m.payload == b"":
        return [] if topic.startswith("controller/") else ["%s: deleted" % where]
    try:
        text = m.payload.decode("utf-8")
    except UnicodeDecodeError:
        return ["%s: not UTF-8" % where]
    plain = {"status": STATUSES, "weather": WEATHER, "vsc": VSC, "flag": FLAGS}
    if topic in plain:
        return [] if text in plain[topic] else ["%s: undocumented value %r" % (where, text)]
    try:
        p = m.json()
    except ValueError:
        return ["%s: not JSON: %r" % (where, m.payload[:200])]
    if topic == "event":
        return schema_errors(p, EVENT, where)
    if topic == "track":
        return [] if p == track_sent else ["%s: not the track as sent: %r" % (where, p)]
    if topic.startswith("controller/") and "/" not in topic[len("controller/"):]:
        return schema_errors(p, CONTROLLER, where)
    if topic == "standings":
        if not isinstance(p, list):
            return ["%s: not a JSON array" % where]
        errs = []
        for i, e in enumerate(p):
            w = "%s[%d]" % (where, i)
            errs += schema_errors(e, STANDING, w)
            if isinstance(e, dict) and e.get("position") != i + 1 and e.get("official") is False:
                errs.append("%s: computed position %r" % (w, e.get("position")))
            if isinstance(e, dict) and e.get("official") is False:
                errs += ["%s: %s is %r in computed standings" % (w, k, e.get(k))
                         for k in OFFICIAL_ONLY if e.get(k) is not None]
        return errs
    return ["%s: undocumented topic" % where]


def lap(cid, n, ms, t, sectors=True):
    d = {"controller_id": cid, "lap": n, "laptime": "0:%02d.%03d" % (ms // 1000, ms % 1000),
         "laptime_raw": ms,
         "driver_data": {"id": 10 + int(cid), "name": "Driver %s" % cid, "name_short": None},
         "car_data": {"id": 40 + int(cid), "name": "Car %s" % cid, "laps": 99, "fuel": None},
         "controller_data": {"color_bg": "rgb(%s, 0, 0)" % cid, "color_text": "#000"}}
    if sectors:
        d.update({"sector_1": "0:01.000", "sector_1_pb": True, "sector_2": "0:02.000",
                  "sector_2_pb": False, "sector_3": "0:01.500", "sector_3_pb": True,
                  "lap_pb": n == 1})
    return {"time": t, "event_type": "ui.lap_update", "event_data": d}


def ev(etype, data=None, t=1700000000000):
    e = {"time": t, "event_type": etype}
    if data is not None:
        e["event_data"] = data
    return e


TRACK = {"length": "14.2", "reference_lap_time": None, "track_svg": None, "id": 7,
         "image": "cdvfile://localhost/documents/1570470682256.jpg", "pitstop_delta": "25000",
         "name_short": None, "name": "Demo Circuit", "minimum_lap_time": ""}


class StateContractTests(harness.IntegrationCase):

    def setUp(self):
        self.t = 1700000000000

    def post(self, gw, etype, data=None):
        self.t += 1000
        return self.assertOk(gw.post(ev(etype, data, self.t)))

    def post_lap(self, gw, cid, n, ms, sectors=True):
        self.t += 1000
        return self.assertOk(gw.post(lap(cid, n, ms, self.t, sectors)))

    def latest(self, sub, suffix):
        msgs = sub.on_topic(S + suffix)
        return msgs[-1] if msgs else None

    def wait_latest(self, sub, suffix, check, timeout=10):
        """Waits until the latest message on S+suffix passes check(msg) (a
        callable returning true or raising AssertionError); returns it."""
        def ok(msgs):
            hits = [m for m in msgs if m.topic == S + suffix]
            if not hits:
                return None
            try:
                return hits[-1] if check(hits[-1]) is not False else None
            except (AssertionError, ValueError, KeyError, TypeError, IndexError):
                return None
        m = sub.wait_for(ok, timeout)
        if m is None:
            last = self.latest(sub, suffix)
            check(last)  # let its assertion be the failure
            self.fail("%s%s never passed the check; last %r" % (S, suffix, last))
        return m

    def wait_flag(self, sub, flag):
        self.wait_latest(sub, "flag", lambda m: m.payload.decode() == flag)

    def test_every_state_message_follows_the_contract(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        # Subscribed before the gateway starts: its first full publication is seen too.
        sub = self.subscribe(broker.port, ["smartrace/state/#"])
        gw = self.start_gateway(d, broker)
        self.wait_flag(sub, "none")
        self.wait_latest(sub, "standings", lambda m: m.json() == [])
        flags = ["none"]

        def step(etype, data=None, flag=None):
            self.post(gw, etype, data)
            if flag is not None:
                if flag != flags[-1]:
                    flags.append(flag)
                self.wait_flag(sub, flag)

        step("util.set_active_track", TRACK)
        step("event.start", {"type": "race", "laps": "10"}, "start")
        for old, new, flag in (("", "prepare_for_start", "start"),
                               ("prepare_for_start", "starting", "start"),
                               ("starting", "jumpstart", "jumpstart"),
                               ("jumpstart", "prepare_for_start", "start"),
                               ("prepare_for_start", "starting", "start"),
                               ("starting", "running", "green")):
            step("event.change_status", {"old": old, "new": new}, flag)
        step("events.weather_change", "wet")
        step("events.weather_update", "about_to_dry_up")
        # Laps of three controllers; 2 without sector fields; 3 sends an integer id.
        for cid, n, ms in (("1", 1, 5000), ("2", 1, 5100), ("3", 1, 5200), ("1", 2, 4800)):
            self.post_lap(gw, cid, n, ms, sectors=cid != "2")
        step("race.vsc_deployed", None, "yellow")
        self.post_lap(gw, "2", 2, 4700)
        self.post(gw, "ui.lap_update", {"controller_id": 3, "lap": 2, "laptime_raw": "4600"})
        step("race.vsc_retracted", None, "green")
        step("event.pit.enter", {"controller_id": "2"})
        step("util.fuel_update", {"controller_id": "1", "fuel": "50"})
        step("race.penalty_update", {"controller_id": "3", "penalty": 10})
        step("race.damage_update", {"controller_id": "2", "damage": "engine"})
        step("events.tire_change", {"controller_id": "1", "tire": "wet"})
        step("event.pit.leave", {"controller_id": "2"})
        step("event.change_status", {"old": "running", "new": "suspended"}, "red")
        step("race.vsc_deployed", None, "red")
        step("event.change_status", {"old": "suspended", "new": "restarting"}, "start")
        step("event.change_status", {"old": "restarting", "new": "running"}, "yellow")
        step("race.vsc_retracted", None, "green")
        self.post_lap(gw, "1", 3, 4900)

        def computed(m):
            ids = [e["controller_id"] for e in m.json()]
            self.assertEqual(ids, ["1", "2", "3"], m.payload)
            self.assertFalse(m.json()[0]["official"])
            return True
        comp = self.wait_latest(sub, "standings", computed).json()

        self.post(gw, "ui.remove_car_from_session", {"controller_id": "2"})
        self.wait_latest(sub, "controller/2", lambda m: m.payload == b"")

        # SmartRace's result: integer ids, best_laptime, ids instead of names,
        # and a member the contract does not have.
        result = {"type": "race", "result": {
            "1": {"driver_id": 11, "car_id": 41, "controller_id": 1, "laps": 3,
                  "best_laptime": 4800, "pitstops": 0, "gap": "", "disqualified": False,
                  "retired": False, "x_future": [1]},
            "2": {"driver_id": 13, "car_id": 43, "controller_id": 3, "laps": "2",
                  "best_laptime": "4600", "pitstops": 1, "gap": "+1 Lap(s)",
                  "disqualified": False, "retired": False},
            "3": {"driver_id": 12, "car_id": 42, "controller_id": 2, "laps": 2,
                  "best_laptime": 4700, "pitstops": 1, "gap": "+1 Lap(s)",
                  "disqualified": False, "retired": True}}}
        step("event.end", result, "checkered")

        def official(m):
            p = m.json()
            self.assertEqual([e["controller_id"] for e in p], ["1", "3", "2"], m.payload)
            self.assertTrue(all(e["official"] for e in p), m.payload)
            return True
        off = self.wait_latest(sub, "standings", official).json()
        # Names from the earlier laps; the removed controller has none left.
        self.assertEqual((off[0]["driver"], off[0]["car"], off[0]["color_bg"]),
                         ("Driver 1", "Car 1", "rgb(1, 0, 0)"), off[0])
        self.assertEqual((off[0]["laps"], off[0]["best_lap_ms"], off[0]["last_lap_ms"]),
                         (3, 4800, 4900), off[0])
        self.assertEqual((off[1]["driver"], off[1]["laps"], off[1]["best_lap_ms"]),
                         ("Driver 3", 2, 4600), off[1])
        self.assertEqual((off[2]["driver"], off[2]["retired"], off[2]["gap"]),
                         (None, True, "+1 Lap(s)"), off[2])
        self.assertEqual(set(comp[0]), set(off[0]))
        for k in comp[0]:
            if comp[0][k] is not None and off[0][k] is not None:
                self.assertEqual(json_type(comp[0][k]), json_type(off[0][k]), k)

        step("event.change_status", {"old": "running", "new": "ended"}, "checkered")
        step("ui.reset", None, "none")
        self.wait_latest(sub, "standings", lambda m: m.json() == [])
        for cid in ("1", "3"):
            self.wait_latest(sub, "controller/" + cid, lambda m: m.payload == b"")
        self.post_lap(gw, "4", 1, 6000, sectors=False)
        self.wait_latest(sub, "standings",
                         lambda m: [e["controller_id"] for e in m.json()] == ["4"])
        sub.sync()

        msgs = [m for m in sub.snapshot() if m.topic.startswith(S)]
        errors = []
        for m in msgs:
            errors += contract_errors(m, TRACK)
        self.assertEqual(errors, [], "%d of %d state messages break the contract"
                         % (len(errors), len(msgs)))
        seen = {m.topic[len(S):].split("/")[0] for m in msgs}
        self.assertEqual(seen, {"status", "weather", "vsc", "flag", "event", "track",
                                "controller", "standings"})

        # The flag went through the documented values, each published once.
        published = [m.payload.decode() for m in msgs if m.topic == S + "flag"]
        self.assertEqual(published, flags)

        # The retained values a late subscriber gets pass too.
        late = harness.retained(broker.port, ["smartrace/state/#"])
        self.assertEqual(late[S + "flag"].payload, b"none")
        errors = []
        for m in late.values():
            errors += contract_errors(m, TRACK)
        self.assertEqual(errors, [])

    def test_contract_survives_gateway_restart(self):
        """The official result and the flag come back from the snapshot, still
        in the documented shape."""
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=False)
        gw = self.start_gateway(d, broker)
        sub = self.subscribe(broker.port, ["smartrace/state/#"])
        self.post(gw, "event.start", {"type": "race", "duration": "600"})
        self.post(gw, "event.change_status", {"old": "starting", "new": "running"})
        self.post_lap(gw, "1", 1, 5000)
        self.post_lap(gw, "2", 1, 5500)
        self.post(gw, "event.end", {"type": "race", "result": {
            "1": {"controller_id": 2, "laps": 1, "best_laptime": 5500, "gap": ""},
            "2": {"controller_id": 1, "laps": 1, "best_laptime": 5000, "gap": "+0.1"}}})
        self.wait_flag(sub, "checkered")
        before = self.wait_latest(sub, "standings", lambda m: m.json()[0]["official"])
        self.assertEqual(before.json()[0]["driver"], "Driver 2")
        self.assertEqual(gw.stop(), 0)
        broker.restart()  # no persistence: every retained message is gone
        self.assertEqual(harness.retained(broker.port, ["smartrace/#"]), {})
        gw.start()

        def complete(snap):
            self.assertEqual(snap[S + "flag"].payload, b"checkered")
            self.assertEqual(snap[S + "standings"].json(), before.json())
            return snap
        snap = harness.wait_until(lambda: self._try(complete, harness.retained(
            broker.port, ["smartrace/state/#"])), 20)
        self.assertTrue(snap, "state not restored: %r" % harness.retained(
            broker.port, ["smartrace/state/#"]))
        errors = []
        for m in snap.values():
            errors += contract_errors(m, None)
        self.assertEqual(errors, [])

    @staticmethod
    def _try(check, snap):
        try:
            return check(snap)
        except (AssertionError, KeyError, ValueError, IndexError):
            return None

    def test_readme_documents_the_schema(self):
        with open(os.path.join(harness.REPO, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        start = readme.index('Retained "current state" topics')
        section = readme[start:readme.index("The gateway's own topics", start)]
        documented = set(re.findall(r"`([^`]+)`", section))
        for name, words in (("event", EVENT), ("controller", CONTROLLER),
                            ("standings", STANDING), ("status", STATUSES),
                            ("weather", WEATHER), ("vsc", VSC), ("flag", FLAGS)):
            missing = sorted(set(words) - documented)
            self.assertEqual(missing, [], "README does not document these %s words" % name)
        for topic in ("status", "weather", "vsc", "flag", "event", "track",
                      "controller/<controller>", "standings"):
            self.assertIn("`smartrace/state/%s`" % topic, section)


if __name__ == "__main__":
    harness.main()
