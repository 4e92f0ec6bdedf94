#!/usr/bin/python3
"""
A backlog released at once (SPEC section 7.1). Lap events are accepted while the
broker is down, then the broker comes back and the gateway has thousands of
events to publish in one go, far more than paho buffers by default (100).

This is the regression test for a publisher that, when paho refused a publish,
sent newer events before the refused one (out of order) and could stall with
the backlog stuck in the journal. It asserts: every answered event is
delivered, first arrivals in seq order, the queue drains to zero, and the
retained per-controller state ends on each controller's last lap.
"""
import http.client
import json
import threading

import paho.mqtt.client as mqtt

import harness

THREADS = 8
PER_THREAD = 300
CONTROLLERS = 6


def lap_event(n):
    """Lap n of the race, for controller 1..CONTROLLERS in turn."""
    controller = str(n % CONTROLLERS + 1)
    lap = n // CONTROLLERS + 1
    return {"time": 1700000000000 + n * 10, "event_type": "ui.lap_update",
            "event_data": {"controller_id": controller, "lap": lap, "laptime_raw": 9000 + n % 500,
                           "driver_data": {"name": "Driver %s" % controller},
                           "car_data": {"name": "Car %s" % controller}}}


class BurstTests(harness.IntegrationCase):

    def test_backlog_is_delivered_in_order(self):
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=True)
        gw = self.start_gateway(d, broker)
        sub = self.subscribe(broker.port, ["smartrace/lap/#"], qos=1, protocol=mqtt.MQTTv311,
                             client_id=harness.unique("r2m-it-burst"), persistent=True)
        broker.stop()
        gw.wait_readyz(503)

        answered = {}
        errors = []
        lock = threading.Lock()

        def worker(t):
            # One keep-alive connection per thread, like SmartRace and the benchmark.
            conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=30)
            try:
                for i in range(PER_THREAD):
                    n = t * PER_THREAD + i
                    conn.request("POST", "/", json.dumps(lap_event(n)),
                                 {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    body = r.read()
                    if r.status != 200:
                        errors.append((n, r.status, body[:200]))
                        continue
                    with lock:
                        answered[json.loads(body)["seq"]] = n
            except Exception as e:  # noqa: BLE001 - asserted below
                errors.append(("thread %d" % t, repr(e)))
            finally:
                conn.close()

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(len(answered), THREADS * PER_THREAD)

        broker.start()
        want = set(answered)

        def delivered(msgs):
            return want <= {m.json().get("seq") for m in msgs}
        self.assertTrue(sub.wait_for(delivered, 60),
                        "%d answered events not delivered after the broker came back"
                        % len(want - {m.json().get("seq") for m in sub.snapshot()}))

        first, seen = [], set()
        for m in sub.snapshot():
            s = m.json()["seq"]
            self.assertEqual(m.qos, 1)
            self.assertFalse(m.retain)
            n = answered[s]
            self.assertEqual(m.topic, "smartrace/lap/%d" % (n % CONTROLLERS + 1))
            self.assertEqual(m.json()["data"], lap_event(n)["event_data"])
            if s not in seen:
                seen.add(s)
                first.append(s)
        self.assertEqual(first, sorted(first), "first arrivals out of seq order")
        print("burst: answered_2xx=%d delivered=%d duplicates=%d lost=0"
              % (len(answered), len(seen), len(sub.snapshot()) - len(seen)))

        # The queue drains completely (every PUBACK came back).
        def drained():
            text = gw.request("GET", "/metrics").body.decode()
            return "race2mqtt_queue_depth 0\n" in text
        self.assertTrue(harness.wait_until(drained, 20), "queue_depth did not return to 0")

        # Retained state ends on each controller's last accepted lap, in seq order.
        last_lap = {}
        for s in sorted(answered):
            ev = lap_event(answered[s])["event_data"]
            last_lap[ev["controller_id"]] = ev["lap"]
        state = harness.retained(broker.port, ["smartrace/state/controller/#"])
        for c, lap in last_lap.items():
            topic = "smartrace/state/controller/%s" % c
            self.assertIn(topic, state)
            self.assertEqual(json.loads(state[topic].payload)["laps"], lap)


if __name__ == "__main__":
    harness.unittest.main()
