#!/usr/bin/python3
"""
Gateway crash (SPEC section 7.1): two threads keep POSTing while the gateway is
killed with SIGKILL twice and restarted on the same store dir. Every event
answered 2xx is delivered (persistent-session subscriber, persistent broker), no
seq is used for two different events, seqs answered after a restart are above
every seq answered before it, and the broker's last will turns
race2mqtt/bridge/state to "offline" after the kill ("online" again after the
restart).
"""
import threading
import time

import paho.mqtt.client as mqtt

import harness

TOPIC = "smartrace/other/test.crash"
BRIDGE = "race2mqtt/bridge/state"
RUN_S = 1.5      # posting time per gateway generation
GENERATIONS = 3  # killed after the first two


class CrashTests(harness.IntegrationCase):

    def test_kill_9_loses_nothing(self):
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=True)
        gw = self.start_gateway(d, broker)
        sub = self.subscribe(broker.port, [TOPIC], qos=1, protocol=mqtt.MQTTv311,
                             client_id=harness.unique("r2m-it-crash"), persistent=True)
        bridge = self.subscribe(broker.port, [BRIDGE])
        self.assertIsNotNone(bridge.wait_message(lambda m: m.payload == b"online", 10),
                             "no online on %s" % BRIDGE)

        lock = threading.Lock()
        answered = {}      # seq -> i
        times = {}         # seq -> (request sent, answer received), monotonic
        kills = []         # (time of SIGKILL, time the restarted gateway was ready)
        failures = [0]
        stop = threading.Event()
        counter = [0]

        def poster():
            while not stop.is_set():
                with lock:
                    i = counter[0]
                    counter[0] += 1
                t_send = time.monotonic()
                try:
                    r = harness.post(gw.http_port, "/", {
                        "time": 1700000000000 + i, "event_type": "test.crash",
                        "event_data": {"i": i, "pad": "x" * 200}}, timeout=5)
                except Exception:  # noqa: BLE001 - the gateway is being killed
                    with lock:
                        failures[0] += 1
                    time.sleep(0.01)
                    continue
                if r.status == 200 and isinstance(r.json, dict) and "seq" in r.json:
                    with lock:
                        answered[r.json["seq"]] = i
                        times[r.json["seq"]] = (t_send, time.monotonic())
                else:
                    with lock:
                        failures[0] += 1

        threads = [threading.Thread(target=poster) for _ in range(2)]
        for th in threads:
            th.start()
        try:
            for g in range(GENERATIONS):
                time.sleep(RUN_S)
                if g == GENERATIONS - 1:
                    break
                t_kill = time.monotonic()
                self.assertEqual(gw.kill(), -9)
                # The broker sends the will once it notices the dead connection.
                off = bridge.wait_message(lambda m: m.payload == b"offline" and m.t > t_kill, 45)
                self.assertIsNotNone(off, "no last will 'offline' on %s after SIGKILL" % BRIDGE)
                self.assertTrue(off.retain, "last will not retained")
                t_start = time.monotonic()
                gw.start()
                kills.append((t_kill, time.monotonic()))
                on = bridge.wait_message(lambda m: m.payload == b"online" and m.t > t_start, 15)
                self.assertIsNotNone(on, "no 'online' after restart")
        finally:
            stop.set()
            for th in threads:
                th.join(30)

        with lock:
            answered = dict(answered)
        print("posted %d, answered %d, failed %d (expected while killed)"
              % (counter[0], len(answered), failures[0]))
        self.assertGreater(len(answered), 50)
        for n, (t_kill, t_ready) in enumerate(kills, 1):
            prev = [s for s in answered if times[s][1] < t_kill]
            new = [s for s in answered if times[s][0] > t_ready]
            self.assertTrue(prev and new)
            self.assertGreater(min(new), max(prev),
                               "a seq answered after restart %d is not above the "
                               "seqs answered before it" % n)
        harness.delivery_report(self, sub, answered, TOPIC, "crash", show_dups=False)
        self.assertEqual(gw.stop(), 0)

    def test_kill_9_with_broker_down(self):
        """Events journalled while the broker is away survive a SIGKILL and are
        published, in order and before newer ones, once the broker is back."""
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=True)
        gw = self.start_gateway(d, broker)
        sub = self.subscribe(broker.port, [TOPIC], qos=1, protocol=mqtt.MQTTv311,
                             client_id=harness.unique("r2m-it-crash2"), persistent=True)
        answered = {}

        def post_range(lo, hi):
            for i in range(lo, hi):
                r = gw.post({"time": i, "event_type": "test.crash", "event_data": {"i": i}})
                answered[self.assertOk(r)] = i

        post_range(0, 20)
        broker.stop()
        self.assertTrue(gw.wait_readyz(503, 20))
        post_range(20, 120)
        self.assertEqual(gw.kill(), -9)
        gw.start(wait=False)
        gw.wait_healthy()
        post_range(120, 170)
        self.assertEqual(gw.kill(), -9)
        gw.start(wait=False)
        gw.wait_healthy()
        post_range(170, 200)
        broker.start()
        self.assertTrue(gw.wait_readyz(200, 40))
        post_range(200, 220)
        seqs = sorted(answered)
        self.assertEqual([answered[s] for s in seqs], list(range(220)), "seq order != post order")
        harness.delivery_report(self, sub, answered, TOPIC, "crash-broker-down", show_dups=False)


if __name__ == "__main__":
    harness.main()
