"""What every transport promises its session, on task.Clock and StringTransport."""

from __future__ import annotations

import math
import os
from typing import Any

import cbor2
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from o2obroker.actors.user import IDevice
from o2obroker.session import IConnection
from o2obroker.session.session import MAX_HELD
from o2obroker.wire import encode_cbor, frame
from o2obroker.wire.limits import Limits
from tests.harness import Harness
from tests.web.helpers import WebHarness, ws_frame


class InterfaceTests(SynchronousTestCase):
    """Each provider declares its interface and has every method of it."""

    def setUp(self) -> None:
        self.h = WebHarness(auth="none")

    def test_binary_tcp_connection(self) -> None:
        d = self.h.login("alice")
        self.assertTrue(verifyObject(IConnection, d.proto))

    def test_websocket_connection(self) -> None:
        c = self.h.ws_login("alice")
        self.assertTrue(verifyObject(IConnection, c.transport.protocol))

    def test_long_poll_connection(self) -> None:
        self.h.lp_open("alice")
        [conn] = self.h.site.longpoll.sessions.values()
        self.assertTrue(verifyObject(IConnection, conn))

    def test_session_is_a_device(self) -> None:
        d = self.h.login("alice")
        self.assertTrue(verifyObject(IDevice, d.proto.session))


class ClosingTests(SynchronousTestCase):
    """A connection being closed writes the frame that says why, then nothing more."""

    def setUp(self) -> None:
        self.h = WebHarness(auth="none")

    def test_binary_tcp_writes_nothing_after_close(self) -> None:
        d = self.h.login("alice")
        d.read()
        d.proto.session.close({"t": "error", "code": 503, "reason": "draining"})
        d.proto.send({"t": "pong"})
        d.proto.send_many([{"t": "pong"}])
        d.proto.close({"t": "bye"})
        self.assertEqual(d.read(), [{"t": "error", "code": 503, "reason": "draining"}])
        self.assertTrue(d.closed)

    def test_websocket_writes_nothing_after_close(self) -> None:
        for batch in (False, True):
            c = self.h.ws_login(f"alice{batch}", batch=batch)
            c.frames()
            conn = c.transport.protocol
            conn.send({"t": "pong"})  # pending in a batch: goes before the last frame
            conn.session.close({"t": "bye"})
            conn.send({"t": "pong"})
            conn.close({"t": "bye"})
            self.h.flush()
            self.assertEqual(c.frames(), [{"t": "pong"}, {"t": "bye"}])
            self.assertEqual(c.close_code, 1000)

    def test_websocket_close_timer_goes_with_the_socket(self) -> None:
        # Autobahn leaves its close-handshake timer running after the socket is
        # gone, holding the connection for seconds: the transport cancels it
        c = self.h.ws_login("alice")
        c.read()
        conn = c.transport.protocol
        conn.session.close({"t": "bye"})
        self.assertIsNotNone(conn.closeHandshakeTimeoutCall)
        c.lose()
        self.assertIsNone(conn.closeHandshakeTimeoutCall)
        names = [call.func.__name__ for call in self.h.clock.getDelayedCalls()]
        self.assertNotIn("onCloseHandshakeTimeout", names)


class _Paused(StringTransport):
    """A socket whose peer has stopped reading: its producer is paused at once."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None:
            self.producer.pauseProducing()


class SlowConsumerTests(SynchronousTestCase):
    """Past max_queue a connection closes with one 503; frames to it after that are dropped."""

    def test_binary_tcp(self) -> None:
        h = Harness(auth="none", limits=Limits(max_queue=10_000))
        alice = h.login("alice")
        bob = h.connect()
        bob.transport = _Paused()
        bob.proto.makeConnection(bob.transport)
        bob.write({"t": "hello", "user": "bob", "device": "phone"})
        for i in range(20):
            alice.write({"t": "send", "id": f"m{i}", "to": "bob", "body": "x" * 2000})
        frames = bob.read()
        self.assertEqual([f["t"] for f in frames if f["t"] == "error"], ["error"])
        self.assertEqual(frames[-1], {"t": "error", "code": 503, "reason": "slow consumer"})
        self.assertTrue(bob.closed)
        receipts = [f for f in alice.read() if f["t"] == "receipt"]
        self.assertEqual(len(receipts), 20)
        self.assertEqual(bob.proto.unsent(), sum(4 + len(cbor2.dumps(f)) for f in frames[:-1]))

    def test_presence_frames_to_a_watcher_that_never_reads(self) -> None:
        h = Harness(auth="none", limits=Limits(max_queue=2000))
        alice = h.login("alice")
        bob = h.connect()
        bob.transport = _Paused()
        bob.proto.makeConnection(bob.transport)
        bob.write({"t": "hello", "user": "bob", "device": "phone"})
        bob.write({"t": "watch", "users": ["alice"]})
        for i in range(60):
            alice.write({"t": "presence", "state": "busy" if i % 2 else "away", "status": "s" * 50})
            h.clock.advance(1)  # past the presence window: each change goes out
        frames = bob.read()
        self.assertEqual([f for f in frames if f["t"] == "error"], [frames[-1]])
        self.assertEqual(frames[-1], {"t": "error", "code": 503, "reason": "slow consumer"})
        self.assertTrue(bob.closed)
        self.assertLess(len(frames), 60)


class _Socket(FileDescriptor):
    """A Twisted socket whose peer takes ``take`` bytes at each write event."""

    def __init__(self) -> None:
        super().__init__(MemoryReactor())
        self.connected = True
        self.take = 0

    def writeSomeData(self, data: bytes) -> int:
        return min(len(data), self.take)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 5002)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 9100)

    def abortConnection(self) -> None:
        self.connected = False


class SocketMeasureTests(SynchronousTestCase):
    """What a peer has not taken is measured on the socket, not guessed from writes."""

    def setUp(self) -> None:
        self.h = Harness(auth="none", limits=Limits(max_queue=100_000))
        self.alice = self.h.login("alice")
        self.socket = _Socket()
        self.bob = self.h.factory.buildProtocol(self.socket.getPeer())
        self.bob.makeConnection(self.socket)
        self.bob.dataReceived(frame(cbor2.dumps({"t": "hello", "user": "bob"})))
        self.h.flush()

    def send(self, n: int = 1) -> None:
        for _ in range(n):
            self.alice.write(
                {"t": "send", "id": os.urandom(4).hex(), "to": "bob", "body": "x" * 10_000}
            )

    def test_a_peer_that_keeps_up_is_not_a_slow_consumer(self) -> None:
        # the socket's buffer never empties, so Twisted never resumes the producer:
        # the peer takes as much as is written, and 500 KB pass while paused
        self.send(7)
        self.assertTrue(self.bob._pressure.paused)
        for _ in range(50):
            self.send()
            self.socket.take = 10_050
            self.socket.doWrite()
        self.assertTrue(self.bob._pressure.paused)
        self.assertLess(self.bob.unsent(), 100_000)
        self.assertFalse(self.bob._closing)
        self.assertTrue(self.bob.session.live)

    def test_a_peer_that_takes_nothing_is_closed_past_max_queue(self) -> None:
        self.send(9)
        self.assertFalse(self.bob._closing)
        self.assertLess(self.bob.unsent(), 100_000)
        self.send(2)
        self.assertTrue(self.bob._closing)
        self.assertFalse(self.bob.session.live)
        self.assertGreater(self.bob.unsent(), 100_000)


class HelloDeadlineTests(SynchronousTestCase):
    """A connection that never says hello is closed within a second of hello_timeout."""

    def test_deadline_holds_for_every_connection(self) -> None:
        h = Harness(auth="none", hb=30, hello_timeout=10)
        h.node.start()
        self.addCleanup(h.node.stop)
        offsets = [0.0, 0.3, 2.5, 6.9, 13.2]
        opened: dict[float, Any] = {}
        closed_at: dict[float, float] = {}
        calls = baseline = len(h.clock.getDelayedCalls())
        while len(closed_at) < len(offsets):
            now = h.clock.seconds()
            for offset in offsets:
                if offset not in opened and now >= offset - 1e-9:
                    opened[offset] = h.connect()
            if not any(d.closed for d in opened.values()):  # (closing: a timer to abort)
                calls = max(calls, len(h.clock.getDelayedCalls()))
            for offset, d in opened.items():
                if d.closed and offset not in closed_at:
                    closed_at[offset] = now
                    self.assertEqual(d.read()[0]["code"], 401)
            h.clock.advance(0.1)
        for offset, at in closed_at.items():
            late = at - offset
            self.assertTrue(10 <= late <= 11 + 1e-9, f"closed {late:.1f}s after opening")
        # no timer per connection: the liveness tick keeps every deadline
        self.assertEqual(calls, baseline)

    def test_hello_in_time_is_not_cut(self) -> None:
        h = Harness(auth="none", hello_timeout=10)
        h.node.start()
        self.addCleanup(h.node.stop)
        d = h.connect()
        h.clock.pump([1] * 9)
        d.write({"t": "hello", "user": "alice"})
        h.clock.pump([1] * 20)
        self.assertFalse(d.closed)
        self.assertEqual(d.read_types(), ["welcome"])


class PipelinedAfterHelloTests(SynchronousTestCase):
    """doc/protocol.md section 10: frames right after the hello, without waiting
    for the welcome, are handled after it, in order."""

    def test_the_welcome_comes_first(self) -> None:
        h = Harness(auth="none")
        d = h.connect()
        d.write_bytes(
            b"".join(
                frame(encode_cbor(f))
                for f in (
                    {"t": "hello", "user": "alice", "device": "phone"},
                    {"t": "ping"},
                    {"t": "ack", "seq": -1},
                    {"t": "send", "id": "1", "to": "alice", "body": 1},
                )
            )
        )
        frames = d.read()
        self.assertEqual([f["t"] for f in frames], ["welcome", "pong", "error", "msg", "receipt"])
        self.assertEqual(frames[2]["code"], 400)
        self.assertFalse(d.closed)

    def test_a_bye_before_the_welcome_comes_after_it(self) -> None:
        h = Harness(auth="none")
        d = h.connect()
        hello = frame(encode_cbor({"t": "hello", "user": "alice", "device": "phone"}))
        d.write_bytes(hello + frame(encode_cbor({"t": "bye"})))
        self.assertEqual(d.read_types(), ["welcome", "bye"])
        self.assertTrue(d.closed)

    def test_too_many_frames_before_the_welcome_close(self) -> None:
        h = Harness(auth="none")
        d = h.connect()
        pings = frame(encode_cbor({"t": "ping"})) * (MAX_HELD + 1)
        d.write_bytes(frame(encode_cbor({"t": "hello", "user": "alice"})) + pings)
        self.assertEqual([(f["t"], f.get("code")) for f in d.read()], [("error", 429)])
        self.assertTrue(d.closed)


class BeforeHelloTests(SynchronousTestCase):
    """doc/protocol.md, session life: before the welcome, any other frame gets 401 and a close."""

    def test_binary_value_rule_before_hello(self) -> None:
        h = Harness(auth="none")
        d = h.connect()
        d.write_bytes(frame(cbor2.dumps({"t": "hello", "user": "a", "x": math.nan})))
        [error] = d.read()
        self.assertEqual(error["code"], 401)
        self.assertTrue(d.closed)

    def test_websocket_value_rule_before_hello(self) -> None:
        h = WebHarness(auth="none")
        c = h.ws()
        c.write_raw(ws_frame(b'{"t":"hello","user":"a","b":{"$bytes":"!!"}}'))
        [error] = c.frames()
        self.assertEqual(error["code"], 401)
        self.assertEqual(c.close_code, 1000)

    def test_value_rule_after_hello_keeps_the_connection(self) -> None:
        h = Harness(auth="none")
        d = h.login("alice")
        d.read()
        d.write_bytes(frame(cbor2.dumps({"t": "ping", "x": math.nan})))
        [error] = d.read()
        self.assertEqual(error["code"], 400)
        self.assertFalse(d.closed)
