#!/usr/bin/python3
"""
Broker security (SPEC section 6): mqtts:// with server verification on by
default, and user name / password authentication, against a real mosquitto
whose TLS listener uses certificates this test makes with openssl (its own CA,
a server certificate for IP:127.0.0.1 / DNS:localhost, an unrelated second CA,
and a certificate for another host name) and whose password_file comes from
mosquitto_passwd with allow_anonymous false.

Each refusal must keep the gateway running and not ready (/readyz 503), log
one warning that names the broker (not one per retry), and retry. The
test_*_names_* tests check that the warning also says the cause (so a user
knows what to fix).
"""
import re
import time
import unittest

import harness

USER = "race2mqtt"
PASSWORD = "gw-pass-5c81"
READER = "reader"
READER_PASSWORD = "reader-pass-0e27"

# What a refusal warning should name, so a user knows what to fix.
REASON_CERT = r"(?i)certificate|verif"
REASON_HOST = r"(?i)certificate|host ?name"
REASON_AUTH = r"(?i)not authori[sz]ed|user ?name or password|password|credentials"


class TlsAuthTests(harness.IntegrationCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        d = cls.class_tmpdir()
        cls.ca = harness.make_ca(d, "ca", "race2mqtt test CA")
        cls.other_ca = harness.make_ca(d, "other-ca", "unrelated test CA")
        cls.server = harness.make_cert(d, "server", cls.ca, "localhost",
                                       "IP:127.0.0.1,DNS:localhost")
        # Signed by the right CA, but for another host name.
        cls.foreign = harness.make_cert(d, "foreign", cls.ca, "broker.example",
                                        "DNS:broker.example")
        cls.passwd = harness.make_password_file(d, {USER: PASSWORD, READER: READER_PASSWORD})

    # -- helpers ----------------------------------------------------------

    def secure_broker(self, cert=None):
        conf = harness.broker_security_conf(cert=cert or self.server, ca=self.ca[0],
                                            password_file=self.passwd)
        return self.start_broker(self.tmpdir(), persistence=False, extra_conf=conf)

    def secure_gateway(self, broker, wait=True, **mqtt_keys):
        """A gateway on mqtts://127.0.0.1:<port>; mqtt_keys (None = leave out)
        default to the right CA, user and password."""
        keys = {"url": "mqtts://127.0.0.1:%d" % broker.port, "ca_file": self.ca[0],
                "username": USER, "password": PASSWORD}
        keys.update(mqtt_keys)
        keys = {k: v for k, v in keys.items() if v is not None}
        protocol = keys.pop("protocol", None)
        return self.start_gateway(self.tmpdir(), broker, wait=wait, protocol=protocol,
                                  extra={"mqtt": keys})

    def reader(self, broker, topics=("#",)):
        return self.track(harness.SecureSubscriber(broker.port, topics, ca_file=self.ca[0],
                                                   username=READER,
                                                   password=READER_PASSWORD)).start()

    def warning(self, gw):
        """The gateway's first 'cannot connect' warning (waits up to 10 s)."""
        rx = r"warn .*mqtt: cannot connect to ssl://127\.0\.0\.1:%d\b" % gw.broker_port
        lines = harness.wait_until(lambda: harness.log_lines(gw.log_path, rx), 10)
        self.assertTrue(lines, "no 'mqtt: cannot connect to ssl://127.0.0.1:%d' warning"
                        % gw.broker_port)
        return lines[0]

    def assert_refused(self, gw, broker, label):
        """The gateway runs, warns once, retries, and never connects: /healthz 200,
        /readyz 503, the broker never accepted its client id. Returns the warning."""
        gw.wait_healthy()
        line = self.warning(gw)
        print("%s: %s" % (label, line.split("  ", 1)[-1]))
        # At least one retry (after 1..2 s), still refused, still one warning.
        retried = harness.wait_until(lambda: harness.log_lines(
            gw.log_path, r"mqtt: connect to ssl://127\.0\.0\.1:%d failed" % gw.broker_port), 6)
        self.assertTrue(retried, "%s: the gateway does not retry" % label)
        self.assertTrue(gw.running(), "%s: the gateway exited" % label)
        self.assertEqual(gw._get_status("/readyz"), 503, "%s: /readyz while refused" % label)
        self.assertEqual(gw._get_status("/healthz"), 200, "%s: /healthz while refused" % label)
        self.assertEqual(harness.log_lines(gw.log_path, r"mqtt: connected to"), [],
                         "%s: the gateway says it connected" % label)
        self.assertEqual(harness.log_lines(
            broker.log_path, r"New client connected .* as %s " % re.escape(gw.client_id)), [],
            "%s: the broker accepted the gateway" % label)
        self.assertEqual(len(harness.log_lines(gw.log_path, r"mqtt: cannot connect")), 1,
                         "%s: want one warning per episode, not one per retry" % label)
        return line

    def assert_delivers(self, gw, sub, label):
        """/readyz 200; an event posted to the gateway reaches sub (over TLS)."""
        self.assertEqual(gw._get_status("/readyz"), 200, label)
        seq = self.assertOk(gw.post({"event_type": "test.tls", "event_data": {"label": label}}))
        m = sub.wait_message(lambda m: m.topic == "smartrace/other/test.tls"
                             and m.json().get("seq") == seq, 10)
        self.assertIsNotNone(m, "%s: event seq %d not delivered" % (label, seq))
        self.assertEqual(m.json()["data"], {"label": label})
        self.assertEqual(m.qos, 1)
        state = sub.wait_message(lambda m: m.topic == "race2mqtt/bridge/state"
                                 and m.payload == b"online", 10)
        self.assertIsNotNone(state, "%s: no retained 'online'" % label)
        self.assertTrue(state.retain)

    # -- (a) the working setup --------------------------------------------

    def test_a_verified_tls_and_password(self):
        broker = self.secure_broker()
        # The broker really wants TLS and a password: plain TCP, no password,
        # and a wrong password are refused for an ordinary client too.
        self.assertEqual(harness.mqtt_connack(broker.port, self.ca[0], USER, PASSWORD), 0)
        self.assertNotEqual(harness.mqtt_connack(broker.port, self.ca[0]), 0,
                            "the broker accepts anonymous clients")
        self.assertNotEqual(harness.mqtt_connack(broker.port, self.ca[0], USER, "wrong"), 0)
        self.assertNotEqual(harness.mqtt_connack(broker.port, None, USER, PASSWORD, timeout=2), 0,
                            "the broker accepts plain TCP")
        sub = self.reader(broker)
        gw = self.secure_gateway(broker)          # waits for /readyz 200
        self.assert_delivers(gw, sub, "verified")
        conn = harness.log_lines(broker.log_path, r"New client connected .* as %s "
                                 % re.escape(gw.client_id))
        self.assertEqual(len(conn), 1, "broker log: %r" % conn)
        self.assertIn("u'%s'" % USER, conn[0], "the gateway did not log in as %s" % USER)
        print("verified: %s" % harness.log_lines(gw.log_path, r"mqtt: connected")[0]
              .split("  ", 1)[-1])

    # -- (b) (c) verification on by default ---------------------------------

    def test_b_wrong_ca_refused(self):
        broker = self.secure_broker()
        gw = self.secure_gateway(broker, wait=False, ca_file=self.other_ca[0])
        self.assert_refused(gw, broker, "wrong CA")

    def test_c_system_store_refused(self):
        """No ca_file: the system's CAs, which do not know the test CA, so the
        default (verification on) refuses."""
        broker = self.secure_broker()
        gw = self.secure_gateway(broker, wait=False, ca_file=None)
        self.assert_refused(gw, broker, "no ca_file")

    # -- (d) the explicit opt-out -----------------------------------------

    def test_d_tls_verify_false_connects(self):
        """mqtt.tls_verify = false is the documented opt-out (a test broker with a
        self-signed certificate): it connects to a broker no CA vouches for."""
        broker = self.secure_broker()
        sub = self.reader(broker)
        gw = self.secure_gateway(broker, ca_file=None, tls_verify="false")
        self.assert_delivers(gw, sub, "tls_verify=false")
        warn = harness.log_lines(gw.log_path, r"(?i)(warn|info) .*(verif|insecure)")
        print("tls_verify=false: gateway says about it: %r" % warn)

    # -- (e) user name and password -----------------------------------------

    def test_e_password(self):
        broker = self.secure_broker()
        sub = self.reader(broker)
        wrong5 = self.secure_gateway(broker, wait=False, password="not-the-password")
        wrong311 = self.secure_gateway(broker, wait=False, password="not-the-password",
                                       protocol="3.1.1")
        anonymous = self.secure_gateway(broker, wait=False, username=None, password=None)
        for gw, label in ((wrong5, "wrong password (MQTT 5)"),
                          (wrong311, "wrong password (MQTT 3.1.1)"),
                          (anonymous, "no user name")):
            self.assert_refused(gw, broker, label)
        refusals = harness.log_lines(broker.log_path, r"(?i)not authori[sz]ed|bad user")
        self.assertTrue(refusals, "the broker log shows no authentication refusal")
        good = self.secure_gateway(broker)
        self.assert_delivers(good, sub, "right password")

    # -- (f) host name verification -----------------------------------------

    def test_f_hostname_mismatch_refused(self):
        """A certificate from the trusted CA but for broker.example: connecting to
        127.0.0.1 is refused while verifying (the chain itself is fine: a client
        that skips only the name check connects)."""
        broker = self.secure_broker(cert=self.foreign)
        self.assertEqual(harness.mqtt_connack(broker.port, self.ca[0], USER, PASSWORD,
                                              verify=False), 0, "chain not trusted")
        probe = harness.mqtt_connack(broker.port, self.ca[0], USER, PASSWORD)
        self.assertIsInstance(probe, str, "python client accepted the wrong host name")
        gw = self.secure_gateway(broker, wait=False)
        self.assert_refused(gw, broker, "host name mismatch")
        sub = self.track(harness.SecureSubscriber(broker.port, ["#"], username=READER,
                                                  password=READER_PASSWORD))
        harness.mqtt_client_security(sub.client, self.ca[0], verify=False)
        sub.start()
        opt_out = self.secure_gateway(broker, tls_verify="false")
        self.assert_delivers(opt_out, sub, "host name mismatch, tls_verify=false")

    # -- what a refusal warning should say ----------------------------------

    def reason_line(self, broker, **mqtt_keys):
        gw = self.secure_gateway(broker, wait=False, **mqtt_keys)
        gw.wait_healthy()
        return self.warning(gw)

    def test_g_wrong_ca_warning_names_certificate(self):
        line = self.reason_line(self.secure_broker(), ca_file=self.other_ca[0])
        self.assertRegex(line, REASON_CERT)

    def test_g_hostname_warning_names_certificate_or_host(self):
        line = self.reason_line(self.secure_broker(cert=self.foreign))
        self.assertRegex(line, REASON_HOST)

    def test_g_password_warning_names_authorisation(self):
        broker = self.secure_broker()
        self.assertRegex(self.reason_line(broker, password="nope"), REASON_AUTH)
        self.assertRegex(self.reason_line(broker, password="nope", protocol="3.1.1"),
                         REASON_AUTH)


if __name__ == "__main__":
    t0 = time.monotonic()
    try:
        harness.main()
    finally:
        print("test_tls_auth: %.1f s" % (time.monotonic() - t0))
