"""
natscluster.py - a real NATS cluster on loopback for the integration tests:
Debian's nats-server (2.9) with JetStream and its MQTT listener on, so that the
gateway can be tested against a clustered broker (README "More than one
machine").

Why it is set up like this (facts measured on nats-server 2.9.10):
- MQTT in NATS keeps sessions and retained messages in JetStream, so every
  node needs a server_name, a store dir and JetStream on, and the MQTT streams
  must be replicated on all three nodes (mqtt.stream_replicas = 3): with the
  default (R1) a node's loss loses what it held.
- JetStream needs a meta leader (a majority of the nodes) before an MQTT
  client can connect, and the first QoS 1 subscription creates the MQTT
  streams (about 3 s here). start() therefore waits for /healthz on every node
  and then for a QoS 1 round trip between two nodes, which is what the tests
  need, not only open ports.
- Every node lists the others as routes; three nodes, so that the loss of one
  leaves a majority.
"""
import os
import signal
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt

import harness

NATS_SERVER = os.environ.get("R2M_NATS_SERVER", "/usr/sbin/nats-server")


class NatsNode(harness.Process):
    """One nats-server, its ports fixed across restarts (same store dir)."""

    def __init__(self, workdir, index, cluster_name):
        self.name = harness.unique("nats-n%d" % index)
        super().__init__(workdir)
        self.index = index
        self.cluster_name = cluster_name
        self.client_port = harness.free_port()
        self.http_port = harness.free_port()
        self.route_port = harness.free_port()
        self.mqtt_port = harness.free_port()
        self.store_dir = os.path.join(workdir, self.name + "-js")
        self.conf_path = os.path.join(workdir, self.name + ".conf")
        self.routes = []

    def write_conf(self, replicas):
        conf = [
            "server_name: n%d" % self.index,
            "listen: 127.0.0.1:%d" % self.client_port,
            "http: 127.0.0.1:%d" % self.http_port,
            "cluster {",
            "  name: %s" % self.cluster_name,
            "  listen: 127.0.0.1:%d" % self.route_port,
            "  routes: [%s]" % ", ".join("nats-route://127.0.0.1:%d" % p for p in self.routes),
            "}",
            'jetstream { store_dir: "%s", max_memory_store: 64MB, max_file_store: 256MB }'
            % self.store_dir,
            "mqtt { listen: 127.0.0.1:%d, stream_replicas: %d }" % (self.mqtt_port, replicas),
        ]
        with open(self.conf_path, "w") as f:
            f.write("\n".join(conf) + "\n")

    def spawn(self):
        assert not self.running(), "node already running"
        self._spawn([NATS_SERVER, "-c", self.conf_path])

    def healthy(self):
        """/healthz 200: JetStream is on and in contact with a meta leader."""
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.http_port,
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def url(self):
        return "mqtt://127.0.0.1:%d" % self.mqtt_port


class NatsCluster:
    """nodes nats-servers in one cluster. Track it with IntegrationCase.track()
    (cleanup() stops every node); the logs are in workdir."""

    name = "nats"

    def __init__(self, workdir, nodes=3):
        if not os.access(NATS_SERVER, os.X_OK):
            raise AssertionError("%s missing: install Debian's nats-server "
                                 "(bash scripts/deps.sh), or set R2M_NATS_SERVER"
                                 % NATS_SERVER)
        self.workdir = workdir
        cname = harness.unique("r2m")
        self.nodes = [NatsNode(workdir, i + 1, cname) for i in range(nodes)]
        for n in self.nodes:
            n.routes = [o.route_port for o in self.nodes if o is not n]
        self.start_s = None

    def __getitem__(self, i):
        """Node i, counted from 1 as in the node names (n1, n2, n3)."""
        return self.nodes[i - 1]

    def urls(self, order=None):
        """The gateway's mqtt.url list, in node order (or in `order`)."""
        return ",".join(self[i].url() for i in (order or range(1, len(self.nodes) + 1)))

    def port(self, i):
        return self[i].mqtt_port

    def start(self, timeout=60):
        t0 = time.monotonic()
        for n in self.nodes:
            n.write_conf(len(self.nodes))
            n.spawn()
        self.wait_healthy(self.nodes, timeout)
        self.wait_round_trip(1, len(self.nodes), timeout - (time.monotonic() - t0))
        self.start_s = time.monotonic() - t0
        return self

    def wait_healthy(self, nodes, timeout):
        deadline = time.monotonic() + timeout
        for n in nodes:
            while not n.healthy():
                if not n.running():
                    raise AssertionError("%s exited with %s at start:\n%s"
                                         % (n.name, n.proc.returncode, n.log()))
                if time.monotonic() > deadline:
                    raise AssertionError("%s: /healthz not ok after %ds:\n%s"
                                         % (n.name, timeout, n.log()))
                time.sleep(0.1)

    def wait_round_trip(self, a, b, timeout):
        """A QoS 1 message published via node a reaches a subscriber on node b
        (the MQTT streams exist and are replicated). Returns the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + max(timeout, 1)
        topic = "r2mtest/nats/" + harness.unique("rt")
        got = threading.Event()
        sub = pub = None
        try:
            while True:
                try:
                    sub = mqtt_client(self.port(b))
                    sub.on_message = lambda c, u, m: got.set()
                    subacked = threading.Event()
                    sub.on_subscribe = lambda *args: subacked.set()
                    sub.subscribe(topic, 1)
                    if not subacked.wait(max(deadline - time.monotonic(), 0.1)):
                        raise OSError("no SUBACK")
                    pub = mqtt_client(self.port(a))
                    while not got.is_set() and time.monotonic() < deadline:
                        pub.publish(topic, b"ping", qos=1)
                        got.wait(0.5)
                    if got.is_set():
                        return time.monotonic() - t0
                except OSError:
                    pass
                for c in (sub, pub):
                    close(c)
                sub = pub = None
                if time.monotonic() > deadline:
                    raise AssertionError("no MQTT round trip from node %d to node %d within "
                                         "%.0fs:\n%s" % (a, b, timeout, self[b].log()))
                time.sleep(0.2)
        finally:
            for c in (sub, pub):
                close(c)

    def kill(self, i):
        """SIGKILL node i."""
        return self[i].signal_stop(signal.SIGKILL, 10)

    def restart(self, i, timeout=60):
        """Starts node i again (same config and store) and waits until it serves
        MQTT again; returns the seconds that took."""
        t0 = time.monotonic()
        self[i].spawn()
        self.wait_healthy([self[i]], timeout)
        other = 1 if i != 1 else 2
        self.wait_round_trip(other, i, timeout - (time.monotonic() - t0))
        return time.monotonic() - t0

    def stop(self):
        for n in self.nodes:
            if n.running():
                n.signal_stop(signal.SIGTERM, 15)

    def cleanup(self):
        for n in self.nodes:
            n.cleanup()

    def log(self):
        return "\n".join("----- %s -----\n%s" % (n.name, n.log()) for n in self.nodes)


def mqtt_client(port, client_id=None, clean=True, timeout=10):
    """A connected, looping MQTT 3.1.1 client (NATS has no MQTT 5); raises
    OSError when it cannot connect within timeout."""
    c = mqtt.Client(client_id=client_id or harness.unique("r2m-it-nats"),
                    protocol=mqtt.MQTTv311, clean_session=clean)
    up = threading.Event()
    result = []

    def on_connect(client, userdata, flags, rc):
        result.append((rc, flags.get("session present", 0)))
        up.set()
    c.on_connect = on_connect
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not up.wait(timeout) or result[0][0] != 0:
        close(c)
        raise OSError("MQTT connect to port %d: %r" % (port, result or "no CONNACK"))
    c.session_present = result[0][1]
    return c


def close(c):
    if c is None:
        return
    try:
        c.disconnect()
    except Exception:  # noqa: BLE001 - closing a client that may be dead
        pass
    c.loop_stop()
