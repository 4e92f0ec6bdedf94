#!/usr/bin/python3
"""
Broker outage (SPEC section 7.1): events are POSTed at ~80/s while the broker
goes away twice for ~3 s (stopped with SIGTERM so that it keeps the subscriber's
persistent session) and comes back; between the outages the gateway reconnects.
Every event answered 2xx must reach a persistent-session subscriber, in seq
order (first arrivals strictly increasing; duplicates are allowed by QoS 1,
counted and printed). The backlog of ~240 events per outage makes a reconnect
burst, which is where replay-order bugs show up.
"""
import threading
import time

import paho.mqtt.client as mqtt

import harness

TOPIC = "smartrace/other/test.outage"
PERIOD = 0.0125  # seconds between posts
NORMAL_S = 1.5   # posting with the broker up before, between and after the outages
OUTAGES = 2
OUTAGE_S = 3.0


class OutageTests(harness.IntegrationCase):

    def test_broker_outage_loses_nothing(self):
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=True)
        gw = self.start_gateway(d, broker)
        sub = self.subscribe(broker.port, [TOPIC], qos=1, protocol=mqtt.MQTTv311,
                             client_id=harness.unique("r2m-it-outage"), persistent=True)
        answered = {}
        refused = []
        errors = []
        stop = threading.Event()
        posted = [0]

        def poster():
            t0 = time.monotonic()
            i = 0
            while not stop.is_set():
                try:
                    r = gw.post({"time": 1700000000000 + i, "event_type": "test.outage",
                                 "event_data": {"i": i}})
                    if r.status == 200 and isinstance(r.json, dict) and "seq" in r.json:
                        answered[r.json["seq"]] = i
                    else:
                        refused.append((i, r.status, r.body[:200]))
                except Exception as e:  # noqa: BLE001 - asserted below
                    errors.append((i, repr(e)))
                i += 1
                posted[0] = i
                delay = t0 + i * PERIOD - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

        th = threading.Thread(target=poster)
        t0 = time.monotonic()
        th.start()
        during = []
        try:
            for _ in range(OUTAGES):
                time.sleep(NORMAL_S)
                broker.stop()
                t_down = time.monotonic()
                during_before = len(answered)
                time.sleep(OUTAGE_S)
                during.append(len(answered) - during_before)
                broker.start()
                print("outage of %.1f s: %d events answered meanwhile"
                      % (time.monotonic() - t_down, during[-1]))
                self.assertTrue(gw.wait_readyz(200, 40), "gateway did not reconnect")
            time.sleep(NORMAL_S)
        finally:
            stop.set()
            th.join(60)
        self.assertFalse(th.is_alive())
        N = posted[0]
        print("posted %d events in %.1f s" % (N, time.monotonic() - t0))
        self.assertEqual(errors, [], "requests failed")
        self.assertEqual(refused, [], "requests not answered 200 while the broker was away")
        self.assertGreater(min(during), 30, "too few events posted during an outage")
        seqs = sorted(answered)
        self.assertEqual(len(seqs), N)
        self.assertEqual([answered[s] for s in seqs], list(range(N)),
                         "seqs of sequential posts do not increase")
        harness.delivery_report(self, sub, answered, TOPIC, "outage")
        self.assertTrue(gw.wait_readyz(200, 10))


if __name__ == "__main__":
    harness.main()
