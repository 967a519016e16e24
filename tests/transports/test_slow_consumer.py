"""Readers that never read, on real loopback sockets (doc/protocol.md: max_queue).

A connection whose unsent output passes max_queue is closed with exactly one
503 frame; the sender gets every receipt; nothing is logged as a failure; and
the node lets go of everything the closed connections held.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import weakref
from typing import Any

import cbor2
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from o2obroker.client import connect
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.service.site import build_site
from o2obroker.transports.tcp import BinaryFactory
from o2obroker.wire import FrameSplitter, encode_cbor, frame
from o2obroker.wire.limits import Limits
from tests.web.helpers import ws_frame, ws_parse

BODY = "x" * 60_000
SENDS = 600


async def until(condition: Any, timeout: float = 20.0, step: float = 0.02) -> None:
    """Wait, without blocking the reactor, until ``condition()`` holds."""
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, step)
        waited += step


class Reader(Protocol):
    """A client that says hello, and stops reading once welcomed (until told to)."""

    def __init__(self, opening: bytes, upgraded: bytes = b"", ready: bytes = b"welcome") -> None:
        self.opening = opening
        self.upgraded = upgraded  # written once the WebSocket handshake is answered
        self.ready = ready  # what to see before reading no more
        self.data = bytearray()
        self.welcomed: Deferred[None] = Deferred()
        self.gone: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.opening)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.upgraded and b"\r\n\r\n" in self.data:
            self.transport.write(self.upgraded)
            self.upgraded = b""
        if not self.welcomed.called and self.ready in self.data:
            self.transport.pauseProducing()  # read nothing more: the kernel buffers fill
            self.welcomed.callback(None)

    def read_again(self) -> None:
        self.transport.resumeProducing()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.welcomed.called:
            self.welcomed.errback(ConnectionError("closed before the welcome"))
        self.gone.callback(bytes(self.data))


def tcp_frames(data: bytes) -> list[dict[str, Any]]:
    limits = Limits(max_frame=64 << 20, max_body=64 << 20)
    return [cbor2.loads(p) for p in FrameSplitter(limits.max_frame).feed(data)]


def ws_frames(data: bytes) -> list[dict[str, Any]]:
    """Every broker frame of a WebSocket stream (after the handshake), arrays unpacked."""
    _, _, rest = bytes(data).partition(b"\r\n\r\n")
    messages, _ = ws_parse(rest)
    frames: list[dict[str, Any]] = []
    for opcode, payload in messages:
        if opcode == 1:
            value = json.loads(payload)
            frames.extend(value if isinstance(value, list) else [value])
    return frames


def ws_opening(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (port, key)
    )


class LoopbackCase(TestCase):
    """A node with a binary TCP port and an HTTP port on loopback, and a log tap."""

    timeout = 60
    max_queue = 256 << 10

    def setUp(self) -> None:
        config = Config(limits=Limits(max_queue=self.max_queue), auth="none")
        self.node = Node(config, reactor)
        self.node.start()
        self.addCleanup(self.node.stop)
        self.site = build_site(self.node, reactor)
        self.http = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.tcp = reactor.listenTCP(0, BinaryFactory(self.node.gateway), interface="127.0.0.1")
        self.addCleanup(self.http.stopListening)
        self.addCleanup(self.tcp.stopListening)
        self.events: list[tuple[Any, bool, str]] = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)
        self.readers: list[Reader] = []
        self.addCleanup(self._abort_readers)

    def _observe(self, event: dict[str, Any]) -> None:
        # only what the checks need: an event keeps its arguments (sessions) alive
        failed = "log_failure" in event
        self.events.append((event.get("log_level"), failed, str(event.get("log_format", ""))))

    def _abort_readers(self) -> None:
        for r in self.readers:
            if r.transport is not None and r.transport.connected:
                r.transport.abortConnection()

    async def reader(
        self, port: int, opening: bytes, upgraded: bytes = b"", ready: bytes = b"welcome"
    ) -> Reader:
        r = Reader(opening, upgraded, ready)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), r)
        self.readers.append(r)
        await r.welcomed
        return r

    async def tcp_reader(self, user: str, room: str | None = None) -> Reader:
        frames = [{"t": "hello", "user": user, "device": "phone"}]
        if room is not None:
            frames.append({"t": "join", "room": room})
        opening = b"".join(frame(encode_cbor(f)) for f in frames)
        ready = b"joined" if room else b"welcome"
        return await self.reader(self.tcp.getHost().port, opening, ready=ready)

    async def ws_reader(self, user: str, batch: bool = False, room: str | None = None) -> Reader:
        port = self.http.getHost().port
        frames = [{"t": "hello", "user": user, "device": "web", "batch": batch}]
        if room is not None:
            frames.append({"t": "join", "room": room})
        upgraded = b"".join(ws_frame(json.dumps(f).encode()) for f in frames)
        ready = b"joined" if room else b"welcome"
        return await self.reader(port, ws_opening(port), upgraded, ready)

    async def sender(self) -> Any:
        c = await connect(reactor, f"tcp:127.0.0.1:{self.tcp.getHost().port}", user="sender")
        self.addCleanup(c.transport.abortConnection)
        return c

    def failures(self) -> list[tuple[Any, bool, str]]:
        bad = (LogLevel.error, LogLevel.critical)
        return [e for e in self.events if e[0] in bad or e[1]]

    def slow_lines(self) -> int:
        return sum(1 for e in self.events if "slow consumer" in e[2])

    async def flood_and_check(
        self, reader: Reader, parse: Any, transport: str, left: int, sends: int = SENDS
    ) -> None:
        """600 x 60 KB to a reader that never reads: one 503, 600 receipts, no failure."""
        sender = await self.sender()
        receipts = await gatherResults([sender.send(BODY, to="slow") for _ in range(sends)])
        self.assertEqual(len(receipts), sends)
        self.assertEqual({r["t"] for r in receipts}, {"receipt"})
        self.assertIn("stored", {r["status"] for r in receipts})  # sent after the close
        await until(lambda: self.node.gateway.connections[transport] == left)
        reader.read_again()
        frames = parse(await reader.gone)
        errors = [f for f in frames if f.get("t") == "error"]
        self.assertEqual(errors, [{"t": "error", "code": 503, "reason": "slow consumer"}])
        self.assertEqual(frames[-1]["code"], 503)
        self.assertEqual(self.failures(), [])
        self.assertEqual(self.slow_lines(), 1)
        # what the reader did not take is in its inbox, for its resume
        again = await connect(
            reactor, f"tcp:127.0.0.1:{self.tcp.getHost().port}", user="slow", device="other"
        )
        self.addCleanup(again.transport.abortConnection)
        first = await again.messages.get()
        self.assertEqual(first["seq"], 1)


class SlowConsumerTests(LoopbackCase):
    async def test_binary_tcp(self) -> None:
        reader = await self.tcp_reader("slow")
        await self.flood_and_check(reader, tcp_frames, "tcp", 1)  # the sender's is left

    async def test_websocket(self) -> None:
        reader = await self.ws_reader("slow")
        await self.flood_and_check(reader, ws_frames, "ws", 0)

    async def test_websocket_batched(self) -> None:
        reader = await self.ws_reader("slow", batch=True)
        await self.flood_and_check(reader, ws_frames, "ws", 0)

    async def test_long_poll_that_stops_polling(self) -> None:
        base = f"http://127.0.0.1:{self.http.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        hello = {"t": "hello", "user": "slow", "device": "lp"}
        opened = await (await treq.post(f"{base}/lp/open", json=hello, pool=pool)).json()
        self.assertEqual(opened["frames"][0]["t"], "welcome")
        sender = await self.sender()
        receipts = await gatherResults([sender.send(BODY, to="slow") for _ in range(SENDS)])
        self.assertEqual(len(receipts), SENDS)
        self.assertIn("stored", {r["status"] for r in receipts})
        poll = await treq.get(
            f"{base}/lp/poll", params={"sid": opened["sid"], "pos": "1"}, pool=pool
        )
        frames = (await poll.json())["frames"]
        errors = [f for f in frames if f["t"] == "error"]
        self.assertEqual(errors, [{"t": "error", "code": 503, "reason": "slow consumer"}])
        self.assertEqual(frames[-1]["code"], 503)
        self.assertEqual(self.failures(), [])
        self.assertEqual(self.slow_lines(), 1)


class ManySlowConsumersTests(LoopbackCase):
    """Many readers that never read: all closed, all let go of, and the node still answers."""

    max_queue = 32 << 10

    async def test_many_readers_are_closed_and_let_go_of(self) -> None:
        n = 200
        readers = [await self.tcp_reader(f"t{i}", room="hall") for i in range(n // 2)]
        for i in range(n // 2):
            readers.append(await self.ws_reader(f"w{i}", batch=i % 2 == 0, room="hall"))
        gateway = self.node.gateway
        sessions = [weakref.ref(s) for group in gateway.session_groups() for s in group]
        conns = [weakref.ref(s().conn) for s in sessions]
        self.assertEqual(len(sessions), n)
        sender = await self.sender()
        await sender.join("hall")
        sent = 0
        while gateway.connections["tcp"] + gateway.connections["ws"] > 1:
            receipt = await sender.send(BODY, room="hall")
            self.assertEqual(receipt["status"], "accepted")
            sent += 1
            self.assertLess(sent, 200, "the readers were not closed")
        self.assertEqual(self.failures(), [])
        self.assertEqual(self.slow_lines(), n)
        # a fresh client is welcomed at once, not starved by the closing ones
        started = reactor.seconds()
        fresh = await connect(reactor, f"tcp:127.0.0.1:{self.tcp.getHost().port}", user="fresh")
        self.addCleanup(fresh.transport.abortConnection)
        self.assertLess(reactor.seconds() - started, 3.0)
        # the readers go away; the node keeps nothing of theirs
        for r in readers:
            r.transport.abortConnection()
        await gatherResults([r.gone for r in readers])
        del readers
        await until(lambda: len(gateway.liveness) == 2)  # the sender and the fresh client
        await until(lambda: gc.collect() >= 0 and all(c() is None for c in conns), timeout=5)
        self.assertEqual([s for s in sessions if s() is not None], [])
        self.assertEqual([c for c in conns if c() is not None], [])
