#!/usr/bin/python3
"""
The gateway on a real clustered broker (README "More than one machine"): a
3-node NATS cluster (Debian's nats-server 2.9, JetStream, MQTT 3.1.1 only)
started on loopback by tests/integration/natscluster.py, the real gateway with
all three nodes in mqtt.url, the fake RACE RESULT API, and Python subscribers
on other nodes than the gateway's. Checked:

- what the design relies on about NATS itself: MQTT 5 refused (CONNACK 132),
  $share granted but never delivered, retained messages on every node;
- mqtt.protocol = auto falls back to 3.1.1 once, and commands are answered
  with their transaction;
- retained race and bridge state reach a late subscriber on another node;
- the $share check fails loudly, and two replicas partitioned by
  raceresult.devices run exactly their own devices' commands and passings;
- a node SIGKILLed mid-stream: every SmartRace event answered 2xx and every
  RACE RESULT passing is delivered, and the gateway fails over to the next URL.
"""
import json
import threading
import time

import paho.mqtt.client as mqtt

import harness
import natscluster

KEY = "rr-cluster-key-5d1c0e77-DO-NOT-LEAK"
CID = 913
# NATS closes the connection on a publish to a topic with '.': the gateway
# runs with mqtt.topic_dots = false, so event type test.cluster goes here.
EVENT_TOPIC = "smartrace/other/test_cluster"
SUB_TIMEOUT = 30  # the first QoS 1 subscription on a node creates JetStream streams


def subscriber(port, topics):
    return harness.Subscriber(port, topics, qos=1, protocol=mqtt.MQTTv311)


SYNC = "GETINFO sync"


def measured(msgs):
    """Command answers, without those to the sync commands of commands_reach()."""
    return [m for m in msgs if m.topic.endswith("/cmd/response")
            and not str(m.json().get("transaction", "")).startswith("sync-")]


def commands_reach(pub, answers, device, timeout=30):
    """Waits until a command published through pub reaches the gateway that
    owns device, by sending SYNC until one is answered. A NATS subscription
    takes effect on the other nodes a moment after its SUBACK: commands
    published through another node in between are dropped (seen under load:
    the first 7 of 20). The tests count only what they send after this."""
    deadline = time.monotonic() + timeout
    k = 0
    while time.monotonic() < deadline:
        pub.publish("raceresult/%s/cmd" % device,
                    json.dumps({"command": SYNC, "transaction": "sync-%d" % k}), qos=1)
        k += 1
        if answers.wait_for(lambda msgs: any(
                m.topic == "raceresult/%s/cmd/response" % device
                and str(m.json().get("transaction", "")).startswith("sync-") for m in msgs), 0.5):
            return k
    raise AssertionError("no command reached the owner of %s in %d s" % (device, timeout))


def passing_ids(sub, device):
    topic = "raceresult/%s/passing" % device
    return [m.json()["id"] for m in sub.snapshot() if m.topic == topic]


class ClusterCase(harness.IntegrationCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cluster = cls.class_track(natscluster.NatsCluster(cls.class_tmpdir()))
        cls.cluster.start()
        print("nats: 3 nodes serve MQTT across the cluster %.1f s after the start"
              % cls.cluster.start_s)

    def dump_logs(self):
        super().dump_logs()
        print(self.cluster.log())

    def gateway(self, rr, order=None, **rr_keys):
        d = self.tmpdir()
        gw = self.track(harness.Gateway(d, self.cluster.port(1), extra=harness.rr_extra(
            rr, KEY, CID, **rr_keys)))
        gw.sections["mqtt"]["url"] = self.cluster.urls(order)
        gw.sections["mqtt"]["topic_dots"] = "false"
        return gw

    def fake_rr(self, world):
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world=world)
        self.track(harness._Stoppable(rr))
        return rr


class GatewayOnClusterTests(ClusterCase):

    def test_nats_mqtt5_refused_share_never_delivered_retained_everywhere(self):
        c = self.cluster
        rcs = []
        v5 = mqtt.Client(client_id=harness.unique("r2m-it-v5"), protocol=mqtt.MQTTv5)
        # paho 1.6 reports a 3.1.1-sized CONNACK to a v5 client as the int 132.
        v5.on_connect = lambda cl, u, f, rc, props=None: rcs.append(int(getattr(rc, "value",
                                                                                rc)))
        v5.connect("127.0.0.1", c.port(1), keepalive=30)
        v5.loop_start()
        harness.wait_until(lambda: rcs, 10)
        natscluster.close(v5)
        self.assertEqual(rcs[:1], [132], "MQTT 5 CONNECT: %r" % rcs)

        got = []
        share = natscluster.mqtt_client(c.port(2))
        granted = []
        share.on_subscribe = lambda cl, u, mid, qos: granted.append(qos)
        share.on_message = lambda cl, u, m: got.append(m.topic)
        share.subscribe("$share/g/r2mtest/share/+", 1)
        self.assertTrue(harness.wait_until(lambda: granted, SUB_TIMEOUT), "no SUBACK")
        pub = natscluster.mqtt_client(c.port(3))
        for i in range(20):
            pub.publish("r2mtest/share/x", str(i), qos=1).wait_for_publish(5)
        pub.publish("r2mtest/share/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
        time.sleep(1)
        self.assertEqual(granted, [(1,)], "SUBACK of the $share filter")
        self.assertEqual(got, [], "NATS delivered a $share subscription")
        natscluster.close(share)
        natscluster.close(pub)
        # Each node learns retained messages from a replicated stream: a late
        # subscriber on another node sees one after a short lag, not at once.
        t0 = time.monotonic()
        held = {}
        while "r2mtest/share/retained" not in held and time.monotonic() < t0 + 15:
            held = harness.retained(c.port(1), ["r2mtest/share/+"], timeout=SUB_TIMEOUT)
        lag = time.monotonic() - t0
        self.assertIn("r2mtest/share/retained", held, "retained via node 3, not on node 1")
        self.assertEqual(held["r2mtest/share/retained"].payload, b"kept")
        print("nats facts: MQTT 5 CONNACK %d; $share granted QoS %r, delivered %d of 20; "
              "retained via n3 seen by a late subscriber on n1 within %.1f s"
              % (rcs[0], granted[0][0], len(got), lag))

    def test_auto_falls_back_to_311_and_answers_through_transaction(self):
        rr = self.fake_rr({"devices": [{"id": "D-1", "type": "Decoder", "name": "Finish",
                                        "files": {"1": 0}}]})
        answers = self.track(subscriber(self.cluster.port(3), ["raceresult/+/cmd/response"]))
        answers.start(SUB_TIMEOUT)
        gw = self.gateway(rr, poll_interval_ms=3600000)
        gw.start(timeout=60)
        c1 = self.cluster.port(1)
        self.assertTrue(harness.wait_until(lambda: harness.log_lines(
            gw.log_path, r"decoder commands on raceresult/\+/cmd"), 20), gw.log())
        self.assertEqual(len(harness.log_lines(gw.log_path, r"the broker refused MQTT 5 "
                                               r"\(broker refused: unacceptable protocol version"
                                               r"\) and took 3\.1\.1")), 1, gw.log())
        self.assertTrue(harness.log_lines(
            gw.log_path, r"mqtt: connected to tcp://127\.0\.0\.1:%d \(MQTT 3\.1\.1, URL 1 of 3\)"
            % c1), gw.log())
        self.assertEqual(json.loads(gw.request("GET", "/api/state").body)["broker"]["protocol"],
                         "3.1.1")

        pub = natscluster.mqtt_client(self.cluster.port(2))
        commands_reach(pub, answers, "D-1")
        for i in range(5):
            pub.publish("raceresult/D-1/cmd", json.dumps({"command": "GETSTATUS",
                                                          "transaction": "t-%d" % i}), qos=1)
        self.assertTrue(answers.wait_for(lambda msgs: len(measured(msgs)) >= 5, 30),
                        "answers: %r" % answers.snapshot())
        natscluster.close(pub)
        got = [m.json() for m in measured(answers.snapshot())]
        self.assertEqual([(p["status"], p["transaction"], p["device"]) for p in got],
                         [("ok", "t-%d" % i, "D-1") for i in range(5)])
        self.assertEqual([(c["device"], c["command"]) for c in rr.commands()
                          if c["command"] != SYNC], [("D-1", "GETSTATUS")] * 5)

        # Retained race and bridge state, seen by a late subscriber on node 2.
        self.assertEqual(gw.post({"time": 1700000000000, "event_type": "event.change_status",
                                  "event_data": {"old": "starting", "new": "running"}}).status,
                         200)
        want = {"race2mqtt/bridge/state": b"online", "smartrace/state/status": None,
                "raceresult/D-1/status": None}

        def late():
            return harness.retained(self.cluster.port(2), ["race2mqtt/bridge/+",
                                                           "smartrace/state/#",
                                                           "raceresult/+/status"],
                                    timeout=SUB_TIMEOUT)
        held = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not set(want) <= set(held):
            held = late()
        self.assertLessEqual(set(want), set(held), "retained on node 2: %r" % sorted(held))
        self.assertEqual(held["race2mqtt/bridge/state"].payload, b"online")
        self.assertEqual(held["smartrace/state/status"].payload, b"running")
        self.assertEqual(json.loads(held["raceresult/D-1/status"].payload)["device"], "D-1")
        self.assertIn("race2mqtt/bridge/info", held)
        print("cluster: fallback to 3.1.1 logged once; 5 of 5 commands answered with their "
              "transaction on node 3; %d retained topics on node 2" % len(held))

    def test_strict_mqtt5_never_falls_back(self):
        rr = self.fake_rr({"devices": []})
        gw = self.gateway(rr)
        gw.sections["mqtt"]["protocol"] = "5"
        gw.start(wait=False)
        gw.wait_healthy(20)
        refused = harness.wait_until(lambda: harness.log_lines(
            gw.log_path, r"mqtt: cannot connect to .*\(broker refused: unacceptable protocol "
            r"version\); retrying"), 30)
        self.assertTrue(refused, gw.log())
        time.sleep(2)  # a reconnect or two more
        self.assertEqual(gw.request("GET", "/readyz").status, 503)
        self.assertEqual(harness.log_lines(gw.log_path, r"took 3\.1\.1|mqtt: connected"), [])
        self.assertEqual(len(harness.log_lines(gw.log_path, r"cannot connect")), 1,
                         "the refusal is said once, not per retry")

    def test_share_check_fails_loudly_and_partitions_replicas(self):
        n = 20
        world = {"devices": [{"id": d, "type": "Decoder", "name": d, "files": {"1": n}}
                             for d in ("D-1", "D-2")]}
        rr = self.fake_rr(world)
        answers = self.track(subscriber(self.cluster.port(3), ["raceresult/+/cmd/response",
                                                               "raceresult/+/passing"]))
        answers.start(SUB_TIMEOUT)
        gws = [self.gateway(rr, order=[1, 2, 3], command_group="replicas", devices="D-1",
                            start="all"),
               self.gateway(rr, order=[2, 3, 1], command_group="replicas", devices="D-2",
                            start="all")]
        for gw in gws:
            gw.start(timeout=60)
        for gw, dev in zip(gws, ("D-1", "D-2")):
            self.assertTrue(harness.wait_until(lambda: harness.log_lines(
                gw.log_path, r"decoder commands on raceresult/%s/cmd$" % dev), 30), gw.log())
            errors = harness.log_lines(gw.log_path, r"does not deliver shared subscriptions")
            self.assertEqual(len(errors), 1, gw.log())
            self.assertRegex(errors[0], r"error .*raceresult\.command_group = replicas.*a probe "
                             r"published to race2mqtt/bridge/share_probe/%s did not come back "
                             r".*partitioned instead, commands for raceresult\.devices \(%s\) "
                             r"only" % (gw.client_id, dev))
        self.assertEqual(json.loads(gws[1].request("GET", "/api/state").body)["broker"]
                         ["server"], "tcp://127.0.0.1:%d" % self.cluster.port(2))

        pub = natscluster.mqtt_client(self.cluster.port(1))
        for dev in ("D-1", "D-2"):
            commands_reach(pub, answers, dev)
        for i in range(n):
            for dev in ("D-1", "D-2"):
                pub.publish("raceresult/%s/cmd" % dev, json.dumps(
                    {"command": "GETINFO %s %d" % (dev, i), "transaction": i}), qos=1)
        self.assertTrue(answers.wait_for(lambda msgs: len(measured(msgs)) >= 2 * n, 60),
                        "%d answers" % len(measured(answers.snapshot())))
        self.assertTrue(answers.wait_for(lambda msgs: len({m.json()["id"] for m in msgs
                                                           if m.topic.endswith("/passing")})
                                         >= 2 * n, 60))
        time.sleep(1)  # let duplicates arrive
        natscluster.close(pub)
        executed = {}
        for c in rr.commands():
            if c["command"] != SYNC:
                executed[(c["device"], c["command"])] = executed.get(
                    (c["device"], c["command"]), 0) + 1
        want = {(d, "GETINFO %s %d" % (d, i)) for i in range(n) for d in ("D-1", "D-2")}
        self.assertEqual(set(executed), want)
        self.assertEqual([k for k, v in executed.items() if v != 1], [], "run twice")
        per_gw = []
        for gw, own, other in ((gws[0], "D-1", "D-2"), (gws[1], "D-2", "D-1")):
            ran = harness.log_lines(gw.log_path, r"command GETINFO %s \d+ for %s: ok" % (own, own))
            self.assertEqual(len(ran), n)
            self.assertEqual(harness.log_lines(gw.log_path, r"command .* for %s:" % other), [])
            self.assertEqual(harness.metric(gw, "race2mqtt_raceresult_passings_total"), n,
                             "%s published passings of another replica's device" % gw.name)
            per_gw.append(len(ran))
        ids = {d: passing_ids(answers, d) for d in ("D-1", "D-2")}
        for d in ("D-1", "D-2"):
            self.assertEqual(set(ids[d]), set(harness.rr_ids(d, {1: n})))
        dups = sum(len(v) - len(set(v)) for v in ids.values())
        print("cluster partition: commands sent=%d executed=%d per replica=%r duplicates=0; "
              "passings=%d delivered=%d duplicates=%d" % (2 * n, sum(executed.values()), per_gw,
                                                          2 * n, sum(len(set(v)) for v in
                                                                     ids.values()), dups))


class NodeLossTests(ClusterCase):
    """Its own cluster: a node is killed."""

    def test_node_killed_mid_stream_nothing_answered_is_lost(self):
        dev = "D-9"
        rr = self.fake_rr({"devices": [{"id": dev, "type": "Decoder", "name": "Loop",
                                        "files": {"1": 0}}]})
        sub = self.track(subscriber(self.cluster.port(3), [EVENT_TOPIC,
                                                           "raceresult/%s/passing" % dev]))
        sub.start(SUB_TIMEOUT)
        gw = self.gateway(rr, poll_interval_ms=200, start="all")
        gw.start(timeout=60)
        self.assertEqual(harness.metric(gw, "race2mqtt_broker_server"), 1)

        added = [0]
        stop = threading.Event()

        def passings():  # 20 passings every 0.2 s while the test runs
            while not stop.is_set():
                rr.add_detections(dev, 20)
                added[0] += 20
                stop.wait(0.2)
        feeder = threading.Thread(target=passings, daemon=True)
        poster = self.track(harness.EventPoster(gw, "test.cluster", 0.02))
        feeder.start()
        poster.start()
        try:
            events = lambda: [m for m in sub.snapshot() if m.topic == EVENT_TOPIC]  # noqa
            self.assertTrue(harness.wait_until(lambda: len(events()) >= 100, 30),
                            "%d events delivered before the kill" % len(events()))
            t_kill = time.monotonic()
            self.cluster.kill(1)
            moved = harness.wait_until(lambda: harness.metric(gw, "race2mqtt_broker_server")
                                       in (2, 3), 60, 0.02)
            failover_s = time.monotonic() - t_kill
            self.assertTrue(moved, "the gateway did not fail over:\n" + gw.log())
            n_at = poster.posted
            harness.wait_until(lambda: poster.posted >= n_at + 100, 30)
        finally:
            poster.stop()
            stop.set()
            feeder.join(10)
        answered = set(poster.answered)
        want_ids = set(harness.rr_ids(dev, {1: added[0]}))

        def all_there(msgs):
            seqs = {m.json()["seq"] for m in msgs if m.topic == EVENT_TOPIC}
            ids = {m.json()["id"] for m in msgs if m.topic.endswith("/passing")}
            return answered <= seqs and want_ids <= ids
        sub.wait_for(all_there, 90)
        seqs = [m.json()["seq"] for m in sub.snapshot() if m.topic == EVENT_TOPIC]
        ids = passing_ids(sub, dev)
        self.assertEqual(poster.errors[:5], [], "POSTs failed")
        self.assertEqual(poster.refused[:5], [], "POSTs refused during the failover")
        self.assertEqual(sorted(answered - set(seqs))[:10], [], "answered 200, never delivered")
        self.assertEqual(sorted(want_ids - set(ids))[:10], [], "passings never delivered")
        server = harness.metric(gw, "race2mqtt_broker_server")
        self.assertTrue(harness.log_lines(gw.log_path, r"mqtt: connected to tcp://127\.0\.0\.1:"
                                          r"%d \(MQTT 3\.1\.1, URL %d of 3\) again"
                                          % (self.cluster.port(int(server)), server)), gw.log())
        print("cluster node loss: events accepted=%d delivered=%d duplicates=%d; passings "
              "added=%d delivered=%d duplicates=%d; failover to node %d in %.2f s"
              % (len(answered), len(set(seqs)), len(seqs) - len(set(seqs)), len(want_ids),
                 len(set(ids)), len(ids) - len(set(ids)), server, failover_s))
        rejoin_s = self.cluster.restart(1)
        print("cluster node loss: node 1 serves MQTT again %.1f s after its restart" % rejoin_s)


if __name__ == "__main__":
    harness.main()
