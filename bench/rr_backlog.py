#!/usr/bin/python3
"""
rr_backlog.py - RACE RESULT backlog benchmark (a program, not a test).

Starts a real mosquitto, the fake RACE RESULT server (tests/fakerr) with one
decoder holding N passings in files of 10,000, and the real gateway with
raceresult.start = all; a QoS 1 subscriber counts distinct passing ids. Prints
the time from the gateway's start to the last id arriving, passings/s, the
number of REST requests and the gateway's peak RSS.

  /usr/bin/python3 bench/rr_backlog.py [N]        (default 100000)
  RACE2MQTT_BIN=build/race2mqtt AMOUNT=10000 ...   (raceresult.amount, default 1000)
"""
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fakerr"))

import harness  # noqa: E402
from fake_raceresult import FakeRaceResult  # noqa: E402

PER_FILE = 10000


def peak_rss_mib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    files = {str(i + 1): min(PER_FILE, n - i * PER_FILE) for i in range((n + PER_FILE - 1) // PER_FILE)}
    work = harness.tempfile.mkdtemp(prefix="r2m-rrbench-")
    fake = FakeRaceResult(api_key="bench-key", customer=846,
                          world={"devices": [{"id": "D-1", "type": "Decoder", "connected": True,
                                              "files": files}]})
    fake.start()
    broker = harness.Broker(work, persistence=False)
    broker.start()
    seen = set()
    done = threading.Event()
    last = [0.0]

    def on_message(_c, _u, msg):
        seen.add(json.loads(msg.payload)["id"])
        last[0] = time.monotonic()
        if len(seen) >= n:
            done.set()

    sub = harness.mqtt.Client(client_id=harness.unique("r2m-rrbench"), protocol=harness.mqtt.MQTTv311)
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port, keepalive=60)
    sub.subscribe("raceresult/+/passing", qos=1)
    sub.loop_start()
    time.sleep(0.3)

    gw = harness.Gateway(work, broker.port, extra={
        "raceresult": {"enabled": "true", "base_url": fake.url, "customer_id": "846",
                       "api_key": "bench-key", "start": "all", "poll_interval_ms": "200",
                       "amount": os.environ.get("AMOUNT", "1000")},
        "log": {"level": "warn"}})
    t0 = time.monotonic()
    gw.start()
    ok = done.wait(600)
    elapsed = (last[0] or time.monotonic()) - t0
    rss = peak_rss_mib(gw.proc.pid) if getattr(gw, "proc", None) else float("nan")
    stats = fake.stats()
    gw.stop()
    sub.loop_stop()
    sub.disconnect()
    broker.stop()
    fake.stop()
    harness.shutil.rmtree(work, ignore_errors=True)

    print("=== race2mqtt RACE RESULT backlog: %d passings in %d files ===" % (n, len(files)))
    print("delivered (distinct ids)   %d%s" % (len(seen), "" if ok else "  (INCOMPLETE after 600 s)"))
    print("time, gateway start -> last id   %.2f s" % elapsed)
    print("passings/s                 %.0f" % (len(seen) / elapsed if elapsed > 0 else 0))
    print("REST requests              %s" % json.dumps(stats, sort_keys=True))
    print("gateway peak RSS (VmHWM)   %.2f MiB" % rss)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
