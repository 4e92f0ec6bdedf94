#!/usr/bin/python3
"""
Journal damage (SPEC section 7.1 and 7.4; gateway/journal.c "Recovery").

Torn tail: events are answered 200 while the broker is down, so they exist only
in the journal; the gateway is killed with SIGKILL (leaving the zeros the
journal writes ahead of its end) and the newest segment is damaged the way a
power loss leaves it (last record cut in its payload or in its
header, garbage or a torn next record behind the last one, a flipped bit). On
the next start the gateway logs exactly one line saying what it dropped,
publishes every complete record (all answered seqs except the damaged one, in
order, with their payloads), never publishes the damaged one, never hands out a
delivered seq again and accepts new events.

Full disk: the gateway runs under a file size limit (RLIMIT_FSIZE, what
`prlimit --fsize` sets; main.c ignores SIGXFSZ), so journal writes fail with
EFBIG once the segment reaches it. The refusals are 503 with a JSON reason, the
process stays up, the failure is logged once (not per event), the segment holds
exactly the events answered 200 (the failed writes are cut off), writing
resumes once the limit is lifted, and everything answered 200 is delivered when
the broker is back.

Journal bound: store.max_bytes = 1M with the broker down gives 503 "journal
full"; after the broker returns the journal drains and events are accepted
again, nothing answered 200 lost.

Run: RACE2MQTT_BIN=build/race2mqtt /usr/bin/python3 -u tests/integration/test_journal_damage.py
"""
import os
import re

import paho.mqtt.client as mqtt

import harness

TOPIC = "smartrace/other/test.damage"
N_EVENTS = 20


def event(i, pad=300):
    return {"time": 1700000000000 + i, "event_type": "test.damage",
            "event_data": {"i": i, "pad": "d" * pad}}


def seqs_on(sub, topic):
    return [m.json()["seq"] for m in sub.snapshot() if m.topic == topic]


class TornTailTests(harness.IntegrationCase):

    def damaged_restart(self, damage):
        """Posts N_EVENTS with the broker down, SIGKILLs the gateway, applies
        damage(path, records) -> (lost seqs, offset of the damage) to the
        newest segment and restarts with the broker up. Checks the log line
        (the bytes from the damage to the last non-zero one are dropped; zeros
        after them were written ahead), delivery and the seqs that follow."""
        d = self.tmpdir()
        broker = self.track(harness.Broker(d))  # not started: events stay in the journal
        gw = self.track(harness.Gateway(d, broker.port))
        gw.start(wait=False)
        gw.wait_healthy()
        answered = {}
        for i in range(N_EVENTS):
            answered[self.assertOk(gw.post(event(i)))] = i
        self.assertEqual(gw.kill(), -9)

        segs = harness.journal_segments(gw.store_dir)
        self.assertTrue(segs, "no journal segment in %s" % gw.store_dir)
        on_disk = {}
        for s in segs:
            recs, end, size = harness.journal_read_segment(s)
            self.assertEqual(end, size, "%s: undamaged journal has bad bytes at %d" % (s, end))
            on_disk.update({r.seq: r for r in recs})
        self.assertLessEqual(set(answered), set(on_disk),
                             "events answered 200 are not complete records on disk")
        last = segs[-1]
        recs = harness.journal_read_segment(last)[0]
        self.assertTrue(recs, "the newest segment holds no record")
        lost, offset = damage(last, recs)
        with open(last, "rb") as f:
            dropped = len(f.read()[offset:].rstrip(b"\0"))
        name = os.path.basename(last)

        broker.start()
        sub = self.subscribe(broker.port, [TOPIC])
        mark = harness.log_mark(gw.log_path)
        gw.start()

        lines = harness.log_lines_since(gw.log_path, mark, r"journal: .*dropped")
        print("%s: %s" % (self._testMethodName, lines[0] if lines else "<no dropped line>"))
        self.assertEqual(len(lines), 1, "want exactly one 'dropped' log line, got %r" % lines)
        self.assertIn(name, lines[0])
        nums = [int(x) for x in re.findall(r"\d+", lines[0].split(name, 1)[1])]
        self.assertIn(dropped, nums, "the line does not say how many bytes were dropped")
        self.assertIn(offset, nums, "the line does not say where the damage starts")
        self.assertEqual(harness.log_lines_since(gw.log_path, mark, r"damaged record"), [],
                         "the cut-off tail was read again after recovery")
        self.assertEqual(os.path.getsize(last), offset,
                         "the newest segment was not truncated at the damage")

        kept = {s: i for s, i in answered.items() if s not in lost}
        harness.delivery_report(self, sub, kept, TOPIC, self._testMethodName)
        sub.sync()
        delivered = set(seqs_on(sub, TOPIC))
        self.assertEqual(delivered & set(lost), set(), "a damaged record was published")
        self.assertEqual(delivered - set(kept), set(), "seqs published that nobody posted")

        new = []
        for i in range(N_EVENTS, N_EVENTS + 5):
            s = self.assertOk(gw.post(event(i)))
            new.append(s)
            kept[s] = i
        self.assertGreater(min(new), max(delivered), "a seq after the restart reuses a "
                           "delivered seq")
        if lost:
            print("%s: lost seq(s) %s; first seq after restart %d%s"
                  % (self._testMethodName, sorted(lost), min(new),
                     " (the lost seq is handed out again)" if min(new) in lost else ""))
        harness.delivery_report(self, sub, kept, TOPIC, self._testMethodName + "+new")
        return gw

    def test_last_record_cut_in_payload(self):
        def damage(path, recs):
            r = recs[-1]
            os.truncate(path, r.offset + r.length // 2)
            return {r.seq}, r.offset
        self.damaged_restart(damage)

    def test_last_record_cut_in_header(self):
        def damage(path, recs):
            r = recs[-1]
            os.truncate(path, r.offset + 10)
            return {r.seq}, r.offset
        self.damaged_restart(damage)

    def test_garbage_after_last_record(self):
        junk = bytes((i * 37 + 11) % 251 for i in range(57))
        self.assertNotIn(b"R2MJ", junk)

        def damage(path, recs):
            end = recs[-1].offset + recs[-1].length
            with open(path, "r+b") as f:
                f.seek(end)
                f.write(junk)
            return set(), end
        self.damaged_restart(damage)

    def test_torn_next_record_after_last_record(self):
        """A write of one more record that stopped in its payload: a header
        with the next seq (never answered) and a few of its bytes."""
        import struct

        def damage(path, recs):
            end = recs[-1].offset + recs[-1].length
            head = struct.pack("<IIQII", harness.JOURNAL_MAGIC, 0x12345678, recs[-1].seq + 1,
                               len(TOPIC), 400)
            with open(path, "r+b") as f:
                f.seek(end)
                f.write(head + TOPIC.encode() + b'{"event_type":"test.da')
            return set(), end
        self.damaged_restart(damage)

    def test_bit_flip_in_last_record(self):
        def damage(path, recs):
            r = recs[-1]
            with open(path, "r+b") as f:
                f.seek(r.offset + r.length - 5)
                b = f.read(1)
                f.seek(r.offset + r.length - 5)
                f.write(bytes([b[0] ^ 0x10]))
            return {r.seq}, r.offset
        self.damaged_restart(damage)


class FullDiskTests(harness.IntegrationCase):

    # ~1.15 KB per record: a handful fit below the limit.
    FSIZE = 8192
    PAD = 1000

    def test_file_size_limit(self):
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=True)
        sub = self.subscribe(broker.port, [TOPIC], qos=1, protocol=mqtt.MQTTv311,
                             client_id=harness.unique("r2m-it-fsize"), persistent=True)
        broker.stop()
        gw = self.track(harness.FsizeGateway(d, broker.port, fsize=self.FSIZE,
                                             extra={"store": {"flush_timeout_ms": "500"}}))
        mark = harness.log_mark(gw.log_path)
        gw.start(wait=False)
        gw.wait_healthy()

        answered = {}
        refusals = []
        for i in range(40):
            r = gw.post(event(i, self.PAD))
            if r.status == 200:
                self.assertEqual(refusals, [], "accepted after a refusal with the limit "
                                 "still in place: %r" % r)
                answered[self.assertOk(r)] = i
            else:
                self.assertJsonError(r, 503)
                self.assertCors(r)
                refusals.append(r)
                if len(refusals) >= 10:
                    break
        print("file size limit %d: %d answered 200, then %d x 503 %r"
              % (self.FSIZE, len(answered), len(refusals),
                 refusals[0].json if refusals else None))
        self.assertGreaterEqual(len(answered), 3, "the limit leaves room for a few events")
        self.assertEqual(len(refusals), 10, "40 events of 1 KB accepted under an 8 KiB limit")
        self.assertTrue(gw.running(), "the gateway died of the file size limit")
        self.assertEqual(gw.request("GET", "/healthz").status, 200)

        # One log line for the failure, not one per refused event.
        fails = harness.log_lines_since(gw.log_path, mark, r"journal: cannot write")
        self.assertEqual(len(fails), 1, "write failure logged %d times: %r"
                         % (len(fails), fails[:3]))
        self.assertRegex(fails[0], r"(?i)too large")  # EFBIG, named
        per_event = [ln for ln in harness.log_lines_since(gw.log_path, mark, r"(?i)refused|\b503\b")
                     if ln not in fails]
        self.assertEqual(per_event, [], "refusals logged per event")

        # The failed writes were cut off: the segment holds exactly the accepted events.
        seg_seqs = []
        for s in harness.journal_segments(gw.store_dir):
            recs, end, size = harness.journal_read_segment(s)
            self.assertEqual(end, size, "%s: %d bytes of a failed write left behind at %d"
                             % (s, size - end, end))
            self.assertLessEqual(size, self.FSIZE)
            seg_seqs += [r.seq for r in recs]
        self.assertEqual(seg_seqs, sorted(answered), "journal records != events answered 200")

        # Room again: accepted again, without a restart, and said so once.
        mark2 = harness.log_mark(gw.log_path)
        gw.set_fsize(None)
        for i in range(100, 105):
            answered[self.assertOk(gw.post(event(i, self.PAD)))] = i
        again = harness.wait_until(lambda: harness.log_lines_since(
            gw.log_path, mark2, r"journal: writing again"), 5)
        self.assertTrue(again, "no log line when writing works again")
        self.assertEqual(len(again), 1, again)
        print(again[0])

        broker.start()
        self.assertTrue(gw.wait_readyz(200, 40))
        harness.delivery_report(self, sub, answered, TOPIC, "fsize")

        # A restart finds a clean journal and continues above every seq.
        self.assertEqual(gw.stop(), 0)
        gw.fsize = None
        mark3 = harness.log_mark(gw.log_path)
        gw.start()
        self.assertEqual(harness.log_lines_since(gw.log_path, mark3, r"journal: .*dropped"), [])
        s = self.assertOk(gw.post(event(200, self.PAD)))
        self.assertGreater(s, max(answered))
        answered[s] = 200
        harness.delivery_report(self, sub, answered, TOPIC, "fsize+restart")

    def test_journal_full_bound(self):
        """store.max_bytes (minimum 1M) with the broker down: 503 'journal full',
        then accepted again once the broker drained the journal."""
        d = self.tmpdir()
        broker = self.start_broker(d, persistence=True)
        sub = self.subscribe(broker.port, [TOPIC], qos=1, protocol=mqtt.MQTTv311,
                             client_id=harness.unique("r2m-it-full"), persistent=True)
        broker.stop()
        gw = self.track(harness.Gateway(d, broker.port, extra={
            "store": {"max_bytes": "1M", "segment_bytes": "64K"}}))
        gw.start(wait=False)
        gw.wait_healthy()
        mark = harness.log_mark(gw.log_path)
        answered = {}
        refusals = []
        for i in range(60):
            r = gw.post(event(i, 50000))
            if r.status == 200:
                self.assertEqual(refusals, [], "accepted after 'journal full' with the "
                                 "broker still down")
                answered[self.assertOk(r)] = i
            else:
                self.assertJsonError(r, 503)
                self.assertCors(r)
                self.assertIn("journal full", r.json["error"])
                refusals.append(r)
                if len(refusals) >= 5:
                    break
        self.assertEqual(len(refusals), 5, "60 x 50 KB accepted into a 1 MiB journal")
        self.assertGreater(len(answered), 10)
        full_lines = harness.log_lines_since(gw.log_path, mark, r"journal full")
        print("journal bound 1M: %d answered 200, then 503 %r; %d log line(s) about it"
              % (len(answered), refusals[0].json, len(full_lines)))
        self.assertTrue(gw.running())

        broker.start()
        self.assertTrue(gw.wait_readyz(200, 40))
        # Segments are released once delivered (and covered by the state
        # snapshot, written every second): room comes back within seconds.
        r = harness.wait_until(lambda: (lambda r: r if r.status == 200 else None)(
            gw.post(event(100, 50000))), 30, 0.2)
        self.assertTrue(r, "still refused after the broker came back")
        answered[self.assertOk(r)] = 100
        for i in range(101, 105):
            answered[self.assertOk(gw.post(event(i, 50000)))] = i
        harness.delivery_report(self, sub, answered, TOPIC, "journal-full")
        used = sum(os.path.getsize(s) for s in harness.journal_segments(gw.store_dir))
        self.assertLess(used, 1 << 20, "journal segments not released after delivery")


if __name__ == "__main__":
    harness.main()
