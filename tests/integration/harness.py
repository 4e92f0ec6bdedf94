"""
harness.py - shared helpers for the race2mqtt integration tests.

Every test runs the real Debian mosquitto on a free port in a temp dir, the real
race2mqtt binary ($RACE2MQTT_BIN) and real MQTT subscribers (paho), and makes its
assertions on what a subscriber receives: topic, payload, QoS and retain flag.
When a test fails, the logs of every broker and gateway it started are printed
(the way mosquitto's own test suite does), and the temp dir is removed unless
R2M_KEEP_TMP=1.

Run with Debian's /usr/bin/python3 (python3-paho-mqtt 1.6.1), e.g.
  RACE2MQTT_BIN=build/race2mqtt /usr/bin/python3 -u tests/integration/test_http.py
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

MOSQUITTO = os.environ.get("R2M_MOSQUITTO", "/usr/sbin/mosquitto")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.environ.get("R2M_FIXTURES", os.path.join(REPO, "tests", "fixtures"))
SHARED_FIXTURES = os.environ.get("R2M_SHARED_FIXTURES",
                                 os.path.join(os.path.dirname(REPO), "shared", "fixtures"))
LOG_TAIL_LINES = int(os.environ.get("R2M_LOG_TAIL", "300"))

_counter = [0]
_counter_lock = threading.Lock()


def unique(prefix):
    """A name unique within this run and across concurrent runs."""
    with _counter_lock:
        _counter[0] += 1
        n = _counter[0]
    return "%s-%d-%d" % (prefix, os.getpid(), n)


def gateway_bin():
    path = os.environ.get("RACE2MQTT_BIN")
    if not path:
        path = os.path.join(REPO, "build", "race2mqtt")
    return path


# systemd's variables: a test runner that is itself a service must not have
# its gateways notify its own manager (test_systemd.py sets them on purpose).
SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


def inherited_setting(name):
    """An environment variable of the runner that would change the gateway."""
    return name.startswith("RACE2MQTT_") or name in SYSTEMD_VARS


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(pred, timeout, interval=0.05):
    """Polls pred() until it returns a truthy value (returned) or timeout (None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def tail(path, lines=LOG_TAIL_LINES):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "<cannot read %s: %s>" % (path, e)
    text = data.decode("utf-8", "replace").splitlines()
    if len(text) > lines:
        return "... (%d lines cut)\n" % (len(text) - lines) + "\n".join(text[-lines:])
    return "\n".join(text)


class Process:
    """A child process whose output goes to a log file; base of Broker and Gateway."""

    name = "process"

    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None
        self.log_path = os.path.join(workdir, self.name + ".log")

    def _spawn(self, argv, env=None):
        with open(self.log_path, "ab") as log:
            log.write(("\n===== %s: start %s\n" % (time.strftime("%H:%M:%S"), " ".join(argv))).encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)

    def _note(self, text):
        with open(self.log_path, "ab") as log:
            log.write(("===== %s: %s\n" % (time.strftime("%H:%M:%S"), text)).encode())

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal_stop(self, sig=signal.SIGTERM, timeout=30):
        """Sends sig and waits; returns the exit status (negative: killed by a signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._note("did not exit %ds after signal %d: SIGKILL" % (timeout, sig))
                self.proc.kill()
                self.proc.wait()
                rc = self.proc.returncode
                self._note("exit status %s" % rc)
                raise AssertionError("%s did not exit within %ds after signal %d"
                                     % (self.name, timeout, sig))
        rc = self.proc.returncode
        self._note("exit status %s" % rc)
        return rc

    def stop(self, timeout=30):
        return self.signal_stop(signal.SIGTERM, timeout)

    def kill(self):
        return self.signal_stop(signal.SIGKILL, 10)

    def cleanup(self):
        if self.running():
            try:
                self.kill()
            except Exception:
                pass

    def log(self):
        return tail(self.log_path)


SANITIZER_MARKERS = (b"ERROR: AddressSanitizer", b"ERROR: LeakSanitizer", b"runtime error:",
                     b"WARNING: ThreadSanitizer", b"ERROR: UndefinedBehaviorSanitizer")


def sanitizer_findings(path):
    """Lines of a log that report a sanitizer finding (ASan/LSan/UBSan builds)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    return [line.decode("utf-8", "replace") for line in data.splitlines()
            if any(mk in line for mk in SANITIZER_MARKERS)]


def finish_gateways(resources):
    """Stops every still running gateway with SIGTERM and returns a list of
    problems: exit status not 0 (a clean stop must exit 0; leak reports of a
    sanitizer build make it 1) and sanitizer findings in any gateway log."""
    problems = []
    for r in resources:
        if not isinstance(r, Gateway):
            continue
        if r.running():
            try:
                rc = r.stop(timeout=20)
            except AssertionError as e:
                problems.append(str(e))
                rc = 0
            if rc != 0:
                problems.append("%s: exit status %s after SIGTERM at the end of the test"
                                % (r.name, rc))
        for line in sanitizer_findings(r.log_path):
            problems.append("%s: %s" % (r.name, line))
    return problems


class Broker(Process):
    """mosquitto from a config written into workdir, on a fixed port across restarts."""

    name = "mosquitto"

    def __init__(self, workdir, port=None, persistence=True, extra_conf=""):
        self.name = unique("mosquitto")
        super().__init__(workdir)
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_conf = extra_conf
        self.conf_path = os.path.join(workdir, self.name + ".conf")
        self.data_dir = os.path.join(workdir, self.name + "-data")
        os.makedirs(self.data_dir, exist_ok=True)

    def write_conf(self):
        conf = [
            "listener %d 127.0.0.1" % self.port,
            "allow_anonymous true",
            "persistence %s" % ("true" if self.persistence else "false"),
            "persistence_location %s/" % self.data_dir,
            "persistence_file mosquitto.db",
            # No limits: the tests count every message (man mosquitto.conf:
            # 0 = no maximum for both).
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %H:%M:%S",
            # Run as root: keep root instead of switching to the mosquitto user,
            # which could not write the temp dir. No effect when not root.
            "user root",
            self.extra_conf,
        ]
        with open(self.conf_path, "w") as f:
            f.write("\n".join(conf) + "\n")

    def start(self, timeout=10):
        assert not self.running(), "broker already running"
        self.write_conf()
        self._spawn([MOSQUITTO, "-c", self.conf_path])
        deadline = time.monotonic() + timeout
        while not port_accepts(self.port):
            if self.proc.poll() is not None:
                raise AssertionError("mosquitto exited with %s at start:\n%s"
                                     % (self.proc.returncode, self.log()))
            if time.monotonic() > deadline:
                raise AssertionError("mosquitto does not accept on port %d:\n%s"
                                     % (self.port, self.log()))
            time.sleep(0.05)
        return self

    def stop(self, timeout=30):
        rc = super().stop(timeout)
        # Let the port go (the next start binds it again).
        wait_until(lambda: not port_accepts(self.port), 5)
        return rc

    def restart(self, persistence=None):
        self.stop()
        if persistence is not None:
            self.persistence = persistence
        return self.start()


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value (last one wins)
        self.body = body
        try:
            self.json = json.loads(body.decode("utf-8")) if body else None
        except (ValueError, UnicodeDecodeError):
            self.json = None

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<HTTP %s %r %r>" % (self.status, self.headers, self.body[:300])


def http_request(port, method, path, body=None, headers=None, timeout=10, host="127.0.0.1"):
    """One request on a fresh connection; returns a Response."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        return Response(r.status, hdrs, data)
    finally:
        conn.close()


def post(port, path="/", body=None, headers=None, token=None, bearer=None, timeout=10):
    """POSTs body (dict/list -> JSON, str -> UTF-8, bytes as is). token goes into
    ?token=..., bearer into Authorization."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    if bearer is not None:
        h["Authorization"] = "Bearer " + bearer
    if token is not None:
        path += ("&" if "?" in path else "?") + "token=" + token
    return http_request(port, "POST", path, body=body if body is not None else b"", headers=h,
                        timeout=timeout)


def raw_http(port, data, timeout=10, shutdown_write=False):
    """Sends raw bytes, returns everything the server sends until it closes or
    timeout (b"" on timeout with nothing received)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if shutdown_write:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and _raw_complete(out):
                    break
        except (socket.timeout, ConnectionResetError):
            pass
        return out


def _raw_complete(data):
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m:
        return len(body) >= int(m.group(1))
    return False


def raw_status(data):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


class Gateway(Process):
    """race2mqtt with a config file written into workdir; the store dir survives
    restarts (same Gateway object = same store, same ports, same client id)."""

    name = "race2mqtt"

    def __init__(self, workdir, broker_port, http_port=None, token=None, max_body=None,
                 client_id=None, extra=None, env=None, protocol=None):
        self.name = unique("race2mqtt")
        super().__init__(workdir)
        self.broker_port = broker_port
        self.http_port = http_port or free_port()
        self.token = token
        self.client_id = client_id or unique("r2m-it")
        self.store_dir = os.path.join(workdir, self.name + "-var")
        self.conf_path = os.path.join(workdir, self.name + ".conf")
        self.sections = {
            "mqtt": {"url": "mqtt://127.0.0.1:%d" % broker_port, "client_id": self.client_id},
            "http": {"bind": "127.0.0.1", "port": str(self.http_port)},
            "store": {"dir": self.store_dir},
            "log": {"level": "debug"},
            "raceresult": {"enabled": "false"},
        }
        if protocol:
            self.sections["mqtt"]["protocol"] = protocol
        if token is not None:
            self.sections["http"]["token"] = token
        if max_body is not None:
            self.sections["http"]["max_body"] = str(max_body)
        for sec, kv in (extra or {}).items():
            self.sections.setdefault(sec, {}).update(kv)
        self.env = env or {}

    def write_conf(self):
        with open(self.conf_path, "w") as f:
            f.write("# written by tests/integration/harness.py\n")
            for sec, kv in self.sections.items():
                f.write("[%s]\n" % sec)
                for k, v in kv.items():
                    f.write("%s = %s\n" % (k, v))
                f.write("\n")

    def environ(self):
        env = {k: v for k, v in os.environ.items() if not inherited_setting(k)}
        env.update(self.env)
        return env

    def start(self, wait=True, timeout=20):
        assert not self.running(), "gateway already running"
        self.write_conf()
        binary = gateway_bin()
        if not os.access(binary, os.X_OK):
            raise AssertionError("gateway binary %s missing (set RACE2MQTT_BIN)" % binary)
        self._spawn([binary, "-c", self.conf_path], env=self.environ())
        if wait:
            self.wait_ready(timeout)
        return self

    def _get_status(self, path):
        try:
            return http_request(self.http_port, "GET", path, timeout=2).status
        except (OSError, http.client.HTTPException):
            return None

    def wait_healthy(self, timeout=20):
        deadline = time.monotonic() + timeout
        while self._get_status("/healthz") != 200:
            if self.proc.poll() is not None:
                raise AssertionError("race2mqtt exited with %s at start:\n%s"
                                     % (self.proc.returncode, self.log()))
            if time.monotonic() > deadline:
                raise AssertionError("race2mqtt: /healthz not 200 after %ds:\n%s"
                                     % (timeout, self.log()))
            time.sleep(0.05)

    def wait_ready(self, timeout=20):
        """/healthz 200, then /readyz 200 (broker connected)."""
        self.wait_healthy(timeout)
        deadline = time.monotonic() + timeout
        while self._get_status("/readyz") != 200:
            if self.proc.poll() is not None:
                raise AssertionError("race2mqtt exited with %s:\n%s"
                                     % (self.proc.returncode, self.log()))
            if time.monotonic() > deadline:
                raise AssertionError("race2mqtt: /readyz not 200 after %ds:\n%s"
                                     % (timeout, self.log()))
            time.sleep(0.05)

    def wait_readyz(self, status, timeout=30):
        return wait_until(lambda: self._get_status("/readyz") == status, timeout, 0.1)

    def post(self, body, path="/", **kw):
        if "token" not in kw and "bearer" not in kw and self.token is not None:
            kw["token"] = self.token
        return post(self.http_port, path, body, **kw)

    def request(self, method, path, body=None, headers=None, timeout=10):
        return http_request(self.http_port, method, path, body, headers, timeout)


def run_cli(args, env=None, timeout=20):
    """Runs the binary with args; returns (exit status, stdout+stderr text)."""
    e = {k: v for k, v in os.environ.items() if not inherited_setting(k)}
    e.update(env or {})
    # A throw-away working directory: should a bad config be accepted, the
    # default ./var must not land in the caller's directory.
    cwd = tempfile.mkdtemp(prefix="r2m-it-cli-")
    try:
        p = subprocess.run([gateway_bin()] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e,
                           timeout=timeout, cwd=cwd)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    return p.returncode, p.stdout.decode("utf-8", "replace")


class Message:
    __slots__ = ("topic", "payload", "qos", "retain", "t")

    def __init__(self, topic, payload, qos, retain):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = bool(retain)
        self.t = time.monotonic()

    def json(self):
        return json.loads(self.payload.decode("utf-8"))

    def __repr__(self):
        p = self.payload[:200]
        return "<%s qos=%d retain=%d %r>" % (self.topic, self.qos, self.retain, p)


class Subscriber:
    """A paho client collecting every message of its filters.

    protocol: mqtt.MQTTv311 or mqtt.MQTTv5. With MQTTv5, subscriptions use
    Retain As Published, so the retain flag seen on live messages is the one the
    gateway set (with 3.1.1 the broker clears it on live delivery).
    persistent=True: clean_session False (3.1.1) / session expiry (5) with a
    fixed client id, so messages published while away are queued.
    """

    def __init__(self, port, topics=("#",), qos=1, protocol=mqtt.MQTTv5, client_id=None,
                 persistent=False):
        self.port = port
        self.topics = list(topics)
        self.qos = qos
        self.protocol = protocol
        self.client_id = client_id or unique("r2m-it-sub")
        self.persistent = persistent
        self.sync_topic = "r2mtest/sync/" + self.client_id
        self.messages = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connects = 0
        self._sync_n = 0
        if protocol == mqtt.MQTTv5:
            self.client = mqtt.Client(client_id=self.client_id, protocol=protocol)
        else:
            self.client = mqtt.Client(client_id=self.client_id, protocol=protocol,
                                      clean_session=not persistent)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(0.1, 1)
        self._mid = None

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        if rc != 0:
            return
        self.connects += 1
        subs = self.topics + [self.sync_topic]
        if self.protocol == mqtt.MQTTv5:
            req = [(t, SubscribeOptions(qos=self.qos, retainAsPublished=True)) for t in subs]
        else:
            req = [(t, self.qos) for t in subs]
        self.subscribed.clear()
        _, self._mid = client.subscribe(req)
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        if mid == self._mid:
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        self.connected.clear()
        self.subscribed.clear()

    def _on_message(self, client, userdata, msg):
        m = Message(msg.topic, msg.payload, msg.qos, msg.retain)
        with self.cond:
            self.messages.append(m)
            self.cond.notify_all()

    def start(self, timeout=10):
        if self.protocol == mqtt.MQTTv5:
            from paho.mqtt.properties import Properties
            from paho.mqtt.packettypes import PacketTypes
            props = None
            if self.persistent:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 3600
            self.client.connect("127.0.0.1", self.port, keepalive=30,
                                clean_start=not self.persistent, properties=props)
        else:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise AssertionError("subscriber %s: no SUBACK from port %d" % (self.client_id,
                                                                             self.port))
        return self

    def stop(self):
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.client.loop_stop()

    def wait_connected(self, timeout=30):
        return self.subscribed.wait(timeout)

    def snapshot(self):
        with self.cond:
            return list(self.messages)

    def clear(self):
        with self.cond:
            self.messages = []

    def wait_for(self, pred, timeout=10):
        """Waits until pred(list of messages) is truthy; returns that value or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred(self.messages)
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.2))

    def wait_message(self, match, timeout=10):
        """The first message for which match(msg) holds, or None."""
        def pred(msgs):
            for m in msgs:
                if match(m):
                    return m
            return None
        return self.wait_for(pred, timeout)

    def on_topic(self, topic):
        return [m for m in self.snapshot() if m.topic == topic]

    def sync(self, timeout=10):
        """Publishes a marker to our own sync topic and waits for it: every message
        the broker queued for us before it (e.g. retained messages sent after
        SUBACK) has then arrived."""
        self._sync_n += 1
        marker = ("%s/%d" % (self.client_id, self._sync_n)).encode()
        self.client.publish(self.sync_topic, marker, qos=1)
        m = self.wait_message(lambda m: m.topic == self.sync_topic and m.payload == marker,
                              timeout)
        if m is None:
            raise AssertionError("subscriber %s: sync marker not received" % self.client_id)


def publish(port, topic, payload, retain=False, qos=1):
    """Publishes one message from a throw-away client and waits for completion."""
    c = mqtt.Client(client_id=unique("r2m-it-pub"), protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    try:
        info = c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def retained(port, topic_filters, timeout=10, protocol=mqtt.MQTTv311):
    """Connects a fresh (late) subscriber, returns {topic: Message} of what the
    broker sends right after subscribing (the retained messages)."""
    s = Subscriber(port, topic_filters, qos=1, protocol=protocol)
    s.start(timeout)
    try:
        s.sync(timeout)
        out = {}
        for m in s.snapshot():
            if m.topic != s.sync_topic:
                out[m.topic] = m
        return out
    finally:
        s.stop()


class IntegrationCase(unittest.TestCase):
    """Base class: tracks brokers, gateways, subscribers and temp dirs made by a
    test (or by setUpClass) and prints broker/gateway logs when a test fails."""

    _class_resources = None

    @classmethod
    def setUpClass(cls):
        cls._class_resources = []
        cls._class_tmp = []

    @classmethod
    def tearDownClass(cls):
        problems = finish_gateways(cls._class_resources or [])
        if problems:
            logs = "".join("\n----- %s log -----\n%s\n" % (p.name, p.log())
                           for p in cls._class_resources if isinstance(p, Gateway))
        _cleanup(cls._class_resources or [], cls._class_tmp or [])
        if problems:
            raise AssertionError("gateway problems at the end of %s:\n  %s\n%s"
                                 % (cls.__name__, "\n  ".join(problems), logs))

    def tearDown(self):
        problems = finish_gateways(self._resources)
        self.assertEqual(problems, [], "gateway did not stop cleanly or a sanitizer "
                         "reported an error")

    @classmethod
    def class_tmpdir(cls):
        d = tempfile.mkdtemp(prefix="r2m-it-")
        cls._class_tmp.append(d)
        return d

    @classmethod
    def class_track(cls, obj):
        cls._class_resources.append(obj)
        return obj

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="r2m-it-")
        self._tmp.append(d)
        return d

    def track(self, obj):
        self._resources.append(obj)
        return obj

    def start_broker(self, workdir=None, **kw):
        return self.track(Broker(workdir or self.tmpdir(), **kw)).start()

    def start_gateway(self, workdir, broker, **kw):
        wait = kw.pop("wait", True)
        return self.track(Gateway(workdir, broker.port, **kw)).start(wait=wait)

    def subscribe(self, port, topics=("#",), **kw):
        return self.track(Subscriber(port, topics, **kw)).start()

    def run(self, result=None):
        if result is None:
            result = self.defaultTestResult()
        self._resources = []
        self._tmp = []
        before = len(result.failures) + len(result.errors)
        try:
            return super().run(result)
        finally:
            if len(result.failures) + len(result.errors) > before:
                self.dump_logs()
            _cleanup(self._resources, self._tmp)

    def dump_logs(self):
        procs = [r for r in self._resources + (type(self)._class_resources or [])
                 if isinstance(r, Process)]
        out = sys.stderr
        for p in procs:
            out.write("\n----- %s log (%s) -----\n%s\n----- end of %s log -----\n"
                      % (p.name, p.log_path, p.log(), p.name))
        out.flush()

    # Assertions shared by several tests.

    def assertCors(self, resp, origin="*"):
        self.assertEqual(resp.header("Access-Control-Allow-Origin"), origin,
                         "Access-Control-Allow-Origin missing/wrong on %r" % resp)

    def assertJsonError(self, resp, status):
        self.assertEqual(resp.status, status, resp)
        self.assertIsInstance(resp.json, dict, "error body is not a JSON object: %r" % resp)
        self.assertEqual(resp.json.get("status"), "error", resp)
        self.assertIsInstance(resp.json.get("error"), str, resp)
        self.assertTrue(resp.json.get("error"), resp)

    def assertOk(self, resp):
        self.assertEqual(resp.status, 200, resp)
        self.assertIsInstance(resp.json, dict, resp)
        self.assertEqual(resp.json.get("status"), "ok", resp)
        self.assertIsInstance(resp.json.get("seq"), int, resp)
        self.assertNotIsInstance(resp.json.get("seq"), bool, resp)
        return resp.json["seq"]


def _cleanup(resources, tmpdirs):
    for r in reversed(resources):
        try:
            if isinstance(r, Subscriber):
                r.stop()
            else:
                r.cleanup()
        except Exception as e:  # cleanup must go on
            sys.stderr.write("cleanup of %r: %s\n" % (r, e))
    del resources[:]
    if os.environ.get("R2M_KEEP_TMP") != "1":
        for d in tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
    else:
        for d in tmpdirs:
            sys.stderr.write("kept %s\n" % d)
    del tmpdirs[:]


# The SmartRace mapping as SPEC.md section 2 states it, written independently of
# the gateway so that the tests check the gateway against the spec.

BASE = "smartrace"

EVENT_TOPICS = {
    "ui.lap_update": ("lap", True),
    "event.start": ("event/start", False),
    "event.end": ("event/end", False),
    "event.change_status": ("event/status", False),
    "events.weather_change": ("weather/change", False),
    "events.weather_update": ("weather/forecast", False),
    "race.vsc_deployed": ("vsc", False),
    "race.vsc_retracted": ("vsc", False),
    "race.penalty_update": ("penalty", True),
    "race.damage_update": ("damage", True),
    "util.fuel_update": ("fuel", True),
    "events.tire_change": ("tire", True),
    "event.pit.enter": ("pit", True),
    "event.pit.leave": ("pit", True),
    "util.set_active_track": ("track", False),
    "ui.reset": ("reset", False),
    "ui.remove_car_from_session": ("remove", True),
    "cu.send_esc_command": ("esc", False),
}


def sanitize_level(s):
    """SPEC section 1: outside [A-Za-z0-9._-] -> '_' (per byte of UTF-8), empty ->
    '_', cap 64 bytes."""
    if isinstance(s, str):
        s = s.encode("utf-8")
    out = bytes(c if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c in b"._-")
                else ord("_") for c in s)
    out = out[:64]
    return out.decode("ascii") if out else "_"


# Events whose event_data may be the bare controller id ("Contains only the
# controller ID" in the vendor page; real apps send 6 or "5").
BARE_ID_EVENTS = {"event.pit.enter", "event.pit.leave", "ui.remove_car_from_session"}


def controller_of(data, event_type=None):
    """The controller id as a string, or None when there is no usable one
    (missing, null, empty, or not a string/integer)."""
    cid = data.get("controller_id") if isinstance(data, dict) else None
    if isinstance(cid, bool) or not isinstance(cid, (int, str)) or cid == "":
        cid = None
    if cid is None and event_type in BARE_ID_EVENTS and not isinstance(data, (dict, bool)):
        cid = data if isinstance(data, (int, str)) and data != "" else None
    return str(cid) if cid is not None else None


def expected_topic(event):
    etype = event["event_type"]
    if etype not in EVENT_TOPICS:
        return "%s/other/%s" % (BASE, sanitize_level(etype))
    sub, per_controller = EVENT_TOPICS[etype]
    if not per_controller:
        return "%s/%s" % (BASE, sub)
    cid = controller_of(event.get("event_data"), etype)
    level = sanitize_level(cid) if cid is not None else "_"
    return "%s/%s/%s" % (BASE, sub, level)


def is_per_controller(etype):
    return EVENT_TOPICS.get(etype, (None, False))[1]


def load_fixture_dir(path):
    """[(name, raw bytes)] of every *.json in path (sorted), [] if none."""
    if not os.path.isdir(path):
        return []
    out = []
    for n in sorted(os.listdir(path)):
        if n.endswith(".json"):
            with open(os.path.join(path, n), "rb") as f:
                out.append((n, f.read()))
    return out


def find_values(obj, key):
    """Every value stored under key anywhere in a JSON document."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                found.append(v)
            found.extend(find_values(v, key))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(find_values(v, key))
    return found


def contains_value(obj, value):
    if obj == value and type(obj) == type(value):
        return True
    if isinstance(obj, dict):
        return any(contains_value(v, value) for v in obj.values())
    if isinstance(obj, list):
        return any(contains_value(v, value) for v in obj)
    return False


def delivery_report(test, sub, answered, topic, label, show_dups=True):
    """answered: {seq: i}. Waits for every answered seq, then asserts order,
    payload and no loss; prints one summary line. Returns (delivered, dups, lost)."""
    def seqs_of(msgs):
        out = []
        for m in msgs:
            if m.topic == topic:
                out.append((m.json().get("seq"), m))
        return out

    sub.wait_for(lambda msgs: set(answered) <= {s for s, _ in seqs_of(msgs)}, 60)
    got = seqs_of(sub.snapshot())
    first = []
    seen = {}
    for s, m in got:
        seen.setdefault(s, []).append(m)
        if len(seen[s]) == 1:
            first.append(s)
    dups = len(got) - len(seen)
    lost = sorted(set(answered) - set(seen))
    delivered = len(set(answered) & set(seen))
    if show_dups:
        print("%s: answered_2xx=%d delivered=%d duplicates=%d lost=%d"
              % (label, len(answered), delivered, dups, len(lost)))
    else:
        print("%s: answered_2xx=%d delivered=%d lost=%d (duplicates=%d)"
              % (label, len(answered), delivered, len(lost), dups))
    test.assertEqual(lost, [], "events answered 2xx never delivered (seqs)")
    inversions = [(a, b) for a, b in zip(first, first[1:]) if b < a]
    if inversions:
        print("%s: out of order first arrivals (seq before, seq after): %r"
              % (label, inversions[:20]))
    test.assertEqual(inversions, [], "first arrivals not in seq order: seq b arrived "
                     "right after a > b (a, b) x %d" % len(inversions))
    for s, ms in seen.items():
        datas = {m.payload for m in ms}
        test.assertEqual(len(datas), 1, "seq %d delivered with different payloads (reused): %r"
                         % (s, datas))
        for m in ms:
            test.assertEqual(m.qos, 1)
        if s in answered:
            test.assertEqual(ms[0].json()["data"]["i"], answered[s],
                             "seq %d carries another event" % s)
    return len(seen), dups, lost


def main():
    unittest.main(verbosity=2)


# ---------------------------------------------------------------------------
# RACE RESULT (SPEC section 3): the fake API (tests/fakerr), the gateway's
# [raceresult] config, and a collector that checks every passing a subscriber
# receives against the spec, independently of the gateway's code.
# ---------------------------------------------------------------------------

FAKERR_DIR = os.path.join(REPO, "tests", "fakerr")
RR_CURSOR_RE = re.compile(r"^([0-9]+) ([0-9]+)\n$")


REPLAY = os.environ.get("R2M_REPLAY") or os.path.join(REPO, "build", "race2mqtt-replay")
RACE = os.path.join(FIXTURES, "replay", "race.jsonl")  # the shipped race


class ReplayCase(IntegrationCase):
    """Tests that play recordings with race2mqtt-replay ($R2M_REPLAY) into a
    gateway of their own: self.dir, world() and url()."""

    def setUp(self):
        self.assertTrue(os.access(REPLAY, os.X_OK), "replay tool %s missing (set R2M_REPLAY)"
                        % REPLAY)
        self.dir = self.tmpdir()

    def world(self, **gw):
        broker = self.start_broker(self.dir)
        gateway = self.start_gateway(self.dir, broker, **gw)
        return broker, gateway

    def url(self, gw):
        return "http://127.0.0.1:%d/" % gw.http_port


def fake_raceresult(**kw):
    """A started FakeRaceResult (tests/fakerr/fake_raceresult.py); stop() it."""
    if FAKERR_DIR not in sys.path:
        sys.path.insert(0, FAKERR_DIR)
    from fake_raceresult import FakeRaceResult
    return FakeRaceResult(**kw).start()


class _Stoppable:
    """Lets IntegrationCase.track() clean up objects with a stop() method."""

    name = "fakerr"

    def __init__(self, obj):
        self.obj = obj

    def cleanup(self):
        try:
            self.obj.stop()
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass


def rr_decoder_world(case, workdir, files, api_key, customer, device, client_prefix):
    """A fake RACE RESULT with one Decoder holding files ({file: passings}), a
    persistent broker and a persistent 3.1.1 subscriber on every passing,
    all tracked by case. Returns (fake, broker, sub)."""
    rr = fake_raceresult(api_key=api_key, customer=customer, world={
        "devices": [{"id": device, "type": "Decoder", "files": dict(files)}]})
    case.track(_Stoppable(rr))
    broker = case.start_broker(workdir, persistence=True)
    sub = case.subscribe(broker.port, ["raceresult/+/passing"], qos=1, protocol=mqtt.MQTTv311,
                         persistent=True, client_id=unique(client_prefix))
    return rr, broker, sub


def rr_extra(fake, api_key, customer, **keys):
    """extra= for Gateway: [raceresult] pointing at fake; keys override/add."""
    sec = {"enabled": "true", "base_url": fake.url, "customer_id": str(customer),
           "api_key": api_key, "poll_interval_ms": "200"}
    sec.update({k: str(v) for k, v in keys.items()})
    return {"raceresult": sec}


def rr_ids(device, files, first=(1, 1)):
    """Expected ids, in order: files {file: count}; (file, no) to start at."""
    out = []
    for f in sorted(int(k) for k in files):
        n = int(files[f] if f in files else files[str(f)])
        for no in range(1, n + 1):
            if (f, no) >= tuple(first):
                out.append("%s/%d/%d" % (device, f, no))
    return out


def rfc3339_ms(text):
    """Milliseconds since the epoch (floor) of an RFC 3339 time with 0-9
    fractional digits and Z or +hh:mm / -hh:mm; None if it is not one."""
    import calendar
    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                 r"(Z|[+-]\d{2}:\d{2})$", text or "")
    if not m:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or "").ljust(9, "0")
    sec = calendar.timegm((y, mo, d, h, mi, min(s, 59), 0, 0, 0))
    tz = m.group(8)
    if tz != "Z":
        off = int(tz[1:3]) * 3600 + int(tz[4:6]) * 60
        sec -= off if tz[0] == "+" else -off
    return sec * 1000 + int(frac) // 1000000


def rr_expected_passing(rec):
    """The common payload fields SPEC section 3 derives from a detection record
    (None = absent from the record), by record shape."""
    def dig(o, *keys):
        for k in keys:
            if not isinstance(o, dict) or k not in o:
                return None
            o = o[k]
        return o
    if isinstance(rec.get("no"), dict):            # Ubidium detection (snake_case)
        bat = dig(rec, "transp", "active", "bat")
        return {"kind": "detection", "file": rec["no"]["file"], "no": rec["no"]["no"],
                "transponder": dig(rec, "transp", "id"), "time": rec.get("time"),
                "loop": dig(rec, "act_data", "loop_id"),
                "channel": dig(rec, "act_data", "channel"), "hits": rec.get("hits"),
                "rssi": rec.get("rssi"), "battery": None if bat is None else bat / 10}
    if "TrackpingNo" in rec:
        return {"kind": "trackping", "file": rec["FileNo"], "no": rec["TrackpingNo"],
                "transponder": rec.get("Code"), "time": rec.get("Time"),
                "loop": rec.get("LoopID"), "channel": rec.get("Channel"),
                "hits": rec.get("Hits"), "rssi": rec.get("RSSI"), "battery": rec.get("Battery")}
    return {"kind": "passing", "file": rec["FileNo"], "no": rec["PassingNo"],
            "transponder": rec.get("Code"), "time": rec.get("RealTime"),
            "loop": rec.get("LoopID"), "channel": rec.get("Channel"), "hits": rec.get("Hits"),
            "rssi": rec.get("RSSI"), "battery": rec.get("Battery")}


class PassingCollector:
    """Reads raceresult/<device>/passing messages from a Subscriber as they
    arrive (each payload parsed once, outside the subscriber's lock) and checks
    each one: QoS 1, not retained, JSON object whose id is "<device>/<file>/<no>"
    and whose device matches the topic. problems lists what was wrong."""

    def __init__(self, sub, base="raceresult"):
        self.sub = sub
        self.rx = re.compile(r"^%s/([^/]+)/passing$" % re.escape(base))
        self.pos = 0
        self.count = {}       # id -> times received
        self.first = {}       # id -> (Message, payload dict) of the first arrival
        self.order = {}       # device -> ids in order of first arrival
        self.total = 0
        self.problems = []
        self.t_first = self.t_last = None

    def update(self):
        with self.sub.cond:
            new = self.sub.messages[self.pos:]
            self.pos += len(new)
        for m in new:
            mt = self.rx.match(m.topic)
            if not mt:
                continue
            self.total += 1
            self.t_first = self.t_first or m.t
            self.t_last = m.t
            try:
                p = json.loads(m.payload.decode("utf-8"))
            except ValueError as e:
                self.problems.append("%s: payload is not JSON (%s): %r" % (m.topic, e,
                                                                           m.payload[:200]))
                continue
            pid = p.get("id") if isinstance(p, dict) else None
            if not isinstance(pid, str):
                self.problems.append("%s: no string id: %r" % (m.topic, m.payload[:200]))
                continue
            if m.qos != 1:
                self.problems.append("%s %s: QoS %d, want 1" % (m.topic, pid, m.qos))
            if m.retain:
                self.problems.append("%s %s: retained" % (m.topic, pid))
            dev = p.get("device")
            if dev != mt.group(1) or pid != "%s/%s/%s" % (dev, p.get("file"), p.get("no")):
                self.problems.append("%s: id/device/file/no inconsistent: %r"
                                     % (m.topic, {k: p.get(k) for k in ("id", "device", "file",
                                                                       "no")}))
            n = self.count.get(pid, 0)
            self.count[pid] = n + 1
            if n == 0:
                self.first[pid] = (m, p)
                self.order.setdefault(dev, []).append(pid)

    def wait_ids(self, ids, timeout):
        """Waits until every id in ids arrived; returns the missing ones."""
        ids = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            self.update()
            missing = ids.difference(self.count)
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.05)

    def wait_total(self, n, timeout):
        deadline = time.monotonic() + timeout
        while True:
            self.update()
            if self.total >= n or time.monotonic() >= deadline:
                return self.total
            time.sleep(0.02)

    def duplicates(self, ids=None):
        keys = self.count if ids is None else [i for i in ids if i in self.count]
        return sum(self.count[i] - 1 for i in keys)

    def settle(self, quiet=0.5, timeout=10):
        """Waits until no passing arrived for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last = -1
        t_change = time.monotonic()
        while time.monotonic() < deadline:
            self.update()
            if self.total != last:
                last = self.total
                t_change = time.monotonic()
            elif time.monotonic() - t_change >= quiet:
                return
            time.sleep(0.05)

    def check(self, test, expected, fake=None, label="passings", check_all_raw=True):
        """Asserts: no problems, every expected id arrived, no unexpected id,
        first arrivals in order per device (expected gives the order), and when
        fake is given, raw == fake.detection() for every first arrival and the
        common fields equal what SPEC section 3 derives from the record."""
        self.update()
        test.assertEqual(self.problems[:20], [], "%s: bad passing messages (%d)"
                         % (label, len(self.problems)))
        missing = [i for i in expected if i not in self.count]
        test.assertEqual(missing[:20], [], "%s: %d of %d ids never delivered"
                         % (label, len(missing), len(expected)))
        exp_set = set(expected)
        extra = [i for i in self.count if i not in exp_set]
        test.assertEqual(sorted(extra)[:20], [], "%s: %d unexpected ids delivered"
                         % (label, len(extra)))
        rank = {i: k for k, i in enumerate(expected)}
        for dev, ids in self.order.items():
            inv = [(a, b) for a, b in zip(ids, ids[1:]) if rank[b] < rank[a]]
            test.assertEqual(inv[:10], [], "%s: device %s: first arrivals out of order "
                             "(%d inversions)" % (label, dev, len(inv)))
        if fake is not None:
            bad = []
            for pid in expected if check_all_raw else expected[:: max(1, len(expected) // 500)]:
                _, p = self.first[pid]
                rec = fake.detection(p["device"], p["file"], p["no"])
                if p.get("raw") != rec:
                    bad.append((pid, "raw", p.get("raw"), rec))
                    continue
                exp = rr_expected_passing(rec)
                exp["time_ms"] = rfc3339_ms(exp["time"])
                for k, v in exp.items():
                    got = p.get(k)
                    if got != v or type(got) != type(v):
                        bad.append((pid, k, got, v))
                if len(bad) > 20:
                    break
            test.assertEqual(bad[:10], [], "%s: payload fields differ from the API record "
                             "(id, field, got, want)" % label)

    def summary(self, label, expected):
        dups = self.duplicates()
        secs = (self.t_last - self.t_first) if self.t_first else 0.0
        delivered = len([i for i in expected if i in self.count])
        print("%s: passings=%d delivered=%d duplicates=%d seconds=%.2f rate=%.0f/s"
              % (label, len(expected), delivered, dups, secs,
                 self.total / secs if secs > 0 else 0.0))
        return delivered, dups, secs


def rr_read_cursors(store_dir):
    """{device level: (file, next_no)} from <store>/raceresult/*.cursor;
    raises AssertionError on a file that is not "<file> <next>\\n"."""
    d = os.path.join(store_dir, "raceresult")
    out = {}
    if not os.path.isdir(d):
        return out
    for n in sorted(os.listdir(d)):
        if not n.endswith(".cursor"):
            continue
        with open(os.path.join(d, n), "rb") as f:
            text = f.read().decode("ascii", "replace")
        m = RR_CURSOR_RE.match(text)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise AssertionError("cursor file %s is not '<file> <next>\\n': %r" % (n, text))
        out[n[:-len(".cursor")]] = (int(m.group(1)), int(m.group(2)))
    return out


def log_lines(path, pattern):
    """Lines of a log file that match the regular expression pattern."""
    rx = re.compile(pattern)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if rx.search(line)]


# ---------------------------------------------------------------------------
# MQTT request/response (decoder commands, SPEC section 3 "Commands"): a
# subscriber that keeps each message's MQTT 5 properties, a publisher that
# keeps one connection (so back-to-back publishes keep their order) and can set
# Response Topic / Correlation Data, and a wait for a client's SUBACK.
# ---------------------------------------------------------------------------

class PropMessage(Message):
    """A Message plus its MQTT 5 Correlation Data and Response Topic (None when
    absent or with MQTT 3.1.1)."""

    __slots__ = ("correlation", "response_topic")


class PropSubscriber(Subscriber):
    """A Subscriber whose messages are PropMessage."""

    def _on_message(self, client, userdata, msg):
        m = PropMessage(msg.topic, msg.payload, msg.qos, msg.retain)
        props = getattr(msg, "properties", None)
        m.correlation = getattr(props, "CorrelationData", None) if props is not None else None
        m.response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        with self.cond:
            self.messages.append(m)
            self.cond.notify_all()


class Publisher:
    """One MQTT connection for many publishes, in order. With MQTTv5,
    publish() can set Response Topic and Correlation Data. Track it with
    IntegrationCase.track() (cleanup() stops it)."""

    name = "publisher"

    def __init__(self, port, protocol=mqtt.MQTTv5, client_id=None):
        self.port = port
        self.protocol = protocol
        self.client_id = client_id or unique("r2m-it-pub")
        self.connected = threading.Event()
        self.infos = []
        self.client = mqtt.Client(client_id=self.client_id, protocol=protocol)
        self.client.on_connect = self._on_connect
        self.client.max_inflight_messages_set(0)   # 0 = no limit in paho
        self.client.max_queued_messages_set(0)

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        if rc == 0:
            self.connected.set()

    def start(self, timeout=10):
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise AssertionError("publisher %s: no CONNACK from port %d"
                                 % (self.client_id, self.port))
        return self

    def publish(self, topic, payload, qos=1, retain=False, response_topic=None,
                correlation=None):
        props = None
        if response_topic is not None or correlation is not None:
            if self.protocol != mqtt.MQTTv5:
                raise ValueError("Response Topic / Correlation Data need MQTT 5")
            from paho.mqtt.properties import Properties
            from paho.mqtt.packettypes import PacketTypes
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if self.protocol == mqtt.MQTTv5:
            info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        else:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self.infos.append(info)
        return info

    def wait_all(self, timeout=10):
        """Waits until every publish so far completed (PUBACK for QoS 1)."""
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                raise AssertionError("publisher %s: a publish did not complete in %ds"
                                     % (self.client_id, timeout))

    def stop(self):
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001
            pass
        self.client.loop_stop()

    def cleanup(self):
        self.stop()


def broker_subscriptions(broker, client_id, topic_filter):
    """How many times the broker added topic_filter for client_id (from its
    log: mosquitto logs "<client id> <qos> <filter>" as it adds one)."""
    return len(log_lines(broker.log_path, r"^\S+: %s \d %s$" % (re.escape(client_id),
                                                                 re.escape(topic_filter))))


def wait_subscribed(broker, client_id, filters, before, timeout=15):
    """Waits until the broker added each of filters for client_id once more
    than before[filter] (broker_subscriptions() taken before the gateway
    started); raises AssertionError otherwise."""
    def done():
        return all(broker_subscriptions(broker, client_id, f) > before.get(f, 0)
                   for f in filters)
    if wait_until(done, timeout) is None:
        raise AssertionError("%s: not subscribed to all of %r after %ds"
                             % (client_id, filters, timeout))


# ---------------------------------------------------------------------------
# Faults on the broker connection (test_proxy_faults.py): a steady poster of
# SmartRace events that records every answer, and a /readyz sampler.
# ---------------------------------------------------------------------------

class EventPoster:
    """POSTs {"event_type": event_type, "event_data": {"i": i}} to a gateway
    every `period` seconds (on schedule, not after the previous answer) from
    one thread, so the seqs of answered events follow i. Records answered
    {seq: i}, the monotonic time of each answer, refusals and exceptions.
    Track it with IntegrationCase.track() (cleanup() stops it)."""

    name = "poster"

    def __init__(self, gw, event_type, period):
        self.gw = gw
        self.event_type = event_type
        self.period = period
        self.answered = {}     # seq -> i
        self.t_answer = {}     # seq -> monotonic time of the 200
        self.refused = []      # (i, status, body)
        self.errors = []       # (i, repr(exception))
        self.posted = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="poster", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            try:
                r = self.gw.post({"event_type": self.event_type, "event_data": {"i": i}})
                if r.status == 200 and isinstance(r.json, dict) and "seq" in r.json:
                    self.answered[r.json["seq"]] = i
                    self.t_answer[r.json["seq"]] = time.monotonic()
                else:
                    self.refused.append((i, r.status, r.body[:200]))
            except Exception as e:  # noqa: BLE001 - the test asserts on errors
                self.errors.append((i, repr(e)))
            i += 1
            self.posted = i
            delay = t0 + i * self.period - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def answered_count(self):
        return len(self.answered)

    def stop(self, timeout=30):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError("poster did not stop within %ds" % timeout)

    def cleanup(self):
        try:
            self.stop()
        except AssertionError:
            pass


class ReadyzMonitor:
    """Samples GET /readyz of a gateway every `interval` seconds from a thread;
    samples is [(monotonic time, status or None)]. Track it with
    IntegrationCase.track() (cleanup() stops it)."""

    name = "readyz"

    def __init__(self, gw, interval=0.05):
        self.gw = gw
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="readyz", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.gw._get_status("/readyz")))
            self._stop.wait(self.interval)

    def between(self, t0, t1=None):
        """Statuses sampled in [t0, t1] (t1 None = until now)."""
        return [s for t, s in list(self.samples) if t >= t0 and (t1 is None or t <= t1)]

    def first(self, status, after):
        """Time of the first sample with status at or after `after`, or None."""
        for t, s in list(self.samples):
            if t >= after and s == status:
                return t
        return None

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def cleanup(self):
        self.stop()


# ---------------------------------------------------------------------------
# Broker security (SPEC section 6): certificates made with Debian's openssl
# CLI, a mosquitto password file made with mosquitto_passwd, the mosquitto
# lines that require both, and MQTT clients (subscriber, publisher) that
# connect with TLS and a user name.
# ---------------------------------------------------------------------------

OPENSSL = os.environ.get("R2M_OPENSSL", "openssl")
MOSQUITTO_PASSWD = os.environ.get("R2M_MOSQUITTO_PASSWD", "mosquitto_passwd")


def _run_tool(argv, cwd):
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, timeout=30)
    if p.returncode != 0:
        raise AssertionError("%s failed with %d:\n%s" % (" ".join(argv), p.returncode,
                                                          p.stdout.decode("utf-8", "replace")))


def make_ca(workdir, name, cn=None):
    """A self-signed CA (EC P-256, valid 2 days) in workdir; returns
    (cert path, key path)."""
    crt = os.path.join(workdir, name + ".crt")
    key = os.path.join(workdir, name + ".key")
    _run_tool([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
               "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
               "-days", "2", "-subj", "/CN=" + (cn or name),
               "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign,cRLSign"], workdir)
    return crt, key


def make_cert(workdir, name, ca, cn, san):
    """A server certificate signed by ca = (cert, key) for subject CN cn and
    subjectAltName san (e.g. "IP:127.0.0.1,DNS:localhost"); returns
    (cert path, key path)."""
    crt = os.path.join(workdir, name + ".crt")
    key = os.path.join(workdir, name + ".key")
    csr = os.path.join(workdir, name + ".csr")
    ext = os.path.join(workdir, name + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n" % san)
    _run_tool([OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt",
               "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr,
               "-subj", "/CN=" + cn], workdir)
    _run_tool([OPENSSL, "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
               "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
               "-extfile", ext, "-out", crt], workdir)
    return crt, key


def make_password_file(workdir, users, name="passwd"):
    """A mosquitto password file for users {name: password}; returns its path.
    Call again with the same name to replace it (then SIGHUP the broker)."""
    path = os.path.join(workdir, name)
    if os.path.exists(path):
        os.unlink(path)
    first = True
    for user, password in users.items():
        _run_tool([MOSQUITTO_PASSWD] + (["-c"] if first else []) + ["-b", path, user, password],
                  workdir)
        first = False
    return path


def broker_security_conf(cert=None, ca=None, password_file=None):
    """extra_conf for Broker: the listener speaks TLS 1.2+ with cert =
    (cert path, key path) (ca: the CA file mosquitto needs alongside), and/or
    requires a user name and password from password_file."""
    lines = []
    if cert:
        lines += ["cafile %s" % ca, "certfile %s" % cert[0], "keyfile %s" % cert[1],
                  "tls_version tlsv1.2"]
    if password_file:
        # Later lines win: this overrides Broker's "allow_anonymous true".
        lines += ["allow_anonymous false", "password_file %s" % password_file]
    return "\n".join(lines)


def mqtt_client_security(client, ca_file=None, username=None, password=None, verify=True):
    """Sets up a paho client for TLS (ca_file: verify the broker's certificate
    and host name against it) and/or a user name and password."""
    if ca_file:
        import ssl
        client.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if not verify:
            client.tls_insecure_set(True)
    if username is not None:
        client.username_pw_set(username, password)


class SecureSubscriber(Subscriber):
    """A Subscriber that connects with TLS (ca_file) and/or a user name."""

    def __init__(self, port, topics=("#",), ca_file=None, username=None, password=None, **kw):
        super().__init__(port, topics, **kw)
        mqtt_client_security(self.client, ca_file, username, password)


class SecurePublisher(Publisher):
    """A Publisher that connects with TLS (ca_file) and/or a user name."""

    def __init__(self, port, ca_file=None, username=None, password=None, **kw):
        super().__init__(port, **kw)
        mqtt_client_security(self.client, ca_file, username, password)


def mqtt_connack(port, ca_file=None, username=None, password=None, verify=True, timeout=10):
    """Connects one MQTT 3.1.1 client and returns the CONNACK code (0 = accepted),
    or the exception text when the connection (e.g. the TLS handshake) fails."""
    c = mqtt.Client(client_id=unique("r2m-it-probe"), protocol=mqtt.MQTTv311)
    mqtt_client_security(c, ca_file, username, password, verify)
    got = []
    done = threading.Event()

    def on_connect(client, userdata, flags, rc, properties=None):
        got.append(rc)
        done.set()
    c.on_connect = on_connect
    failed = None
    import gc
    import warnings
    # paho 1.6 leaves the socket of a failed handshake to the collector.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            c.connect("127.0.0.1", port, keepalive=30)
        except Exception as e:  # noqa: BLE001 - the failure is the answer
            failed = "%s: %s" % (type(e).__name__, e)
        gc.collect()
    if failed is not None:
        return failed
    c.loop_start()
    try:
        done.wait(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0] if got else "no CONNACK within %ds" % timeout


def secure_retained(port, topic_filters, timeout=10, **security):
    """retained() for a broker that wants TLS and/or a password."""
    s = SecureSubscriber(port, topic_filters, protocol=mqtt.MQTTv311, **security)
    s.start(timeout)
    try:
        s.sync(timeout)
        return {m.topic: m for m in s.snapshot() if m.topic != s.sync_topic}
    finally:
        s.stop()


# ---------------------------------------------------------------------------
# Hostile HTTP clients and journal damage (test_http_hostile.py,
# test_journal_damage.py): a raw HTTP/1.1 client that sends any bytes and reads
# one answer at a time, the gateway's memory and file descriptors from /proc,
# log lines written after a mark, an independent reader of the journal's
# on-disk record format, and a gateway run under a file size limit.
# ---------------------------------------------------------------------------

def proc_status_kib(pid, field="VmRSS"):
    """A "<field>: N kB" value of /proc/<pid>/status in KiB (None if absent)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def open_fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class RawAnswer:
    """One HTTP answer read by RawHttp: status (None if the server closed or
    timed out before a status line), lower-case headers, body, and whether the
    server closes the connection after it."""

    def __init__(self, status, headers, body, closes, error=None):
        self.status = status
        self.headers = headers
        self.body = body
        self.closes = closes
        self.error = error

    def __repr__(self):
        return "<raw %s %r %r%s>" % (self.status, self.headers, self.body[:200],
                                     " error=%s" % self.error if self.error else "")


class RawHttp:
    """A client connection for hand-made requests: send() any bytes, answer()
    reads exactly one response (Content-Length or chunked body; to EOF
    otherwise). ask() reconnects first when the previous answer closed the
    connection, so one RawHttp serves a keep-alive series of requests."""

    def __init__(self, port, timeout=10, host="127.0.0.1"):
        self.port = port
        self.host = host
        self.timeout = timeout
        self.sock = None
        self.buf = b""
        self.connects = 0

    def connect(self):
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.connects += 1

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def send(self, data):
        """Sends data; returns an error text instead of raising (the server
        may answer and close before it read everything)."""
        try:
            self.sock.sendall(data)
            return None
        except OSError as e:
            return "send: %s" % e

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("closed by the server")
        self.buf += chunk

    def _until(self, sep):
        while sep not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(sep)
        return line

    def _exactly(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def answer(self, head_only=False):
        try:
            head = self._until(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
            if not m:
                self.close()
                return RawAnswer(None, {}, head, True, "bad status line %r" % lines[0][:80])
            status = int(m.group(1))
            headers = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
            closes = headers.get("connection", "").lower() == "close"
            if head_only or status in (100, 204, 304):
                body = b""
            elif "content-length" in headers:
                body = self._exactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int(self._until(b"\r\n").split(b";")[0], 16)
                    if size == 0:
                        self._until(b"\r\n")
                        break
                    body += self._exactly(size)
                    self._exactly(2)
            else:
                body = self.buf
                try:
                    while True:
                        self._fill()
                except EOFError:
                    pass
                body, self.buf, closes = self.buf, b"", True
            if closes:
                self.close()
            return RawAnswer(status, headers, body, closes)
        except (EOFError, OSError) as e:
            self.close()
            return RawAnswer(None, {}, b"", True, "%s: %s" % (type(e).__name__, e))

    def ask(self, data):
        """Sends one request (reconnecting if needed) and reads its answer."""
        if self.sock is None:
            self.connect()
        err = self.send(data)
        a = self.answer()
        if a.status is None and err:
            a.error = "%s; %s" % (err, a.error)
        return a


def log_mark(path):
    """The current size of a log file: pass it to log_lines_since()."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_lines_since(path, mark, pattern):
    """Lines written to a log file after log_mark() returned mark that match
    the regular expression pattern."""
    rx = re.compile(pattern)
    try:
        with open(path, "rb") as f:
            f.seek(mark)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if rx.search(line)]


# The journal's record format as gateway/journal.c's header comment documents
# it, read here independently: u32 magic "R2MJ", u32 crc32 of every byte after
# it, u64 seq, u32 topic_len, u32 payload_len, topic, payload (little-endian).
JOURNAL_MAGIC = 0x4a4d3252
JOURNAL_HEADER = 24


def journal_segments(store_dir):
    """Paths of <store_dir>/journal/seg-*.log, oldest first."""
    d = os.path.join(store_dir, "journal")
    if not os.path.isdir(d):
        return []
    return [os.path.join(d, n) for n in sorted(os.listdir(d))
            if re.match(r"^seg-[0-9]{20}\.log$", n)]


class JournalRecord:
    __slots__ = ("offset", "length", "seq", "topic", "payload")

    def __init__(self, offset, length, seq, topic, payload):
        self.offset = offset
        self.length = length
        self.seq = seq
        self.topic = topic
        self.payload = payload

    def __repr__(self):
        return "<record seq=%d @%d+%d %s>" % (self.seq, self.offset, self.length, self.topic)


def journal_read_segment(path):
    """(records, offset where the valid records end, size of the data): every
    record from the start of the file up to the first one that is incomplete
    or whose magic or CRC is wrong. Zeros after the last record are the
    journal's preallocation, not data: then the size is where the records end."""
    import struct
    import zlib
    with open(path, "rb") as f:
        data = f.read()
    recs = []
    off = 0
    while len(data) - off >= JOURNAL_HEADER:
        magic, crc, seq, tl, pl = struct.unpack_from("<IIQII", data, off)
        n = JOURNAL_HEADER + tl + pl
        if magic != JOURNAL_MAGIC or len(data) - off < n:
            break
        if zlib.crc32(data[off + 8:off + n]) != crc:
            break
        topic = data[off + JOURNAL_HEADER:off + JOURNAL_HEADER + tl].decode("utf-8", "replace")
        recs.append(JournalRecord(off, n, seq, topic, data[off + JOURNAL_HEADER + tl:off + n]))
        off += n
    size = off if data.count(0, off) == len(data) - off else len(data)
    return recs, off, size


class FsizeGateway(Gateway):
    """A Gateway run under a file size limit (RLIMIT_FSIZE, what `prlimit
    --fsize` sets): a journal write beyond it fails with EFBIG, the way a full
    disk makes it fail. fsize=None: no limit. Its output goes through a pipe
    (copied into the log file by a thread), so that the limit does not also
    stop the gateway from logging. set_fsize() changes the limit of the
    running process ("the disk has room again")."""

    def __init__(self, workdir, broker_port, fsize=None, **kw):
        super().__init__(workdir, broker_port, **kw)
        self.fsize = fsize
        self._pump = None

    def _spawn(self, argv, env=None):
        import resource
        limit = self.fsize

        def preexec():
            # Only the soft limit: set_fsize() can then lift it again without
            # CAP_SYS_RESOURCE.
            if limit is not None:
                hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

        self._note("start %s (file size limit %s)"
                   % (" ".join(argv), limit if limit is not None else "none"))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.workdir,
                                     preexec_fn=preexec)
        out = self.proc.stdout

        def pump():
            with open(self.log_path, "ab") as log:
                for line in iter(out.readline, b""):
                    log.write(line)
                    log.flush()
            out.close()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    def set_fsize(self, limit):
        """Sets the running gateway's (soft) file size limit; None: back to
        the hard limit (unlimited unless the test runs under one)."""
        import resource
        hard = resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE,
                         (hard if limit is None else limit, hard))
        self._note("file size limit now %s" % (limit if limit is not None else "none"))

    def signal_stop(self, sig=signal.SIGTERM, timeout=30):
        rc = super().signal_stop(sig, timeout)
        if self._pump is not None:
            self._pump.join(5)
        return rc


def metric(gw, name):
    """The value of an unlabelled sample in the gateway's /metrics, or None."""
    text = gw.request("GET", "/metrics").body.decode()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    return None


def _fault_env(name, settings):
    """Environment that preloads the fault library tests/faults/<name>.c
    (path in $R2M_<NAME>) into a gateway, with its settings."""
    var = "R2M_" + name.upper()
    lib = os.environ.get(var) or os.path.join(REPO, "build", "tests", "libr2m_%s.so" % name)
    if not os.path.exists(lib):
        raise AssertionError("fault library %s missing (set %s)" % (lib, var))
    asan = os.environ.get("ASAN_OPTIONS", "")
    # An ASan gateway insists on its runtime coming first; the fault library
    # has no sanitizer and intercepts one libc call, so the order is harmless.
    asan = (asan + ":" if asan else "") + "verify_asan_link_order=0"
    env = {"LD_PRELOAD": lib, "ASAN_OPTIONS": asan}
    env.update(settings)
    return env


def sockfault_env(publish_n):
    """Preloads tests/faults/sockfault.c: the gateway's broker socket is shut
    down under the publish_n-th first-time QoS 1 PUBLISH (the write then
    fails with EPIPE)."""
    return _fault_env("sockfault", {"R2M_SOCKFAULT_PUBLISH_N": str(publish_n)})


def slowsync_env(ms):
    """Preloads tests/faults/slowsync.c: every journal fdatasync takes ms
    longer."""
    return _fault_env("slowsync", {"R2M_SLOWSYNC_MS": str(ms)})


BROKER_REFUSALS_RE = r"disconnected due to (malformed packet|protocol error)"
