#!/usr/bin/python3
"""
The quick start's demo (README "Quick start"): `bash scripts/run.sh --demo`
starts the gateway and replays the shipped race into it, so that a newcomer
without a track sees a race on the page and on the broker. Run here against a
broker of the test's own (run.sh uses a broker that already listens) with the
store in a temp dir; Ctrl-C (SIGINT to the process group, as a terminal sends
it) stops the replay and the gateway.
"""
import json
import os
import signal
import subprocess
import time

import harness
from harness import wait_until


class DemoTests(harness.IntegrationCase):

    def test_run_sh_demo_fills_page_and_broker(self):
        d = self.tmpdir()
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["smartrace/#"])
        port = harness.free_port()
        env = {k: v for k, v in os.environ.items() if not harness.inherited_setting(k)}
        env.update({"RACE2MQTT_MQTT_URL": "mqtt://127.0.0.1:%d" % broker.port,
                    "RACE2MQTT_MQTT_CLIENT_ID": harness.unique("r2m-demo"),
                    "RACE2MQTT_HTTP_BIND": "127.0.0.1",
                    "RACE2MQTT_HTTP_PORT": str(port),
                    "RACE2MQTT_STORE_DIR": os.path.join(d, "var")})
        log_path = os.path.join(d, "run.log")
        t0 = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["bash", os.path.join(harness.REPO, "scripts", "run.sh"),
                                     "--demo"], cwd=harness.REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

        def cleanup():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.addCleanup(cleanup)

        def log():
            with open(log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")

        def six_on_the_page():
            if proc.poll() is not None:
                raise AssertionError("run.sh --demo exited with %s:\n%s" % (proc.returncode,
                                                                            log()))
            try:
                r = harness.http_request(port, "GET", "/api/state", timeout=2)
            except OSError:
                return None
            s = json.loads(r.body) if r.status == 200 else None
            return s if s and len(s["race"]["standings"]) == 6 else None
        state = wait_until(six_on_the_page, 120, 0.2)
        secs = time.monotonic() - t0
        self.assertIsNotNone(state, "no six-car race on the page within 120 s:\n" + log())
        print("run.sh --demo: 6 standings rows on /api/state %.1f s after the command "
              "(build already done)" % secs)
        self.assertIn("using the broker already listening on 127.0.0.1:%d" % broker.port, log())
        self.assertIn("demo: the page: http://", log())
        self.assertIn("mosquitto_sub -h 127.0.0.1 -p %d -t 'smartrace/#' -v" % broker.port, log())
        self.assertEqual(state["smartrace"]["refused"], 0)
        self.assertIsNotNone(sub.wait_message(lambda m: m.topic.startswith("smartrace/lap/"), 10),
                             "no lap on the broker")
        page = harness.http_request(port, "GET", "/")
        self.assertEqual(page.status, 200)

        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            self.fail("run.sh --demo still running 30 s after Ctrl-C:\n" + log())
        self.assertIn("stopped cleanly", log())
        self.assertIn(rc, (0, 130), log())
        self.assertFalse(harness.port_accepts(port), "the gateway still listens after Ctrl-C")
        leftover = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
        self.assertEqual(leftover.stdout.strip(), "", "processes left behind:\n" + log())


if __name__ == "__main__":
    harness.main()
