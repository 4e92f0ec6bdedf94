#!/usr/bin/python3
"""
rr_backlog.py - RACE RESULT backlog benchmark (a program, not a test).

Starts a real mosquitto, the fake RACE RESULT server (tests/fakerr) with one
decoder holding N passings in files of 10,000, and the real gateway with
raceresult.start = all; a QoS 1 subscriber counts distinct passing ids. Prints
the time from the gateway's start to the last id arriving, passings/s, the
number of REST requests and the gateway's peak RSS.

Then, for the same broker and the same subscriber, the broker alone: the same
number of passings, shaped as the gateway publishes them and with the same ids,
published straight to mosquitto at QoS 1 by race2mqtt-bench --payload passing
(C paho, as many in flight as the gateway allows itself, mqtt.max_inflight =
256), timed from the publisher's start to the last id. The ratio of the two is
what the gateway's REST polling, parsing and cursor bookkeeping cost.

  /usr/bin/python3 bench/rr_backlog.py [N]           (default 100000)
  RACE2MQTT_BIN=build/race2mqtt AMOUNT=1000,10000 ...  (raceresult.amount, one
                                                       gateway run each; default 1000)
  BROKER_ALONE=0 ...                                 (leave the broker-alone run out)
"""
import json
import os
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fakerr"))

import harness  # noqa: E402
from fake_raceresult import FakeRaceResult  # noqa: E402

PER_FILE = 10000  # race2mqtt-bench's PASSINGS_PER_FILE: the same ids on both paths
DEVICE = "D-1"
GATEWAY_INFLIGHT = 256  # the gateway's mqtt.max_inflight default
WAIT_S = 600


def peak_rss_mib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def bench_bin():
    path = os.environ.get("RACE2MQTT_BENCH")
    if not path:
        path = os.path.join(os.path.dirname(os.path.abspath(harness.gateway_bin())),
                            "race2mqtt-bench")
    return path


class QuietBroker(harness.Broker):
    """The test harness's broker without its debug log: at four log lines per
    message (PUBLISH and PUBACK in and out) the log costs the broker more than
    a small message does, on both paths alike."""

    def write_conf(self):
        super().write_conf()
        with open(self.conf_path) as f:
            lines = [line for line in f.read().splitlines()
                     if not line.startswith(("log_type", "connection_messages"))]
        lines += ["log_type error", "log_type warning"]
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")


class Counter:
    """Distinct passing ids on raceresult/+/passing; reset() before each run."""

    def __init__(self, port):
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.reset(0)
        self.client = harness.mqtt.Client(client_id=harness.unique("r2m-rrbench"),
                                          protocol=harness.mqtt.MQTTv311)
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.subscribe("raceresult/+/passing", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def reset(self, want):
        with self.lock:
            self.seen = set()
            self.want = want
            self.last = 0.0
            self.done.clear()

    def on_message(self, _c, _u, msg):
        # The gateway and race2mqtt-bench both put "id" first; slicing it out
        # instead of json.loads keeps this subscriber from being the limit.
        p = msg.payload
        start = p.find(b'"id":"') + 6
        pid = p[start:p.find(b'"', start)] if start >= 6 else p
        with self.lock:
            self.seen.add(pid)
            self.last = time.monotonic()
            if self.want and len(self.seen) >= self.want:
                self.done.set()

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


def run_gateway(work, broker, counter, n, files, amount):
    fake = FakeRaceResult(api_key="bench-key", customer=846,
                          world={"devices": [{"id": DEVICE, "type": "Decoder", "connected": True,
                                              "files": files}]})
    fake.start()
    counter.reset(n)
    gw = harness.Gateway(work, broker.port, extra={
        "raceresult": {"enabled": "true", "base_url": fake.url, "customer_id": "846",
                       "api_key": "bench-key", "start": "all", "poll_interval_ms": "200",
                       "amount": str(amount)},
        "log": {"level": "warn"}})
    cpu0 = os.times()
    t0 = time.monotonic()
    try:
        gw.start()
        ok = counter.done.wait(WAIT_S)
        elapsed = (counter.last or time.monotonic()) - t0
        rss = peak_rss_mib(gw.proc.pid)
        cpu1 = os.times()
        stats = fake.stats()
    finally:
        gw.stop()
        fake.stop()
    return {"ok": ok, "n": len(counter.seen), "elapsed": elapsed, "rss": rss, "stats": stats,
            "py_cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)}


def run_broker_alone(broker, counter, n):
    counter.reset(n)
    argv = [bench_bin(), "--payload", "passing", "--device", DEVICE,
            "--broker", "tcp://127.0.0.1:%d" % broker.port, "--n", str(n),
            "--conns", str(GATEWAY_INFLIGHT), "--no-subscribe", "--pid", str(broker.proc.pid),
            "--timeout-s", str(WAIT_S), "--label", "broker alone"]
    cpu0 = os.times()
    t0 = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=WAIT_S + 30, check=False)
    ok = counter.done.wait(30)
    elapsed = (counter.last or time.monotonic()) - t0
    cpu1 = os.times()
    out = proc.stdout.decode(errors="replace")
    result = next((line for line in out.splitlines() if line.startswith("RESULT ")), "")
    fields = dict(kv.split("=", 1) for kv in result.split()[1:] if "=" in kv)
    if proc.returncode != 0 or not result:
        sys.stderr.write(out)
    return {"ok": ok and proc.returncode == 0, "n": len(counter.seen), "elapsed": elapsed,
            "bench": fields, "py_cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)}


def rate(r):
    return r["n"] / r["elapsed"] if r["elapsed"] > 0 else 0.0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    if not 1 <= n <= 10000000:
        sys.exit("rr_backlog.py: N must be 1..10000000")
    amounts = [int(a) for a in re.split(r"[ ,]+", os.environ.get("AMOUNT", "1000")) if a]
    if not amounts or any(not 1 <= a <= 10000 for a in amounts):
        sys.exit("rr_backlog.py: AMOUNT must be a list of 1..10000 (the API's limit)")
    broker_alone = os.environ.get("BROKER_ALONE", "1") != "0"
    if broker_alone and not os.access(bench_bin(), os.X_OK):
        sys.exit("rr_backlog.py: %s missing (set RACE2MQTT_BENCH or BROKER_ALONE=0)" % bench_bin())
    files = {str(i + 1): min(PER_FILE, n - i * PER_FILE) for i in range((n + PER_FILE - 1) // PER_FILE)}

    work = harness.tempfile.mkdtemp(prefix="r2m-rrbench-")
    broker = QuietBroker(work, persistence=False)
    broker.start()
    counter = Counter(broker.port)
    runs = []
    alone = None
    try:
        for amount in amounts:
            runs.append((amount, run_gateway(work, broker, counter, n, files, amount)))
        if broker_alone:
            alone = run_broker_alone(broker, counter, n)
    finally:
        counter.stop()
        broker.stop()
        harness.shutil.rmtree(work, ignore_errors=True)

    ok = True
    for amount, r in runs:
        ok = ok and r["ok"]
        print("=== race2mqtt RACE RESULT backlog: %d passings in %d files, raceresult.amount = %d ==="
              % (n, len(files), amount))
        print("delivered (distinct ids)   %d%s" % (r["n"], "" if r["ok"] else "  (INCOMPLETE after %d s)" % WAIT_S))
        print("time, gateway start -> last id   %.2f s" % r["elapsed"])
        print("passings/s                 %.0f" % rate(r))
        print("REST requests              %s" % json.dumps(r["stats"], sort_keys=True))
        print("gateway peak RSS (VmHWM)   %.2f MiB" % r["rss"])
        print("python CPU (fake server + subscriber)   %.2f s" % r["py_cpu"])
    if alone:
        ok = ok and alone["ok"]
        b = alone["bench"]
        print("=== broker alone: %d passings published by race2mqtt-bench, %d in flight ==="
              % (n, GATEWAY_INFLIGHT))
        print("delivered (distinct ids)   %d%s" % (alone["n"], "" if alone["ok"] else "  (INCOMPLETE)"))
        print("time, publisher start -> last id   %.2f s" % alone["elapsed"])
        print("passings/s                 %.0f" % rate(alone))
        print("broker CPU                 %s us per passing" % b.get("cpu_us_per_event", "nan"))
        print("publisher CPU              %s s" % b.get("bench_cpu_s", "nan"))
        print("python CPU (subscriber)    %.2f s" % alone["py_cpu"])
        if alone["elapsed"] > 0 and alone["py_cpu"] / alone["elapsed"] > 0.7:
            print("  (the Python subscriber used %.0f%% of a core here: it, not the broker, may be"
                  " what limits the broker-alone rate)" % (100 * alone["py_cpu"] / alone["elapsed"]))
        for amount, r in runs:
            print("gateway / broker alone, amount %-6d %.2fx  (gateway peak RSS %.2f MiB)"
                  % (amount, rate(r) / rate(alone) if rate(alone) else float("nan"), r["rss"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
