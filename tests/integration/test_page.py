#!/usr/bin/python3
"""
The live page (gateway/page/index.html, served at /) in a real headless
Chromium against the real gateway and mosquitto:

- a recorded race replayed by race2mqtt-replay ($R2M_REPLAY) fills the
  standings with its six controllers, moves the flag through the race to the
  chequered flag and the laps up, and shows what /api/state says, row by row;
  nothing on the console, no uncaught exception, no failed load;
- a broker outage shows on the page and ends on it, and the page keeps
  updating throughout;
- with http.token the page is refused without the token and works with
  ?token=, which it passes on (and never shows);
- beyond http.max_streams the page falls back to polling and still updates;
- phone, TV and desktop screenshots go to $R2M_ARTIFACTS, and every table
  fits its page: no horizontal scrolling, no column cut off.

What the page rendered is recorded in the page itself by a MutationObserver,
so every frame it showed is seen, not only those a poll from here happens to
catch.
"""
import os
import subprocess

import browser
import harness

from harness import RACE, REPLAY
ARTIFACTS = os.path.abspath(os.environ.get("R2M_ARTIFACTS")
                            or os.path.join(harness.REPO, "build", "artifacts"))
FLAGS = {"none", "start", "green", "yellow", "red", "jumpstart", "checkered"}

# Records, in the page, every flag and every leader's lap count it showed, and
# the most standings rows it had. Read back with RECORDED.
OBSERVE = r"""
(() => {
  const seen = window.__r2m = {flags: [], laps: [], rows: 0};
  const sample = () => {
    const f = document.getElementById("flag").getAttribute("data-flag");
    if (seen.flags[seen.flags.length - 1] !== f) seen.flags.push(f);
    const rows = document.querySelectorAll("#standings tr[data-controller]");
    const laps = Math.max(0, ...[...rows].map((tr) => Number(tr.querySelector("td.laps").textContent) || 0));
    if (seen.laps[seen.laps.length - 1] !== laps) seen.laps.push(laps);
    seen.rows = Math.max(seen.rows, rows.length);
  };
  new MutationObserver(sample).observe(document.body,
    {subtree: true, childList: true, attributes: true, characterData: true});
  sample();
  return true;
})()
"""
RECORDED = "window.__r2m"

ROWS = "[...document.querySelectorAll('#standings tr[data-controller]')]"
MODE = "document.getElementById('conn').getAttribute('data-mode')"

# Everything a layout must not do, measured in the page: the document scrolls
# sideways, a table is wider than its box, a standings column is cut off at
# the right edge, a driver's name is clipped.
LAYOUT = r"""
(() => {
  const de = document.documentElement;
  const over = [...document.querySelectorAll("table, .scroll, section")]
    .filter((e) => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
    .map((e) => (e.id || e.className || e.tagName) + " " + e.scrollWidth + ">" + e.clientWidth);
  const heads = [...document.querySelectorAll("#race thead th")].map((th) => {
    const r = th.getBoundingClientRect();
    return {text: th.textContent, shown: r.width > 0, right: r.right};
  });
  const clipped = [...document.querySelectorAll("#standings .driver")]
    .filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => e.textContent);
  return {scrollWidth: de.scrollWidth, innerWidth: innerWidth, innerHeight: innerHeight,
          overflowing: over, heads: heads, clipped: clipped};
})()
"""


def lap(controller, n, ms, driver):
    return {"time": 1718036000000 + n * 10000, "event_type": "ui.lap_update",
            "event_data": {"controller_id": controller, "lap": n, "laptime_raw": ms,
                           "driver_data": {"name": driver}}}


class PageTests(harness.ReplayCase):

    # ---- helpers ---------------------------------------------------------

    def open_page(self, url, width=1280, height=800, mobile=False):
        """A Chromium showing url, closed at the end of the test at the latest."""
        b = browser.Browser(width=width, height=height)
        self.addCleanup(b.close)
        if mobile:
            b.set_viewport(width, height, mobile=True)
        b.navigate(url)
        return b

    def wait_page(self, b, js, what, timeout=30):
        """Waits until js is truthy in the page; on timeout fails with what the
        page shows and a screenshot in the artifacts."""
        try:
            return b.wait_for(js, timeout)
        except TimeoutError as e:
            shot = os.path.join(ARTIFACTS, "page-fail-%s.png" % self.id().rsplit(".", 1)[-1])
            try:
                b.screenshot(shot)
            except browser.BrowserError:
                shot = "(no screenshot)"
            info = b.evaluate("({conn: document.getElementById('conn').textContent, "
                              "flag: document.getElementById('flag').dataset.flag, "
                              "rows: %s.map((tr) => tr.innerText)})" % ROWS)
            self.fail("%s: %s\n  page: %r\n  page errors: %r\n  network: %r\n  screenshot: %s"
                      % (what, e, info, b.page_errors(), b.network_errors(), shot))

    def replay(self, gw, speed, token=None):
        args = [REPLAY, "-q", "--speed", str(speed), "--url", self.url(gw)]
        if token:
            args += ["--token", token]
        p = subprocess.Popen(args + [RACE], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        return p

    def finish_replay(self, p):
        out, _ = p.communicate(timeout=300)
        self.assertEqual(p.returncode, 0, out.decode("utf-8", "replace")[-2000:])

    def assertQuiet(self, b, allow_network=()):
        """No console error or warning, no uncaught exception, and no failed
        load except those allow_network(entry) accepts."""
        self.assertEqual(b.page_errors(), [], "the page reported errors")
        net = [n for n in b.network_errors() if not any(ok(n) for ok in allow_network)]
        self.assertEqual(net, [], "failed loads")

    def state(self, gw, token=None):
        r = gw.request("GET", "/api/state" + ("?token=" + token if token else ""))
        self.assertEqual(r.status, 200, r)
        return r.json

    # ---- tests -----------------------------------------------------------

    def test_replayed_race(self):
        broker, gw = self.world()
        b = self.open_page(self.url(gw))
        self.wait_page(b, MODE + " === 'live'", "the page never went live")
        self.assertEqual(b.evaluate("document.getElementById('flag').dataset.flag"), "none")
        self.assertTrue(b.evaluate(OBSERVE))

        self.finish_replay(self.replay(gw, 20))
        # "ended" comes a moment before the official result: wait for the
        # page to show the gateway's last event, not just the end.
        st = self.state(gw)["race"]
        self.wait_page(b, "document.body.dataset.seq === '%d'" % st["seq"],
                       "the page never showed the last event")
        self.wait_page(b, "document.getElementById('status').textContent === 'Ended' && "
                          "document.getElementById('flag').dataset.flag === 'checkered' && "
                          "%s.length === 6" % ROWS, "the end of the race never showed")

        seen = b.evaluate(RECORDED)
        print("flags shown: %s" % " -> ".join(seen["flags"]))
        print("leader laps shown: %s" % seen["laps"])
        self.assertEqual(seen["flags"][0], "none", seen)
        self.assertEqual(seen["flags"][-1], "checkered", seen)
        self.assertIn("green", seen["flags"], seen)
        self.assertGreaterEqual(len(set(seen["flags"])), 3, seen)
        self.assertLessEqual(set(seen["flags"]), FLAGS, seen)
        self.assertEqual(seen["rows"], 6, seen)
        self.assertEqual(seen["laps"], sorted(set(seen["laps"])), "laps went down: %r" % seen)
        self.assertGreaterEqual(len(seen["laps"]), 3, "laps did not increase: %r" % seen)
        self.assertEqual(seen["laps"][-1], 15, seen)

        # The page shows what the gateway says, row by row.
        rows = b.evaluate(ROWS + ".map((tr) => ({id: tr.dataset.controller, "
                          "pos: tr.querySelector('td.pos').textContent, "
                          "driver: tr.querySelector('.driver').textContent, "
                          "laps: tr.querySelector('td.laps').textContent, "
                          "best: tr.querySelector('td.best').textContent, "
                          "gap: tr.querySelector('td.col-gap').textContent}))")
        self.assertEqual([r["id"] for r in rows], [e["controller_id"] for e in st["standings"]])
        for r, e in zip(rows, st["standings"]):
            self.assertEqual(r["pos"], str(e["position"]), r)
            self.assertEqual(r["driver"], e["driver"], r)
            self.assertEqual(r["laps"], str(e["laps"]), r)
            self.assertEqual(r["best"], "%.3f" % (e["best_lap_ms"] / 1000), r)
            self.assertEqual(r["gap"], e["gap"] or "", r)
        self.assertEqual(b.evaluate("document.getElementById('progress').textContent"), "15 / 15")
        self.assertEqual(b.evaluate("document.getElementById('track').textContent"),
                         st["track"]["name"])
        self.assertEqual(b.evaluate("document.getElementById('sr-accepted').textContent"),
                         str(self.state(gw)["smartrace"]["accepted"]))
        self.assertQuiet(b)
        b.close()

    def test_broker_outage(self):
        broker, gw = self.world()
        b = self.open_page(self.url(gw))
        connected = "document.getElementById('broker').dataset.connected === '%s'"
        laps = ("(document.querySelector('#standings tr[data-controller=\"1\"] td.laps') || "
                "{}).textContent === '%d'")
        self.wait_page(b, connected % "true", "broker never shown connected")
        self.assertOk(gw.post(lap("1", 1, 7100, "Outage Olga")))
        self.wait_page(b, laps % 1, "first lap not shown")

        broker.stop()
        self.wait_page(b, connected % "false", "outage not shown")
        # The gateway keeps taking events; the page shows them and the queue.
        self.assertOk(gw.post(lap("1", 2, 7200, "Outage Olga")))
        self.wait_page(b, laps % 2, "lap during the outage not shown")
        self.wait_page(b, "document.getElementById('b-queue').textContent.startsWith('1 event ')",
                       "the waiting event not shown")
        self.assertFalse(b.evaluate("document.getElementById('b-warn').hidden"))

        broker.start()
        self.wait_page(b, connected % "true", "reconnection not shown", timeout=60)
        self.wait_page(b, "document.getElementById('b-queue').textContent.startsWith('0 events ')",
                       "the queue did not drain on the page")
        self.assertOk(gw.post(lap("1", 3, 7300, "Outage Olga")))
        self.wait_page(b, laps % 3, "lap after the outage not shown")
        self.assertEqual(b.evaluate(MODE), "live")
        self.assertTrue(b.evaluate("document.getElementById('b-warn').hidden"))
        self.assertQuiet(b)
        b.close()

    def test_token(self):
        token = "s3cr3t-Tok"
        broker, gw = self.world(token=token)
        for path in ("/", "/index.html", "/api/state", "/api/events?limit=1", "/events"):
            self.assertEqual(gw.request("GET", path).status, 401, path)
        for path in ("/healthz", "/readyz", "/metrics"):
            self.assertEqual(gw.request("GET", path).status, 200, path)
        r = gw.request("GET", "/?token=" + token)
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"<tbody id=\"standings\">", r.body)

        b = self.open_page(self.url(gw) + "?token=" + token)
        self.wait_page(b, MODE + " === 'live'", "the page never went live with the token")
        self.assertOk(gw.post(lap("4", 1, 6900, "Token Tom")))
        self.wait_page(b, "%s.map((tr) => tr.dataset.controller).join() === '4'" % ROWS,
                       "the lap never showed")
        self.assertEqual(b.evaluate("document.querySelector('#standings .driver').textContent"),
                         "Token Tom")
        # The SmartRace URL says a token is needed without showing it.
        self.assertNotIn(token, b.evaluate("document.body.innerText"))
        self.assertIn("?token=", b.evaluate("document.getElementById('sr-url').textContent"))
        # "Wrong token?" is answered on the page: a POST with a wrong token,
        # then one without, each named for what it is.
        hints = "document.getElementById('sr-hints').textContent"
        self.assertEqual(harness.post(gw.http_port, "/", lap("4", 2, 6800, "x"),
                                      token="not-it").status, 401)
        self.wait_page(b, hints + ".includes('Wrong token (401)')", "no wrong-token hint")
        self.assertEqual(harness.post(gw.http_port, "/", lap("4", 2, 6800, "x")).status, 401)
        self.wait_page(b, hints + ".includes('No token (401)')", "no missing-token hint")
        self.assertNotIn("not-it", b.evaluate("document.body.innerText"))
        self.assertQuiet(b)
        b.close()

        # A wrong token is refused like none.
        for path in ("/?token=wrong", "/api/state?token=wrong", "/events?token=wrong"):
            self.assertEqual(gw.request("GET", path).status, 401, path)

    def test_stream_bound_falls_back_to_polling(self):
        broker, gw = self.world(extra={"http": {"max_streams": "1"}})
        first = self.open_page(self.url(gw))
        self.wait_page(first, MODE + " === 'live'", "the first page never went live")

        second = self.open_page(self.url(gw))
        self.wait_page(second, MODE + " === 'polling'", "the second page did not fall back")
        self.assertOk(gw.post(lap("2", 1, 7000, "Poll Paula")))
        for b in (first, second):
            self.wait_page(b, "%s.length === 1" % ROWS, "the lap never showed")
        self.assertOk(gw.post(lap("2", 2, 6950, "Poll Paula")))
        for b in (first, second):
            self.wait_page(b, "document.querySelector('#standings td.laps').textContent === '2'",
                           "the second lap never showed")
        self.assertEqual(first.evaluate(MODE), "live")
        self.assertEqual(second.evaluate(MODE), "polling")
        # The 503 of the refused stream (again at each retry of the stream)
        # is the only failed load; it is the gateway's JSON reason, not a hang.
        self.assertQuiet(first)
        refused = [n for n in second.network_errors() if n["url"].endswith("/events")]
        self.assertTrue(refused, second.network_errors())
        for n in refused:
            self.assertIn("503", n["text"], refused)
        self.assertQuiet(second, allow_network=[lambda n: n in refused])
        r = gw.request("GET", "/events", timeout=5)
        self.assertEqual(r.status, 503, r)
        self.assertIn("max_streams", r.json["error"])
        second.close()
        first.close()

    def test_screenshots_and_layout(self):
        broker, gw = self.world()
        self.finish_replay(self.replay(gw, 0))
        # Refusals, so that the desktop shot shows that table filled.
        self.assertEqual(gw.request("POST", "/", body=b"not json",
                                    headers={"Content-Type": "application/json"}).status, 400)
        self.assertEqual(gw.post({"event_type": 5, "event_data": {"controller_id": "1"}}).status,
                         400)
        self.assertEqual(gw.request("POST", "/metrics", body=b"{}").status, 405)
        os.makedirs(ARTIFACTS, exist_ok=True)
        for name, query, w, h, mobile in (("phone", "", 390, 844, True),
                                          ("tv", "?tv=1", 1920, 1080, False),
                                          ("desktop", "", 1280, 800, False)):
            b = self.open_page(self.url(gw) + query, w, h, mobile)
            self.wait_page(b, "%s.length === 6 && document.getElementById('flag').dataset.flag "
                              "=== 'checkered'" % ROWS, "%s: the race never showed" % name)
            if name == "desktop":
                self.wait_page(b, "document.querySelectorAll('#sr-refusals tr').length === 3",
                               "refusals not shown")
            lay = b.evaluate(LAYOUT)
            self.assertEqual((lay["innerWidth"], lay["innerHeight"]), (w, h), name)
            self.assertLessEqual(lay["scrollWidth"], lay["innerWidth"],
                                 "%s: the page scrolls sideways" % name)
            self.assertEqual(lay["overflowing"], [], "%s: wider than their box" % name)
            shown = [hd["text"] for hd in lay["heads"] if hd["shown"]]
            for hd in lay["heads"]:
                if hd["shown"]:
                    self.assertLessEqual(hd["right"], w, "%s: column %s cut" % (name, hd["text"]))
            if name == "tv":
                self.assertEqual(shown, ["Pos", "Driver", "Laps", "Last", "Best", "Gap", "Fuel",
                                         "Pit"], name)
                self.assertEqual(lay["clipped"], [], "tv: driver names cut")
            elif name == "phone":
                self.assertEqual(shown, ["Pos", "Driver", "Laps", "Last", "Best", "Fuel"], name)
            else:
                self.assertIn("Gap", shown, name)
                self.assertIn("Pit", shown, name)
            self.assertQuiet(b)
            path = os.path.join(ARTIFACTS, "page-%s-%dx%d.png" % (name, w, h))
            b.screenshot(path)
            self.assertEqual(browser.png_size(path), (w, h), path)
            self.assertGreater(os.path.getsize(path), 5000, path)
            print("screenshot %s: %s" % (name, path))
            if name == "desktop":
                # The whole page too: the refusals are below the fold.
                full = b.evaluate("[document.documentElement.clientWidth, "
                                  "document.documentElement.scrollHeight]")
                path = os.path.join(ARTIFACTS, "page-%s-full.png" % name)
                b.screenshot(path, full_page=True)
                self.assertEqual(browser.png_size(path), tuple(full), path)
                self.assertGreater(full[1], h, "the desktop page fits one screen: %r" % full)
                print("screenshot %s (whole page, %dx%d): %s" % (name, full[0], full[1], path))
            b.close()


if __name__ == "__main__":
    harness.main()
