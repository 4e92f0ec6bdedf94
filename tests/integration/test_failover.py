#!/usr/bin/python3
"""
mqtt.url as a list of brokers (SPEC section 8), against real mosquittos: the
gateway takes the first URL that answers, says which one in its log and in
/metrics and /api/state, and when that broker dies goes on with the next one
without losing an event it answered. Two independent mosquittos stand in for
two nodes here (no shared state: what the first acknowledged stays on it);
tests/integration/test_cluster.py does the same on a real NATS cluster.
"""
import json
import time

import paho.mqtt.client as mqtt

import faultproxy
import harness

TOPIC = "smartrace/other/test.failover"
STATE = "race2mqtt/bridge/state"
PERIOD = 0.01  # 100 events/s


def seqs(sub):
    """Every seq delivered on TOPIC, duplicates included."""
    return [m.json()["seq"] for m in sub.snapshot() if m.topic == TOPIC]


def broker_info(gw):
    """(url, protocol) of race2mqtt_broker_info in /metrics, or None."""
    text = gw.request("GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("race2mqtt_broker_info{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:
                                                          line.index("}")].split(","))
            return labels["url"].strip('"'), labels["protocol"].strip('"')
    return None


class FailoverTests(harness.IntegrationCase):

    def test_dead_first_url_is_skipped_and_the_node_in_use_is_shown(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        dead = harness.free_port()
        sub = self.subscribe(broker.port, [TOPIC])
        gw = self.track(harness.Gateway(d, broker.port, extra={"mqtt": {
            "url": "mqtt://127.0.0.1:%d , mqtt://127.0.0.1:%d" % (dead, broker.port)}}))
        gw.start()
        self.assertTrue(harness.log_lines(
            gw.log_path, r"mqtt: connecting to tcp://127\.0\.0\.1:%d, tcp://127\.0\.0\.1:%d, "
            r"tried in this order" % (dead, broker.port)), gw.log())
        self.assertTrue(harness.log_lines(
            gw.log_path, r"mqtt: connected to tcp://127\.0\.0\.1:%d \(MQTT 5, URL 2 of 2\)"
            % broker.port), gw.log())
        self.assertEqual(harness.metric(gw, "race2mqtt_broker_server"), 2)
        self.assertEqual(broker_info(gw), ("tcp://127.0.0.1:%d" % broker.port, "5"))
        state = json.loads(gw.request("GET", "/api/state").body)
        self.assertEqual(state["broker"]["server"], "tcp://127.0.0.1:%d" % broker.port)
        self.assertEqual(state["broker"]["protocol"], "5")
        answered = [gw.post({"event_type": "test.failover", "event_data": {"i": i}}).json["seq"]
                    for i in range(10)]
        self.assertTrue(sub.wait_for(lambda msgs: len(msgs) >= 10, 10), sub.snapshot())
        self.assertEqual(seqs(sub), answered)

    def test_broker_killed_mid_stream_gateway_goes_on_with_the_next(self):
        d = self.tmpdir()
        a = self.start_broker(d)
        b = self.start_broker(d)
        sub_a = self.subscribe(a.port, [TOPIC])
        sub_b = self.subscribe(b.port, [TOPIC])
        gw = self.track(harness.Gateway(d, a.port, extra={"mqtt": {
            "url": "mqtt://127.0.0.1:%d,mqtt://127.0.0.1:%d" % (a.port, b.port)}}))
        gw.start()
        self.assertEqual(harness.metric(gw, "race2mqtt_broker_server"), 1)
        poster = self.track(harness.EventPoster(gw, "test.failover", PERIOD)).start()
        self.assertTrue(harness.wait_until(lambda: len(seqs(sub_a)) >= 100, 20),
                        "only %d events on the first broker" % len(seqs(sub_a)))
        t_kill = time.monotonic()
        a.kill()
        on_b = harness.wait_until(
            lambda: harness.metric(gw, "race2mqtt_broker_server") == 2, 30, 0.02)
        self.assertTrue(on_b, "the gateway did not move to the second broker:\n" + gw.log())
        failover_s = time.monotonic() - t_kill
        n_at_failover = poster.posted
        harness.wait_until(lambda: poster.posted >= n_at_failover + 100, 20)
        poster.stop()
        answered = set(poster.answered)

        self.assertEqual(poster.errors[:5], [], "POSTs failed")
        self.assertEqual(poster.refused[:5], [], "POSTs refused while the broker failed over")
        self.assertTrue(sub_b.wait_for(
            lambda msgs: answered <= set(seqs(sub_a)) | {m.json()["seq"] for m in msgs
                                                         if m.topic == TOPIC}, 30))
        got_a, got_b = seqs(sub_a), seqs(sub_b)
        missing = sorted(answered - set(got_a) - set(got_b))
        self.assertEqual(missing[:10], [], "answered 200, delivered by neither broker")
        dups = len(got_a) + len(got_b) - len(set(got_a) | set(got_b))
        print("failover (mosquitto, 2 brokers): accepted=%d delivered=%d (first %d, second %d)"
              " duplicates=%d failover=%.2fs" % (len(answered), len(set(got_a) | set(got_b)),
                                                len(set(got_a)), len(set(got_b)), dups,
                                                failover_s))
        # What the first broker acknowledged is not sent again; only what was
        # in flight when it died may be (QoS 1: at least once).
        self.assertLessEqual(dups, 256, "more duplicates than mqtt.max_inflight")
        self.assertEqual(sorted(got_b), got_b, "the second broker got events out of order")
        self.assertTrue(harness.log_lines(
            gw.log_path, r"mqtt: connected to tcp://127\.0\.0\.1:%d \(MQTT 5, URL 2 of 2\) again"
            % b.port), gw.log())
        self.assertEqual(broker_info(gw), ("tcp://127.0.0.1:%d" % b.port, "5"))
        # Retained state is published again on the new node.
        held = harness.retained(b.port, [STATE])
        self.assertIn(STATE, held)
        self.assertEqual(held[STATE].payload, b"online")

    def test_auto_falls_back_when_mqtt5_is_dropped_unanswered(self):
        """RabbitMQ 3.10 closes an MQTT 5 CONNECT without a CONNACK (the proxy
        does the same in front of mosquitto): auto goes on with 3.1.1, says so
        once, and keeps it across reconnects; strict 5 never connects."""
        d = self.tmpdir()
        broker = self.start_broker(d)
        proxy = self.track(faultproxy.FaultProxy(broker.port)).start()
        proxy.drop_mqtt5(True)
        sub = self.subscribe(broker.port, [TOPIC])
        gw = self.track(harness.Gateway(d, proxy.port)).start()
        self.assertEqual(len(harness.log_lines(gw.log_path, r"the broker refused MQTT 5 "
                                               r"\(.*\) and took 3\.1\.1")), 1, gw.log())
        self.assertEqual(broker_info(gw), ("tcp://127.0.0.1:%d" % proxy.port, "3.1.1"))
        self.assertGreaterEqual(proxy.counters().get("dropped_mqtt5", 0), 1)
        seq = gw.post({"event_type": "test.failover", "event_data": {"i": 0}}).json["seq"]
        proxy.cut()  # a reconnect: straight to 3.1.1, no second fallback
        self.assertTrue(harness.wait_until(lambda: harness.log_lines(
            gw.log_path, r"connected to .* \(MQTT 3\.1\.1\) again"), 20), gw.log())
        seq2 = gw.post({"event_type": "test.failover", "event_data": {"i": 1}}).json["seq"]
        self.assertTrue(sub.wait_for(lambda msgs: {seq, seq2} <= set(seqs(sub)), 10))
        self.assertEqual(len(harness.log_lines(gw.log_path, r"refused MQTT 5")), 1)
        dropped = proxy.counters().get("dropped_mqtt5", 0)
        self.assertEqual(dropped, 1, "MQTT 5 tried again after the fallback")

        strict = self.track(harness.Gateway(d, proxy.port, protocol="5")).start(wait=False)
        strict.wait_healthy(20)
        self.assertTrue(harness.wait_until(lambda: harness.log_lines(
            strict.log_path, r"mqtt: cannot connect to"), 20), strict.log())
        time.sleep(1.5)
        self.assertEqual(strict.request("GET", "/readyz").status, 503)
        self.assertEqual(harness.log_lines(strict.log_path, r"took 3\.1\.1|mqtt: connected"),
                         [])


if __name__ == "__main__":
    harness.main()
