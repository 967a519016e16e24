"""Heartbeats that probe only silent devices, and the transfer hold (protocol sections 3, 5)."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.session.transfer import LARGE, Transfer
from o2obroker.wire import FrameSplitter, encode_cbor, frame
from o2obroker.wire.limits import Limits
from tests.harness import Device, Harness


class SlowTransport(StringTransport):
    """A transport whose peer takes the written bytes only when the test says so.

    Like a Twisted socket, it pauses its streaming producer while more than
    ``bufferSize`` bytes wait, and resumes it once they are all taken.
    """

    bufferSize = 1 << 16

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 5001))
        self.pending = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.pending += len(data)
        if self.pending > self.bufferSize and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self, n: int | None = None) -> None:
        self.pending = 0 if n is None else max(0, self.pending - n)
        if self.pending == 0 and self.producer is not None:
            self.producer.resumeProducing()


class SlowDevice(Device):
    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.transport = SlowTransport()
        self.proto = harness.factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)
        self._splitter = FrameSplitter(64 << 20)
        self.received: list[dict[str, Any]] = []


class LivenessCase(SynchronousTestCase):
    settings: dict[str, Any] = {}

    def setUp(self) -> None:
        self.h = Harness(auth="none", hb=8, **self.settings)
        self.h.node.start()
        self.stats = self.h.node.metrics.stats

    def tearDown(self) -> None:
        self.h.node.stop()

    def run_for(self, seconds: int) -> None:
        self.h.clock.pump([1] * seconds)

    def pings(self, d: Device) -> int:
        return d.read_types().count("ping")


class ProbeTests(LivenessCase):
    def test_a_device_that_speaks_is_not_probed(self) -> None:
        d = self.h.login("alice")
        d.read()
        for _ in range(10):
            self.run_for(6)
            d.write({"t": "ack", "seq": 0})
        self.assertEqual(self.pings(d), 0)
        self.assertEqual(self.stats.pings_sent, 0)
        # a ping every 8 s would have cost about 60 / 8 pings
        self.assertGreaterEqual(self.stats.pings_saved_live, 5)
        self.assertFalse(d.closed)

    def test_a_silent_device_is_probed_once_then_dropped(self) -> None:
        d = self.h.login("alice")
        d.read()
        self.run_for(10)
        self.assertEqual(self.pings(d), 1)
        self.run_for(6)
        self.assertEqual(self.pings(d), 0)
        self.assertEqual(self.stats.pings_sent, 1)
        self.run_for(2)
        self.assertTrue(d.closed)

    def test_metrics_of_pings(self) -> None:
        d = self.h.login("alice")
        d.read()
        self.run_for(10)
        text = self.h.node.metrics.render().decode()
        self.assertIn("o2o_pings_sent_total 1.0", text)
        self.assertIn('o2o_pings_saved_total{rule="liveness"}', text)
        self.assertIn('o2o_pings_saved_total{rule="transfer"} 0.0', text)


class StartTests(SynchronousTestCase):
    def test_a_clock_moved_before_the_start_does_not_close_new_sessions(self) -> None:
        h = Harness(auth="none", hb=8)
        h.clock.advance(1000)  # the node was built, then took its time to start
        h.node.start()
        self.addCleanup(h.node.stop)
        d = h.login("alice")
        d.read()
        h.clock.pump([1] * 7)
        self.assertFalse(d.closed)
        self.assertEqual(d.read_types().count("ping"), 0)


class NaiveProbeTests(LivenessCase):
    """The benchmark's baseline follows the protocol: it too probes only silent
    devices, but it holds nothing for a transfer."""

    settings = {
        "presence_naive": True,
        "transfer_rate": 1024,
        "limits": Limits(max_body=1 << 20),
    }

    def test_naive_mode_probes_only_silent_devices(self) -> None:
        d = self.h.login("alice")
        d.read()
        for _ in range(10):
            self.run_for(6)
            d.write({"t": "ack", "seq": 0})
        self.assertEqual(self.pings(d), 0)
        self.run_for(10)
        self.assertEqual(self.pings(d), 1)

    def test_naive_mode_has_no_transfer_hold(self) -> None:
        d = self.h.login("alice")
        d.read()
        d.write_bytes(large_send(100_000)[:10_000])
        self.run_for(10)
        self.assertEqual(self.pings(d), 1)  # held with the hold: see InboundHoldTests
        self.assertEqual(self.stats.pings_saved_transfer, 0)
        self.run_for(8)
        self.assertTrue(d.closed)


def large_send(size: int) -> bytes:
    """The bytes of one send frame of about ``size`` bytes."""
    return frame(encode_cbor({"t": "send", "id": "big", "to": "bob", "body": "x" * size}))


class InboundHoldTests(LivenessCase):
    # 1 KiB/s until measured: a 100 KB frame is given 100 s plus half of that
    settings = {"transfer_rate": 1024, "limits": Limits(max_body=1 << 20)}

    def test_slow_upload_is_held_then_completes(self) -> None:
        d = self.h.login("alice")
        d.read()
        data = large_send(100_000)
        d.write_bytes(data[:10_000])
        session = d.proto.session
        self.assertTrue(session.transfer.active)
        self.run_for(60)  # silent far beyond 2 x hb, and beyond the stall timeout
        self.assertFalse(d.closed)
        self.assertEqual(self.pings(d), 0)
        self.assertGreaterEqual(self.stats.pings_saved_transfer, 5)
        d.write_bytes(data[10_000:])
        self.assertEqual(d.read_types(), ["receipt"])
        self.assertFalse(session.transfer.active)
        # the measured rate moved the estimate: about 100 KB in 60 s
        self.assertAlmostEqual(
            session.transfer.rate, (1024 + (len(data) - 10_000) / 60) / 2, delta=50
        )
        # and normal probing is back
        self.run_for(10)
        self.assertEqual(self.pings(d), 1)

    def test_hold_lapses_after_estimate_plus_margin(self) -> None:
        d = self.h.login("alice")
        d.read()
        d.write_bytes(large_send(100_000)[:10_000])
        self.run_for(125)
        self.assertFalse(d.closed)
        self.run_for(10)
        # past t0 (about 88 s for what was missing) plus half of it: the normal rules
        # apply again, and a frame half-way for that long has stalled
        [error] = d.read()
        self.assertEqual((error["code"], error["reason"]), (400, "frame stalled half-way"))
        self.assertTrue(d.closed)

    def test_small_frames_start_no_hold(self) -> None:
        d = self.h.login("alice")
        d.read()
        d.write_bytes(large_send(LARGE // 2)[:1000])
        self.assertIsNone(d.proto.session.transfer)
        self.run_for(31)
        self.assertTrue(d.closed)


class OutboundHoldTests(LivenessCase):
    settings = {"transfer_rate": 1024}

    def backlog(self) -> SlowDevice:
        """Bob connects over a slow link to a backlog of about 90 KB."""
        alice = self.h.login("alice")
        for i in range(3):
            alice.write({"t": "send", "id": f"m{i}", "to": "bob", "body": "y" * 30_000})
        bob = SlowDevice(self.h)
        bob.write({"t": "hello", "user": "bob", "device": "phone"})
        self.assertEqual(bob.read_types(), ["welcome", "msg", "msg", "msg"])
        self.assertTrue(bob.proto.session.transfer.active)
        return bob

    def test_device_receiving_a_large_backlog_is_not_probed(self) -> None:
        bob = self.backlog()
        self.run_for(40)
        self.assertFalse(bob.closed)
        self.assertEqual(self.pings(bob), 0)
        self.assertGreaterEqual(self.stats.pings_saved_transfer, 3)
        bob.transport.drain()
        self.run_for(2)
        session = bob.proto.session
        self.assertFalse(session.transfer.active)
        self.assertGreater(session.transfer.rate, 1024)
        # bob said nothing while it was being sent to: probe it now, not 2 x hb later
        self.assertEqual(self.pings(bob), 1)
        bob.write({"t": "pong"})
        self.run_for(12)
        self.assertFalse(bob.closed)

    def test_stuck_transfer_falls_back_to_probing(self) -> None:
        bob = self.backlog()
        self.run_for(120)
        self.assertEqual(self.pings(bob), 0)
        self.assertFalse(bob.closed)
        self.run_for(16)
        self.assertEqual(self.pings(bob), 1)
        self.run_for(10)
        self.assertTrue(bob.closed)


class TransferTests(SynchronousTestCase):
    def test_estimate_and_margin(self) -> None:
        t = Transfer(1000, margin_ratio=0.5, margin_min=5)
        t.start("in", 12_000, 100.0, already=2_000)
        self.assertEqual(t.until, 100 + 10 + 5)
        t.finish(104.0)
        self.assertEqual(t.rate, (1000 + 10_000 / 4) / 2)
        t.start("out", 100_000, 200.0)
        self.assertAlmostEqual(t.until, 200 + 57.14 + 28.57, places=1)

    def test_more_output_extends_the_hold(self) -> None:
        t = Transfer(1000, margin_min=1)
        t.start("out", 10_000, 0.0)
        before = t.until
        t.extend(10_000, 5.0)
        self.assertGreater(t.until, before)

    def test_lapse_learns_nothing(self) -> None:
        t = Transfer(1000)
        t.start("in", 100_000, 0.0)
        t.lapse()
        self.assertFalse(t.active)
        self.assertEqual(t.rate, 1000)
