"""
Home Assistant MQTT discovery (SPEC section 4; reference/homeassistant-mqtt-discovery.md),
checked on what a real subscriber of the real broker receives from the real gateway.

- Every config is a retained JSON object under <prefix>/device/<node_id>/<object>/config
  with dev, o and cmps; every component has p and a unique unique_id; every
  state_topic and availability topic it names is really published, and the
  availability payloads are the ones it expects.
- Every value_template renders (jinja2's sandbox, with value and value_json as
  HA passes them) against the real payload of its topic into a state HA takes:
  an option of an enum, a number for a sensor with a unit or state class, the
  payload_on/off of a binary sensor, an {"event_type": ...} object of an event.
- Lifecycle: Home Assistant's birth ("online" on <prefix>/status) brings every
  config and the retained state again after birth_delay_ms; a broker that lost
  its retained messages gets them again on reconnect; a controller removed from
  the session or forgotten by ui.reset, or idle for stale_after_s, is cleared;
  a restart clears configs of ours that are no longer wanted (orphans) and
  leaves other nodes alone; enabled = false clears and publishes nothing else;
  two gateways never share a topic or a unique_id.
"""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

PREFIX = "homeassistant"
T0 = 1700000000000

JINJA = ImmutableSandboxedEnvironment()


def ev(etype, data=None, t=None):
    body = {"time": T0 if t is None else t, "event_type": etype}
    if data is not None:
        body["event_data"] = data
    return json.dumps(body).encode()


def lap(cid, n, ms, pb=False, driver=None):
    return ev("ui.lap_update", {
        "controller_id": str(cid), "lap": n, "laptime": "0:%06.3f" % (ms / 1000),
        "laptime_raw": ms, "lap_pb": pb, "sector_1": "0:03.100",
        "driver_data": {"name": driver or "Driver %s" % cid},
        "car_data": {"name": "Car %s" % cid},
        "controller_data": {"color_bg": "#ff0000", "color_text": "#fff"}}, t=T0 + n * 1000)


def node_of(gw):
    return "".join(c if c.isalnum() or c == "-" else "_" for c in gw.client_id)


def config_topic(gw, obj):
    return "%s/device/%s/%s/config" % (PREFIX, node_of(gw), obj)


def render(tpl, payload):
    """What HA's MQTT platforms do with a value_template: value is the payload
    text, value_json the parsed JSON (when it is JSON)."""
    text = payload.decode("utf-8")
    variables = {"value": text}
    try:
        variables["value_json"] = json.loads(text)
    except ValueError:
        pass
    return JINJA.from_string(tpl).render(**variables)


def is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


class HomeAssistantCase(harness.IntegrationCase):

    def latest(self, sub, topic):
        msgs = [m for m in sub.snapshot() if m.topic == topic]
        return msgs[-1] if msgs else None

    def wait_config(self, sub, gw, obj, timeout=15, present=True):
        topic = config_topic(gw, obj)

        def ok(msgs):
            last = [m for m in msgs if m.topic == topic]
            if not last:
                return None
            return last[-1] if (len(last[-1].payload) > 0) == present else None
        m = sub.wait_for(ok, timeout)
        self.assertIsNotNone(m, "%s %s" % (topic, "not published" if present else "not cleared"))
        return m

    def ours_retained(self, port, gw):
        """{object_id: payload} of the non-empty retained configs of gw's node."""
        snap = harness.retained(port, ["%s/#" % PREFIX])
        head = "%s/device/%s/" % (PREFIX, node_of(gw))
        return {t[len(head):-len("/config")]: m.payload for t, m in snap.items()
                if t.startswith(head) and m.payload}


class DiscoveryContentTests(HomeAssistantCase):
    """One race and two decoders; every config checked against what is published."""

    def test_configs_valid_and_every_template_renders(self):
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key="k-ha", customer=4711, world={"devices": [
            {"id": "D-1001", "type": "Decoder", "name": "Finish \"Süd\"", "connected": True,
             "files": {"1": 3}},
            {"id": "T-2001", "type": "TrackBox", "name": "Idle box", "connected": False,
             "files": {"1": 0}},
        ]})
        self.track(harness._Stoppable(rr))
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["%s/#" % PREFIX, "smartrace/#", "raceresult/#",
                                           "race2mqtt/#"])
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(rr, "k-ha", 4711))

        self.assertEqual(gw.post(ev("event.start", {"type": "race", "laps": "20"})).status, 200)
        gw.post(ev("event.change_status", {"old": "starting", "new": "running"}))
        gw.post(ev("events.weather_change", "wet"))
        gw.post(ev("race.vsc_deployed"))
        for n in range(1, 4):
            gw.post(lap(1, n, 9000 - n * 10, pb=(n == 3)))
            gw.post(lap(2, n, 9500))
        gw.post(ev("util.fuel_update", {"controller_id": "1", "fuel": "55"}))
        gw.post(ev("event.pit.enter", {"controller_id": "2"}))
        gw.post(ev("race.penalty_update", {"controller_id": "2", "penalty": 10}))
        gw.post(ev("util.set_active_track", {"id": 7, "name": "Demo Circuit"}))

        objs = ["gateway", "race", "controller_1", "controller_2", "decoder_D-1001"]
        configs = {o: self.wait_config(sub, gw, o) for o in objs}
        # Passings of D-1001 (3 in file 1) and bridge stats come by themselves.
        self.assertIsNotNone(sub.wait_for(
            lambda ms: len([m for m in ms if m.topic == "raceresult/D-1001/passing"]) >= 3, 20))
        self.assertIsNotNone(sub.wait_message(lambda m: m.topic == "race2mqtt/bridge/stats", 15))
        sub.wait_for(lambda ms: any(m.topic == "smartrace/state/track" for m in ms), 10)
        sub.sync()

        # The idle, disconnected TrackBox of a customer-wide list is not offered.
        self.assertIsNone(self.latest(sub, config_topic(gw, "decoder_T-2001")))

        unique_ids = []
        for obj, m in configs.items():
            self.assertTrue(m.retain, "%s config not retained" % obj)
            cfg = json.loads(m.payload)
            self.assertIsInstance(cfg, dict)
            for key in ("dev", "o", "cmps"):
                self.assertIn(key, cfg, obj)
            self.assertTrue(cfg["dev"]["ids"] and cfg["dev"]["name"], obj)
            self.assertEqual(cfg["o"]["name"], "race2mqtt")
            for topic, payloads in self.availability_topics(cfg, cfg):
                got = self.latest(sub, topic)
                self.assertIsNotNone(got, "%s: availability topic %s never published"
                                     % (obj, topic))
                self.assertIn(got.payload.decode(), payloads, "%s: %s" % (obj, topic))
            for key, c in cfg["cmps"].items():
                where = "%s/%s" % (obj, key)
                self.assertIn(c.get("p"), ("sensor", "binary_sensor", "event"), where)
                self.assertTrue(c.get("unique_id"), where)
                unique_ids.append(c["unique_id"])
                self.check_component(sub, where, c, cfg)
        self.assertEqual(len(unique_ids), len(set(unique_ids)), "duplicate unique_id")
        self.assertGreaterEqual(len(unique_ids), 45)

        dev = json.loads(configs["decoder_D-1001"].payload)["dev"]
        self.assertEqual(dev["name"], "Finish \"Süd\"")
        self.assertEqual(dev["via_device"], json.loads(configs["gateway"].payload)["dev"]["ids"][0])

    def availability_topics(self, comp, root):
        avail = comp.get("availability", root.get("availability") if comp is not root else None)
        for a in avail or []:
            yield a["topic"], (a.get("payload_available", "online"),
                               a.get("payload_not_available", "offline"))

    def check_component(self, sub, where, c, root):
        topic = c.get("state_topic")
        self.assertTrue(topic, "%s: no state_topic" % where)
        m = self.latest(sub, topic)
        self.assertIsNotNone(m, "%s: state topic %s never published" % (where, topic))
        if c["p"] == "event":
            self.assertFalse(m.retain, "%s: event topic %s is retained (HA ignores it)"
                             % (where, topic))
        elif topic.startswith("smartrace/state/") or topic.endswith("/status"):
            self.assertTrue(m.retain, "%s: state topic %s not retained" % (where, topic))
        if "availability" in c:
            self.assertIsInstance(c["availability"], list, where)
            for t, payloads in self.availability_topics(c, root):
                got = self.latest(sub, t)
                self.assertIsNotNone(got, "%s: availability %s never published" % (where, t))
                self.assertIn(got.payload.decode(), payloads, where)
        tpl = c.get("value_template")
        out = render(tpl, m.payload) if tpl else m.payload.decode()
        if c["p"] == "event":
            obj = json.loads(out)
            self.assertIn(obj["event_type"], c["event_types"], where)
            return
        if c["p"] == "binary_sensor":
            self.assertIn(out, (c.get("payload_on", "ON"), c.get("payload_off", "OFF")),
                          "%s rendered %r" % (where, out))
            return
        if c.get("device_class") == "enum":
            self.assertIn(out, c["options"] + ["None"], "%s rendered %r" % (where, out))
            self.assertNotIn("unit_of_measurement", c, where)
            self.assertNotIn("state_class", c, where)
        elif "unit_of_measurement" in c or "state_class" in c:
            self.assertTrue(is_number(out) or out == "None", "%s rendered %r" % (where, out))
        if c.get("device_class") == "duration":
            self.assertIn(c["unit_of_measurement"], ("ms", "s"), where)
        self.assertLessEqual(len(out), 255, where)

    def test_rendered_values_are_the_race(self):
        """The templates give what the race is, not merely something valid."""
        d = self.tmpdir()
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["%s/#" % PREFIX, "smartrace/#"])
        gw = self.start_gateway(d, broker)
        gw.post(ev("event.start", {"type": "race", "laps": "20"}))
        gw.post(ev("event.change_status", {"old": "starting", "new": "running"}))
        gw.post(lap(4, 1, 8800, driver="Marc"))
        gw.post(lap(4, 2, 8700, pb=True, driver="Marc"))
        gw.post(lap(5, 1, 9900))
        ctl = json.loads(self.wait_config(sub, gw, "controller_4").payload)["cmps"]
        race = json.loads(self.wait_config(sub, gw, "race").payload)["cmps"]

        def state(topic, check):
            m = sub.wait_for(lambda ms: [x for x in ms if x.topic == topic and check(x)], 10)
            self.assertIsNotNone(m, topic)
            return m[-1]

        c4 = state("smartrace/state/controller/4", lambda m: json.loads(m.payload)["laps"] == 2)
        self.assertEqual(render(ctl["laps"]["value_template"], c4.payload), "2")
        self.assertEqual(render(ctl["best_lap"]["value_template"], c4.payload), "8700")
        self.assertEqual(render(ctl["last_lap"]["value_template"], c4.payload), "8700")
        self.assertEqual(render(ctl["driver"]["value_template"], c4.payload), "Marc")
        self.assertEqual(render(ctl["position"]["value_template"], c4.payload), "1")
        self.assertEqual(render(ctl["in_pit"]["value_template"], c4.payload), "OFF")
        self.assertEqual(render(ctl["fuel"]["value_template"], c4.payload), "None")
        laps = [m for m in sub.snapshot() if m.topic == "smartrace/lap/4"]
        events = [json.loads(render(ctl["lap"]["value_template"], m.payload)) for m in laps]
        self.assertEqual([e["event_type"] for e in events], ["lap", "personal_best"])
        self.assertEqual([e["laptime_ms"] for e in events], [8800, 8700])
        st = state("smartrace/state/standings", lambda m: len(json.loads(m.payload)) == 2 and
                   json.loads(m.payload)[0]["laps"] == 2)
        self.assertEqual(render(race["leader"]["value_template"], st.payload), "Marc")
        self.assertEqual(render(race["leader_laps"]["value_template"], st.payload), "2")
        ev_state = state("smartrace/state/event", lambda m: True)
        self.assertEqual(render(race["event_laps"]["value_template"], ev_state.payload), "20")
        self.assertEqual(render(race["event_type"]["value_template"], ev_state.payload), "race")
        self.assertEqual(render(race["status"]["value_template"], b"running"), "running")
        self.assertEqual(render(race["status"]["value_template"], b"paused_by_ufo"), "None")
        flag = state("smartrace/state/flag", lambda m: m.payload == b"green")
        self.assertEqual(render(race["flag"]["value_template"], flag.payload), "green")


class LifecycleTests(HomeAssistantCase):

    def race_gateway(self, d, broker, **extra):
        ha = {"birth_delay_ms": "1500"}
        ha.update(extra)
        return self.start_gateway(d, broker, extra={"homeassistant": ha})

    def test_birth_republishes_configs_and_state_after_the_delay(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.race_gateway(d, broker)
        gw.post(ev("event.change_status", {"old": "starting", "new": "running"}))
        gw.post(lap(1, 1, 9000))
        sub = self.subscribe(broker.port, ["%s/#" % PREFIX, "smartrace/state/#",
                                           "race2mqtt/bridge/#"],
                             protocol=harness.mqtt.MQTTv311)
        self.wait_config(sub, gw, "controller_1")
        sub.wait_for(lambda ms: any(m.topic == "smartrace/state/controller/1" for m in ms), 10)
        sub.sync()
        sub.clear()
        harness.publish(broker.port, "%s/status" % PREFIX, b"online", qos=0)
        t0 = time.monotonic()
        # Live (3.1.1: retain flag cleared on live delivery) copies of everything.
        want = [config_topic(gw, o) for o in ("gateway", "race", "controller_1")] + [
            "smartrace/state/status", "smartrace/state/controller/1",
            "smartrace/state/standings", "race2mqtt/bridge/state", "race2mqtt/bridge/info"]
        got = sub.wait_for(lambda ms: all(any(m.topic == t for m in ms) for t in want)
                           and ms, 20)
        self.assertIsNotNone(got, "not republished: %s" % [
            t for t in want if not sub.on_topic(t)])
        # Not before the delay (1.5 s): the first of them came after at least 1 s.
        self.assertGreaterEqual(time.monotonic() - t0, 1.0)
        self.assertTrue(all(not m.retain for m in got))
        # "offline" or anything else is not a birth.
        sub.clear()
        harness.publish(broker.port, "%s/status" % PREFIX, b"offline", qos=0)
        time.sleep(2.5)
        sub.sync()
        self.assertEqual([m.topic for m in sub.snapshot()
                          if m.topic.startswith(PREFIX + "/device/")], [])

    def test_broker_restart_without_persistence_gets_configs_back(self):
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=False)
        gw = self.race_gateway(d, broker)
        gw.post(lap(3, 1, 9000))
        sub = self.subscribe(broker.port, ["%s/#" % PREFIX])
        self.wait_config(sub, gw, "controller_3")
        sub.stop()
        broker.restart()
        self.assertTrue(harness.wait_until(
            lambda: {"gateway", "race", "controller_3"} <= set(
                self.ours_retained(broker.port, gw)), 30), "configs not republished")

    def test_removed_controllers_are_cleared_and_restart_leaves_no_orphans(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        other = "%s/device/other-node/controller_1/config" % PREFIX
        harness.publish(broker.port, other, b'{"dev":{"ids":["x"]}}', retain=True)
        gw = self.race_gateway(d, broker)
        for cid in (1, 2, 3):
            gw.post(lap(cid, 1, 9000))
        sub = self.subscribe(broker.port, ["%s/#" % PREFIX])
        for cid in (1, 2, 3):
            self.wait_config(sub, gw, "controller_%d" % cid)
        gw.post(ev("ui.remove_car_from_session", {"controller_id": "2"}))
        self.wait_config(sub, gw, "controller_2", present=False)
        self.assertTrue(self.latest(sub, config_topic(gw, "controller_2")).retain)
        self.assertEqual(set(self.ours_retained(broker.port, gw)),
                         {"gateway", "race", "controller_1", "controller_3"})

        # Stopped, then configs appear that this node does not produce (a
        # controller the state does not have, a decoder with RACE RESULT off,
        # a name that is not ours at all).
        gw.stop()
        for obj in ("controller_9", "decoder_D-77", "something_else"):
            harness.publish(broker.port, config_topic(gw, obj), b'{"cmps":{}}', retain=True)
        gw.start()
        self.assertTrue(harness.wait_until(
            lambda: set(self.ours_retained(broker.port, gw)) ==
            {"gateway", "race", "controller_1", "controller_3"}, 20),
            "orphans left: %s" % sorted(self.ours_retained(broker.port, gw)))
        gw.post(ev("ui.reset"))
        self.assertTrue(harness.wait_until(
            lambda: set(self.ours_retained(broker.port, gw)) == {"gateway", "race"}, 20))
        snap = harness.retained(broker.port, [other])
        self.assertIn(other, snap, "another node's config was touched")

    def test_idle_controller_is_cleared_after_stale_after_s_and_comes_back(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.race_gateway(d, broker, stale_after_s="2")
        gw.post(lap(1, 1, 9000))
        gw.post(lap(2, 1, 9000))
        sub = self.subscribe(broker.port, ["%s/#" % PREFIX])
        self.wait_config(sub, gw, "controller_1")
        # Controller 2 keeps driving; controller 1 goes quiet.
        deadline = time.monotonic() + 6
        n = 2
        while time.monotonic() < deadline:
            gw.post(lap(2, n, 9000))
            n += 1
            time.sleep(0.5)
        self.wait_config(sub, gw, "controller_1", present=False)
        retained = self.ours_retained(broker.port, gw)
        self.assertIn("controller_2", retained)
        self.assertNotIn("controller_1", retained)
        sub.clear()
        gw.post(lap(1, 2, 9000))
        self.wait_config(sub, gw, "controller_1")

    def test_disabled_clears_ours_and_publishes_nothing(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.race_gateway(d, broker)
        gw.post(lap(1, 1, 9000))
        sub = self.subscribe(broker.port, ["%s/#" % PREFIX])
        self.wait_config(sub, gw, "controller_1")
        gw.stop()
        other = "%s/device/other-node/race/config" % PREFIX
        harness.publish(broker.port, other, b'{"cmps":{}}', retain=True)
        sub.sync()
        sub.clear()
        gw.sections["homeassistant"]["enabled"] = "false"
        gw.start()
        gw.post(lap(1, 2, 9000))
        harness.publish(broker.port, "%s/status" % PREFIX, b"online", qos=0)
        self.assertTrue(harness.wait_until(lambda: self.ours_retained(broker.port, gw) == {},
                                           20), "configs left with enabled = false")
        time.sleep(2.5)  # past the birth delay: a republish would show now
        sub.sync()
        mine = [m for m in sub.snapshot() if m.topic.startswith(PREFIX + "/")
                and m.topic != "%s/status" % PREFIX]
        self.assertTrue(mine, "nothing cleared")
        self.assertEqual([m.topic for m in mine if m.payload], [],
                         "published under the prefix while disabled")
        self.assertIn(other, harness.retained(broker.port, [other]))

    def test_two_gateways_never_collide(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        a = self.race_gateway(d, broker)
        b = self.race_gateway(d, broker)
        a.post(lap(1, 1, 9000))
        b.post(lap(1, 1, 9100))
        sub = self.subscribe(broker.port, ["%s/#" % PREFIX])
        ids = {}
        for gw in (a, b):
            for obj in ("gateway", "race", "controller_1"):
                cfg = json.loads(self.wait_config(sub, gw, obj).payload)
                ids.setdefault(gw.client_id, set()).update(
                    c["unique_id"] for c in cfg["cmps"].values())
                ids[gw.client_id].update(cfg["dev"]["ids"])
        self.assertNotEqual(node_of(a), node_of(b))
        self.assertEqual(ids[a.client_id] & ids[b.client_id], set())


class DecoderLifecycleTests(HomeAssistantCase):

    def test_decoders_follow_the_device_list(self):
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key="k-ha2", customer=42, world={"devices": [
            {"id": "D-1", "type": "Decoder", "connected": True, "files": {"1": 0}},
            {"id": "D-2", "type": "Decoder", "connected": False, "files": {"1": 0}},
            {"id": "U-3", "type": "Ubidium", "connected": False, "files": {"1": 0}},
        ]})
        self.track(harness._Stoppable(rr))
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["%s/#" % PREFIX])
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(rr, "k-ha2", 42))
        self.wait_config(sub, gw, "decoder_D-1")
        # D-2 starts working (its counters move): offered from then on.
        rr.add_detections("D-2", 2)
        self.wait_config(sub, gw, "decoder_D-2")
        self.assertIsNone(self.latest(sub, config_topic(gw, "decoder_U-3")))

        # Restart with an explicit list without D-2: D-2 is an orphan now,
        # and U-3, idle but listed, is offered.
        gw.stop()
        gw.sections["raceresult"]["devices"] = "D-1,U-3"
        gw.start()
        self.assertTrue(harness.wait_until(
            lambda: {k for k in self.ours_retained(broker.port, gw) if k.startswith("decoder_")}
            == {"decoder_D-1", "decoder_U-3"}, 20),
            "decoders: %s" % sorted(self.ours_retained(broker.port, gw)))

        # RACE RESULT off: every decoder config goes.
        gw.stop()
        gw.sections["raceresult"] = {"enabled": "false"}
        gw.start()
        self.assertTrue(harness.wait_until(
            lambda: not any(k.startswith("decoder_") for k in self.ours_retained(broker.port, gw)),
            20))


if __name__ == "__main__":
    unittest.main(verbosity=2)
