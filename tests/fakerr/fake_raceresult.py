#!/usr/bin/python3
"""
fake_raceresult.py - a fake RACE RESULT devices REST API for race2mqtt's tests.

It implements the endpoints of ../../../shared/reference/raceresult-rest-api.md
(token, devices, files, detections, cmd, health) over a small in-memory "world"
of devices, records every request it receives (method, path, query, headers as
sent, status answered), and can be told to misbehave: fail, stall, cut a body,
send garbage or a huge body, refuse tokens, expire tokens. The idea is curl's
tests/server: the test decides what the server does and then checks what the
client sent.

Detection records are never stored: a device file is just a count, and record
number `no` of file `f` of device `d` is computed by detection_record(), so a
100,000-passing world costs nothing and a test can recompute what it must have
received (FakeRaceResult.detection() returns the exact record served).

Python 3 standard library only. Two ways to run it:

  /usr/bin/python3 tests/fakerr/fake_raceresult.py --port 0 --api-key KEY \
      --customer 846 [--world world.json]
      -> prints "LISTENING <port>" once ready, serves until SIGTERM/SIGINT;
         tests drive it through the /_control/ endpoints (JSON, no auth).

  from fake_raceresult import FakeRaceResult
  with FakeRaceResult(api_key="KEY", customer=846) as rr:   # .start()/.stop()
      rr.url; rr.fail_next(1, 500); rr.requests()

See README.md beside this file for the world format and the control API.
"""

import argparse
import copy
import json
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

MAX_AMOUNT = 10000            # vendor: "the maximum ... in a single call is 10,000"
DEFAULT_TOKEN_TTL = 7200      # vendor: "by default tokens are valid for 7200 seconds"
MAX_RECORDED_BODY = 65536     # request bodies are recorded up to this size
# Detection times: file f of any device starts at BASE_EPOCH + f days, and
# passing no is about no * 0.25 s into it, so times rise within a file and
# across files.
BASE_EPOCH = 1747555200       # 2025-05-18T08:00:00Z
STEP_NS = 250_000_000
DEVICE_TYPES = ("Decoder", "TrackBox", "Ubidium")
CODE_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ23456789"

DEFAULT_WORLD = {
    "devices": [
        {"id": "D-1001", "type": "Decoder", "name": "Finish line",
         "connected": True, "files": {"1": 5, "2": 3}},
        {"id": "T-2001", "type": "TrackBox", "name": "TrackBox km 5",
         "connected": False, "files": {"1": 4}},
        {"id": "U-3001", "type": "Ubidium", "name": "Start",
         "connected": True, "files": {"7": 3}},
    ]
}


# --------------------------------------------------------------------------
# Deterministic content
# --------------------------------------------------------------------------

def _mix(*values):
    """A stable 64-bit hash of small integers (splitmix64 rounds)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
        h = h * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


def _dev_hash(device_id):
    return zlib.crc32(device_id.encode("utf-8"))


def rfc3339(epoch_ns, offset_s=0, digits=9):
    """RFC 3339 text of epoch_ns at UTC offset offset_s (seconds), with `digits`
    (0..9) fractional digits, truncated, and 'Z' when the offset is 0."""
    sec, ns = divmod(epoch_ns, 1_000_000_000)
    t = time.gmtime(sec + offset_s)
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6]     # %Y does not pad year 1
    if digits > 0:
        text += "." + ("%09d" % ns)[:digits]
    if offset_s == 0:
        return text + "Z"
    sign = "+" if offset_s > 0 else "-"
    m = abs(offset_s) // 60
    return "%s%s%02d:%02d" % (text, sign, m // 60, m % 60)


def chip_code(n):
    """A 7-character transponder code for rider/transponder number n."""
    x = _mix(n, 0xC0DE)
    out = []
    for _ in range(7):
        x, r = divmod(x, len(CODE_ALPHABET))
        out.append(CODE_ALPHABET[r])
    return "".join(out)


def detection_time_ns(device_id, file_no, no):
    """Epoch nanoseconds of detection `no` of file `file_no`."""
    jitter = _mix(_dev_hash(device_id), file_no, no, 1) % STEP_NS
    return (BASE_EPOCH + file_no * 86400) * 1_000_000_000 + no * STEP_NS + jitter


def time_text(device_id, file_no, no, utc_offset):
    """The detection's time string: no % 10 fractional digits; 'Z' when
    no % 3 == 0 (or the device's offset is 0), else the device's UTC offset."""
    off = 0 if no % 3 == 0 else utc_offset
    return rfc3339(detection_time_ns(device_id, file_no, no), off, no % 10)


def rider_of(device_id, file_no, no):
    """Which of 150 riders/transponders passed: varies with every record."""
    return (no * 7 + file_no * 3 + _dev_hash(device_id)) % 150 + 1


def detection_record(dtype, device_id, device_name, customer, file_no, no,
                     utc_offset=7200, position=None, runtime=False,
                     box_variant="ATrack"):
    """The record served for detection `no` of file `file_no` of a device of
    family dtype ("Decoder" -> decoder passing, "Ubidium" -> Ubidium detection,
    "TrackBox" -> trackping). Keys in alphabetical order, as the vendor says."""
    h = _mix(_dev_hash(device_id), file_no, no)
    rider = rider_of(device_id, file_no, no)
    code = chip_code(rider)
    pos = position or {"Flag": "S", "Latitude": 0.0, "Longitude": 0.0}
    if dtype == "Decoder":
        active = no % 4 == 0
        if runtime:
            # Zero-start event: RealTime before 1000-01-01, RunTime in seconds.
            run_ns = no * STEP_NS + h % STEP_NS
            real = rfc3339(-62135596800 * 1_000_000_000 + run_ns, 0, no % 10)
            run_time = run_ns / 1e9
        else:
            real = time_text(device_id, file_no, no, utc_offset)
            run_time = 0
        return {
            "Battery": round(2.5 + (h % 12) / 10, 1) if active else 0,
            "Channel": 1 + (h >> 8) % 8 if active else 0,
            "Code": code,
            "Customer": customer,
            "DeviceID": device_id,
            "DeviceName": device_name,
            "FileNo": file_no,
            "Hits": 1 + (h >> 16) % 40,
            "InternalActiveData": 0,
            "InternalData": "%08X" % (h & 0xFFFFFFFF),
            "IsActive": active,
            "IsRunTime": runtime,
            "LoopID": 1 + (h >> 24) % 4 if active else 0,
            "LoopOnly": active and no % 20 == 0,
            "MaxRSSIAntenna": 0 if active else 1 + (h >> 32) % 8,
            "OrderID": rider,
            "PassingNo": no,
            "Position": dict(pos),
            "RSSI": -(40 + (h >> 40) % 50),
            "RealTime": real,
            "RunTime": run_time,
            "Temp": 15 + (h >> 48) % 20 if active else 0,
            "UTCOffset": utc_offset,
            "WUC": (h >> 20) % 65536 if active else 0,
        }
    if dtype == "Ubidium":
        active = no % 4 != 0
        rec = {
            "act_data": {"channel": 1 + (h >> 8) % 8 if active else 0,
                         "loop_id": 1 + (h >> 24) % 4 if active else 0},
            "hits": 1 + (h >> 16) % 40,
            "id": file_no * 100000 + no,
            "internal": "%08X" % (h & 0xFFFFFFFF),
            "no": {"file": file_no, "no": no},
            "rssi": -(40 + (h >> 40) % 50),
            "src": {"customer": customer, "device_id": device_id},
            "time": time_text(device_id, file_no, no, utc_offset),
            "time_offset": utc_offset,
            "transp": {"id": code},
        }
        if active and no % 10 == 1:     # flags: omitted when empty
            rec["act_data"] = {"channel": rec["act_data"]["channel"], "flags": 2,
                               "loop_id": rec["act_data"]["loop_id"]}
        if device_name:
            rec["src"]["device_name"] = device_name
        rec["src"]["input"] = "ActiveInternal" if active else "Passive"
        if active:
            rec["transp"] = {"active": {"bat": 25 + (h % 12),
                                        "temp": 15 + (h >> 48) % 20,
                                        "wuc": (h >> 20) % 65536},
                             "id": code}
        else:
            rec["transp"] = {"id": code, "passive": {"order_id": rider}}
        if pos.get("Latitude") or pos.get("Longitude"):
            rec = dict(sorted(dict(rec, loc={
                "alt": float(pos.get("Altitude", 0)),
                "lat": pos.get("Latitude", 0.0),
                "long": pos.get("Longitude", 0.0)}).items()))
        return rec
    if dtype == "TrackBox":
        t_ns = detection_time_ns(device_id, file_no, no)
        digits = no % 10
        off = 0 if no % 3 == 0 else utc_offset
        jit = (h % 2000) / 1e6
        here = {"Altitude": int(pos.get("Altitude", 0)),
                "Flag": pos.get("Flag", "S") or "S",
                "Latitude": round(pos.get("Latitude", 0.0) + jit, 6),
                "Longitude": round(pos.get("Longitude", 0.0) + jit, 6)}
        return {
            "BoxPosition": dict(pos),
            "BoxTime": rfc3339(t_ns + 150_000_000, off, digits),
            "BoxType": box_variant,
            "Cell": "%04X" % (h >> 16 & 0xFFFF),
            "Code": code,
            "Customer": customer,
            "DeviceID": device_id,
            "DeviceName": device_name,
            "FileNo": file_no,
            "Hits": 1 + (h >> 16) % 40,
            "LAC": "%07X" % (h >> 32 & 0xFFFFFFF),
            "MinRSSI": -(60 + (h >> 40) % 30),
            "MinTime": rfc3339(t_ns - 80_000_000, off, digits),
            "OrderID": rider,
            "PeakIndex": (h >> 8) % 16,
            "Position": here,
            "RSSI": -(40 + (h >> 40) % 20),
            "Received": rfc3339(t_ns + 2_000_000_000 + (h % 60) * 1_000_000_000, 0, 3),
            "Time": rfc3339(t_ns, off, digits),
            "TrackpingNo": no,
        }
    raise ValueError("unknown device type %r" % (dtype,))


# --------------------------------------------------------------------------
# World
# --------------------------------------------------------------------------

def _deep_merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def _omit(obj, dotted):
    parts = dotted.split(".")
    for p in parts[:-1]:
        obj = obj.get(p)
        if not isinstance(obj, dict):
            return
    obj.pop(parts[-1], None)


def _now_ns():
    return time.time_ns()


class Device:
    """One device: identity, connection, files (file number -> count), and
    status overrides merged over the generated Device Status."""

    def __init__(self, spec):
        if not isinstance(spec, dict) or "id" not in spec:
            raise ValueError("device needs an 'id': %r" % (spec,))
        self.id = str(spec["id"])
        self.type = spec.get("type", "Decoder")
        if self.type not in DEVICE_TYPES:
            raise ValueError("device %s: type must be one of %s"
                             % (self.id, ", ".join(DEVICE_TYPES)))
        self.name = spec.get("name", self.id)
        conn = spec.get("connected", True)
        self.conn_status = int(conn) if not isinstance(conn, bool) else (1 if conn else 0)
        files = spec.get("files", {"1": 0})
        if isinstance(files, list):
            files = {str(i + 1): n for i, n in enumerate(files)}
        self.files = {}
        for f, n in files.items():
            f, n = int(f), int(n)
            if f < 1 or n < 0:
                raise ValueError("device %s: bad file %d / count %d" % (self.id, f, n))
            self.files[f] = n
        if not self.files:
            self.files[1] = 0
        default_offset = 0 if self.type == "TrackBox" else 7200
        self.utc_offset = int(spec.get("utc_offset", default_offset))
        self.runtime_files = set(int(f) for f in spec.get("runtime_files", []))
        self.overrides = copy.deepcopy(spec.get("status", {}))
        self.omit = list(spec.get("omit", []))
        self.replies = dict(spec.get("replies", {}))
        h = _dev_hash(self.id)
        self.position = spec.get("position") or (
            {"Flag": "", "Latitude": 0, "Longitude": 0, "Altitude": 0}
            if self.type == "Ubidium" else
            {"Altitude": 520 + h % 80, "Flag": "S",
             "Latitude": round(48.0 + (h % 10000) / 10000, 6),
             "Longitude": round(11.0 + (h >> 16) % 10000 / 10000, 6)})
        self.received_ns = _now_ns()

    @property
    def connected(self):
        return self.conn_status != 0

    @property
    def current_file(self):
        return max(self.files)

    def summary(self):
        return {"id": self.id, "type": self.type, "name": self.name,
                "connected": self.connected, "conn_status": self.conn_status,
                "current_file": self.current_file,
                "files": {str(f): n for f, n in sorted(self.files.items())}}

    def record(self, customer, file_no, no):
        return detection_record(self.type, self.id, self.name, customer, file_no,
                                no, self.utc_offset, self.position,
                                file_no in self.runtime_files,
                                self._box_variant())

    def _box_variant(self):
        return self.overrides.get("TrackboxStatus", {}).get("BoxVariant", "ATrack")

    def file_meta(self, customer, file_no):
        return {"Count": self.files[file_no],
                "Created": rfc3339((BASE_EPOCH + file_no * 86400) * 1_000_000_000
                                   - 60_000_000_000, 0, 3),
                "Customer": customer, "DeviceID": self.id, "FileNo": file_no,
                "FilePos": dict(self.position)}

    def status(self, customer):
        """The Device Status record, in the field order the real API uses."""
        now = _now_ns()
        cur = self.current_file
        count = self.files[cur]
        h = _dev_hash(self.id)
        if self.type == "Ubidium":
            st = {
                "Customer": customer,
                "System": {"DeviceID": self.id, "DeviceName": self.name,
                           "Firmware": "1.0.17", "Temperature": 31},
                "Time": {"Time": rfc3339(now, self.utc_offset, 9),
                         "DeviceTimeAtRequest": rfc3339(now - 40_000_000, self.utc_offset, 9),
                         "Received": rfc3339(self.received_ns, 0, 9),
                         "Offset": self.utc_offset},
                "Position": dict(self.position),
                "Data": {"FileNumber": cur, "PassingNo": count,
                         "PassingID": cur * 100000 + count if count else 0},
                "ActiveInternal": {"Connected": True, "Channel": 1, "LoopID": 1,
                                   "LoopStatus": 0, "LoopPower": 50, "Boxes": None},
                "ActiveExternal": {"Connected": False, "Channel": 0, "LoopID": 0,
                                   "LoopStatus": 0, "LoopPower": 0, "Boxes": None},
                "Passive": {"Elements": None},
                "Power": {"Source": 1,
                          "Battery1": {"State": 1, "Remaining": 75600, "Level": 91,
                                       "Installed": True},
                          "Battery2": {"State": 0, "Remaining": 0, "Level": 0,
                                       "Installed": False}},
                "Settings": {"DeadTime": 0, "ReactionTime": 0},
                "ConnStatus": self.conn_status,
            }
        else:
            st = {
                "Customer": customer,
                "DeviceID": self.id,
                "Received": rfc3339(self.received_ns, 0, 9),
                "DeviceName": self.name,
                "FileNo": cur,
                "BatteryCharge": 95 if self.type == "Decoder" else 70 + h % 30,
                "Temperature": 21.48 if self.type == "Decoder" else 20,
                "RecordsCount": count,
                "IsRunTime": cur in self.runtime_files,
                "RealTime": rfc3339(now, self.utc_offset, 9),
                "RealTimeAtRequest": rfc3339(now - 50_000_000, self.utc_offset, 3),
                "RunTime": 0,
                "RunTimeAtRequest": 0,
                "UTCOffset": self.utc_offset,
                "TimeZoneName": "Europe/Berlin" if self.utc_offset else "GMT",
                "Position": dict(self.position),
                "Connected": self.connected,
                "DeviceType": self.type,
            }
            if self.type == "Decoder":
                st["DecoderStatus"] = {
                    "Protocol": 3.3, "Firmware": "2.65", "Antennas": "11111111",
                    "HasPower": True, "Ext12Volt": 12.41, "IsInTimingMode": True,
                    "ReaderIsHealthy": True, "TimeIsRunning": True,
                    "ReaderTemperature": 30, "DeadTime": 5000, "ReactionTime": 850,
                    "Notification": "", "TimeSource": 1,
                    "AutomaticStandbyEnabled": False, "IsInStandby": False,
                    "ErrorFlags": 0}
            else:
                st["TrackboxStatus"] = {
                    "Protocol": 2, "Channel": h % 8, "MemoryLeft": 100, "Noise": 4,
                    "Cell": "1CA7", "LAC": "BC34A09", "Satellites": 9,
                    "Session": str(2166136261 + h % 1000), "BoxVariant": "ATrack",
                    "PowerStatus": "BATTERY", "ReaderStatus": "ON",
                    "NetPLMN": 26201, "NetProvider": "Telekom.de", "NetSignal": 18}
        _deep_merge(st, self.overrides)
        for d in self.omit:
            _omit(st, d)
        return st


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------

class Fault:
    """One queued misbehaviour for the next n matching requests."""

    def __init__(self, kind, n, path_prefix=None, method=None, **params):
        self.kind, self.n = kind, int(n)
        self.path_prefix, self.method = path_prefix, method
        self.params = params

    def matches(self, method, path):
        return (self.n > 0
                and (self.path_prefix is None or path.startswith(self.path_prefix))
                and (self.method is None or self.method.upper() == method))

    def describe(self):
        return dict(kind=self.kind, remaining=self.n, path_prefix=self.path_prefix,
                    method=self.method, **self.params)


DELAY_KINDS = ("slow",)
TRUNCATE_MODES = ("cut", "close", "reset")


class _BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def _parse_bool(text, name):
    # Go's strconv.ParseBool, which the real (Go) service most likely uses.
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise _BadRequest(400, "invalid value for %s: %r" % (name, text))


def _parse_int(text, name):
    if not re.fullmatch(r"[+-]?[0-9]+", text or ""):
        raise _BadRequest(400, "invalid value for %s: %r" % (name, text))
    return int(text)


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------

CID = r"([^/]+)"
DEV = r"([^/]+)"
ROUTES = [
    ("POST", "/token", re.compile(r"^/token$"), "token"),
    ("GET", "/health", re.compile(r"^/health$"), "health"),
    ("GET", "/customers/{cid}/devices",
     re.compile(r"^/customers/%s/devices$" % CID), "devices"),
    ("GET", "/customers/{cid}/files",
     re.compile(r"^/customers/%s/files$" % CID), "customer_files"),
    ("GET", "/customers/{cid}/devices/{dev}",
     re.compile(r"^/customers/%s/devices/%s$" % (CID, DEV)), "device"),
    ("GET", "/customers/{cid}/devices/{dev}/files",
     re.compile(r"^/customers/%s/devices/%s/files$" % (CID, DEV)), "device_files"),
    ("GET", "/customers/{cid}/devices/{dev}/files/{fileNo}",
     re.compile(r"^/customers/%s/devices/%s/files/([^/]+)$" % (CID, DEV)), "file_meta"),
    ("GET", "/customers/{cid}/devices/{dev}/files/{fileNo}/detections",
     re.compile(r"^/customers/%s/devices/%s/files/([^/]+)/detections$" % (CID, DEV)),
     "file_detections"),
    ("GET", "/customers/{cid}/devices/{dev}/detections",
     re.compile(r"^/customers/%s/devices/%s/detections$" % (CID, DEV)), "detections"),
    ("POST", "/customers/{cid}/devices/{dev}/cmd",
     re.compile(r"^/customers/%s/devices/%s/cmd$" % (CID, DEV)), "cmd"),
]

CONTROL_METHODS = (
    "add_device", "remove_device", "add_detections", "new_file", "set_device",
    "set_cmd_reply", "commands", "expire_tokens", "set_token_ttl", "tokens",
    "fail_next", "slow_next", "truncate_next", "invalid_json_next",
    "oversize_next", "refuse_token_next", "reset_faults", "faults",
    "requests", "clear_requests", "stats", "world", "detection",
    "set_keep_alive", "reset",
)


class FakeRaceResult:
    """The fake service. All public methods are thread-safe and are also
    reachable as POST /_control/<method> with a JSON object of arguments."""

    def __init__(self, api_key="test-key", customer=846, world=None, host="127.0.0.1",
                 port=0, token_ttl=DEFAULT_TOKEN_TTL, keep_alive=False,
                 max_amount=MAX_AMOUNT, verbose=False):
        self.api_key = api_key
        self.customer = int(customer)
        self.host, self._want_port = host, port
        self.max_amount = int(max_amount)
        self.verbose = verbose
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._httpd = None
        self._thread = None
        self._conn_seq = 0
        self._keep_alive = bool(keep_alive)
        self._token_ttl = float(token_ttl)
        self._tokens = {}          # token -> monotonic expiry
        self._faults = []
        self._requests = []
        self._commands = []
        self._cmd_replies = {}     # (device or None, command) -> (status, reply)
        self._devices = {}
        self._load_world(DEFAULT_WORLD if world is None else world)

    # ---- lifecycle --------------------------------------------------------

    def start(self):
        if self._httpd:
            return self
        self._stopping.clear()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer((self.host, self._want_port), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fake-raceresult", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if not self._httpd:
            return
        self._stopping.set()            # wakes handlers sleeping in slow_next
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        self._httpd = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self._httpd.server_address[1] if self._httpd else None

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    # ---- world ------------------------------------------------------------

    def _load_world(self, world):
        if isinstance(world, str):
            with open(world, encoding="utf-8") as f:
                world = json.load(f)
        devices = {}
        for spec in world.get("devices", []):
            d = Device(spec)
            if d.id in devices:
                raise ValueError("duplicate device id %s" % d.id)
            devices[d.id] = d
        with self._lock:
            self._devices = devices

    def _dev(self, device):
        d = self._devices.get(device)
        if d is None:
            raise KeyError("no device %r" % (device,))
        return d

    def world(self):
        """Summary of every device: id, type, name, connected, current_file, files."""
        with self._lock:
            return [d.summary() for d in self._devices.values()]

    def add_device(self, **spec):
        """Adds a device described like a world entry ({"id":..., "type":...})."""
        d = Device(spec)
        with self._lock:
            if d.id in self._devices:
                raise ValueError("duplicate device id %s" % d.id)
            self._devices[d.id] = d
            return d.summary()

    def remove_device(self, device):
        with self._lock:
            self._devices.pop(device)

    def add_detections(self, device, count, file=None):
        """Appends count detections to `file` (default: the current file; a
        file number above the current one creates that file). Returns
        {"file": f, "count": total in f}."""
        with self._lock:
            d = self._dev(device)
            f = d.current_file if file is None else int(file)
            d.files[f] = d.files.get(f, 0) + int(count)
            d.received_ns = _now_ns()
            return {"file": f, "count": d.files[f]}

    def new_file(self, device, count=0):
        """Opens file current+1 (with count detections); returns its number."""
        with self._lock:
            d = self._dev(device)
            f = d.current_file + 1
            d.files[f] = int(count)
            d.received_ns = _now_ns()
            return f

    def set_device(self, device, connected=None, name=None, omit=None,
                   utc_offset=None, position=None, **fields):
        """connected: bool (Connected / ConnStatus 1|0) or int (ConnStatus);
        name: DeviceName / System.DeviceName; omit: dotted keys to leave out
        of the status (e.g. ["FileNo"]); other keyword arguments are Device
        Status fields deep-merged over the generated record, e.g.
        BatteryCharge=-1 or DecoderStatus={"ErrorFlags": 16}."""
        with self._lock:
            d = self._dev(device)
            if connected is not None:
                d.conn_status = (1 if connected else 0) if isinstance(connected, bool) \
                    else int(connected)
            if name is not None:
                d.name = name
            if omit is not None:
                d.omit = list(omit)
            if utc_offset is not None:
                d.utc_offset = int(utc_offset)
            if position is not None:
                d.position = dict(position)
            _deep_merge(d.overrides, fields)
            return d.status(self.customer)

    def detection(self, device, file, no):
        """The exact record the server serves for (device, file, no)."""
        with self._lock:
            return self._dev(device).record(self.customer, int(file), int(no))

    # ---- commands ---------------------------------------------------------

    def set_cmd_reply(self, command, reply, device=None, status=200):
        """Reply for a command: matched on the whole command text first, then
        on its first word; device None = any device. status != 200 answers
        {"Message": reply} with that status instead of {"Response": reply}."""
        with self._lock:
            self._cmd_replies[(device, command)] = (int(status), reply)

    def commands(self):
        """[{"device", "command", "time"}] of every command executed."""
        with self._lock:
            return [dict(c) for c in self._commands]

    # ---- tokens -----------------------------------------------------------

    def expire_tokens(self):
        """Every token issued so far is now invalid (401)."""
        with self._lock:
            self._tokens.clear()

    def set_token_ttl(self, seconds):
        """Lifetime (and expires_in) of tokens issued from now on."""
        with self._lock:
            self._token_ttl = float(seconds)

    def tokens(self):
        """Number of currently valid tokens."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for e in self._tokens.values() if e > now)

    def set_keep_alive(self, enabled):
        """False (default): every answer says Connection: close and the socket
        is closed. True: keep the connection unless the client asked to close."""
        with self._lock:
            self._keep_alive = bool(enabled)

    # ---- faults -----------------------------------------------------------

    def _add_fault(self, kind, n, path_prefix, method, **params):
        with self._lock:
            self._faults.append(Fault(kind, n, path_prefix, method, **params))

    def fail_next(self, n, status, path_prefix=None, body=None, headers=None,
                  method=None):
        """The next n matching requests get `status` without being processed.
        body: str or JSON value (default {"Message": reason}); headers: dict."""
        self._add_fault("fail", n, path_prefix, method, status=int(status),
                        body=body, headers=headers or {})

    def refuse_token_next(self, n, status=406, retry_after=None):
        """The next n POST /token get `status` (406, 429...) and no token."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self._add_fault("fail", n, "/token", "POST", status=int(status), body=None,
                        headers=headers)

    def slow_next(self, n, seconds, path_prefix=None, where="headers", method=None):
        """The next n matching requests wait `seconds` before the answer
        (where="headers") or after the headers and half the body
        (where="body"). Combines with one answer fault."""
        if where not in ("headers", "body"):
            raise ValueError("where must be 'headers' or 'body'")
        self._add_fault("slow", n, path_prefix, method, seconds=float(seconds),
                        where=where)

    def truncate_next(self, n, path_prefix=None, mode="cut", method=None):
        """The next n matching requests are processed normally but the body is
        cut in half. mode "cut": Content-Length of the cut body (a complete
        HTTP answer carrying broken JSON); "close": Content-Length of the full
        body, half sent, connection closed; "reset": same, closed with RST."""
        if mode not in TRUNCATE_MODES:
            raise ValueError("mode must be one of %s" % (TRUNCATE_MODES,))
        self._add_fault("truncate", n, path_prefix, method, mode=mode)

    def invalid_json_next(self, n, path_prefix=None, body=None, status=200,
                          method=None):
        """The next n matching requests get `status` with a body that is not
        JSON (default '{"Devices": [{"DeviceID": "D-1", ]]} not json'),
        Content-Type application/json. Not processed."""
        if body is None:
            body = '{"Devices": [{"DeviceID": "D-1", ]]} not json'
        self._add_fault("fail", n, path_prefix, method, status=int(status),
                        body=body if isinstance(body, str) else str(body),
                        headers={}, raw=True)

    def oversize_next(self, n, bytes=64 * 1024 * 1024, path_prefix=None,
                      chunked=False, method=None):
        """The next n matching requests get 200 with a valid JSON array of
        exactly `bytes` bytes ("[0,0,...]"), streamed; chunked=True sends it
        with Transfer-Encoding: chunked instead of a Content-Length."""
        self._add_fault("oversize", n, path_prefix, method, bytes=max(2, int(bytes)),
                        chunked=bool(chunked))

    def reset_faults(self):
        with self._lock:
            self._faults.clear()

    def faults(self):
        """Faults still pending."""
        with self._lock:
            return [f.describe() for f in self._faults if f.n > 0]

    def _take_faults(self, method, path):
        """The first matching delay fault and the first matching answer fault,
        each consumed once for this request."""
        delay = answer = None
        with self._lock:
            for f in self._faults:
                if not f.matches(method, path):
                    continue
                if f.kind in DELAY_KINDS:
                    if delay is None:
                        delay = f
                        f.n -= 1
                elif answer is None:
                    answer = f
                    f.n -= 1
            self._faults = [f for f in self._faults if f.n > 0]
        return delay, answer

    # ---- recording --------------------------------------------------------

    def requests(self, route=None, path_prefix=None):
        """Every request received (not /_control/), oldest first:
        {"seq", "time", "conn", "method", "path", "target", "query", "headers",
        "body", "route", "status", "fault", "connection_close"}."""
        with self._lock:
            out = [copy.deepcopy(r) for r in self._requests]
        if route is not None:
            out = [r for r in out if r["route"] == route]
        if path_prefix is not None:
            out = [r for r in out if r["path"].startswith(path_prefix)]
        return out

    def clear_requests(self):
        with self._lock:
            self._requests.clear()
            self._commands.clear()

    def stats(self):
        """{"<METHOD> <pattern>": count} over the recorded requests."""
        out = {}
        with self._lock:
            for r in self._requests:
                out[r["route"]] = out.get(r["route"], 0) + 1
        return out

    def wait_requests(self, count, route=None, path_prefix=None, timeout=10.0):
        """Waits until at least count matching requests were answered; returns
        them (or raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            got = [r for r in self.requests(route, path_prefix) if r["status"] is not None]
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError("%d of %d requests (%s %s)"
                                   % (len(got), count, route, path_prefix))
            time.sleep(0.02)

    def reset(self):
        """Faults, requests, commands, replies and tokens cleared; TTL back to
        the default. The world is kept."""
        with self._lock:
            self._faults.clear()
            self._requests.clear()
            self._commands.clear()
            self._cmd_replies.clear()
            self._tokens.clear()
            self._token_ttl = float(DEFAULT_TOKEN_TTL)

    def _record(self, rec):
        with self._lock:
            rec["seq"] = len(self._requests) + 1
            self._requests.append(rec)

    def _next_conn(self):
        with self._lock:
            self._conn_seq += 1
            return self._conn_seq

    # ---- API --------------------------------------------------------------

    def _route(self, method, path):
        """(route name, handler name, path groups, allowed)."""
        for m, pattern, rx, name in ROUTES:
            g = rx.match(path)
            if g:
                return "%s %s" % (method, pattern), name, g.groups(), m == method or (
                    m == "GET" and method == "HEAD")
        return "%s <unknown>" % method, None, (), False

    def _authorised(self, headers):
        auth = headers.get("Authorization") or ""
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        with self._lock:
            exp = self._tokens.get(token.strip())
        return exp is not None and exp > time.monotonic()

    def _api(self, name, groups, query, headers):
        """Runs one API call: (status, JSON value or bytes, extra headers)."""
        if name == "health":
            return 200, b"OK", {"Content-Type": "text/plain; charset=utf-8"}
        if name == "token":
            if headers.get("apikey") != self.api_key:
                return 401, {"Message": "invalid api key"}, {}
            token = secrets.token_urlsafe(32)
            with self._lock:
                ttl = self._token_ttl
                self._tokens[token] = time.monotonic() + ttl
            return 200, {"access_token": token, "expires_in": int(ttl),
                         "token_type": "Bearer"}, {}
        if not self._authorised(headers):
            return 401, {"Message": "Authorization has been denied for this request."}, \
                {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        cid = _parse_int(unquote(groups[0]), "customerID")
        if cid != self.customer:
            return 403, {"Message": "no access to customer %d" % cid}, {}
        q = {k: v[-1] for k, v in query.items()}
        if name == "devices":
            return 200, {"Devices": self._list_devices(q)}, {}
        if name == "customer_files":
            with self._lock:
                devs = self._select_devices(q)
                return 200, {"Files": [d.file_meta(self.customer, f) for d in devs
                                       for f in sorted(d.files)]}, {}
        with self._lock:
            d = self._devices.get(unquote(groups[1]))
            if d is None:
                return 404, {"Message": "device not found"}, {}
            if name == "device":
                return 200, d.status(self.customer), {}
            if name == "device_files":
                return 200, self._device_files(d, q), {}
            if name in ("file_meta", "file_detections"):
                f = _parse_int(unquote(groups[2]), "fileNo")
                if f not in d.files:
                    return 404, {"Message": "file not found"}, {}
                if name == "file_meta":
                    return 200, d.file_meta(self.customer, f), {}
                plan = self._plan(d, q, f, True)
            elif name == "detections":
                plan = self._plan(d, q, _parse_int(q.get("fromFile", "1"), "fromFile"),
                                  False)
            elif name == "cmd":
                return self._cmd(d, q)
            else:
                raise AssertionError(name)
        # Generated outside the lock: this is the expensive part.
        return 200, [d.record(self.customer, f, no) for f, no in plan], {}

    def _select_devices(self, q):
        devs = list(self._devices.values())
        if q.get("deviceIDs"):
            want = [x.strip() for x in q["deviceIDs"].split(",")]
            devs = [d for d in devs if d.id in want]
        return devs

    def _list_devices(self, q):
        connected_only = _parse_bool(q["connected"], "connected") if "connected" in q \
            else False
        with self._lock:
            return [d.status(self.customer) for d in self._select_devices(q)
                    if d.connected or not connected_only]

    def _device_files(self, d, q):
        if "latest" in q and _parse_bool(q["latest"], "latest"):
            return {"File": d.file_meta(self.customer, d.current_file)}
        files = sorted(d.files)
        if q.get("files"):
            want = set()
            for x in q["files"].split(","):
                try:
                    want.add(int(x))
                except ValueError:
                    pass            # vendor: invalid file numbers are ignored
            files = [f for f in files if f in want]
        return {"Files": [d.file_meta(self.customer, f) for f in files]}

    def _plan(self, d, q, from_file, single_file):
        """[(file, no)] to serve, enforcing the amount limit."""
        if q.get("download") not in (None, "", "0"):
            raise _BadRequest(501, "download is not supported by the fake")
        from_no = max(1, _parse_int(q.get("fromDetection", "1"), "fromDetection"))
        amount = None
        if "amount" in q:
            amount = _parse_int(q["amount"], "amount")
            if amount < 1:
                raise _BadRequest(400, "amount must be at least 1")
            if amount > self.max_amount:
                raise _BadRequest(400, "amount exceeds the maximum of %d"
                                  % self.max_amount)
        files = [from_file] if single_file else sorted(f for f in d.files if f >= from_file)
        spans, total = [], 0
        for f in files:
            first = from_no if f == from_file else 1
            n = max(0, d.files[f] - first + 1)
            if amount is not None:
                n = min(n, amount - total)
            if n > 0:
                spans.append((f, first, n))
                total += n
            if amount is not None and total >= amount:
                break
        if amount is None and total > self.max_amount:
            raise _BadRequest(400, "more than %d detections: use fromDetection and amount"
                              % self.max_amount)
        return [(f, no) for f, first, n in spans for no in range(first, first + n)]

    def _cmd(self, d, q):
        command = q.get("command")
        if not command:
            raise _BadRequest(400, "missing command")
        word = command.split(" ", 1)[0]
        for key in ((d.id, command), (None, command), (d.id, word), (None, word)):
            if key in self._cmd_replies:
                status, reply = self._cmd_replies[key]
                break
            if key[0] is not None and key[1] in d.replies:     # from the world file
                r = d.replies[key[1]]
                status, reply = (int(r.get("status", 200)), r.get("reply", "")) \
                    if isinstance(r, dict) else (200, str(r))
                break
        else:
            status, reply = 200, "OK " + command
        self._commands.append({"device": d.id, "command": command, "time": time.time(),
                               "status": status})
        if status != 200:
            return status, {"Message": reply}, {}
        return 200, {"Response": reply}, {}


def _reason(status):
    return BaseHTTPRequestHandler.responses.get(status, ("Error",))[0]


def _json_bytes(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-raceresult/1"

    def version_string(self):
        return self.server_version
    fake = None                 # set per server by FakeRaceResult.start()

    def setup(self):
        super().setup()
        self.conn_id = self.fake._next_conn()

    def log_message(self, fmt, *args):
        if self.fake.verbose:
            sys.stderr.write("fake-rr: %s\n" % (fmt % args))

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # ---- plumbing ---------------------------------------------------------

    def _read_body(self):
        n = self.headers.get("Content-Length")
        if n is None:
            return b""
        try:
            n = int(n)
        except ValueError:
            self.close_connection = True
            return b""
        body = self.rfile.read(min(n, MAX_RECORDED_BODY))
        left = n - len(body)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
        return body

    def _wants_close(self):
        conn = (self.headers.get("Connection") or "").lower()
        if "close" in conn:
            return True
        return self.request_version == "HTTP/1.0" and "keep-alive" not in conn

    def _begin(self, status, headers, length):
        with self.fake._lock:
            keep = self.fake._keep_alive
        close = not keep or self._wants_close() or self.fake._stopping.is_set()
        self.send_response(status, _reason(status))
        for k, v in headers.items():
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.close_connection = False
        self.end_headers()

    def _send(self, status, body, headers, stall=None, cut=None):
        """Writes one answer. stall: (seconds) sleep after half the body;
        cut: a TRUNCATE_MODES value."""
        headers = dict(headers)
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
        if self.command == "HEAD":
            body = b""
        half = len(body) // 2
        if cut == "cut":
            body = body[:half]
        self._begin(status, headers, len(body))
        if cut in ("close", "reset"):
            self.wfile.write(body[:half])
            self.close_connection = True
            if cut == "reset":
                # Linger 0 turns close() into a RST; rfile holds a reference
                # to the socket, so it must go first for close() to be real.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.rfile.close()
                self.connection.close()
            return
        if stall:
            self.wfile.write(body[:half])
            self.wfile.flush()
            self.fake._stopping.wait(stall)
            self.wfile.write(body[half:])
        else:
            self.wfile.write(body)

    def _send_oversize(self, size, chunked):
        """Streams a valid JSON array of exactly `size` bytes: [0,0,...,0]."""
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        self._begin(200, headers, None if chunked else size)
        block = b"0," * 32768
        inner = size - 2             # bytes between "[" and "]"

        def parts():
            yield b"["
            # "0,0,...,0" has odd length; one space pads an even inner size.
            body_len = inner if inner % 2 == 1 else max(0, inner - 1)
            pad = inner - body_len
            left = body_len
            if left > 0:
                while left > len(block):
                    yield block
                    left -= len(block)
                yield block[:left - 1] + b"0"
            yield b" " * pad + b"]"

        for p in parts():
            if self.fake._stopping.is_set():
                self.close_connection = True
                return
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
            else:
                self.wfile.write(p)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    # ---- dispatch ---------------------------------------------------------

    def _handle(self):
        fake = self.fake
        split = urlsplit(self.path)
        path = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        body = self._read_body()
        if path.startswith("/_control/"):
            return self._control(path[len("/_control/"):], query, body)

        method = self.command
        route, name, groups, allowed = fake._route(method, path)
        rec = {
            "time": time.time(), "conn": self.conn_id, "method": method,
            "path": path, "target": self.path,
            "query": {k: v[-1] for k, v in query.items()},
            "headers": dict(self.headers.items()),
            "body": body.decode("utf-8", "replace"),
            "route": route, "status": None, "fault": None,
            "connection_close": "close" in (self.headers.get("Connection") or "").lower(),
        }
        fake._record(rec)
        delay, answer = fake._take_faults(method, path)
        faults = []
        stall = None
        try:
            if delay:
                faults.append("slow")
                if delay.params["where"] == "headers":
                    fake._stopping.wait(delay.params["seconds"])
                else:
                    stall = delay.params["seconds"]
            if answer and answer.kind == "oversize":
                faults.append("oversize")
                rec["status"] = 200
                rec["fault"] = "+".join(faults)
                return self._send_oversize(answer.params["bytes"],
                                           answer.params["chunked"])
            if answer and answer.kind == "fail":
                p = answer.params
                faults.append("invalid_json" if p.get("raw") else "fail")
                status, extra = p["status"], dict(p["headers"])
                b = p["body"]
                if b is None:
                    b = {"Message": "injected failure: %d %s" % (status, _reason(status))}
                data = b.encode("utf-8") if isinstance(b, str) else _json_bytes(b)
            else:
                try:
                    if name is None:
                        status, value, extra = 404, {"Message": "no such endpoint"}, {}
                    elif not allowed:
                        status, value, extra = 405, {"Message": "method not allowed"}, {}
                    else:
                        status, value, extra = fake._api(name, groups, query, self.headers)
                except _BadRequest as e:
                    status, value, extra = e.status, {"Message": e.message}, {}
                except KeyError as e:
                    status, value, extra = 404, {"Message": str(e)}, {}
                data = value if isinstance(value, bytes) else _json_bytes(value)
            cut = None
            if answer and answer.kind == "truncate":
                cut = answer.params["mode"]
                faults.append("truncate-" + cut)
            rec["status"] = status
            rec["fault"] = "+".join(faults) or None
            self._send(status, data, extra, stall=stall, cut=cut)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            if rec["status"] is None:
                rec["status"] = 0
            rec["client_gone"] = True

    def _control(self, op, query, body):
        fake = self.fake
        try:
            if op not in CONTROL_METHODS:
                raise KeyError("no control method %r" % op)
            args = json.loads(body.decode("utf-8")) if body.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
            for k, v in query.items():        # GET /_control/requests?route=...
                args.setdefault(k, v[-1])
            result = getattr(fake, op)(**args)
            status, data = 200, _json_bytes(result)
        except KeyError as e:
            status, data = 404, _json_bytes({"error": str(e)})
        except (TypeError, ValueError) as e:
            status, data = 400, _json_bytes({"error": str(e)})
        try:
            self._send(status, data, {})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake RACE RESULT devices REST API")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--api-key", default="test-key")
    ap.add_argument("--customer", type=int, default=846)
    ap.add_argument("--world", help="JSON world file (default: a small built-in one)")
    ap.add_argument("--token-ttl", type=float, default=DEFAULT_TOKEN_TTL)
    ap.add_argument("--max-amount", type=int, default=MAX_AMOUNT)
    ap.add_argument("--keep-alive", action="store_true",
                    help="keep connections open unless the client sends Connection: close")
    ap.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")
    args = ap.parse_args(argv)

    fake = FakeRaceResult(api_key=args.api_key, customer=args.customer,
                          world=args.world, host=args.host, port=args.port,
                          token_ttl=args.token_ttl, keep_alive=args.keep_alive,
                          max_amount=args.max_amount, verbose=args.verbose)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fake.start()
    sys.stdout.write("LISTENING %d\n" % fake.port)
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
