#!/usr/bin/python3
"""
Broker outage (SPEC section 7.1): ~300 events are POSTed over ~7 s while the
broker goes away for ~3 s and comes back (stopped with SIGTERM so that it keeps
the subscriber's persistent session). Every event answered 2xx must reach a
persistent-session subscriber, in seq order (first arrivals strictly increasing;
duplicates are allowed by QoS 1, counted and printed).
"""
import threading
import time

import paho.mqtt.client as mqtt

import harness

TOPIC = "smartrace/other/test.outage"
N = 300
PERIOD = 0.025  # seconds between posts: ~7.5 s in all
OUTAGE_AT = 60  # the broker stops once this many events were posted
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
        reached = threading.Event()

        def poster():
            t0 = time.monotonic()
            for i in range(N):
                try:
                    r = gw.post({"time": 1700000000000 + i, "event_type": "test.outage",
                                 "event_data": {"i": i}})
                    if r.status == 200 and isinstance(r.json, dict) and "seq" in r.json:
                        answered[r.json["seq"]] = i
                    else:
                        refused.append((i, r.status, r.body[:200]))
                except Exception as e:  # noqa: BLE001 - asserted below
                    errors.append((i, repr(e)))
                if i + 1 == OUTAGE_AT:
                    reached.set()
                delay = t0 + (i + 1) * PERIOD - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

        th = threading.Thread(target=poster)
        t0 = time.monotonic()
        th.start()
        self.assertTrue(reached.wait(30))
        broker.stop()
        t_down = time.monotonic()
        during_before = len(answered)
        time.sleep(OUTAGE_S)
        during = len(answered) - during_before
        broker.start()
        t_up = time.monotonic()
        th.join(120)
        self.assertFalse(th.is_alive())
        print("posted %d events in %.1f s; %d answered while the broker was down (%.1f s)"
              % (N, time.monotonic() - t0, during, t_up - t_down))
        self.assertEqual(errors, [], "requests failed")
        self.assertEqual(refused, [], "requests not answered 200 while the broker was away")
        self.assertGreater(during, 50, "too few events posted during the outage")
        seqs = sorted(answered)
        self.assertEqual(len(seqs), N)
        self.assertEqual([answered[s] for s in seqs], list(range(N)),
                         "seqs of sequential posts do not increase")
        harness.delivery_report(self, sub, answered, TOPIC, "outage")
        self.assertTrue(gw.wait_readyz(200, 10))


if __name__ == "__main__":
    harness.main()
