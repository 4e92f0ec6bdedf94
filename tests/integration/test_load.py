#!/usr/bin/python3
"""
Correctness under load (SPEC section 7.1): the benchmark client (bench/bench.c,
C keep-alive connections at full speed, a QoS 1 subscriber matching
deliveries by seq) drives the real gateway and broker. Nothing is timed here;
the assertions are that every event is accepted, every accepted event is
delivered, and none arrives out of order on its topic.

This is the regression test for a publisher that, when paho refused publishes
beyond its buffer (100 by default, even while connected), sent newer events
before the refused ones and stalled with most of a burst stuck in the journal.
Only a few thousand events per second trigger that, which a Python client
cannot produce.
"""
import os
import re
import subprocess

import harness

EVENTS = 20000
CONNS = 32


def bench_bin():
    path = os.environ.get("R2M_BENCH") or os.path.join(harness.REPO, "build", "race2mqtt-bench")
    if not os.access(path, os.X_OK):
        raise AssertionError("benchmark binary %s missing (set R2M_BENCH)" % path)
    return path


def field(output, name):
    """The first integer after `name` at the start of a line of bench output."""
    m = re.search(r"^%s\s+(\d+)" % re.escape(name), output, re.M)
    if not m:
        raise AssertionError("bench printed no '%s' line:\n%s" % (name, output))
    return int(m.group(1))


class LoadTests(harness.IntegrationCase):

    def test_full_speed_burst_is_delivered_in_order(self):
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=False)
        gw = self.start_gateway(d, broker, extra={"http": {"max_connections": "128"},
                                                  "log": {"level": "info"}})
        out = subprocess.run(
            [bench_bin(), "--http", "127.0.0.1:%d" % gw.http_port,
             "--broker", "tcp://127.0.0.1:%d" % broker.port, "--n", str(EVENTS),
             "--conns", str(CONNS), "--grace-ms", "10000", "--timeout-s", "240",
             "--label", "test_load"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, text=True).stdout
        print(out)
        self.assertEqual(field(out, "accepted (200)"), EVENTS)
        self.assertEqual(field(out, "rejected"), 0)
        self.assertEqual(field(out, "delivered"), EVENTS)
        self.assertEqual(field(out, "lost"), 0)
        self.assertEqual(field(out, "out of order (per topic)"), 0)


if __name__ == "__main__":
    harness.unittest.main()
