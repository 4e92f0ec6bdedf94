#!/usr/bin/python3
"""
Ten broker outages, each in the middle of a full-speed burst (issue 8, SPEC
section 7.1). Per round: 4 keep-alive connections POST 2,000 events as fast
as the gateway answers; once about a third are answered the broker is stopped
(SIGTERM: it keeps the sessions, so the gateway gets "session present"),
started again 0.7 s later, and the burst goes on meanwhile into the journal.

Stopping the broker while the gateway writes is what used to poison paho's
session state one run in three (test_session_poison.py has the deterministic
version). Every round must deliver every event answered 2xx to a
persistent-session subscriber, first arrivals in seq order, before the next
round starts. Prints per round: delivered, duplicates, recovery time (broker
started -> last event of the round delivered).
"""
import http.client
import json
import threading
import time

import paho.mqtt.client as mqtt

import harness

EVENT = "test.rounds"
TOPIC = "smartrace/other/" + EVENT
ROUNDS = 10
THREADS = 4
PER_THREAD = 500
DOWN_S = 0.7


class OutageRoundsTests(harness.IntegrationCase):

    def burst(self, gw, rnd, answered, lock, errors, count):
        def worker(t):
            conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=30)
            try:
                for k in range(PER_THREAD):
                    i = (rnd * THREADS + t) * PER_THREAD + k
                    body = json.dumps({"time": 1700000000000 + i, "event_type": EVENT,
                                       "event_data": {"i": i}})
                    conn.request("POST", "/", body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    data = json.loads(r.read())
                    with lock:
                        if r.status == 200:
                            answered[data["seq"]] = i
                            count[0] += 1
                        else:
                            errors.append((i, r.status, data))
            except Exception as e:  # noqa: BLE001 - asserted by the test
                with lock:
                    errors.append(("thread %d" % t, repr(e)))
            finally:
                conn.close()
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        return threads

    def test_ten_outages_mid_burst(self):
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=True)
        gw = self.start_gateway(d, broker)
        sub = self.subscribe(broker.port, [TOPIC], qos=1, protocol=mqtt.MQTTv311,
                             client_id=harness.unique("r2m-it-rounds"), persistent=True)
        lock = threading.Lock()
        arrivals = Arrivals(sub)
        recoveries = []
        for rnd in range(1, ROUNDS + 1):
            errors = []
            count = [0]
            answered = {}
            threads = self.burst(gw, rnd, answered, lock, errors, count)
            self.assertTrue(harness.wait_until(lambda: count[0] >= THREADS * PER_THREAD // 3, 60),
                            "round %d: the burst did not get going" % rnd)
            broker.stop()
            at_stop = count[0]
            time.sleep(DOWN_S)
            broker.start()
            t_up = time.monotonic()
            for th in threads:
                th.join(120)
            self.assertEqual(errors, [], "round %d: requests failed" % rnd)
            self.assertEqual(len(answered), THREADS * PER_THREAD)
            missing = arrivals.wait(answered, 60)
            recovery = time.monotonic() - t_up
            self.assertEqual(missing[:10], [], "round %d: %d events answered 2xx never "
                             "delivered (seqs)" % (rnd, len(missing)))
            arrivals.check(self, answered)
            recoveries.append(recovery)
            print("round %d: broker stopped after %d of %d answers; all delivered %.2f s after "
                  "it came back; duplicates so far %d" % (rnd, at_stop, len(answered), recovery,
                                                          arrivals.duplicates))
        recoveries.sort()
        print("outage rounds: rounds=%d delivered=%d duplicates=%d recovery_s median=%.2f "
              "max=%.2f stalls=%d abandoned_clients=%d"
              % (ROUNDS, len(arrivals.first), arrivals.duplicates, recoveries[ROUNDS // 2],
                 recoveries[-1], harness.metric(gw, "race2mqtt_mqtt_stalls_total"),
                 harness.metric(gw, "race2mqtt_mqtt_clients_abandoned_total")))
        self.assertEqual(len(arrivals.first), ROUNDS * THREADS * PER_THREAD)
        self.assertTrue(gw.wait_readyz(200, 10))


class Arrivals:
    """What the subscriber got, read incrementally (each message parsed once):
    seq -> first payload, first arrivals in order, duplicates."""

    def __init__(self, sub):
        self.sub = sub
        self.read = 0
        self.first = {}
        self.order = []
        self.duplicates = 0
        self.mismatch = []

    def update(self):
        msgs = self.sub.snapshot()
        for m in msgs[self.read:]:
            if m.topic != TOPIC:
                continue
            seq = json.loads(m.payload)["seq"]
            if seq in self.first:
                self.duplicates += 1
                if m.payload != self.first[seq]:
                    self.mismatch.append(seq)
            else:
                self.first[seq] = m.payload
                self.order.append(seq)
        self.read = len(msgs)

    def wait(self, answered, timeout):
        """Waits for every seq of answered; returns the missing ones."""
        def missing():
            self.update()
            return sorted(s for s in answered if s not in self.first)
        harness.wait_until(lambda: not missing(), timeout, interval=0.1)
        return missing()

    def check(self, test, answered):
        inversions = [(a, b) for a, b in zip(self.order, self.order[1:]) if b < a]
        test.assertEqual(inversions[:10], [], "first arrivals out of seq order")
        test.assertEqual(self.mismatch[:10], [], "a seq delivered with different payloads")
        wrong = [s for s, i in answered.items() if json.loads(self.first[s])["data"]["i"] != i]
        test.assertEqual(wrong[:10], [], "seqs carrying another event")

if __name__ == "__main__":
    harness.main()
