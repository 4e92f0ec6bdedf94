#!/usr/bin/python3
"""
The HTTP server (SPEC section 5): CORS preflight including Private Network
Access, 400/401/405/413 answers with JSON bodies, GET / /healthz /readyz,
Access-Control-Allow-Origin on every response, and that refused requests publish
nothing (a real subscriber on smartrace/# sees only the accepted events).
"""
import http.client
import json
import socket
import time

import harness

TOKEN = "tok-3f9a1c77e2"


def event(i=0, etype="event.change_status"):
    return {"time": 1700000000000 + i, "event_type": etype,
            "event_data": {"old": "running", "new": "suspended", "i": i}}


class HttpCase(harness.IntegrationCase):
    token = None
    extra = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        d = cls.class_tmpdir()
        cls.broker = cls.class_track(harness.Broker(d)).start()
        cls.gw = cls.class_track(harness.Gateway(d, cls.broker.port, token=cls.token,
                                                 extra=cls.extra)).start()
        cls.port = cls.gw.http_port
        cls.sub = cls.class_track(harness.Subscriber(cls.broker.port, ["smartrace/#"]))
        cls.sub.start()

    def smartrace_messages(self):
        return [m for m in self.sub.snapshot()
                if m.topic.startswith("smartrace/") and not m.topic.startswith("smartrace/state/")]

    def assert_publishes_nothing(self, before):
        """Posts a valid sentinel event and checks that it is the only event message
        published since `before` messages were seen."""
        r = harness.post(self.port, "/", event(999, "test.sentinel"), token=self.token)
        seq = self.assertOk(r)
        m = self.sub.wait_message(
            lambda m: m.topic == "smartrace/other/test.sentinel" and m.json().get("seq") == seq,
            10)
        self.assertIsNotNone(m, "sentinel event not delivered")
        new = self.smartrace_messages()[before:]
        self.assertEqual([x for x in new if x.topic != "smartrace/other/test.sentinel"
                          or x.json().get("seq") != seq], [],
                         "a refused request published something")

    def assert_alive(self):
        self.assertEqual(harness.http_request(self.port, "GET", "/healthz").status, 200)
        self.assertTrue(self.gw.running(), "gateway exited")


class HttpTests(HttpCase):

    def test_preflight(self):
        r = harness.http_request(self.port, "OPTIONS", "/", headers={
            "Origin": "http://localhost",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-test-header"})
        self.assertEqual(r.status, 204, r)
        self.assertCors(r)
        methods = {m.strip().upper() for m in (r.header("Access-Control-Allow-Methods") or
                                               "").split(",")}
        self.assertTrue({"POST", "GET", "OPTIONS"} <= methods, r)
        allowed = {h.strip().lower() for h in (r.header("Access-Control-Allow-Headers") or
                                                "").split(",")}
        self.assertTrue({"content-type", "x-test-header"} <= allowed or "*" in allowed, r)
        self.assertRegex(r.header("Access-Control-Max-Age") or "", r"^[1-9][0-9]*$", r)
        self.assertEqual(r.body, b"", "a 204 has no body")

    def test_preflight_without_requested_headers(self):
        r = harness.http_request(self.port, "OPTIONS", "/some/path?x=1", headers={
            "Origin": "http://localhost", "Access-Control-Request-Method": "POST"})
        self.assertEqual(r.status, 204, r)
        self.assertCors(r)
        allowed = {h.strip().lower() for h in (r.header("Access-Control-Allow-Headers") or
                                                "").split(",")}
        self.assertTrue("content-type" in allowed or "*" in allowed, r)

    def test_preflight_private_network(self):
        r = harness.http_request(self.port, "OPTIONS", "/", headers={
            "Origin": "http://localhost",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
            "Access-Control-Request-Private-Network": "true"})
        self.assertEqual(r.status, 204, r)
        self.assertCors(r)
        self.assertEqual(r.header("Access-Control-Allow-Private-Network"), "true", r)

    def test_preflight_publishes_nothing(self):
        before = len(self.smartrace_messages())
        for path in ("/", "/x", "/healthz"):
            r = harness.http_request(self.port, "OPTIONS", path, headers={
                "Access-Control-Request-Method": "POST"})
            self.assertEqual(r.status, 204, r)
        self.assert_publishes_nothing(before)

    def test_post_ok(self):
        r = harness.post(self.port, "/", event(1))
        seq = self.assertOk(r)
        self.assertCors(r)
        m = self.sub.wait_message(lambda m: m.topic == "smartrace/event/status"
                                  and m.json().get("seq") == seq)
        self.assertIsNotNone(m)

    def test_post_content_types(self):
        # A webview may send text/plain (no preflight) or no Content-Type at all.
        for ct in ("text/plain", "application/json; charset=utf-8", None):
            with self.subTest(content_type=ct):
                h = {"Content-Type": ct} if ct else {}
                body = json.dumps(event(2)).encode()
                if ct is None:
                    r = harness.raw_http(self.port, b"POST / HTTP/1.1\r\nHost: x\r\n"
                                         b"Connection: close\r\nContent-Length: %d\r\n\r\n"
                                         % len(body) + body)
                    self.assertEqual(harness.raw_status(r), 200, r)
                else:
                    self.assertOk(harness.http_request(self.port, "POST", "/", body, h))

    def test_400(self):
        before = len(self.smartrace_messages())
        deep = b'{"event_type":"x","event_data":' + b"[" * 20000 + b"]" * 20000 + b"}"
        cases = {
            "invalid json": b'{"event_type": "ui.lap_update",',
            "not json": b"hello",
            "empty body": b"",
            "array top level": b'[{"event_type": "ui.lap_update"}]',
            "string top level": b'"ui.lap_update"',
            "number top level": b"42",
            "null top level": b"null",
            "missing event_type": b'{"time": 1, "event_data": {}}',
            "event_type not a string": b'{"event_type": 5}',
            "event_type null": b'{"event_type": null}',
            "event_type empty": b'{"event_type": ""}',
            "invalid utf-8": b'{"event_type": "ui.lap_update", "event_data": {"x": "a\xff\xfeb"}}',
            "invalid utf-8 in type": b'{"event_type": "ui.\xc3\x28"}',
            "trailing garbage": b'{"event_type": "ui.lap_update"} {"x":1}',
            "deep nesting": deep,
        }
        for name, body in cases.items():
            with self.subTest(case=name):
                r = harness.post(self.port, "/", body)
                self.assertJsonError(r, 400)
                self.assertCors(r)
        self.assert_alive()
        self.assert_publishes_nothing(before)

    def test_moderate_nesting_accepted(self):
        data = {"controller_id": "1"}
        cur = data
        for i in range(15):
            cur["n"] = {"level": i}
            cur = cur["n"]
        r = harness.post(self.port, "/", {"time": 1, "event_type": "util.fuel_update",
                                          "event_data": data})
        seq = self.assertOk(r)
        m = self.sub.wait_message(lambda m: m.topic == "smartrace/fuel/1"
                                  and m.json().get("seq") == seq)
        self.assertIsNotNone(m)
        self.assertEqual(m.json()["data"], data)

    def test_405(self):
        before = len(self.smartrace_messages())
        for method in ("PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                r = harness.http_request(self.port, method, "/", json.dumps(event(3)).encode(),
                                         {"Content-Type": "application/json"})
                self.assertJsonError(r, 405)
                self.assertCors(r)
        self.assert_publishes_nothing(before)

    def test_413(self):
        before = len(self.smartrace_messages())
        # Exactly the limit (65536 bytes) is fine, one byte more is not.
        head = b'{"event_type":"test.big","event_data":"'
        tail = b'"}'
        at_limit = head + b"a" * (65536 - len(head) - len(tail)) + tail
        self.assertEqual(len(at_limit), 65536)
        r = harness.post(self.port, "/", at_limit)
        seq = self.assertOk(r)
        m = self.sub.wait_message(lambda m: m.topic == "smartrace/other/test.big"
                                  and m.json().get("seq") == seq)
        self.assertIsNotNone(m, "event of exactly http.max_body bytes not delivered")
        before = len(self.smartrace_messages())

        over = head + b"a" * (65537 - len(head) - len(tail)) + tail
        r = harness.post(self.port, "/", over)
        self.assertJsonError(r, 413)
        self.assertCors(r)
        huge = head + b"a" * (1 << 20) + tail
        try:
            r = harness.post(self.port, "/", huge)
            self.assertJsonError(r, 413)
        except (OSError, http.client.HTTPException):
            pass  # closing early on a 1 MiB body is fine; not publishing is checked below
        self.assert_alive()
        self.assert_publishes_nothing(before)

    def test_413_from_content_length(self):
        """A declared Content-Length above the limit is refused without waiting for
        the body (the client sends none here)."""
        t0 = time.monotonic()
        out = harness.raw_http(self.port, b"POST / HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\n"
                               b"Content-Length: 1000000000\r\n\r\n", timeout=8)
        self.assertEqual(harness.raw_status(out), 413, out)
        self.assertLess(time.monotonic() - t0, 8)
        self.assertIn(b"access-control-allow-origin: *", out.lower())

    def test_413_chunked(self):
        before = len(self.smartrace_messages())
        chunk = b"a" * 8192
        body = b'{"event_type":"test.chunked","event_data":"'
        req = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n")
        req += b"%x\r\n%s\r\n" % (len(body), body)
        for _ in range(10):
            req += b"%x\r\n%s\r\n" % (len(chunk), chunk)
        req += b'2\r\n"}\r\n0\r\n\r\n'
        out = harness.raw_http(self.port, req, timeout=8)
        self.assertEqual(harness.raw_status(out), 413, out[:300])
        self.assert_alive()
        self.assert_publishes_nothing(before)

    def test_get_pages(self):
        r = harness.http_request(self.port, "GET", "/")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"<title>race2mqtt", r.body)
        self.assertEqual(r.headers.get("content-type"), "text/html; charset=utf-8")
        self.assertCors(r)
        for path in ("/healthz", "/readyz"):
            with self.subTest(path=path):
                r = harness.http_request(self.port, "GET", path)
                self.assertEqual(r.status, 200, r)
                self.assertCors(r)
        r = harness.http_request(self.port, "GET", "/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertCors(r)
        self.assertRegex(r.body.decode("utf-8", "replace"), r"(?m)^# (TYPE|HELP) ")

    def test_reserved_paths_are_not_events(self):
        before = len(self.smartrace_messages())
        for path in ("/healthz", "/readyz", "/metrics"):
            with self.subTest(path=path):
                r = harness.post(self.port, path, event(4))
                self.assertCors(r)
                self.assertFalse(r.status == 200 and isinstance(r.json, dict)
                                 and "seq" in r.json, "POST %s accepted as an event" % path)
        self.assert_publishes_nothing(before)

    def test_keep_alive(self):
        """Several requests on one HTTP/1.1 connection, as a webview sends them."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        seqs = []
        try:
            for i in range(5):
                conn.request("POST", "/", json.dumps(event(30 + i)).encode(),
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                body = json.loads(r.read())
                self.assertEqual(r.status, 200, body)
                seqs.append(body["seq"])
            conn.request("OPTIONS", "/", headers={"Access-Control-Request-Method": "POST"})
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 204)
            conn.request("POST", "/", b"{bad", {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 400)
        except (OSError, http.client.HTTPException) as e:
            self.fail("keep-alive connection broken after %d answers: %r" % (len(seqs), e))
        finally:
            conn.close()
        self.assertEqual(seqs, sorted(set(seqs)))

    def test_expect_100_continue(self):
        """curl sends Expect: 100-continue for bodies above 1 KiB."""
        body = json.dumps({"event_type": "test.expect", "event_data": {"pad": "x" * 2000}})
        body = body.encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Expect: 100-continue\r\nConnection: close\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body))
            first = s.recv(4096)
            self.assertTrue(first.startswith(b"HTTP/1.1 100"), first)
            s.sendall(body)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        self.assertEqual(harness.raw_status(out), 200, out)

    def test_idle_connections_do_not_block(self):
        socks = []
        try:
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
                socks.append(s)
            t0 = time.monotonic()
            r = harness.post(self.port, "/", event(5), timeout=5)
            self.assertOk(r)
            self.assertLess(time.monotonic() - t0, 3)
        finally:
            for s in socks:
                s.close()


class TokenTests(HttpCase):
    token = TOKEN
    extra = {"http": {"cors_origin": "http://tablet.example"}}

    def test_401(self):
        before = len(self.smartrace_messages())
        body = json.dumps(event(10)).encode()
        cases = {
            "missing": ("/", {}),
            "wrong query": ("/?token=nope", {}),
            "prefix of token": ("/?token=" + TOKEN[:-1], {}),
            "token plus suffix": ("/?token=" + TOKEN + "x", {}),
            "empty query token": ("/?token=", {}),
            "wrong bearer": ("/", {"Authorization": "Bearer nope"}),
            "token in basic auth": ("/", {"Authorization": "Basic " + TOKEN}),
        }
        for name, (path, headers) in cases.items():
            with self.subTest(case=name):
                h = {"Content-Type": "application/json"}
                h.update(headers)
                r = harness.http_request(self.port, "POST", path, body, h)
                self.assertJsonError(r, 401)
                self.assertCors(r, "http://tablet.example")
        self.assert_publishes_nothing(before)

    def test_token_accepted(self):
        for name, path, headers in (
                ("query", "/?token=" + TOKEN, {}),
                ("query among others", "/smartrace?a=1&token=" + TOKEN + "&b=2", {}),
                ("bearer", "/", {"Authorization": "Bearer " + TOKEN})):
            with self.subTest(case=name):
                h = {"Content-Type": "application/json"}
                h.update(headers)
                r = harness.http_request(self.port, "POST", path,
                                         json.dumps(event(11)).encode(), h)
                seq = self.assertOk(r)
                self.assertCors(r, "http://tablet.example")
                self.assertIsNotNone(self.sub.wait_message(
                    lambda m: m.topic == "smartrace/event/status"
                    and m.json().get("seq") == seq))

    def test_preflight_needs_no_token(self):
        r = harness.http_request(self.port, "OPTIONS", "/", headers={
            "Origin": "http://tablet.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        self.assertEqual(r.status, 204, r)
        self.assertCors(r, "http://tablet.example")

    def test_token_never_logged_or_exposed(self):
        harness.post(self.port, "/", event(12), token=TOKEN)
        harness.post(self.port, "/", event(13), bearer=TOKEN)
        harness.post(self.port, "/", event(14), token=TOKEN + "x")
        r = harness.http_request(self.port, "GET", "/metrics")
        self.assertNotIn(TOKEN.encode(), r.body)
        r = harness.http_request(self.port, "GET", "/")
        self.assertNotIn(TOKEN.encode(), r.body)
        time.sleep(0.5)
        with open(self.gw.log_path, "rb") as f:
            log = f.read()
        self.assertNotIn(TOKEN.encode(), log, "the ingest token appears in the gateway log")
        info = harness.retained(self.broker.port, ["race2mqtt/#"])
        for t, m in info.items():
            self.assertNotIn(TOKEN.encode(), m.payload, "token in %s" % t)


class ReadyzTests(harness.IntegrationCase):

    def test_readyz_follows_broker(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker)
        sub = self.subscribe(broker.port, ["smartrace/#"], persistent=True)
        self.assertEqual(gw.request("GET", "/readyz").status, 200)
        broker.stop()
        self.assertTrue(gw.wait_readyz(503, 20), "/readyz not 503 while the broker is down")
        r = gw.request("GET", "/readyz")
        self.assertEqual(r.status, 503)
        self.assertCors(r)
        self.assertEqual(gw.request("GET", "/healthz").status, 200)
        # Still accepting (journal) while the broker is away ...
        seq = self.assertOk(gw.post(event(20)))
        broker.start()
        self.assertTrue(gw.wait_readyz(200, 40), "/readyz not 200 after the broker came back")
        # ... and the event arrives once it is back.
        m = sub.wait_message(lambda m: m.topic == "smartrace/event/status"
                             and m.json().get("seq") == seq, 30)
        self.assertIsNotNone(m, "event accepted during the outage not delivered")


class JournalFullTests(harness.IntegrationCase):

    def test_503_when_journal_full(self):
        """Broker down, 1 MiB journal: ~60 KB events fill it, then 503 (JSON, CORS);
        once the broker is back the journal drains, 200 again, nothing answered
        200 is lost."""
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, extra={
            "store": {"max_bytes": "1M", "segment_bytes": "64K"}})
        sub = self.subscribe(broker.port, ["smartrace/other/test.full"], persistent=True)
        broker.stop()
        self.assertTrue(gw.wait_readyz(503, 20))
        answered = {}
        full = None
        for i in range(60):
            r = gw.post({"event_type": "test.full", "event_data": {"i": i, "pad": "p" * 60000}})
            if r.status == 503:
                full = r
                break
            answered[self.assertOk(r)] = i
        self.assertIsNotNone(full, "60 x 60 KB accepted into a 1 MiB journal")
        self.assertJsonError(full, 503)
        self.assertCors(full)
        self.assertGreater(len(answered), 5)
        self.assertEqual(gw.request("GET", "/healthz").status, 200)
        broker.start()
        self.assertTrue(gw.wait_readyz(200, 40))
        ok = harness.wait_until(lambda: gw.post({"event_type": "test.full",
                                                 "event_data": {"i": -1}}).status == 200, 30, 0.5)
        self.assertTrue(ok, "still refused after the broker came back")
        harness.delivery_report(self, sub, answered, "smartrace/other/test.full", "journal-full")


if __name__ == "__main__":
    harness.main()
