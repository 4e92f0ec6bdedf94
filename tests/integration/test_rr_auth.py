#!/usr/bin/python3
"""
RACE RESULT tokens (SPEC section 3 "Auth"): tokens that expire during a
backlog (short lifetime, and all of them revoked at once), a 401 on detections
(renewed once and retried at once, invisible in the log), a 401 that survives
the renewal (one device episode), and refused token requests (406: backoff,
one log line per episode, no hammering, then recovery). Every passing is
delivered at the end.
"""
import time

import paho.mqtt.client as mqtt

import harness

KEY = "rr-auth-key-91d0c2"
CID = 846
DEV = "D-A"
DET_ROUTE = "GET /customers/{cid}/devices/{dev}/detections"
DET_PATH = "/customers/%d/devices/%s/detections" % (CID, DEV)


class RaceResultAuthTests(harness.IntegrationCase):

    def setup_rr(self, files, token_ttl=7200, before_start=None, **keys):
        d = self.tmpdir()
        rr = harness.fake_raceresult(api_key=KEY, customer=CID, token_ttl=token_ttl, world={
            "devices": [{"id": DEV, "type": "Decoder", "files": dict(files)}]})
        self.track(harness._Stoppable(rr))
        if before_start:
            before_start(rr)
        broker = self.start_broker(d)
        sub = self.subscribe(broker.port, ["raceresult/+/passing"], protocol=mqtt.MQTTv5)
        cfg = dict(start="all", amount=500)
        cfg.update(keys)
        gw = self.start_gateway(d, broker, extra=harness.rr_extra(rr, KEY, CID, **cfg))
        return rr, sub, gw, harness.PassingCollector(sub)

    def test_token_expiry_and_401(self):
        files = {"1": 3000}
        rr, sub, gw, col = self.setup_rr(files, token_ttl=2)
        count = 3000
        self.assertEqual(sorted(col.wait_ids(harness.rr_ids(DEV, {1: count}), 20)), [])
        # Tokens live 2 s: keep passings coming for 6 s, revoke all tokens once.
        t_end = time.monotonic() + 6
        revoked = False
        while time.monotonic() < t_end:
            rr.add_detections(DEV, 120)
            count += 120
            if not revoked and t_end - time.monotonic() < 3:
                rr.expire_tokens()
                revoked = True
            time.sleep(0.3)
        self.assertEqual(sorted(col.wait_ids(harness.rr_ids(DEV, {1: count}), 15))[:10], [])
        tokens_before = rr.stats().get("POST /token", 0)
        self.assertGreaterEqual(tokens_before, 4, "short-lived tokens not renewed")

        # One 401 on detections: renewed and retried at once, invisibly.
        n_req = len(rr.requests())
        rr.fail_next(1, 401, path_prefix=DET_PATH)
        rr.add_detections(DEV, 7)
        count += 7
        self.assertEqual(sorted(col.wait_ids(harness.rr_ids(DEV, {1: count}), 10)), [])
        reqs = rr.requests()[n_req:]
        k = next(i for i, r in enumerate(reqs) if r["fault"] == "fail")
        self.assertEqual(reqs[k]["status"], 401)
        nxt = [r for r in reqs[k + 1:]][:2]
        self.assertEqual([r["route"] for r in nxt], ["POST /token", DET_ROUTE],
                         "after a 401: want a new token, then the same request again")
        self.assertEqual(nxt[1]["target"], reqs[k]["target"])
        self.assertEqual(nxt[1]["status"], 200)
        self.assertNotEqual(nxt[1]["headers"].get("Authorization"),
                            reqs[k]["headers"].get("Authorization"))
        self.assertLess(nxt[1]["time"] - reqs[k]["time"], 0.5, "retry not at once")
        self.assertEqual(harness.log_lines(gw.log_path, r"retrying with backoff|unreachable|"
                                           r"refused"), [],
                         "expired or revoked tokens must be renewed without an error")

        # A 401 that survives the renewal: one device episode, then recovery.
        n_tok = rr.stats().get("POST /token", 0)
        rr.fail_next(2, 401, path_prefix=DET_PATH)
        rr.add_detections(DEV, 9)
        count += 9
        self.assertEqual(sorted(col.wait_ids(harness.rr_ids(DEV, {1: count}), 15)), [])
        self.assertEqual(rr.faults(), [])
        warn = harness.log_lines(gw.log_path, r"raceresult: device %s: .*401.*retrying" % DEV)
        self.assertEqual(len(warn), 1, "want one warning for the 401 episode")
        self.assertTrue(harness.wait_until(lambda: harness.log_lines(
            gw.log_path, r"device %s: reachable again" % DEV), 5))
        self.assertLessEqual(rr.stats().get("POST /token", 0) - n_tok, 4,
                             "token requested more than once per 401 (plus ttl renewals)")
        col.settle(0.5)
        col.check(self, harness.rr_ids(DEV, {1: count}), fake=rr, label="tokens",
                  check_all_raw=False)
        col.summary("rr_auth expiry", harness.rr_ids(DEV, {1: count}))
        # Every API request carried a token that was valid when sent or was
        # answered 401 and repeated with a fresh one: nothing else failed.
        bad = [(r["seq"], r["route"], r["status"], r["fault"]) for r in rr.requests()
               if r["status"] != 200 and r["status"] != 401]
        self.assertEqual(bad, [])

    def test_token_refused(self):
        rr, sub, gw, col = self.setup_rr({"1": 800}, before_start=lambda rr:
                                         rr.refuse_token_next(3, 406))
        t0 = time.monotonic()
        missing = col.wait_ids(harness.rr_ids(DEV, {1: 800}), 45)
        print("refused 3 times: passings after %.1f s" % (time.monotonic() - t0))
        self.assertEqual(sorted(missing)[:10], [])
        toks = rr.requests(route="POST /token")
        self.assertEqual([r["status"] for r in toks], [406, 406, 406, 200],
                         "token requests while refused: backoff means no hammering")
        gaps = [b["time"] - a["time"] for a, b in zip(toks, toks[1:])]
        print("gaps between token requests: %s" % ", ".join("%.2f" % g for g in gaps))
        self.assertGreaterEqual(min(gaps), 1.0, "no backoff after a refused token request")
        self.assertGreater(gaps[2], gaps[0] * 1.5, "backoff does not grow")
        self.assertEqual(len(harness.log_lines(gw.log_path, r"token request refused")), 1,
                         "one warning per refusal episode")
        self.assertEqual(len(harness.log_lines(gw.log_path, r"API unreachable")), 1,
                         "one warning per refusal episode")
        # Nothing but token requests while no token was granted.
        first_ok = toks[-1]["seq"]
        early = [r["route"] for r in rr.requests() if r["seq"] < first_ok
                 and r["route"] != "POST /token"]
        self.assertEqual(early, [], "API requests without a token")

        # Second episode: all tokens revoked and the next token request refused.
        rr.expire_tokens()
        rr.refuse_token_next(1, 406)
        rr.add_detections(DEV, 30)
        t1 = time.monotonic()
        self.assertEqual(sorted(col.wait_ids(harness.rr_ids(DEV, {1: 830}), 20)), [])
        print("second refusal: passings after %.1f s" % (time.monotonic() - t1))
        toks = rr.requests(route="POST /token")
        self.assertEqual([r["status"] for r in toks], [406, 406, 406, 200, 406, 200])
        self.assertEqual(len(harness.log_lines(gw.log_path, r"token request refused")), 2)
        self.assertEqual(len(harness.log_lines(gw.log_path, r"authenticated")), 2,
                         "want one 'authenticated' line per recovery")
        col.settle(0.5)
        col.check(self, harness.rr_ids(DEV, {1: 830}), fake=rr, label="refused",
                  check_all_raw=False)
        self.assertEqual(col.duplicates(), 0)


if __name__ == "__main__":
    harness.main()
