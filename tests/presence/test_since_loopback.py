"""``watch`` with ``since`` through real sockets: binary TCP and WebSocket (JSON and CBOR)."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from o2obroker.client.binary import BinaryClient
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.service.site import build_site
from o2obroker.transports.tcp import BinaryFactory
from tests.web.test_loopback import _Ws


class SinceLoopbackTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        # no skew margin: the changes below are milliseconds apart, not seconds
        self.node = Node(Config(presence_skew=0), reactor)
        self.node.start()
        self.addCleanup(self.node.stop)
        self.http = reactor.listenTCP(0, build_site(self.node, reactor), interface="127.0.0.1")
        self.tcp = reactor.listenTCP(0, BinaryFactory(self.node.gateway), interface="127.0.0.1")
        self.addCleanup(self.http.stopListening)
        self.addCleanup(self.tcp.stopListening)
        self.addCleanup(self._settle)

    async def _settle(self) -> None:
        for _ in range(50):
            if not (self.node.gateway.connections["ws"] or self.node.gateway.connections["tcp"]):
                return
            await deferLater(reactor, 0.05)

    async def ws(self, user: str, cbor: bool = False) -> Any:
        port = self.http.getHost().port
        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{port}/ws", protocols=["o2o.cbor.v1"] if cbor else None
        )
        factory.protocol = _Ws
        factory.cbor = cbor
        factory.opened, factory.closed, factory.frames = Deferred(), Deferred(), DeferredQueue()
        reactor.connectTCP("127.0.0.1", port, factory)
        proto = await factory.opened
        self.addCleanup(lambda: proto.dropConnection(abort=True) if proto.transport else None)
        proto.write({"t": "hello", "user": user, "device": "tab"})
        self.assertEqual((await factory.frames.get())["t"], "welcome")
        return proto

    async def phone(self, user: str) -> BinaryClient:
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp.getHost().port)
        client = await connectProtocol(ep, BinaryClient({"t": "hello", "user": user}))
        await client.welcome
        self.addCleanup(client.transport.loseConnection)
        return client

    async def earlier_view(self) -> tuple[int, Any]:
        """bob, then carol come online; a first session of alice watches them and
        keeps the largest ts; carol changes after alice has gone. Returns that ts
        and carol's connection."""
        await self.ws("bob")
        await deferLater(reactor, 0.02)
        carol = await self.ws("carol")
        alice = await self.ws("alice")
        alice.write({"t": "watch", "users": ["bob", "carol"]})
        seen = [await alice.factory.frames.get() for _ in range(2)]
        self.assertEqual(
            [(f["user"], f["state"]) for f in seen], [("bob", "online"), ("carol", "online")]
        )
        alice.write({"t": "bye"})
        self.assertEqual((await alice.factory.frames.get())["t"], "bye")
        await deferLater(reactor, 0.02)
        carol.write({"t": "presence", "state": "busy", "status": "call"})
        await deferLater(reactor, 0.02)
        return max(f["ts"] for f in seen), carol

    async def test_binary_tcp(self) -> None:
        since, _ = await self.earlier_view()
        alice = await self.phone("alice")
        answered = alice.wait_for("presence")
        alice.write_frame({"t": "watch", "users": ["bob", "carol"], "since": since})
        carol = await answered
        self.assertEqual(
            (carol["user"], carol["state"], carol["status"]), ("carol", "busy", "call")
        )
        self.assertGreater(carol["ts"], since)
        # the next answer from the same mailbox: nothing of bob came between
        answered = alice.wait_for("presence")
        alice.write_frame({"t": "probe", "users": ["zed"]})
        self.assertEqual((await answered)["user"], "zed")
        self.assertEqual(
            [f["user"] for f in alice.frames if f["t"] == "presence"], ["carol", "zed"]
        )

    async def check_ws(self, cbor: bool) -> None:
        since, _ = await self.earlier_view()
        alice = await self.ws("alice", cbor=cbor)
        alice.write({"t": "watch", "users": ["bob", "carol"], "since": since})
        alice.write({"t": "probe", "users": ["zed"]})
        first, second = await alice.factory.frames.get(), await alice.factory.frames.get()
        self.assertEqual((first["user"], first["state"]), ("carol", "busy"))
        self.assertGreater(first["ts"], since)
        self.assertEqual(second["user"], "zed")

    async def test_websocket_json(self) -> None:
        await self.check_ws(cbor=False)

    async def test_websocket_cbor(self) -> None:
        await self.check_ws(cbor=True)

    async def test_bad_since_over_websocket(self) -> None:
        alice = await self.ws("alice")
        alice.write({"t": "watch", "id": "w", "users": ["bob"], "since": -5})
        error = await alice.factory.frames.get()
        self.assertEqual((error["t"], error["code"], error["ref"]), ("error", 400, "w"))
        alice.write({"t": "ping"})
        self.assertEqual(await alice.factory.frames.get(), {"t": "pong"})
