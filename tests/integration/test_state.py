#!/usr/bin/python3
"""
Retained state topics (SPEC section 2 "Retained state topics", section 7.3): a
subscriber that connects late sees the race as it is now, with the retain flag;
standings are ordered by laps, then by who completed the lap first, and replaced
by the official result on event.end; ui.reset clears controllers and standings
and sets the flag to none; after a broker restart without persistence (retained
messages lost) the gateway publishes all of its retained topics again,
race2mqtt/bridge/state included.
"""
import time

import harness
from harness import find_values

S = "smartrace/state/"


def lap(cid, n, ms, t):
    return {"time": t, "event_type": "ui.lap_update", "event_data": {
        "controller_id": cid, "lap": n, "laptime": "0:%02d.%03d" % (ms // 1000, ms % 1000),
        "laptime_raw": ms,
        "driver_data": {"id": 10 + len(str(cid)), "name": "Driver %s" % cid},
        "car_data": {"id": 40, "name": "Porsche 911 RSR"},
        "controller_data": {"color_bg": "rgb(176, 243, 0)", "color_text": "#000"}}}


def ev(etype, data=None, t=1700000000000):
    e = {"time": t, "event_type": etype}
    if data is not None:
        e["event_data"] = data
    return e


TRACK = {"length": "", "id": 7, "pitstop_delta": "25000", "name": "Demo Circuit",
         "name_short": None, "minimum_lap_time": ""}


def standings_ids(msg):
    """Controller ids of a standings payload, best first; computed and official
    entries both carry them as strings (test_state_contract.py checks the rest)."""
    arr = msg.json()
    assert isinstance(arr, list), "standings is not a JSON array: %r" % msg.payload[:200]
    out = []
    for e in arr:
        assert isinstance(e, dict) and isinstance(e.get("controller_id"), str), \
            "standings entry without a string controller_id: %r" % (e,)
        out.append(e["controller_id"])
    return out


def text(msg):
    return msg.payload.decode("utf-8", "replace") if msg is not None else None


class StateCase(harness.IntegrationCase):

    def post_all(self, gw, events):
        seqs = []
        for e in events:
            seqs.append(self.assertOk(gw.post(e)))
        return seqs

    def wait_retained(self, port, check, timeout=15, filters=("smartrace/state/#",)):
        """Polls fresh subscribers until check(retained dict) passes; on timeout
        runs check once more so that its assertion message is the failure."""
        deadline = time.monotonic() + timeout
        while True:
            r = harness.retained(port, list(filters))
            try:
                check(r)
                return r
            except (AssertionError, KeyError, ValueError, TypeError, AttributeError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def assert_retained_flags(self, snap):
        for t, m in snap.items():
            self.assertTrue(m.retain, "%s arrived without the retain flag" % t)

    def controller(self, snap, cid):
        m = snap.get(S + "controller/" + cid)
        self.assertIsNotNone(m, "no %scontroller/%s; have %s" % (S, cid, sorted(snap)))
        p = m.json()
        self.assertIsInstance(p, dict)
        return p


class StateTests(StateCase):

    def race(self):
        t = 1700000000000
        events = [ev("util.set_active_track", TRACK, t),
                  ev("event.start", {"type": "race", "laps": "50"}, t + 1),
                  ev("event.change_status", {"old": "starting", "new": "running"}, t + 2),
                  ev("events.weather_change", "wet", t + 3),
                  ev("events.weather_update", "about_to_dry_up", t + 4),
                  ev("race.vsc_deployed", None, t + 5)]
        t += 100
        # c1: 3 laps; c2 and c5: 2 laps, c2 completed lap 2 first (though c5 has
        # the better best lap); c4: 1 lap but the best lap of all.
        for cid, n, ms in (("1", 1, 5000), ("2", 1, 5100), ("5", 1, 5200), ("4", 1, 3000),
                           ("1", 2, 4800), ("2", 2, 4700), ("5", 2, 4600), ("1", 3, 4900)):
            t += 1000
            events.append(lap(cid, n, ms, t))
        events += [ev("util.fuel_update", {"controller_id": "1", "fuel": "50"}, t + 1),
                   ev("race.penalty_update", {"controller_id": "2", "penalty": 10}, t + 2),
                   ev("race.damage_update", {"controller_id": "2", "damage": "engine"}, t + 3),
                   ev("events.tire_change", {"controller_id": "5", "tire": "wet"}, t + 4),
                   ev("event.pit.enter", {"controller_id": "4"}, t + 5)]
        return events

    def check_race(self, snap):
        self.assertEqual(text(snap.get(S + "status")), "running")
        self.assertEqual(text(snap.get(S + "weather")), "wet")
        self.assertEqual(text(snap.get(S + "vsc")), "deployed")
        self.assertIn(S + "event", snap)
        event = snap[S + "event"].json()
        self.assertIsInstance(event, dict)
        self.assertIn("race", find_values(event, "type"), event)
        self.assertTrue({50, "50"} & set(find_values(event, "laps")), event)
        self.assertIn(S + "track", snap)
        self.assertTrue(harness.contains_value(snap[S + "track"].json(), "Demo Circuit"),
                        snap[S + "track"].payload)
        c1 = self.controller(snap, "1")
        self.assertEqual(c1.get("laps"), 3, c1)
        self.assertEqual(c1.get("last_lap_ms"), 4900, c1)
        self.assertEqual(c1.get("best_lap_ms"), 4800, c1)
        self.assertTrue({50, "50"} & set(find_values(c1, "fuel")), c1)
        self.assertTrue(harness.contains_value(c1, "Driver 1"), c1)
        self.assertTrue(harness.contains_value(c1, "Porsche 911 RSR"), c1)
        c2 = self.controller(snap, "2")
        self.assertEqual((c2.get("laps"), c2.get("last_lap_ms"), c2.get("best_lap_ms")),
                         (2, 4700, 4700), c2)
        self.assertTrue({10, "10"} & set(find_values(c2, "penalty")), c2)
        self.assertIn("engine", find_values(c2, "damage"), c2)
        c5 = self.controller(snap, "5")
        self.assertIn("wet", find_values(c5, "tire") + find_values(c5, "tires"), c5)
        c4 = self.controller(snap, "4")
        self.assertEqual(c4.get("best_lap_ms"), 3000, c4)
        pit = [v for k, v in c4.items() if "pit" in k.lower() and isinstance(v, bool)]
        self.assertEqual(pit, [True], "controller 4 is in the pit: %r" % c4)
        self.assertIn(S + "standings", snap)
        self.assertEqual(standings_ids(snap[S + "standings"]), ["1", "2", "5", "4"],
                         snap[S + "standings"].payload)
        self.assert_retained_flags(snap)

    def test_retained_state_standings_and_reset(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker)
        live = self.subscribe(broker.port, ["smartrace/state/#"])
        self.post_all(gw, self.race())
        self.wait_retained(broker.port, self.check_race)
        # A live MQTT 5 subscriber (Retain As Published) sees the flag too.
        st = live.wait_message(lambda m: m.topic == S + "status", 5)
        self.assertIsNotNone(st)
        self.assertTrue(st.retain, "state/status published without retain")

        # Changes replace the retained values.
        t = 1700000100000
        self.post_all(gw, [ev("race.vsc_retracted", None, t),
                           ev("events.weather_change", "dry", t + 1),
                           ev("event.change_status", {"old": "running", "new": "suspended"},
                              t + 2),
                           ev("event.pit.leave", {"controller_id": "4"}, t + 3)])

        def changed(snap):
            self.assertEqual(text(snap.get(S + "vsc")), "retracted")
            self.assertEqual(text(snap.get(S + "weather")), "dry")
            self.assertEqual(text(snap.get(S + "status")), "suspended")
            c4 = self.controller(snap, "4")
            pit = [v for k, v in c4.items() if "pit" in k.lower() and isinstance(v, bool)]
            self.assertEqual(pit, [False], "controller 4 left the pit: %r" % c4)
        self.wait_retained(broker.port, changed)

        # The official result replaces the computed standings.
        result = {"type": "race", "result": {
            "1": {"controller_id": 5, "laps": 2, "best_laptime": 4600},
            "2": {"controller_id": 1, "laps": 3, "best_laptime": 4800},
            "3": {"controller_id": 2, "laps": 2, "best_laptime": 4700},
            "4": {"controller_id": 4, "laps": 1, "best_laptime": 3000}}}
        self.post_all(gw, [ev("event.end", result, t + 4)])
        self.wait_retained(broker.port, lambda snap: self.assertEqual(
            standings_ids(snap[S + "standings"]), ["5", "1", "2", "4"],
            snap[S + "standings"].payload))

        # ui.reset clears controllers and standings and puts the flag out, nothing else.
        self.post_all(gw, [ev("ui.reset", None, t + 5)])

        def cleared(snap):
            ctl = [k for k in snap if k.startswith(S + "controller/")]
            self.assertEqual(ctl, [], "controller state survives ui.reset")
            if S + "standings" in snap:
                self.assertEqual(snap[S + "standings"].json(), [], "standings survive ui.reset")
            self.assertEqual(text(snap.get(S + "status")), "suspended")
            self.assertEqual(text(snap.get(S + "flag")), "none")
            self.assertEqual(text(snap.get(S + "weather")), "dry")
            self.assertEqual(text(snap.get(S + "vsc")), "retracted")
            self.assertIn(S + "track", snap)
            self.assertIn(S + "event", snap)
        self.wait_retained(broker.port, cleared)
        # The live subscriber saw the deletions (empty retained payloads).
        deleted = live.wait_message(lambda m: m.topic == S + "controller/1" and m.payload == b"",
                                    5)
        self.assertIsNotNone(deleted, "no retained delete on %scontroller/1" % S)

        # A new race starts from scratch; a hostile id gets a sanitised level.
        self.post_all(gw, [lap("9", 1, 5000, t + 10), lap("a/+b", 1, 5100, t + 11)])

        def fresh(snap):
            ctl = sorted(k for k in snap if k.startswith(S + "controller/"))
            self.assertEqual(ctl, [S + "controller/9", S + "controller/a__b"])
            self.assertEqual(self.controller(snap, "9").get("laps"), 1)
            ids = standings_ids(snap[S + "standings"])
            self.assertEqual(len(ids), 2, ids)
            self.assertEqual(ids[0], "9")
        self.wait_retained(broker.port, fresh)

    def test_state_republished_after_broker_restart(self):
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=False)
        gw = self.start_gateway(d, broker)
        t = 1700000000000
        self.post_all(gw, [ev("util.set_active_track", TRACK, t),
                           ev("event.start", {"type": "race", "duration": "600"}, t + 1),
                           ev("event.change_status", {"old": "starting", "new": "running"}, t + 2),
                           ev("events.weather_change", "wet", t + 3),
                           ev("race.vsc_deployed", None, t + 4),
                           lap("1", 1, 5000, t + 10), lap("2", 1, 4000, t + 11),
                           lap("1", 2, 4500, t + 12)])

        def complete(snap):
            self.assertEqual(text(snap.get(S + "status")), "running")
            self.assertEqual(text(snap.get(S + "weather")), "wet")
            self.assertEqual(text(snap.get(S + "vsc")), "deployed")
            self.assertIn(S + "event", snap)
            self.assertIn(S + "track", snap)
            self.assertEqual(self.controller(snap, "1").get("laps"), 2)
            self.assertEqual(self.controller(snap, "2").get("best_lap_ms"), 4000)
            self.assertEqual(standings_ids(snap[S + "standings"]), ["1", "2"])
            self.assertEqual(text(snap.get(S + "flag")), "yellow")
            self.assertEqual(text(snap.get("race2mqtt/bridge/state")), "online")
            self.assert_retained_flags(snap)

        filters = ("smartrace/state/#", "race2mqtt/#")
        self.wait_retained(broker.port, complete, filters=filters)
        time.sleep(1)  # let discovery and bridge/info settle
        before = set(harness.retained(broker.port, ["#"]))
        harness.publish(broker.port, "r2mtest/canary", b"x", retain=True)

        broker.restart()
        self.assertNotIn("r2mtest/canary", harness.retained(broker.port, ["r2mtest/#"]),
                         "the broker kept retained messages: the test proves nothing")
        self.assertTrue(gw.wait_readyz(200, 40), "gateway did not reconnect")
        self.wait_retained(broker.port, complete, timeout=20, filters=filters)
        time.sleep(1)
        after = set(harness.retained(broker.port, ["#"]))
        self.assertEqual(sorted(before - after - {"r2mtest/canary"}), [],
                         "retained topics not republished after the broker restart")

    def test_malformed_data_changes_nothing(self):
        """Accepted events whose data has the wrong shape leave the state alone."""
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker)
        t = 1700000000000
        good = [ev("event.change_status", {"old": "starting", "new": "running"}, t),
                ev("events.weather_change", "wet", t + 1),
                ev("race.vsc_deployed", None, t + 2),
                lap("1", 1, 5000, t + 3), lap("1", 2, 4800, t + 4)]
        self.post_all(gw, good)

        def unchanged(snap):
            self.assertEqual(text(snap.get(S + "status")), "running")
            self.assertEqual(text(snap.get(S + "weather")), "wet")
            self.assertEqual(text(snap.get(S + "vsc")), "deployed")
            c1 = self.controller(snap, "1")
            self.assertEqual((c1.get("laps"), c1.get("last_lap_ms"), c1.get("best_lap_ms")),
                             (2, 4800, 4800), c1)
            self.assertEqual(standings_ids(snap[S + "standings"]), ["1"])
        self.wait_retained(broker.port, unchanged)
        bad = [ev("event.change_status", {"old": "running", "new": 5}, t + 10),
               ev("event.change_status", {"old": "running", "new": None}, t + 11),
               ev("event.change_status", {"old": "running", "new": ["x"]}, t + 12),
               ev("event.change_status", "running", t + 13),
               ev("events.weather_change", {"x": "dry"}, t + 14),
               ev("events.weather_change", "sunny", t + 14),
               ev("events.weather_change", 1, t + 15),
               ev("events.weather_change", None, t + 16),
               ev("ui.lap_update", "1", t + 17),
               ev("ui.lap_update", {"controller_id": {"x": 1}, "lap": 9}, t + 18),
               ev("ui.lap_update", {"controller_id": ["1"], "lap": 9}, t + 19)]
        sub = self.subscribe(broker.port, ["smartrace/lap/#"])
        seqs = self.post_all(gw, bad)
        # Wait until the gateway has published the last of them (state follows).
        self.assertIsNotNone(sub.wait_message(lambda m: m.payload
                                              and m.json().get("seq") == seqs[-1], 10))
        time.sleep(0.5)
        self.wait_retained(broker.port, unchanged, timeout=2)
        self.assertTrue(gw.running())

    def test_state_survives_gateway_restart(self):
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=False)
        gw = self.start_gateway(d, broker)
        t = 1700000000000
        self.post_all(gw, [ev("event.change_status", {"old": "starting", "new": "running"}, t),
                           ev("events.weather_change", "wet", t + 1),
                           lap("3", 1, 5000, t + 10), lap("7", 1, 4000, t + 11),
                           lap("7", 2, 4100, t + 12)])

        def complete(snap):
            self.assertEqual(text(snap.get(S + "status")), "running")
            self.assertEqual(text(snap.get(S + "weather")), "wet")
            self.assertEqual(self.controller(snap, "7").get("laps"), 2)
            self.assertEqual(self.controller(snap, "3").get("last_lap_ms"), 5000)
            self.assertEqual(standings_ids(snap[S + "standings"]), ["7", "3"])
            self.assertEqual(text(snap.get(S + "flag")), "green")
            self.assert_retained_flags(snap)
        self.wait_retained(broker.port, complete)
        self.assertEqual(gw.stop(), 0)
        broker.restart()  # no persistence: every retained message is gone
        self.assertEqual(harness.retained(broker.port, ["smartrace/#"]), {})
        gw.start()
        self.wait_retained(broker.port, complete)


if __name__ == "__main__":
    harness.main()
