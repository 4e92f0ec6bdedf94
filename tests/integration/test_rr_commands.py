#!/usr/bin/python3
"""
Decoder commands over MQTT (SPEC section 3, "Commands") against the fake RACE
RESULT API (tests/fakerr), a real mosquitto and the real gateway.

A request on raceresult/<device>/cmd (plain text or JSON {"command",
"transaction"}) becomes POST /customers/{cid}/devices/{device}/cmd?command=...;
the answer goes to raceresult/<device>/cmd/response (QoS 1, not retained) and,
for MQTT 5 requests with a Response Topic, there too with the request's
Correlation Data. Checked here, always from what a real subscriber receives and
what the fake API recorded: the MQTT 5 request/response round trip, the
transaction echo for MQTT 3.1.1 clients, retained commands never executed
(live, replayed on subscribe, queued while the gateway was away, after a
restart), the allow-list, refused requests, exact transport of special
characters, API errors and timeouts, order, the queue bound, two replicas in
one shared-subscription group running each command exactly once, and a
gateway that talks MQTT 3.1.1.
"""
import json
import time

import paho.mqtt.client as mqtt

import harness

KEY = "rr-cmd-key-3b8e51d0-DO-NOT-LEAK"
CID = 846
WORLD = {"devices": [
    {"id": "D-1", "type": "Decoder", "name": "Finish", "files": {"1": 0}},
    {"id": "D-2", "type": "Decoder", "name": "Start", "files": {"1": 0}},
]}
CMD_ROUTE = "POST /customers/{cid}/devices/{dev}/cmd"
QUIET = {"poll_interval_ms": 3600000}  # one poll at start, then quiet
ABSENT = object()


def cmd_topic(dev):
    return "raceresult/%s/cmd" % dev


def resp_topic(dev):
    return "raceresult/%s/cmd/response" % dev


class RaceResultCommandTests(harness.IntegrationCase):

    # ---- setup -------------------------------------------------------------

    def setup_rr(self, protocol=None, start_gateway=True, **keys):
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, world=WORLD)
        self.track(harness._Stoppable(rr))
        broker = self.start_broker(d)
        sub = self.track(harness.PropSubscriber(broker.port, ["raceresult/+/cmd/response"],
                                                protocol=mqtt.MQTTv5)).start()
        kw = dict(QUIET)
        kw.update(keys)
        gw = harness.Gateway(d, broker.port, extra=harness.rr_extra(rr, KEY, CID, **kw),
                             protocol=protocol)
        self.track(gw)
        if start_gateway:
            self.start_cmd_gateway(broker, gw)
        return rr, broker, sub, gw, d

    def start_cmd_gateway(self, broker, gw):
        """Starts gw and waits until the broker holds its command
        subscriptions: one per raceresult.devices entry (+ without a list),
        shared with a command group (mosquitto delivers $share)."""
        rr = gw.sections.get("raceresult", {})
        group = rr.get("command_group")
        filters = ["%sraceresult/%s/cmd" % ("$share/%s/" % group if group else "", dev)
                   for dev in (rr.get("devices") or "+").split(",")]
        before = {f: harness.broker_subscriptions(broker, gw.client_id, f) for f in filters}
        gw.start()
        harness.wait_subscribed(broker, gw.client_id, filters, before)
        return gw

    def publisher(self, broker, protocol=mqtt.MQTTv5):
        return self.track(harness.Publisher(broker.port, protocol=protocol)).start()

    # ---- assertions ----------------------------------------------------------

    def answers(self, sub, dev=None, topic=None):
        t = topic or resp_topic(dev)
        return [m for m in sub.snapshot() if m.topic == t]

    def wait_answers(self, sub, n, dev=None, topic=None, timeout=15):
        t = topic or resp_topic(dev)
        got = sub.wait_for(lambda msgs: len([m for m in msgs if m.topic == t]) >= n, timeout)
        have = self.answers(sub, topic=t)
        self.assertTrue(got, "%d answer(s) on %s within %ds, want %d: %r"
                        % (len(have), t, timeout, n, have[:5]))
        return have

    def check_answer(self, m, device, command, status, http_status, response=ABSENT,
                     transaction=ABSENT, error=None):
        """One response message: QoS 1, not retained, exactly the members the
        spec names (error only on error, transaction only when given)."""
        self.assertEqual(m.qos, 1, m)
        self.assertFalse(m.retain, "response retained: %r" % m)
        p = json.loads(m.payload.decode("utf-8"))
        keys = {"status", "device", "command", "response", "http_status"}
        if status == "error":
            keys.add("error")
        if transaction is not ABSENT:
            keys.add("transaction")
        self.assertEqual(set(p), keys, "members of %r" % p)
        self.assertEqual(p["status"], status, p)
        self.assertEqual(p["device"], device, p)
        self.assertEqual(p["command"], command, p)
        self.assertEqual(p["http_status"], http_status, p)
        self.assertIsInstance(p["http_status"], int)
        if response is not ABSENT:
            self.assertEqual(p["response"], response, p)
        if transaction is not ABSENT:
            self.assertEqual(p["transaction"], transaction, p)
            self.assertEqual(type(p["transaction"]), type(transaction), p)
        if status == "error":
            self.assertIsInstance(p["error"], str, p)
            self.assertTrue(p["error"], p)
            if error:
                self.assertIn(error.lower(), p["error"].lower(), p)
            self.assertNotIn(KEY, p["error"])
        return p

    def executed(self, rr):
        return [(c["device"], c["command"]) for c in rr.commands()]

    def check_cmd_requests(self, rr):
        """Every cmd request: POST, Connection: close, a bearer token, the
        configured customer."""
        reqs = rr.requests(route=CMD_ROUTE)
        for r in reqs:
            self.assertEqual(r["method"], "POST", r)
            self.assertTrue(r["connection_close"], "no Connection: close: %r" % r["headers"])
            auth = {k.lower(): v for k, v in r["headers"].items()}.get("authorization", "")
            self.assertTrue(auth.startswith("Bearer ") and len(auth) > 7, r["headers"])
            self.assertTrue(r["path"].startswith("/customers/%d/devices/" % CID), r)
            self.assertTrue(r["path"].endswith("/cmd"), r)
        return reqs

    # ---- tests ---------------------------------------------------------------

    def test_mqtt5_response_topic_and_correlation(self):
        rr, broker, sub, gw, _ = self.setup_rr()
        rr.set_cmd_reply("GETSTATUS", "STATUS;1;OK")
        reply_topic = "clients/%s/replies" % harness.unique("app")
        rsub = self.track(harness.PropSubscriber(broker.port, [reply_topic],
                                                 protocol=mqtt.MQTTv5)).start()
        pub = self.publisher(broker)
        corr1 = b"\x00\x01corr-1\xff\xfe"  # binary, with NUL and non-UTF-8 bytes
        corr2 = b"c2"
        pub.publish(cmd_topic("D-1"), json.dumps({"command": "GETSTATUS",
                                                  "transaction": {"id": 1, "tags": ["a"]}}),
                    response_topic=reply_topic, correlation=corr1)
        pub.publish(cmd_topic("D-1"), "GETINFO", response_topic=reply_topic,
                    correlation=corr2)
        pub.publish(cmd_topic("D-1"), "GETTIME", response_topic=reply_topic)  # no correlation
        pub.publish(cmd_topic("D-1"), "CLEARFILES", response_topic=reply_topic,
                    correlation=b"c4")  # refused: also answered on the Response Topic

        got = self.wait_answers(rsub, 4, topic=reply_topic)
        time.sleep(0.3)
        got = self.answers(rsub, topic=reply_topic)
        self.assertEqual(len(got), 4, "answers on the Response Topic: %r" % got)
        self.assertEqual([m.correlation for m in got], [corr1, corr2, None, b"c4"])
        self.check_answer(got[0], "D-1", "GETSTATUS", "ok", 200, response="STATUS;1;OK",
                          transaction={"id": 1, "tags": ["a"]})
        self.check_answer(got[1], "D-1", "GETINFO", "ok", 200, response="OK GETINFO")
        self.check_answer(got[2], "D-1", "GETTIME", "ok", 200, response="OK GETTIME")
        self.check_answer(got[3], "D-1", "CLEARFILES", "error", 0, response=None,
                          error="not allowed")

        # The same answers on .../cmd/response, same order and payloads.
        std = self.wait_answers(sub, 4, "D-1")
        self.assertEqual([m.payload for m in std], [m.payload for m in got])
        for m in std:
            self.assertEqual(m.qos, 1)
            self.assertFalse(m.retain)

        self.assertEqual(self.executed(rr), [("D-1", "GETSTATUS"), ("D-1", "GETINFO"),
                                             ("D-1", "GETTIME")])
        reqs = self.check_cmd_requests(rr)
        self.assertEqual([r["path"] for r in reqs], ["/customers/%d/devices/D-1/cmd" % CID] * 3)
        self.assertEqual([r["query"] for r in reqs], [{"command": c} for c in
                                                      ("GETSTATUS", "GETINFO", "GETTIME")])
        # Nothing retained on the answer topics.
        ret = harness.retained(broker.port, ["raceresult/#", "clients/#"])
        self.assertEqual(sorted(t for t in ret if "/cmd" in t or t.startswith("clients/")), [])

    def test_mqtt311_client_gets_transaction(self):
        rr, broker, _, gw, _ = self.setup_rr()
        sub = self.track(harness.PropSubscriber(broker.port, [resp_topic("D-2")],
                                                protocol=mqtt.MQTTv311)).start()
        pub = self.publisher(broker, protocol=mqtt.MQTTv311)
        txs = ["abc-1", 42, -7.25, True, None, [1, "x", None], {"a": {"b": [{}]}},
               "\u00fc\u20ac\U0001F600 \"q\" \\ /"]
        for i, tx in enumerate(txs):
            pub.publish(cmd_topic("D-2"), json.dumps({"command": "GETINFO n=%d" % i,
                                                      "transaction": tx}))
        # Refused requests echo the transaction too.
        pub.publish(cmd_topic("D-2"), json.dumps({"transaction": {"t": 9}}))
        pub.publish(cmd_topic("D-2"), json.dumps({"command": "CLEARFILES", "transaction": "z"}))
        got = self.wait_answers(sub, len(txs) + 2, "D-2")
        for i, tx in enumerate(txs):
            self.check_answer(got[i], "D-2", "GETINFO n=%d" % i, "ok", 200,
                              response="OK GETINFO n=%d" % i, transaction=tx)
            self.assertIsNone(got[i].correlation)
        self.check_answer(got[len(txs)], "D-2", None, "error", 0, response=None,
                          transaction={"t": 9}, error="command")
        self.check_answer(got[len(txs) + 1], "D-2", "CLEARFILES", "error", 0, response=None,
                          transaction="z", error="not allowed")
        self.assertEqual(self.executed(rr), [("D-2", "GETINFO n=%d" % i)
                                             for i in range(len(txs))])

    def test_retained_never_executed(self):
        rr, broker, sub, gw, _ = self.setup_rr(start_gateway=False)
        pub = self.publisher(broker, protocol=mqtt.MQTTv311)
        # Retained before the gateway ever subscribed: replayed on SUBSCRIBE.
        pub.publish(cmd_topic("D-1"), "GETSTATUS", retain=True)
        pub.publish(cmd_topic("D-2"), json.dumps({"command": "STARTOPERATION",
                                                  "transaction": 1}), retain=True)
        pub.wait_all()
        self.start_cmd_gateway(broker, gw)
        warn = r"warn .*retained command for %s ignored"

        def marker(n):
            """A live command; answered after everything delivered before it (one FIFO)."""
            c = "GETINFO marker=%d" % n
            pub.publish(cmd_topic("D-1"), c)
            self.assertTrue(sub.wait_message(lambda m: m.topic == resp_topic("D-1")
                                             and m.json().get("command") == c, 15),
                            "marker %d not answered" % n)
            return ("D-1", c)

        want = [marker(1)]
        self.assertEqual(self.executed(rr), want)
        self.assertGreaterEqual(len(harness.log_lines(gw.log_path, warn % "D-1")), 1)
        self.assertGreaterEqual(len(harness.log_lines(gw.log_path, warn % "D-2")), 1)

        # Published retained while the gateway is subscribed (MQTT 5 gateway:
        # Retain As Published shows the flag).
        pub.publish(cmd_topic("D-1"), "GETTIME", retain=True)
        want.append(marker(2))
        self.assertEqual(self.executed(rr), want)

        # Published retained while the gateway is away (queued in its session),
        # then a restart: the queued copy and the replayed ones are all ignored.
        self.assertEqual(gw.stop(), 0)
        pub.publish(cmd_topic("D-2"), "STOPOPERATION", retain=True)
        pub.wait_all()
        self.start_cmd_gateway(broker, gw)
        want.append(marker(3))
        self.assertEqual(self.executed(rr), want)
        self.assertEqual([r["query"]["command"] for r in rr.requests(route=CMD_ROUTE)],
                         [c for _, c in want], "the API was called for a retained command")
        # Only the markers were answered: a retained command gets no response.
        self.assertEqual([m.json()["command"] for m in sub.snapshot()
                          if m.topic.endswith("/cmd/response")], [c for _, c in want])
        self.assertGreaterEqual(len(harness.log_lines(gw.log_path, warn % "D-2")), 2)

    def test_disallowed_and_bad_requests(self):
        rr, broker, sub, gw, _ = self.setup_rr()
        pub = self.publisher(broker)
        refused = ["CLEARFILES", "clearfiles", "ClearFiles;1", "CLEARFILES GETSTATUS",
                   "NEWFILE", "GETSTATUSX", "GET", "GETSTATUS,CLEARFILES",
                   "GETSTATUS&command=CLEARFILES", ";GETSTATUS"]
        for c in refused:
            pub.publish(cmd_topic("D-1"), c)
        pub.publish(cmd_topic("D-1"), json.dumps({"command": "CLEARFILES", "transaction": 5}))
        got = self.wait_answers(sub, len(refused) + 1, "D-1")
        for m, c in zip(got, refused):
            self.check_answer(m, "D-1", c, "error", 0, response=None, error="not allowed")
        self.check_answer(got[-1], "D-1", "CLEARFILES", "error", 0, response=None,
                          transaction=5, error="not allowed")

        # An empty message is how a retained command is cleared: ignored, no
        # answer and no call (asserted with the others below: it is published
        # first, so it would be the first answer if it got one).
        pub.publish(cmd_topic("D-2"), b"")
        # Requests that are not a command at all: refused, no call.
        bad = [
            (b"   \r\n", None, "empty"),
            (b"GET\x01STATUS", None, None),
            (b"GETSTATUS\nCLEARFILES", None, None),
            ("GETSTATUS \u00fc".encode(), None, None),
            (b"G" * 257, None, "longer"),
            (b'{"command": "GETSTATUS"', None, None),
            (b'{"command": 5, "transaction": "t"}', "t", "command"),
            (b'{"command": "GETSTATUS", "transaction": NaN}', None, None),
            (b'{"command": "GETSTATUS", "transaction": "\xc3\x28"}', None, None),
            (b'{"command": "GETSTATUS", "transaction": ' + b"[" * 200 + b"]" * 200 + b"}",
             None, None),
            (b'{"command": "GETSTATUS", "transaction": "' + b"x" * 5000 + b'"}', None, None),
        ]
        sub.clear()
        for body, _, _ in bad:
            pub.publish(cmd_topic("D-2"), body)
        got = self.wait_answers(sub, len(bad), "D-2")
        for m, (body, tx, err) in zip(got, bad):
            p = json.loads(m.payload.decode("utf-8"))
            self.assertEqual(p["status"], "error", (body[:60], p))
            self.check_answer(m, "D-2", None, "error", 0, response=None,
                              transaction=tx if tx is not None else ABSENT, error=err)
        self.assertEqual(self.executed(rr), [])
        self.assertEqual(rr.requests(route=CMD_ROUTE), [])

        # The allow-list is configurable: any case, spaces; empty = nothing.
        gw.stop()
        gw.sections["raceresult"]["commands_allowed"] = " clearfiles , GetInfo "
        self.start_cmd_gateway(broker, gw)
        sub.clear()
        for c in ("CLEARFILES", "getinfo;1", "GETSTATUS"):
            pub.publish(cmd_topic("D-1"), c)
        got = self.wait_answers(sub, 3, "D-1")
        self.check_answer(got[0], "D-1", "CLEARFILES", "ok", 200, response="OK CLEARFILES")
        self.check_answer(got[1], "D-1", "getinfo;1", "ok", 200, response="OK getinfo;1")
        self.check_answer(got[2], "D-1", "GETSTATUS", "error", 0, response=None,
                          error="not allowed")
        gw.stop()
        gw.sections["raceresult"]["commands_allowed"] = ""
        self.start_cmd_gateway(broker, gw)
        sub.clear()
        pub.publish(cmd_topic("D-1"), "GETSTATUS")
        got = self.wait_answers(sub, 1, "D-1")
        self.check_answer(got[0], "D-1", "GETSTATUS", "error", 0, response=None,
                          error="not allowed")
        self.assertEqual(self.executed(rr), [("D-1", "CLEARFILES"), ("D-1", "getinfo;1")])

    def test_special_characters_arrive_exactly(self):
        rr, broker, sub, gw, _ = self.setup_rr()
        pub = self.publisher(broker)
        printable = "".join(chr(c) for c in range(0x21, 0x7f))
        cmds = [
            "GETINFO;a b",
            "GETINFO a&b=c",
            "GETINFO +1 %20 %% %2B +",
            "GETINFO=x;y=z&command=CLEARFILES",
            "GETINFO ?#/\\\"'<>{}[]|^`~!@$*()",
            "GETINFO  two  spaces",
            "GETINFO " + printable,
            "GETINFO;" + "x" * (256 - len("GETINFO;")),
        ]
        for i, c in enumerate(cmds):
            if i % 2:
                pub.publish(cmd_topic("D-1"), json.dumps({"command": c, "transaction": i}))
            else:
                pub.publish(cmd_topic("D-1"), c)
        got = self.wait_answers(sub, len(cmds), "D-1")
        for i, (m, c) in enumerate(zip(got, cmds)):
            self.check_answer(m, "D-1", c, "ok", 200, response="OK " + c,
                              transaction=i if i % 2 else ABSENT)
        self.assertEqual(self.executed(rr), [("D-1", c) for c in cmds])
        reqs = self.check_cmd_requests(rr)
        for r, c in zip(reqs, cmds):
            self.assertEqual(r["query"], {"command": c}, r["target"])
            # One query parameter, nothing smuggled into the target.
            self.assertEqual(r["target"].count("?"), 1, r["target"])
            self.assertNotIn(" ", r["target"])
            self.assertNotIn("&", r["target"])
        # '+', '&', '%' do not end the name: "GETINFO+1" is not GETINFO.
        sub.clear()
        pub.publish(cmd_topic("D-1"), "GETINFO+1")
        pub.publish(cmd_topic("D-1"), "GETINFO&x")
        got = self.wait_answers(sub, 2, "D-1")
        self.check_answer(got[0], "D-1", "GETINFO+1", "error", 0, response=None,
                          error="not allowed")
        self.check_answer(got[1], "D-1", "GETINFO&x", "error", 0, response=None,
                          error="not allowed")
        self.assertEqual(len(rr.commands()), len(cmds))

    def test_api_errors_and_timeout(self):
        rr, broker, sub, gw, _ = self.setup_rr(timeout_ms=1500)
        pub = self.publisher(broker)
        path = "/customers/%d/devices/D-1/cmd" % CID

        def ask(c, n):
            pub.publish(cmd_topic("D-1"), c)
            return self.wait_answers(sub, n, "D-1")[n - 1]

        # 500 from the API (not processed there).
        rr.fail_next(1, 500, path_prefix=path)
        p = self.check_answer(ask("GETINFO a", 1), "D-1", "GETINFO a", "error", 500,
                              error="500")
        self.assertEqual(json.loads(p["response"])["Message"], "injected failure: 500 "
                         "Internal Server Error")
        # 500 from the decoder's side, with a message.
        rr.set_cmd_reply("GETINFO", "device busy", device="D-1", status=500)
        p = self.check_answer(ask("GETINFO b", 2), "D-1", "GETINFO b", "error", 500,
                              error="500")
        self.assertEqual(json.loads(p["response"]), {"Message": "device busy"})
        rr.reset()  # replies back to the default; tokens dropped: the gateway renews
        # 200 of another shape: the body verbatim.
        rr.fail_next(1, 200, path_prefix=path, body={"Foo": [1, 2]})
        p = self.check_answer(ask("GETINFO c", 3), "D-1", "GETINFO c", "ok", 200)
        self.assertEqual(json.loads(p["response"]), {"Foo": [1, 2]})
        # 404: unknown device.
        pub.publish(cmd_topic("NOPE"), "GETSTATUS")
        m = self.wait_answers(sub, 1, "NOPE")[0]
        self.check_answer(m, "NOPE", "GETSTATUS", "error", 404)
        # Timeout: answered after ~timeout_ms with http_status 0.
        rr.slow_next(1, 4, path_prefix=path)
        t0 = time.monotonic()
        pub.publish(cmd_topic("D-1"), "GETINFO slow")
        m = self.wait_answers(sub, 4, "D-1", timeout=10)[3]
        dt = m.t - t0
        p = self.check_answer(m, "D-1", "GETINFO slow", "error", 0, response=None)
        self.assertRegex(p["error"].lower(), r"time.?out|timed out", p)
        self.assertGreater(dt, 1.2, "answered after %.2f s, timeout_ms is 1500" % dt)
        self.assertLess(dt, 3.5, "answered after %.2f s, timeout_ms is 1500" % dt)
        # And the worker goes on.
        self.check_answer(ask("GETINFO after", 5), "D-1", "GETINFO after", "ok", 200,
                          response="OK GETINFO after")
        # Expired token: renewed, the command runs once.
        rr.expire_tokens()
        self.check_answer(ask("GETINFO renewed", 6), "D-1", "GETINFO renewed", "ok", 200,
                          response="OK GETINFO renewed")
        ran = [c for d, c in self.executed(rr) if d == "D-1"]
        self.assertEqual(ran.count("GETINFO renewed"), 1, ran)
        self.assertNotIn("GETINFO c", ran)  # answered by the fault, not processed
        for line in harness.log_lines(gw.log_path, "."):
            self.assertNotIn(KEY, line)

    def test_order_one_worker(self):
        rr, broker, sub, gw, _ = self.setup_rr()
        pub = self.publisher(broker)
        # The first one is slow: a worker that ran commands side by side would
        # let the others overtake it.
        rr.slow_next(1, 0.6, path_prefix="/customers/%d/devices/D-1/cmd" % CID)
        cmds = ["GETINFO i=%d" % i for i in range(20)]
        for i, c in enumerate(cmds):
            if i % 3 == 0:
                pub.publish(cmd_topic("D-1"), json.dumps({"command": c, "transaction": i}))
            else:
                pub.publish(cmd_topic("D-1"), c)
        got = self.wait_answers(sub, 20, "D-1")
        time.sleep(0.3)
        got = self.answers(sub, "D-1")
        self.assertEqual(len(got), 20)
        self.assertEqual(self.executed(rr), [("D-1", c) for c in cmds],
                         "not executed in arrival order")
        self.assertEqual([m.json()["command"] for m in got], cmds, "not answered in order")
        for i, m in enumerate(got):
            self.check_answer(m, "D-1", cmds[i], "ok", 200, response="OK " + cmds[i],
                              transaction=i if i % 3 == 0 else ABSENT)
        # One at a time: each request started after the previous one was answered.
        reqs = rr.requests(route=CMD_ROUTE)
        self.assertEqual(len(reqs), 20)
        self.assertEqual(len({r["conn"] for r in reqs}), 20, "connections reused")

    def test_queue_bound(self):
        rr, broker, sub, gw, _ = self.setup_rr()
        pub = self.publisher(broker)
        rr.slow_next(1, 2.0, path_prefix="/customers/%d/devices/D-1/cmd" % CID)
        pub.publish(cmd_topic("D-1"), "GETINFO q=0")
        # Recorded when it arrives (answered 2 s later): the worker is inside it.
        self.assertTrue(harness.wait_until(lambda: rr.requests(route=CMD_ROUTE), 10))
        cmds = ["GETINFO q=%d" % i for i in range(1, 71)]
        for c in cmds:
            pub.publish(cmd_topic("D-1"), c)
        pub.wait_all()
        # 1 running + 32 queued run; the next 32 are answered "queue full";
        # the rest are dropped (logged).
        got = self.wait_answers(sub, 65, "D-1", timeout=20)
        time.sleep(0.5)
        got = self.answers(sub, "D-1")
        ran = [c for _, c in self.executed(rr)]
        self.assertEqual(ran, ["GETINFO q=%d" % i for i in range(len(ran))],
                         "executed commands are not a prefix in arrival order")
        self.assertIn(len(ran), (32, 33), "executed %d with a queue of 32" % len(ran))
        full = [m.json() for m in got if m.json()["status"] == "error"]
        ok = [m.json()["command"] for m in got if m.json()["status"] == "ok"]
        self.assertEqual(ok, ran)
        self.assertEqual(len(full), 32, "answers 'queue full': %d" % len(full))
        for p in full:
            self.assertIn("queue full", p["error"])
            self.assertIsNone(p["response"])
            self.assertEqual(p["http_status"], 0)
        self.assertEqual([p["command"] for p in full], cmds[len(ran) - 1:len(ran) - 1 + 32])
        self.assertLessEqual(len(got), 65)
        # The gateway is fine afterwards.
        sub.clear()
        pub.publish(cmd_topic("D-1"), "GETINFO later")
        self.check_answer(self.wait_answers(sub, 1, "D-1")[0], "D-1", "GETINFO later", "ok",
                          200)

    def test_shared_group_runs_each_command_once(self):
        rr, broker, sub, gw1, d = self.setup_rr(command_group="r2m-cmd")
        gw2 = self.track(harness.Gateway(d, broker.port, extra=harness.rr_extra(
            rr, KEY, CID, command_group="r2m-cmd", **QUIET)))
        self.assertNotEqual(gw1.client_id, gw2.client_id)
        self.start_cmd_gateway(broker, gw2)
        for g in (gw1, gw2):
            self.assertTrue(harness.log_lines(g.log_path, r"commands on \$share/r2m-cmd/"
                                              r"raceresult/\+/cmd"))
            # mosquitto delivers $share: the probe came back, no fallback.
            self.assertTrue(harness.log_lines(g.log_path, r"the broker delivers shared "
                                              r"subscriptions \(probe back in \d+ ms\)"))
            self.assertEqual(harness.log_lines(g.log_path, r"does not deliver shared"), [])
        pub = self.publisher(broker)
        n, window = 100, 24  # stay well below each replica's queue of 32
        cmds = ["GETINFO n=%d" % i for i in range(n)]
        t0 = time.monotonic()
        for i, c in enumerate(cmds):
            if i >= window:  # at most `window` commands unanswered
                self.assertTrue(sub.wait_for(lambda msgs: len(msgs) >= i - window + 1, 15),
                                "answers stalled at %d" % len(sub.snapshot()))
            pub.publish(cmd_topic("D-%d" % (1 + i % 2)), json.dumps({"command": c,
                                                                     "transaction": i}))
        sub.wait_for(lambda msgs: len(msgs) >= n, 30)
        time.sleep(0.5)  # let any duplicate arrive
        secs = time.monotonic() - t0
        counts = {}
        for c in rr.commands():
            counts[c["command"]] = counts.get(c["command"], 0) + 1
        self.assertEqual({c: counts.get(c, 0) for c in cmds if counts.get(c, 0) != 1}, {},
                         "commands not executed exactly once (command: times)")
        self.assertEqual(sum(counts.values()), n)
        answered = {}
        for m in sub.snapshot():
            p = self.check_answer(m, m.topic.split("/")[1], m.json()["command"], "ok", 200,
                                  transaction=m.json().get("transaction"))
            self.assertEqual(p["transaction"], int(p["command"].split("=")[1]))
            self.assertEqual(p["device"], "D-%d" % (1 + p["transaction"] % 2))
            answered[p["command"]] = answered.get(p["command"], 0) + 1
        self.assertEqual({c: answered.get(c, 0) for c in cmds if answered.get(c, 0) != 1}, {},
                         "commands not answered exactly once (command: times)")
        per_gw = [len(harness.log_lines(g.log_path, r"command GETINFO n=\d+ for D-\d: ok"))
                  for g in (gw1, gw2)]
        print("shared group: commands=%d per gateway=%r seconds=%.2f" % (n, per_gw, secs))
        self.assertEqual(sum(per_gw), n)
        self.assertTrue(all(k > 0 for k in per_gw), "one replica did all the work: %r" % per_gw)

    def test_partitioned_replicas_run_only_their_own_devices(self):
        """Disjoint raceresult.devices: no broker feature needed, each command
        runs once, on the replica that owns the device."""
        rr, broker, sub, gw1, d = self.setup_rr(start_gateway=False, devices="D-1")
        self.start_cmd_gateway(broker, gw1)
        gw2 = self.track(harness.Gateway(d, broker.port, extra=harness.rr_extra(
            rr, KEY, CID, devices="D-2", **QUIET)))
        self.start_cmd_gateway(broker, gw2)
        for g, dev in ((gw1, "D-1"), (gw2, "D-2")):
            self.assertTrue(harness.log_lines(g.log_path, r"decoder commands on raceresult/%s/cmd$"
                                              % dev), g.log())
        pub = self.publisher(broker)
        n = 20
        for i in range(n):
            for dev in ("D-1", "D-2"):
                pub.publish(cmd_topic(dev), json.dumps({"command": "GETINFO %s %d" % (dev, i),
                                                        "transaction": i}))
        self.assertTrue(sub.wait_for(lambda msgs: len(msgs) >= 2 * n, 20),
                        "%d answers" % len(sub.snapshot()))
        time.sleep(0.5)  # let any duplicate arrive
        counts = {}
        for c in rr.commands():
            counts[(c["device"], c["command"])] = counts.get((c["device"], c["command"]), 0) + 1
        want = {(dev, "GETINFO %s %d" % (dev, i)) for i in range(n) for dev in ("D-1", "D-2")}
        self.assertEqual(set(counts), want)
        self.assertEqual([k for k, v in counts.items() if v != 1], [], "run more than once")
        for g, own, other in ((gw1, "D-1", "D-2"), (gw2, "D-2", "D-1")):
            self.assertEqual(len(harness.log_lines(g.log_path, r"command GETINFO %s \d+ for %s: ok"
                                                   % (own, own))), n)
            self.assertEqual(harness.log_lines(g.log_path, r"command .* for %s:" % other), [])
        print("partitioned: commands=%d per replica=%d duplicates=0" % (2 * n, n))

    def test_device_list_drops_an_old_wildcard_subscription(self):
        """A replica that ran without raceresult.devices left raceresult/+/cmd
        in its broker session; restarted with a list it takes no command for
        another device, neither from that subscription nor queued in it."""
        rr, broker, sub, gw, d = self.setup_rr()
        pub = self.publisher(broker)
        pub.publish(cmd_topic("D-2"), "GETINFO before")
        self.wait_answers(sub, 1, "D-2")
        self.assertEqual(gw.stop(), 0)
        pub.publish(cmd_topic("D-2"), "GETINFO queued")  # queued in the session
        pub.wait_all()
        gw.sections["raceresult"]["devices"] = "D-1"
        self.start_cmd_gateway(broker, gw)
        pub.publish(cmd_topic("D-2"), "GETINFO after")
        pub.publish(cmd_topic("D-1"), "GETINFO mine")
        self.wait_answers(sub, 1, "D-1")
        time.sleep(0.5)
        self.assertEqual(self.executed(rr), [("D-2", "GETINFO before"), ("D-1", "GETINFO mine")])
        self.assertTrue(harness.log_lines(gw.log_path, r"unsubscribed from raceresult/\+/cmd"))

    def test_gateway_on_mqtt311(self):
        rr, broker, sub, gw, _ = self.setup_rr(protocol="3.1.1", start_gateway=False)
        pub5 = self.publisher(broker)
        pub3 = self.publisher(broker, protocol=mqtt.MQTTv311)
        pub3.publish(cmd_topic("D-1"), "STARTOPERATION", retain=True)
        pub3.wait_all()
        self.start_cmd_gateway(broker, gw)
        self.assertTrue(harness.log_lines(gw.log_path, r"\(MQTT 3\.1\.1\)"),
                        "gateway does not say it talks 3.1.1")
        pub3.publish(cmd_topic("D-1"), json.dumps({"command": "GETSTATUS", "transaction": [7]}))
        pub3.publish(cmd_topic("D-1"), "CLEARFILES")
        # An MQTT 5 request with a Response Topic: a 3.1.1 gateway cannot see it,
        # the answer still goes to .../cmd/response.
        reply_topic = "clients/%s/replies" % harness.unique("app")
        rsub = self.track(harness.PropSubscriber(broker.port, [reply_topic],
                                                 protocol=mqtt.MQTTv5)).start()
        pub5.publish(cmd_topic("D-1"), "GETTIME", response_topic=reply_topic,
                     correlation=b"x")
        got = self.wait_answers(sub, 3, "D-1")
        self.check_answer(got[0], "D-1", "GETSTATUS", "ok", 200, response="OK GETSTATUS",
                          transaction=[7])
        self.check_answer(got[1], "D-1", "CLEARFILES", "error", 0, response=None,
                          error="not allowed")
        self.check_answer(got[2], "D-1", "GETTIME", "ok", 200, response="OK GETTIME")
        self.assertEqual(self.executed(rr), [("D-1", "GETSTATUS"), ("D-1", "GETTIME")])
        self.assertTrue(harness.log_lines(gw.log_path, r"retained command for D-1 ignored"))
        self.check_cmd_requests(rr)
        time.sleep(0.3)
        self.assertEqual(self.answers(rsub, topic=reply_topic), [])


if __name__ == "__main__":
    harness.main()
