"""The HTTP port on a real loopback socket: Autobahn clients, treq and a binary TCP client."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
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


class _Ws(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        value = cbor2.loads(payload) if isBinary else json.loads(payload)
        for frame in value if isinstance(value, list) else [value]:
            self.factory.frames.put(frame)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason))
        self.factory.closed.callback(code)

    def write(self, frame: dict[str, Any]) -> None:
        if self.factory.cbor:
            self.sendMessage(cbor2.dumps(frame), True)
        else:
            self.sendMessage(json.dumps(frame).encode(), False)


class LoopbackCase(TestCase):
    """A node on real loopback ports: ``base`` (HTTP) and ``endpoint`` (binary
    TCP); ``ws`` and ``phone`` connect clients that have said hello."""

    timeout = 30

    def makeNode(self) -> Node:
        return Node(Config(), reactor)

    def setUp(self) -> None:
        self.node = self.makeNode()
        self.node.start()
        self.addCleanup(self.node.stop)
        self.site = build_site(self.node, reactor)
        self.http = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.tcp = reactor.listenTCP(0, BinaryFactory(self.node.gateway), interface="127.0.0.1")
        self.addCleanup(self.http.stopListening)
        self.addCleanup(self.tcp.stopListening)
        self.addCleanup(self._settle)
        self.base = f"http://127.0.0.1:{self.http.getHost().port}"
        self.endpoint = f"tcp:127.0.0.1:{self.tcp.getHost().port}"

    async def _settle(self) -> None:
        for _ in range(50):
            if not (self.node.gateway.connections["ws"] or self.node.gateway.connections["tcp"]):
                return
            await deferLater(reactor, 0.05)

    async def ws(self, user: str, device: str, cbor: bool = False, **hello: Any) -> Any:
        url = self.base.replace("http", "ws") + "/ws"
        factory = WebSocketClientFactory(url, protocols=["o2o.cbor.v1"] if cbor else None)
        factory.protocol = _Ws
        factory.cbor = cbor
        factory.opened, factory.closed, factory.frames = Deferred(), Deferred(), DeferredQueue()
        reactor.connectTCP("127.0.0.1", self.http.getHost().port, factory)
        proto = await factory.opened
        self.addCleanup(lambda: proto.dropConnection(abort=True) if proto.transport else None)
        proto.write({"t": "hello", "user": user, "device": device, **hello})
        welcome = await factory.frames.get()
        self.assertEqual(welcome["t"], "welcome")
        return proto

    async def phone(self, user: str) -> BinaryClient:
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp.getHost().port)
        client = await connectProtocol(
            ep, BinaryClient({"t": "hello", "user": user, "device": "phone"})
        )
        await client.welcome
        self.addCleanup(client.transport.loseConnection)
        return client


class LoopbackTests(LoopbackCase):
    async def test_three_encodings_one_message(self) -> None:
        phone = await self.phone("bob")
        browser = await self.ws("bob", "browser", batch=True)
        sender = await self.ws("alice", "tab", cbor=True)
        sender.write({"t": "send", "id": "1", "to": "bob", "body": {"pic": b"\x00\xff"}})
        receipt = await sender.factory.frames.get()
        self.assertEqual((receipt["t"], receipt["status"]), ("receipt", "delivered"))
        on_phone = await phone.messages.get()
        in_browser = await browser.factory.frames.get()
        self.assertEqual(on_phone["body"], {"pic": b"\x00\xff"})
        self.assertEqual(in_browser["body"], {"pic": {"$bytes": "AP8="}})
        self.assertEqual(on_phone["mid"], in_browser["mid"])

    async def test_refused_origin_never_opens(self) -> None:
        url = self.base.replace("http", "ws") + "/ws"
        factory = WebSocketClientFactory(url, origin="https://evil.example")
        factory.protocol = _Ws
        factory.opened, factory.closed, factory.frames = Deferred(), Deferred(), DeferredQueue()
        reactor.connectTCP("127.0.0.1", self.http.getHost().port, factory)
        with self.assertRaises(ConnectionError):
            await factory.opened
        self.assertEqual(self.site.websockets.refused_origins, 1)

    async def test_long_poll_with_treq(self) -> None:
        phone = await self.phone("bob")
        r = await treq.post(
            self.base + "/lp/open",
            json.dumps({"t": "hello", "user": "carol"}).encode(),
            persistent=False,
        )
        self.assertEqual(r.code, 200)
        opened = json.loads(await r.content())
        sid, pos = opened["sid"], opened["pos"]
        poll = treq.get(self.base + f"/lp/poll?sid={sid}&pos={pos}", persistent=False)
        answered: list[bytes] = []
        poll.addCallback(treq.content).addCallback(answered.append)
        conn = self.site.longpoll.sessions[sid]
        for _ in range(500):  # until the poll has reached the broker
            if conn._poll is not None:
                break
            await deferLater(reactor, 0.01)
        self.assertIsNotNone(conn._poll)
        self.assertEqual(answered, [])  # held: no answer while nothing is ready
        phone.send(to="carol", body=b"\x01\x02")
        await poll
        answer = json.loads(answered[0])
        [msg] = answer["frames"]
        self.assertEqual(msg["body"], {"$bytes": "AQI="})
        r = await treq.post(
            self.base + f"/lp/send?sid={sid}",
            json.dumps({"t": "send", "id": "c1", "to": "bob", "body": {"$bytes": "/w=="}}).encode(),
            persistent=False,
        )
        [receipt] = json.loads(await r.content())["frames"]
        self.assertEqual(receipt["status"], "delivered")
        self.assertEqual((await phone.messages.get())["body"], b"\xff")
        r = await treq.post(self.base + f"/lp/close?sid={sid}", persistent=False)
        self.assertEqual(json.loads(await r.content()), {"frames": [{"t": "bye"}]})
