"""
browser.py - a small headless Chromium driver for the page tests.

Speaks the Chrome DevTools Protocol over one websocket (Debian's
python3-websocket) to Debian's /usr/bin/chromium, so the tests need nothing
outside Debian: no Selenium, no Playwright, no downloaded browser.

    with Browser() as b:
        b.navigate("http://127.0.0.1:%d/" % port)
        b.wait_for("document.querySelectorAll('#standings tr').length > 0", 10)
        b.screenshot("/tmp/page.png")
        assert b.page_errors() == []

What the page reports is recorded, not raised: console errors and warnings
(including failed console.assert), uncaught exceptions, and Log entries of
level error. Failed network loads (a 503 on /events, say) are Log entries with
source "network"; they are kept apart (network_errors()) because a page test
may provoke them on purpose and must filter them by URL deliberately.

Everything is bounded by a timeout. close() (or leaving the with block, also
on an exception) kills Chromium's whole process group and removes its
profile directory.
"""

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

import websocket  # python3-websocket (websocket-client)

CHROMIUM = os.environ.get("R2M_CHROMIUM", "/usr/bin/chromium")

# The flags this machine needs (see .library/env/machines/c.md): root needs
# --no-sandbox; the background-networking flags stop Chromium from calling
# Google's hosts on a closed network, which fails slowly and noisily.
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
    "--remote-debugging-port=0",
]


class BrowserError(Exception):
    pass


class JsError(BrowserError):
    """evaluate() threw; .details is the protocol's exceptionDetails."""

    def __init__(self, text, details):
        super().__init__(text)
        self.details = details


class Browser:
    def __init__(self, timeout=20, width=1280, height=800, extra_flags=()):
        self.timeout = timeout
        self.root = tempfile.mkdtemp(prefix="r2m-chromium-")
        self.profile = os.path.join(self.root, "profile")
        self.log_path = os.path.join(self.root, "chromium.log")
        self.proc = None
        self.ws = None
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._responses = {}      # id -> message, until the caller takes it
        self._events = []         # Page.* events: (n, method, params)
        self._event_n = 0
        self._reader = None
        self._reader_error = None
        self.console = []         # {"type", "text", "url", "line"}
        self.exceptions = []      # {"text", "url", "line"}
        self.log_entries = []     # {"source", "level", "text", "url"}
        try:
            self._launch(list(extra_flags), width, height)
        except BaseException:
            self.close()
            raise

    # ---- lifecycle -----------------------------------------------------

    def _launch(self, extra_flags, width, height):
        # A missing browser is a failure, never a skip: scripts/deps.sh installs it.
        if not os.access(CHROMIUM, os.X_OK):
            raise BrowserError("%s missing: install chromium (scripts/deps.sh) or set R2M_CHROMIUM"
                               % CHROMIUM)
        os.makedirs(self.profile)
        argv = [CHROMIUM] + FLAGS + ["--user-data-dir=" + self.profile,
                                     "--window-size=%d,%d" % (width, height)] + extra_flags + ["about:blank"]
        with open(self.log_path, "wb") as log:
            # A session of its own, so that close() can end the renderer and
            # zygote children too, by process group.
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        port = self._wait_port()
        target = self._page_target(port)
        # Chromium refuses websocket clients that send an Origin header unless
        # --remote-allow-origins says so; a test client needs none.
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=self.timeout,
                                              suppress_origin=True, http_no_proxy=["127.0.0.1"])
        self.ws.settimeout(None)  # the reader blocks; callers time out on the condition
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        for domain in ("Runtime", "Log", "Page"):
            self.send(domain + ".enable")
        self.set_viewport(width, height)

    def _wait_port(self):
        """Chromium writes the port it chose into DevToolsActivePort."""
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError("chromium exited with %s at start:\n%s" % (self.proc.returncode, self.log()))
            try:
                with open(path) as f:
                    first = f.readline().strip()
                if first.isdigit():
                    return int(first)
            except OSError:
                pass
            time.sleep(0.02)
        raise BrowserError("chromium wrote no DevToolsActivePort in %ss:\n%s" % (self.timeout, self.log()))

    def _page_target(self, port):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.timeout
        last = None
        while time.monotonic() < deadline:
            try:
                with opener.open("http://127.0.0.1:%d/json/list" % port, timeout=5) as r:
                    targets = json.load(r)
                pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                if pages:
                    return pages[0]
                req = urllib.request.Request("http://127.0.0.1:%d/json/new?about:blank" % port, method="PUT")
                with opener.open(req, timeout=5) as r:
                    return json.load(r)
            except (OSError, ValueError) as e:
                last = e
            time.sleep(0.05)
        raise BrowserError("no page target on port %d: %r" % (port, last))

    def log(self, limit=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-limit:]
        except OSError:
            return ""

    def close(self):
        """Always safe to call, also twice and after a failed start."""
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception:  # noqa: BLE001 - tearing down anyway
                pass
            self.ws = None
        if self.proc is not None:
            if self.proc.poll() is None:
                for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(self.proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        self.proc.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            # The leader is gone; its children may not be. Wait (bounded) until
            # the group is empty, so that nothing outlives close().
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
            self.proc = None
        if self.root and os.path.isdir(self.root):
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ---- protocol --------------------------------------------------------

    def _read_loop(self):
        try:
            while True:
                raw = self.ws.recv()
                if not raw:
                    continue
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._responses[msg["id"]] = msg
                    else:
                        self._on_event(msg.get("method", ""), msg.get("params", {}))
                    self._cond.notify_all()
        except Exception as e:  # noqa: BLE001 - connection closed: wake every waiter
            with self._cond:
                self._reader_error = e
                self._cond.notify_all()

    def _on_event(self, method, p):
        if method == "Runtime.consoleAPICalled":
            if p.get("type") in ("error", "warning", "assert"):
                frame = (p.get("stackTrace") or {}).get("callFrames") or [{}]
                self.console.append({"type": p.get("type"), "text": " ".join(_remote_text(a) for a in p.get("args", [])),
                                     "url": frame[0].get("url"), "line": frame[0].get("lineNumber")})
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            exc = d.get("exception") or {}
            self.exceptions.append({"text": exc.get("description") or d.get("text"),
                                    "url": d.get("url"), "line": d.get("lineNumber")})
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            if e.get("level") == "error":
                self.log_entries.append({"source": e.get("source"), "level": e.get("level"),
                                         "text": e.get("text"), "url": e.get("url")})
        elif method.startswith("Page."):
            self._event_n += 1
            self._events.append((self._event_n, method, p))
            del self._events[:-200]  # only recent page events are ever waited for

    def send(self, method, params=None, timeout=None):
        """Sends one command and returns its result; raises BrowserError on a
        protocol error or when no answer comes within timeout."""
        if self.ws is None:
            raise BrowserError("browser is closed")
        mid = next(self._ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while mid not in self._responses:
                if self._reader_error is not None:
                    raise BrowserError("devtools connection lost: %r" % self._reader_error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError("no answer to %s in %ss" % (method, timeout or self.timeout))
                self._cond.wait(left)
            msg = self._responses.pop(mid)
        if "error" in msg:
            raise BrowserError("%s: %s" % (method, msg["error"]))
        return msg.get("result", {})

    def _event_mark(self):
        with self._cond:
            return self._event_n

    def wait_event(self, method, after, timeout=None):
        """Params of the first `method` event numbered above `after`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while True:
                for n, m, p in self._events:
                    if n > after and m == method:
                        return p
                if self._reader_error is not None:
                    raise BrowserError("devtools connection lost: %r" % self._reader_error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError("no %s in %ss" % (method, timeout or self.timeout))
                self._cond.wait(left)

    # ---- what the tests use ---------------------------------------------

    def navigate(self, url, timeout=None):
        mark = self._event_mark()
        r = self.send("Page.navigate", {"url": url}, timeout)
        if r.get("errorText"):
            raise BrowserError("navigate %s: %s" % (url, r["errorText"]))
        self.wait_event("Page.loadEventFired", mark, timeout)
        return r

    def evaluate(self, js, timeout=None):
        """The value of a JS expression (awaited if it is a promise), as JSON."""
        r = self.send("Runtime.evaluate", {"expression": js, "returnByValue": True,
                                           "awaitPromise": True}, timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            text = (d.get("exception") or {}).get("description") or d.get("text")
            raise JsError("%s\n  in: %s" % (text, js[:200]), d)
        return r.get("result", {}).get("value")

    def wait_for(self, js, timeout=10, interval=0.05, message=None):
        """Evaluates js until it is truthy and returns that value; raises
        TimeoutError with the last value otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.evaluate(js)
            if v:
                return v
            if time.monotonic() >= deadline:
                raise TimeoutError("%s: still %r after %ss" % (message or js[:200], v, timeout))
            time.sleep(interval)

    def set_viewport(self, width, height, mobile=False, scale=1):
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": scale, "mobile": mobile})
        self.send("Emulation.setTouchEmulationEnabled", {"enabled": bool(mobile)})

    def screenshot(self, path, full_page=False):
        """Writes a PNG of the viewport (or the whole page) and returns path."""
        params = {"format": "png"}
        if full_page:
            m = self.send("Page.getLayoutMetrics")
            size = m.get("cssContentSize") or m.get("contentSize")
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        r = self.send("Page.captureScreenshot", params, timeout=30)
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))
        return path

    # ---- what the page reported -----------------------------------------

    def page_errors(self):
        """Console errors/warnings, uncaught exceptions and non-network Log errors."""
        with self._cond:
            return ([dict(c, kind="console") for c in self.console]
                    + [dict(e, kind="exception") for e in self.exceptions]
                    + [dict(e, kind="log") for e in self.log_entries if e.get("source") != "network"])

    def network_errors(self):
        """Failed loads as Chromium logs them: [{"text", "url", ...}]."""
        with self._cond:
            return [dict(e) for e in self.log_entries if e.get("source") == "network"]

    def clear_reports(self):
        with self._cond:
            del self.console[:], self.exceptions[:], self.log_entries[:]


def _remote_text(obj):
    """A console argument (a RemoteObject) as text."""
    if "value" in obj:
        v = obj["value"]
        return v if isinstance(v, str) else json.dumps(v)
    return obj.get("description") or obj.get("type", "?")


def png_size(path):
    """(width, height) from a PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError("%s is not a PNG" % path)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
