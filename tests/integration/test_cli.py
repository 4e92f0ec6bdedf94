#!/usr/bin/python3
"""
Command line and configuration (SPEC section 6) and clean stop (section 7.6):
--help, --version, --check-config with secrets masked (from the file, the
environment and *_file keys), configuration errors exit 2 naming file, line and
key, SIGTERM/SIGINT exit 0 and leave race2mqtt/bridge/state "offline", secrets
never in the log, retained topics or /metrics.
"""
import os
import re
import signal
import time

import harness

SECRETS = {
    "mqtt_password": "mqttpw-S3CRET-1",
    "http_token": "httptok-S3CRET-2",
    "api_key": "apikey-S3CRET-3",
    "env_password": "envpw-S3CRET-4",
    "file_password": "filepw-S3CRET-5",
}


def project_version():
    with open(os.path.join(harness.REPO, "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*race2mqtt\s+VERSION\s+([0-9][0-9.]*)", f.read())
    return m.group(1) if m else None


class CliTests(harness.IntegrationCase):

    def write(self, d, name, text):
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertNoSecrets(self, text, where):
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        for name, s in SECRETS.items():
            self.assertNotIn(s, text, "secret %s appears in %s" % (name, where))

    def test_help(self):
        rc, out = harness.run_cli(["--help"])
        self.assertEqual(rc, 0, out)
        for opt in ("--check-config", "--version", "-c"):
            self.assertIn(opt, out)

    def test_version(self):
        rc, out = harness.run_cli(["--version"])
        self.assertEqual(rc, 0, out)
        v = project_version()
        self.assertIsNotNone(v)
        self.assertIn(v, out)

    def test_unknown_option(self):
        rc, out = harness.run_cli(["--no-such-option"])
        self.assertNotEqual(rc, 0, out)
        self.assertTrue(out.strip(), "no message for an unknown option")

    def test_check_config_masks_secrets(self):
        d = self.tmpdir()
        conf = self.write(d, "r2m.conf", """
[mqtt]
url = mqtt://127.0.0.1:1
client_id = cli-test
username = someuser
password = %(mqtt_password)s

[http]
token = %(http_token)s

[raceresult]
enabled = false
customer_id = 4711
api_key = %(api_key)s

[store]
dir = %(dir)s/var
""" % dict(SECRETS, dir=d))
        rc, out = harness.run_cli(["-c", conf, "--check-config"],
                                  env={"RACE2MQTT_HTTP_PORT": "9123"})
        self.assertEqual(rc, 0, out)
        self.assertNoSecrets(out, "--check-config output")
        self.assertIn("***", out)
        for shown in ("someuser", "cli-test", "4711", "9123", "mqtt://127.0.0.1:1"):
            self.assertIn(shown, out, "effective value %r not printed" % shown)

        # A secret from the environment, one from a *_file key.
        rc, out = harness.run_cli(["-c", conf, "--check-config"],
                                  env={"RACE2MQTT_MQTT_PASSWORD": SECRETS["env_password"],
                                       "RACE2MQTT_RACERESULT_API_KEY": SECRETS["api_key"]})
        self.assertEqual(rc, 0, out)
        self.assertNoSecrets(out, "--check-config output (env)")
        pwfile = self.write(d, "pw", SECRETS["file_password"] + "\n")
        conf2 = self.write(d, "r2m2.conf", "[mqtt]\nurl = mqtt://127.0.0.1:1\n"
                           "password_file = %s\n[raceresult]\nenabled = false\n" % pwfile)
        rc, out = harness.run_cli(["-c", conf2, "--check-config"])
        self.assertEqual(rc, 0, out)
        self.assertNoSecrets(out, "--check-config output (password_file)")

    def test_config_errors_exit_2(self):
        d = self.tmpdir()
        cases = [
            # (name, file text, line, key)
            ("unknown key", "[mqtt]\nurl = mqtt://127.0.0.1:1\nbogus_key = 1\n", 3, "bogus_key"),
            ("unknown section", "# c\n[nosuch]\nfoo = 1\n", 3, "foo"),
            ("bad port", "[http]\nbind = 127.0.0.1\nport = notaport\n", 3, "port"),
            ("port out of range", "[http]\nport = 70000\n", 2, "port"),
            ("negative max_body", "[http]\n\nmax_body = -5\n", 3, "max_body"),
            ("bad url scheme", "[mqtt]\nurl = http://127.0.0.1:1883\n", 2, "url"),
            ("bad log level", "[log]\nlevel = loud\n", 2, "level"),
            ("bad protocol", "[mqtt]\nprotocol = 7\n", 2, "protocol"),
            ("bad boolean", "[smartrace]\nenabled = perhaps\n", 2, "enabled"),
        ]
        for name, text, line, key in cases:
            conf = self.write(d, name.replace(" ", "_") + ".conf", text)
            for args in (["-c", conf, "--check-config"], ["-c", conf]):
                with self.subTest(case=name, args=args[2:]):
                    rc, out = harness.run_cli(args, timeout=15)
                    self.assertEqual(rc, 2, out)
                    self.assertIn(conf, out, "error does not name the file")
                    self.assertIn(key, out, "error does not name the key")
                    self.assertRegex(out, r"(:|line )%d\b" % line,
                                     "error does not name line %d" % line)

    def test_environment_errors_exit_2(self):
        for var, value in (("RACE2MQTT_HTTP_PORT", "abc"), ("RACE2MQTT_LOG_LEVEL", "loud")):
            with self.subTest(var=var):
                rc, out = harness.run_cli(["--check-config"], env={var: value})
                self.assertEqual(rc, 2, out)
                self.assertIn(var, out, "error does not name the variable")

    def test_missing_files(self):
        d = self.tmpdir()
        missing = os.path.join(d, "nope.conf")
        rc, out = harness.run_cli(["-c", missing, "--check-config"])
        self.assertNotEqual(rc, 0, out)
        self.assertIn(missing, out)
        conf = self.write(d, "pwf.conf", "[mqtt]\npassword_file = %s/absent\n" % d)
        rc, out = harness.run_cli(["-c", conf, "--check-config"])
        self.assertEqual(rc, 2, out)
        self.assertIn("password_file", out)

    def test_sigterm_clean_stop_and_secrets(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, token=SECRETS["http_token"], extra={
            "mqtt": {"username": "someuser", "password": SECRETS["mqtt_password"]},
            "raceresult": {"api_key": SECRETS["api_key"], "enabled": "false"}})
        # Ready means connected; "online" and bridge/info go out right after,
        # from the publisher thread, so a subscriber that asks at once can be
        # earlier than they are (the race issue 8 saw once in this test).
        want = {"race2mqtt/bridge/state", "race2mqtt/bridge/info"}
        snap = harness.wait_until(lambda: (lambda r: r if want <= set(r) else None)(
            harness.retained(broker.port, ["race2mqtt/#"])), 10) or {}
        self.assertIn("race2mqtt/bridge/state", snap)
        self.assertEqual(snap["race2mqtt/bridge/state"].payload, b"online")
        self.assertTrue(snap["race2mqtt/bridge/state"].retain)
        self.assertIn("race2mqtt/bridge/info", snap, "no retained race2mqtt/bridge/info")
        info = snap["race2mqtt/bridge/info"].json()
        self.assertIsInstance(info, dict)
        for m in harness.retained(broker.port, ["#"]).values():
            self.assertNoSecrets(m.payload, "retained topic " + m.topic)
        self.assertOk(gw.post({"event_type": "event.start", "event_data": {"type": "race"}}))
        r = gw.request("GET", "/metrics")
        self.assertEqual(r.status, 200)
        self.assertNoSecrets(r.body, "/metrics")
        r = gw.request("GET", "/")
        self.assertNoSecrets(r.body, "GET /")

        t0 = time.monotonic()
        self.assertEqual(gw.stop(timeout=20), 0, "SIGTERM: exit status not 0")
        print("SIGTERM to exit: %.2f s" % (time.monotonic() - t0))
        snap = harness.retained(broker.port, ["race2mqtt/bridge/state"])
        self.assertIn("race2mqtt/bridge/state", snap)
        self.assertEqual(snap["race2mqtt/bridge/state"].payload, b"offline")
        self.assertTrue(snap["race2mqtt/bridge/state"].retain)
        with open(gw.log_path, "rb") as f:
            self.assertNoSecrets(f.read(), "the gateway log")

    def test_stop_while_broker_down(self):
        """SIGINT with the broker away: exit 0 in bounded time; the journal keeps
        the event, which is published after the next start; seqs go on."""
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker)
        sub = self.subscribe(broker.port, ["smartrace/event/start"], persistent=True)
        first = self.assertOk(gw.post({"event_type": "event.start", "event_data": {"n": 1}}))
        self.assertIsNotNone(sub.wait_message(lambda m: m.json()["seq"] == first))
        broker.stop()
        self.assertTrue(gw.wait_readyz(503, 20))
        kept = self.assertOk(gw.post({"event_type": "event.start", "event_data": {"n": 2}}))
        t0 = time.monotonic()
        self.assertEqual(gw.signal_stop(signal.SIGINT, timeout=20), 0,
                         "SIGINT with the broker down: exit status not 0")
        self.assertLess(time.monotonic() - t0, 15, "clean stop not bounded in time")
        broker.start()
        gw.start()
        later = self.assertOk(gw.post({"event_type": "event.start", "event_data": {"n": 3}}))
        self.assertGreater(later, kept, "seq reused after a restart")
        self.assertGreater(kept, first)
        m = sub.wait_message(lambda m: m.json()["seq"] == kept, 20)
        self.assertIsNotNone(m, "event accepted before the stop never published")
        self.assertEqual(m.json()["data"], {"n": 2})
        self.assertIsNotNone(sub.wait_message(lambda m: m.json()["seq"] == later, 10))
        order = []
        for x in sub.snapshot():
            if x.json()["seq"] not in order:
                order.append(x.json()["seq"])
        self.assertEqual(order, [first, kept, later])
    def test_bridge_state_mqtt311(self):
        """online / last will offline after SIGKILL / online / offline after SIGTERM,
        with the gateway speaking MQTT 3.1.1."""
        d = self.tmpdir()
        broker = self.start_broker(d)
        gw = self.start_gateway(d, broker, protocol="3.1.1")
        sub = self.subscribe(broker.port, ["race2mqtt/bridge/state"])
        on = sub.wait_message(lambda m: m.payload == b"online", 10)
        self.assertIsNotNone(on)
        self.assertTrue(on.retain)
        t = time.monotonic()
        self.assertEqual(gw.kill(), -9)
        off = sub.wait_message(lambda m: m.payload == b"offline" and m.t > t, 45)
        self.assertIsNotNone(off, "no last will after SIGKILL")
        self.assertTrue(off.retain)
        t = time.monotonic()
        gw.start()
        self.assertIsNotNone(sub.wait_message(lambda m: m.payload == b"online" and m.t > t, 10))
        t = time.monotonic()
        self.assertEqual(gw.stop(), 0)
        off = sub.wait_message(lambda m: m.payload == b"offline" and m.t > t, 10)
        self.assertIsNotNone(off, "no offline after SIGTERM")
        self.assertTrue(off.retain)


if __name__ == "__main__":
    harness.main()
