"""
faultproxy.py - a TCP proxy on 127.0.0.1 that the integration tests put between
the gateway and the broker to break the connection on purpose (stdlib only).

    proxy = FaultProxy(broker.port).start()    # listens on proxy.port
    proxy.cut()             # close both sides of every connection now (FIN);
                            # new connections keep working
    proxy.cut(reset=True)   # the same with a TCP RST on both sides
    proxy.block(True)       # new connections are accepted and reset at once
                            # (with cut(): an outage); block(False) ends it
    proxy.stall(True)       # forward nothing in either direction and pass no
                            # close on: the broker "hangs". Bytes are still
                            # read (up to 64 KiB per direction, like a hung
                            # peer's receive buffer) and held; the sockets
                            # stay open. stall(False) forwards what was held.
    proxy.slow(bytes_per_s=4000)  # throttle each direction (token bucket)
    proxy.slow(delay_ms=200)      # add latency to every chunk (each direction)
    proxy.slow()                  # back to full speed
    proxy.refuse(marker)    # a broker that drops the connection at one message:
                            # on connections accepted from now on, the
                            # client's bytes are split into MQTT packets;
                            # a PUBLISH containing `marker` is not forwarded,
                            # what came before it is, and both sides are closed
                            # (FIN) 0.2 s later, the way mosquitto closes on a
                            # packet it rejects. unless_clean_start=True: a
                            # broker whose stored session is what is broken,
                            # so refusing ends for good at the first CONNECT
                            # that asks for a clean session. refuse(None)
                            # ends it too.
    proxy.drop_mqtt5(True)  # RabbitMQ 3.10: an MQTT 5 CONNECT is not forwarded
                            # and the connection is closed without a CONNACK;
                            # 3.1.1 passes. drop_mqtt5(False) ends it.
    proxy.counters()        # bytes_up/bytes_down forwarded (written to the
                            # other side), read_up/read_down read (some may be
                            # held), connections forwarded, refused (blocked),
                            # upstream_failed, cuts, closed_by_peer, open
    proxy.stop()            # close everything, join the thread

tap(direction, conn_id, data) - optional, called on the proxy thread with
every chunk read from a side ("up" = client to broker, "down" = broker to
client), in order, before it is forwarded; it must be quick and must not call
the proxy. conn_id numbers the forwarded connections from 1.

One thread runs a selector loop and owns all sockets; the control methods hand
their change to it and wait until it is applied, so when cut() returns the
sockets are closed. Only loopback is ever touched: the listener binds
127.0.0.1 and the target must be a loopback address.
"""

import collections
import ipaddress
import selectors
import socket
import struct
import threading
import time

CHUNK = 16384
# Bytes read from one side and not yet written to the other before the proxy
# stops reading that side (TCP back-pressure then reaches the sender).
MAX_PENDING = 65536


class _Pipe:
    """One direction of a connection: src -> dst, with what waits in between."""

    def __init__(self, src, dst, direction):
        self.src = src
        self.dst = dst
        self.direction = direction
        self.queue = collections.deque()   # [release time, bytes]
        self.pending = 0
        self.eof = False                   # src closed its side
        self.tokens = 0.0
        self.t_tokens = time.monotonic()


class _Conn:
    def __init__(self, cid, client, upstream):
        self.id = cid
        self.client = client
        self.upstream = upstream
        self.up = _Pipe(client, upstream, "up")
        self.down = _Pipe(upstream, client, "down")
        self.closed = False
        self.upbuf = bytearray()   # client bytes not yet split into packets (refuse)
        self.doom_at = None        # refused: close both sides at this time
        self.screened = False      # refuse() was on when it was accepted


def _packet_length(buf):
    """Length of the first MQTT packet in buf, or None while it is incomplete."""
    mult, value, i = 1, 0, 1
    while True:
        if i >= len(buf) or i > 4:
            return None
        b = buf[i]
        value += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
    total = i + value
    return total if len(buf) >= total else None


def _connect_fields(packet):
    """(protocol level, connect flags) of a CONNECT packet."""
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1
    name_len = int.from_bytes(packet[i:i + 2], "big")
    return packet[i + 2 + name_len], packet[i + 2 + name_len + 1]


def _connect_clean_start(packet):
    """The Clean Start / Clean Session flag of a CONNECT packet."""
    return bool(_connect_fields(packet)[1] & 0x02)


def _reset_close(sock):
    """Closes with an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    name = "faultproxy"

    def __init__(self, target_port, target_host="127.0.0.1", port=0, tap=None):
        if not ipaddress.ip_address(target_host).is_loopback:
            raise ValueError("faultproxy only forwards to loopback, not %r" % target_host)
        self.target = (target_host, int(target_port))
        self.tap = tap
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._conns = {}
        self._next_id = 0
        self._blocked = False
        self._stalled = False
        self._rate = None       # bytes per second per direction, None = unlimited
        self._delay = 0.0       # seconds added to every chunk
        self._refuse = None     # (marker, unless_clean_start) or None
        self._refuse_lifted = False  # a clean CONNECT was seen (unless_clean_start)
        self._drop_mqtt5 = False
        self._calls = collections.deque()
        self._calls_lock = threading.Lock()
        self._stopping = False
        self._thread = None
        self._error = None
        self._lock = threading.Lock()   # counters
        self._counts = {"bytes_up": 0, "bytes_down": 0, "read_up": 0, "read_down": 0,
                        "connections": 0, "refused": 0,
                        "upstream_failed": 0, "cuts": 0, "closed_by_peer": 0,
                        "refused_publishes": 0, "dropped_mqtt5": 0}
        self.events = []         # (monotonic time, text): what happened, for reports

    # -- control (any thread) ------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._run, name="faultproxy-%d" % self.port,
                                        daemon=True)
        self._thread.start()
        return self

    def cut(self, reset=False):
        """Closes both sides of every open connection now. Returns how many."""
        return self._call(lambda: self._cut_all(reset))

    def block(self, on=True):
        """While on, new connections are accepted and reset at once."""
        return self._call(lambda: self._set("_blocked", bool(on), "block"))

    def stall(self, on=True):
        """While on, no byte moves in either direction and closes go unnoticed;
        every socket stays open."""
        return self._call(lambda: self._set("_stalled", bool(on), "stall"))

    def slow(self, bytes_per_s=None, delay_ms=None):
        """Throttles each direction to bytes_per_s and/or delays every chunk by
        delay_ms; slow() with no argument restores full speed."""
        def apply():
            self._rate = float(bytes_per_s) if bytes_per_s else None
            self._delay = (delay_ms or 0) / 1000.0
            now = time.monotonic()
            for c in self._conns.values():
                for p in (c.up, c.down):
                    p.tokens = 0.0
                    p.t_tokens = now
            self._event("slow bytes_per_s=%s delay_ms=%s" % (bytes_per_s, delay_ms))
        return self._call(apply)

    def refuse(self, marker, unless_clean_start=False):
        """Drops the connection at every PUBLISH that contains marker (bytes);
        refuse(None) forwards everything again."""
        def apply():
            self._refuse = None if marker is None else (bytes(marker), bool(unless_clean_start))
            self._refuse_lifted = False
            self._event("refuse %r unless_clean_start=%s" % (marker, unless_clean_start))
        return self._call(apply)

    def drop_mqtt5(self, on=True):
        """Closes every connection whose CONNECT asks for MQTT 5, unanswered."""
        def apply():
            self._drop_mqtt5 = bool(on)
            self._event("drop_mqtt5 %s" % on)
        return self._call(apply)

    def counters(self):
        with self._lock:
            out = dict(self._counts)
        out["open"] = len(self._conns)
        return out

    def wait_connections(self, n, timeout=30):
        """Waits until at least n connections were forwarded in total."""
        deadline = time.monotonic() + timeout
        while self.counters()["connections"] < n:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self):
        if self._thread is None:
            self._close_all_now()
            return
        if self._thread.is_alive():
            self._stopping = True
            self._wakeup()
            self._thread.join(10)
        if self._thread.is_alive():
            raise AssertionError("faultproxy thread did not stop")
        self._thread = None
        if self._error:
            raise AssertionError("faultproxy loop failed: %s" % self._error)

    def cleanup(self):
        try:
            self.stop()
        except AssertionError:
            pass

    # -- the loop (proxy thread) ---------------------------------------------

    def _event(self, text):
        self.events.append((time.monotonic(), text))

    def _count(self, key, n=1):
        with self._lock:
            self._counts[key] += n

    def _set(self, attr, value, label):
        setattr(self, attr, value)
        self._event("%s %s" % (label, "on" if value else "off"))

    def _wakeup(self):
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _call(self, fn):
        if self._thread is None or not self._thread.is_alive():
            raise AssertionError("faultproxy is not running")
        done = threading.Event()
        box = []
        with self._calls_lock:
            self._calls.append((fn, done, box))
        self._wakeup()
        if not done.wait(10):
            raise AssertionError("faultproxy did not apply a change within 10 s")
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0] if box else None

    def _run_calls(self):
        while True:
            with self._calls_lock:
                if not self._calls:
                    return
                fn, done, box = self._calls.popleft()
            try:
                box.append(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box.append(e)
            done.set()

    def _run(self):
        self._sel.register(self._listener, selectors.EVENT_READ, ("listen", None))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        try:
            while not self._stopping:
                timeout = self._arm()
                for key, mask in self._sel.select(timeout):
                    kind, conn = key.data
                    if kind == "listen":
                        self._accept()
                    elif kind == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                    elif not conn.closed:
                        self._io(conn, key.fileobj, mask)
                self._run_calls()
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self._error = repr(e)
            raise
        finally:
            self._close_all_now()
            # Callers waiting for a change: the loop is gone.
            with self._calls_lock:
                calls = list(self._calls)
                self._calls.clear()
            for _, done, box in calls:
                box.append(AssertionError("faultproxy stopped"))
                done.set()

    def _close_all_now(self):
        for c in list(self._conns.values()):
            self._close(c, reset=False)
        for s in (self._listener, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass
        try:
            self._sel.close()
        except (OSError, RuntimeError):
            pass

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self._blocked:
                self._count("refused")
                self._event("refused a connection (blocked)")
                _reset_close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError as e:
                self._count("upstream_failed")
                self._event("upstream connect failed: %s" % e)
                _reset_close(client)
                continue
            for s in (client, upstream):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._next_id += 1
            c = _Conn(self._next_id, client, upstream)
            c.screened = self._refuse is not None or self._drop_mqtt5
            self._conns[c.id] = c
            self._count("connections")
            self._event("connection %d" % c.id)

    def _ready_bytes(self, p, now):
        """How many bytes p may write now, and when more may (None = nothing waits)."""
        if not p.queue:
            return 0, None
        release = p.queue[0][0]
        if release > now:
            return 0, release
        if self._rate is None:
            return len(p.queue[0][1]), None
        burst = max(1.0, self._rate / 20.0)
        p.tokens = min(burst, p.tokens + (now - p.t_tokens) * self._rate)
        p.t_tokens = now
        if p.tokens >= 1.0:
            return min(int(p.tokens), len(p.queue[0][1])), None
        return 0, now + (1.0 - p.tokens) / self._rate

    def _arm(self):
        """Sets every socket's interest; returns the select timeout."""
        now = time.monotonic()
        wake_at = None
        for c in list(self._conns.values()):
            if c.doom_at is not None:
                if now >= c.doom_at:
                    self._close(c, reset=False)
                    continue
                wake_at = c.doom_at if wake_at is None else min(wake_at, c.doom_at)
            want = {c.client: 0, c.upstream: 0}
            for p in (c.up, c.down):
                # Reading goes on while stalled, the way a hung peer's kernel
                # still takes bytes into its receive buffer; nothing is written
                # and a close is not passed on.
                if not p.eof and p.pending < MAX_PENDING and not (p is c.up and c.doom_at):
                    want[p.src] |= selectors.EVENT_READ
                if self._stalled:
                    continue
                n, t = self._ready_bytes(p, now)
                if n:
                    want[p.dst] |= selectors.EVENT_WRITE
                elif t is not None:
                    wake_at = t if wake_at is None else min(wake_at, t)
                elif p.eof and not p.queue:
                    # Everything src sent is through: pass its close on.
                    self._close(c, reset=False, by_peer=True)
                    break
            if c.closed:
                continue
            for s, ev in want.items():
                try:
                    key = self._sel.get_key(s)
                except KeyError:
                    key = None
                if key is None:
                    if ev:
                        self._sel.register(s, ev, ("conn", c))
                elif not ev:
                    # Not watched at all: neither data nor a close is noticed.
                    self._sel.unregister(s)
                elif key.events != ev:
                    self._sel.modify(s, ev, key.data)
        return None if wake_at is None else max(0.0, wake_at - now)

    def _io(self, c, sock, mask):
        now = time.monotonic()
        if mask & selectors.EVENT_READ:
            p = c.up if sock is c.client else c.down
            if not p.eof and p.pending < MAX_PENDING:
                try:
                    data = sock.recv(CHUNK)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError as e:
                    self._event("connection %d: %s side: %s" % (c.id, p.direction, e))
                    self._close(c, reset=True, by_peer=True)
                    return
                if data == b"":
                    p.eof = True
                elif data:
                    self._count("read_" + p.direction, len(data))
                    if self.tap is not None:
                        self.tap(p.direction, c.id, data)
                    if p is c.up and c.screened:
                        data = self._screen(c, data, now)
                    if data:
                        p.queue.append([now + self._delay, data])
                        p.pending += len(data)
        if mask & selectors.EVENT_WRITE and not self._stalled:
            p = c.down if sock is c.client else c.up
            n, _ = self._ready_bytes(p, now)
            if n:
                chunk = p.queue[0][1]
                try:
                    sent = sock.send(chunk[:n])
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as e:
                    self._event("connection %d: write %s: %s" % (c.id, p.direction, e))
                    self._close(c, reset=True, by_peer=True)
                    return
                if self._rate is not None:
                    p.tokens -= sent
                self._count("bytes_" + p.direction, sent)
                if sent == len(chunk):
                    p.queue.popleft()
                else:
                    p.queue[0][1] = chunk[sent:]
                p.pending -= sent

    def _screen(self, c, data, now):
        """refuse(): returns the complete packets of data that may pass; at a
        refused PUBLISH, keeps back it and everything after, and dooms c."""
        if c.doom_at is not None:
            return b""
        c.upbuf += data
        if self._refuse is None and not self._drop_mqtt5:
            out = bytes(c.upbuf)
            c.upbuf.clear()
            return out
        out = bytearray()
        marker, unless_clean = self._refuse or (None, False)
        while True:
            n = _packet_length(c.upbuf)
            if n is None:
                return bytes(out)
            packet = bytes(c.upbuf[:n])
            kind = packet[0] >> 4
            if kind == 1 and self._drop_mqtt5 and _connect_fields(packet)[0] == 5:
                c.doom_at = now
                c.upbuf.clear()
                self._count("dropped_mqtt5")
                self._event("connection %d: dropped an MQTT 5 CONNECT" % c.id)
                return bytes(out)
            if kind == 1 and unless_clean and _connect_clean_start(packet):
                if not self._refuse_lifted:
                    self._event("connection %d: clean session, refusing no more" % c.id)
                self._refuse_lifted = True
            elif kind == 3 and marker is not None and marker in packet and \
                    not self._refuse_lifted:
                c.doom_at = now + 0.2
                c.upbuf.clear()
                self._count("refused_publishes")
                self._event("connection %d: refused a PUBLISH containing %r" % (c.id, marker))
                return bytes(out)
            out += packet
            del c.upbuf[:n]

    def _close(self, c, reset, by_peer=False):
        if c.closed:
            return
        c.closed = True
        for s in (c.client, c.upstream):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError, RuntimeError, OSError):
                pass
            if reset:
                _reset_close(s)
            else:
                try:
                    s.close()
                except OSError:
                    pass
        self._conns.pop(c.id, None)
        if by_peer:
            self._count("closed_by_peer")
        self._event("connection %d closed%s%s" % (c.id, " (reset)" if reset else "",
                                                  " by a peer" if by_peer else ""))

    def _cut_all(self, reset):
        n = len(self._conns)
        for c in list(self._conns.values()):
            self._close(c, reset=reset)
        self._count("cuts")
        self._event("cut %d connection(s)%s" % (n, " with RST" if reset else ""))
        return n
