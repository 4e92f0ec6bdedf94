#!/usr/bin/python3
"""
The gateway as a systemd service, without systemd: the test plays the
service manager. It listens on a unix datagram socket named in NOTIFY_SOCKET
(and sets WATCHDOG_USEC) as systemd does for Type=notify with WatchdogSec=,
and reads what the real binary sends: READY=1 once the broker answered,
STATUS= lines, WATCHDOG=1 only while the publisher and the HTTP server make
progress (a test-only fault switch hangs each of them), STOPPING=1 on
SIGTERM. It also checks the journald form of the log (JOURNAL_STREAM).
"""
import os
import socket
import subprocess
import threading
import time
import unittest

import harness

WATCHDOG_USEC = 600000  # checked every 200 ms (a third), pinged while alive
HEALTHY_WINDOW = 3.0    # seconds of pings counted while all is well
SILENT_WINDOW = 3.0     # seconds without a ping that show a hang stopped them


class Manager:
    """What systemd keeps of a notify service: every datagram with its time."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.lock = threading.Lock()
        self.messages = []  # (monotonic time, {key: value})
        self.done = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.done:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self.lock:
                self.messages.append((time.monotonic(), fields))

    def env(self):
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def times(self, key, value=None, since=0.0):
        return [t for t, f in self.snapshot()
                if key in f and (value is None or f[key] == value) and t >= since]

    def first(self, key, value, timeout):
        """(time, fields) of the first message with key=value, waiting up to timeout."""
        found = []

        def seen():
            found[:] = [(t, f) for t, f in self.snapshot() if f.get(key) == value]
            return bool(found)
        harness.wait_until(seen, timeout)
        return found[0] if found else None

    def close(self):
        self.done = True
        self.sock.close()
        self.thread.join(5)


def event(n):
    return {"event_type": "ui.lap_update", "event_data": {"controller_id": "1", "lap": n,
                                                          "laptime_raw": 4000 + n}}


class NotifyTests(harness.IntegrationCase):

    def start(self, broker_port=None, env=None, extra=None, wait=True):
        wd = self.tmpdir()
        mgr = Manager(wd)
        self.addCleanup(mgr.close)
        if broker_port is None:
            broker_port = self.start_broker(wd).port
        gw = self.track(harness.Gateway(wd, broker_port, env=dict(mgr.env(), **(env or {})),
                                        extra=extra))
        gw.start(wait=wait)
        return gw, mgr

    def test_ready_status_watchdog_and_stopping(self):
        t0 = time.monotonic()
        gw, mgr = self.start()
        ready = mgr.first("READY", "1", 20)
        self.assertIsNotNone(ready, "no READY=1:\n%s" % gw.log())
        self.assertIn("broker connected (tcp://127.0.0.1:%d, MQTT 5)" % gw.broker_port,
                      ready[1].get("STATUS", ""), ready)
        self.assertEqual(len(mgr.times("READY")), 1, mgr.snapshot())

        healthy_from = time.monotonic()
        time.sleep(HEALTHY_WINDOW)
        pings = mgr.times("WATCHDOG", "1", since=healthy_from)
        # One every 200 ms would be 15; a third of that still shows the pings
        # come by themselves, and tolerates a loaded machine.
        self.assertGreaterEqual(len(pings), 5, "WATCHDOG=1 in %.0f s: %d\n%s"
                                % (HEALTHY_WINDOW, len(pings), gw.log()))

        for n in range(1, 4):
            gw.post(event(n))
        self.assertTrue(harness.wait_until(
            lambda: any("last event seq 3, 0 waiting in the journal" in f.get("STATUS", "")
                        for _, f in mgr.snapshot()), 10),
            "STATUS never said seq 3: %r" % mgr.snapshot()[-5:])

        stop_at = time.monotonic()
        self.assertEqual(gw.stop(), 0, gw.log())
        stopping = mgr.times("STOPPING", "1")
        self.assertEqual(len(stopping), 1, mgr.snapshot()[-5:])
        self.assertGreaterEqual(stopping[0], stop_at)
        self.assertEqual(mgr.times("WATCHDOG", "1", since=stopping[0]), [],
                         "pinged after STOPPING=1")
        print("READY=1 %.2f s after start; %d pings in %.0f s"
              % (ready[0] - t0, len(pings), HEALTHY_WINDOW))

    def test_ready_without_the_broker_after_a_while(self):
        # Nothing listens on this port: the journal keeps the events, so the
        # gateway is up, and says so after READY_WAIT_MS (10 s).
        t0 = time.monotonic()
        gw, mgr = self.start(broker_port=harness.free_port(), wait=False)
        gw.wait_healthy()
        ready = mgr.first("READY", "1", 20)
        self.assertIsNotNone(ready, "no READY=1 without a broker:\n%s" % gw.log())
        waited = ready[0] - t0
        self.assertGreaterEqual(waited, 9.5, "READY=1 before the broker wait was over")
        self.assertIn("broker not connected", ready[1].get("STATUS", ""), ready)
        self.assertEqual(gw.post(event(1)).status, 200)
        print("READY=1 without a broker after %.2f s" % waited)

    def assert_pings_stop(self, gw, mgr, what, log_from):
        """After the fault (the log from byte log_from on) the log names what
        stood still and no WATCHDOG=1 comes any more. Kills the gateway: a
        hung one cannot stop."""
        def log_after():
            with open(gw.log_path, "rb") as f:
                f.seek(log_from)
                return f.read().decode(errors="replace")
        try:
            self.assertTrue(harness.wait_until(lambda: "watchdog: " + what in log_after(), 10),
                            "the watchdog never noticed: %s\n%s" % (what, gw.log()))
            noticed = time.monotonic()
            time.sleep(SILENT_WINDOW)
            late = mgr.times("WATCHDOG", "1", since=noticed)
            self.assertEqual(late, [], "%d pings after the hang" % len(late))
            self.assertTrue(gw.running(), gw.log())
            self.assertNotIn("alive again", log_after())
        finally:
            gw.kill()
        return noticed

    def test_hung_publisher_stops_the_pings(self):
        gw, mgr = self.start(env={"RACE2MQTT_FAULT": "hang-publisher"})
        self.assertIsNotNone(mgr.first("READY", "1", 20), gw.log())
        self.assertTrue(harness.wait_until(lambda: len(mgr.times("WATCHDOG", "1")) >= 3, 10),
                        "no pings before the fault:\n%s" % gw.log())
        posted, log_from = time.monotonic(), os.path.getsize(gw.log_path)
        self.assertEqual(gw.post(event(1)).status, 200)  # the journal still works
        noticed = self.assert_pings_stop(gw, mgr, "the publisher thread has not gone round",
                                         log_from)
        print("hung publisher noticed %.2f s after the event" % (noticed - posted))

    def test_hung_http_server_stops_the_pings(self):
        # One worker: the POST that hangs takes the only thread that would
        # answer the watchdog's /healthz.
        gw, mgr = self.start(env={"RACE2MQTT_FAULT": "hang-http"},
                             extra={"http": {"threads": "1"}})
        self.assertIsNotNone(mgr.first("READY", "1", 20), gw.log())
        self.assertTrue(harness.wait_until(lambda: len(mgr.times("WATCHDOG", "1")) >= 3, 10),
                        "no pings before the fault:\n%s" % gw.log())
        log_from = os.path.getsize(gw.log_path)
        threading.Thread(target=lambda: self._post_quietly(gw), daemon=True).start()
        self.assert_pings_stop(gw, mgr, "the HTTP server did not answer its own GET /healthz",
                               log_from)

    @staticmethod
    def _post_quietly(gw):
        try:
            gw.post(event(1), timeout=30)
        except OSError:
            pass  # the gateway is killed under it

    def test_no_notify_socket_no_notifier(self):
        wd = self.tmpdir()
        broker = self.start_broker(wd)
        gw = self.start_gateway(wd, broker, env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
        gw.post(event(1))
        self.assertEqual(gw.stop(), 0)
        with open(gw.log_path) as f:
            log = f.read()
        self.assertIn("stopped cleanly", log)
        self.assertNotIn("systemd:", log)
        self.assertNotIn("watchdog", log)


class JournaldTests(harness.IntegrationCase):

    def journal_env(self, path):
        """JOURNAL_STREAM naming the file the gateway's stderr goes to."""
        open(path, "ab").close()
        st = os.stat(path)
        return {"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino)}

    def lines(self, gw):
        """The gateway's own lines (the harness writes '=====' notes between runs)."""
        with open(gw.log_path, errors="replace") as f:
            return [ln for ln in f.read().splitlines() if ln and not ln.startswith("=====")]

    def test_priorities_and_no_timestamp_under_journald(self):
        wd = self.tmpdir()
        broker = self.start_broker(wd)
        gw = harness.Gateway(wd, broker.port)
        gw.env = self.journal_env(gw.log_path)
        self.track(gw).start()
        gw.post(b"{not json")  # refused: one warning
        self.assertEqual(gw.stop(), 0)
        lines = self.lines(gw)
        self.assertTrue(lines)
        bad = [ln for ln in lines if ln[:3] not in ("<3>", "<4>", "<6>", "<7>")]
        self.assertEqual(bad, [], "lines without a priority")
        self.assertTrue(any(ln.startswith("<6>race2mqtt ") and "starting" in ln for ln in lines))
        self.assertTrue(any(ln.startswith("<7>") for ln in lines), "no debug line at <7>")
        # No time of our own: journald stamps each line.
        self.assertFalse(any(ln[3:7].isdigit() and ln[7:8] == "-" for ln in lines), lines[:5])

    def test_error_priority_on_a_config_error(self):
        wd = self.tmpdir()
        out = os.path.join(wd, "stderr.log")
        conf = os.path.join(wd, "bad.conf")
        with open(conf, "w") as f:
            f.write("[http]\nport = 99999\n")
        env = {k: v for k, v in os.environ.items() if not harness.inherited_setting(k)}
        env.update(self.journal_env(out))
        with open(out, "ab") as err:
            rc = subprocess.run([harness.gateway_bin(), "-c", conf], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, env=env, cwd=wd, timeout=20).returncode
        self.assertEqual(rc, 2)
        with open(out) as f:
            text = f.read()
        self.assertTrue(text.startswith("<3>race2mqtt: "), text)
        self.assertIn("http.port", text)

    def test_a_terminal_keeps_timestamps(self):
        # JOURNAL_STREAM inherited from a parent whose stderr was the journal,
        # but ours is a file: the usual form.
        wd = self.tmpdir()
        broker = self.start_broker(wd)
        gw = self.start_gateway(wd, broker, env={"JOURNAL_STREAM": "1:1"})
        self.assertEqual(gw.stop(), 0)
        lines = self.lines(gw)
        self.assertTrue(lines)
        self.assertTrue(all(ln[:4].isdigit() and ln[4] == "-" for ln in lines), lines[:3])


if __name__ == "__main__":
    unittest.main()
