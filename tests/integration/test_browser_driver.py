#!/usr/bin/python3
"""
The headless Chromium driver of the page tests (browser.py) does what those
tests rely on: it loads a page from a small local HTTP server, evaluates
JavaScript (and reports a throw as JsError), records console errors, uncaught
exceptions and failed loads, writes a PNG of exactly the emulated viewport, and
leaves no process or profile behind. A missing browser is an error, not a skip.
"""
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import unittest

import browser
import harness

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>driver check</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"></head>
<body><p id="p">hello</p></body></html>"""

NOISY = b"""<!doctype html><html><head><meta charset="utf-8"><title>noisy</title>
<link rel="icon" href="data:,"></head>
<body><img src="missing.png" alt="">
<script>
console.log("only a log line");
console.error("boom from console.error");
setTimeout(() => { throw new Error("boom uncaught"); }, 0);
</script></body></html>"""


class Pages(http.server.BaseHTTPRequestHandler):
    """/ and /noisy.html; everything else is 404. Records the paths asked for."""

    asked = []

    def do_GET(self):
        Pages.asked.append(self.path)
        body = {"/": PAGE, "/noisy.html": NOISY}.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class BrowserDriverTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
        cls.thread = threading.Thread(target=cls.server.serve_forever, daemon=True)
        cls.thread.start()
        cls.base = "http://127.0.0.1:%d/" % cls.server.server_address[1]

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def setUp(self):
        Pages.asked.clear()
        self.tmp = tempfile.mkdtemp(prefix="r2m-it-driver-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_navigate_and_evaluate(self):
        with browser.Browser() as b:
            b.navigate(self.base)
            self.assertIn("/", Pages.asked)
            self.assertEqual(b.evaluate("document.title"), "driver check")
            self.assertEqual(b.evaluate("document.getElementById('p').textContent"), "hello")
            self.assertEqual(b.evaluate("({a: [1, 2], b: null})"), {"a": [1, 2], "b": None})
            self.assertEqual(b.evaluate("new Promise(r => setTimeout(() => r(42), 10))"), 42)
            with self.assertRaises(browser.JsError) as cm:
                b.evaluate("null.x")
            self.assertIn("TypeError", str(cm.exception))
            self.assertEqual(b.wait_for("document.readyState === 'complete' && 7", 5), 7)
            with self.assertRaises(TimeoutError):
                b.wait_for("false", 0.3)
            # A clean page reports nothing.
            self.assertEqual(b.page_errors(), [])
            self.assertEqual(b.network_errors(), [])

    def test_data_url(self):
        with browser.Browser() as b:
            b.navigate("data:text/html,<title>x</title><b id=b>data</b>")
            self.assertEqual(b.evaluate("document.getElementById('b').textContent"), "data")

    def test_errors_are_recorded(self):
        with browser.Browser() as b:
            b.navigate(self.base + "noisy.html")
            b.wait_for("performance.getEntriesByType('resource').length > 0", 5)
            harness.wait_until(lambda: len(b.page_errors()) >= 2 and b.network_errors(), 10)
            errs = b.page_errors()
            console = [e for e in errs if e["kind"] == "console"]
            exc = [e for e in errs if e["kind"] == "exception"]
            self.assertEqual([c["text"] for c in console], ["boom from console.error"], errs)
            self.assertEqual(len(exc), 1, errs)
            self.assertIn("boom uncaught", exc[0]["text"])
            net = b.network_errors()
            self.assertEqual(len(net), 1, net)
            self.assertTrue(net[0]["url"].endswith("/missing.png"), net)
            self.assertIn("404", net[0]["text"], net)
            self.assertIn("/missing.png", Pages.asked)
            b.clear_reports()
            self.assertEqual(b.page_errors() + b.network_errors(), [])

    def test_screenshot_has_the_viewport_size(self):
        with browser.Browser(width=1280, height=800) as b:
            b.navigate(self.base)
            for w, h, mobile in ((390, 844, True), (1920, 1080, False), (1280, 800, False)):
                b.set_viewport(w, h, mobile=mobile)
                self.assertEqual(b.evaluate("[innerWidth, innerHeight]"), [w, h])
                path = os.path.join(self.tmp, "shot-%dx%d.png" % (w, h))
                b.screenshot(path)
                self.assertEqual(browser.png_size(path), (w, h), path)
                self.assertGreater(os.path.getsize(path), 1000, path)
        with open(os.path.join(self.tmp, "not.png"), "wb") as f:
            f.write(b"GIF89a" + b"\0" * 30)
        with self.assertRaises(ValueError):
            browser.png_size(os.path.join(self.tmp, "not.png"))

    def test_close_leaves_nothing_behind(self):
        b = browser.Browser()
        pid, root = b.proc.pid, b.root
        b.navigate(self.base)
        b.close()
        b.close()  # harmless twice
        self.assertFalse(os.path.exists(root), root)
        # The whole process group is gone (renderers, zygote, GPU process).
        ps = subprocess.run(["ps", "-o", "pid=", "-s", str(pid)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
        self.assertEqual(ps.stdout.decode().split(), [])
        with self.assertRaises(browser.BrowserError):
            b.evaluate("1")

    def test_missing_chromium_is_an_error(self):
        saved = browser.CHROMIUM
        browser.CHROMIUM = os.path.join(self.tmp, "no-such-chromium")
        try:
            with self.assertRaises(browser.BrowserError) as cm:
                browser.Browser()
            self.assertIn("no-such-chromium", str(cm.exception))
        finally:
            browser.CHROMIUM = saved


if __name__ == "__main__":
    harness.main()
