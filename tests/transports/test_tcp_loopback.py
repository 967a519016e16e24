"""Real clients on real loopback sockets against a real node."""

from __future__ import annotations

import struct

import cbor2
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from o2obroker.client import ClientError, connect
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.session.auth import make_token
from o2obroker.transports.tcp import BinaryFactory

SECRET = "loopback-secret-0123456789abcdef0123"


class LoopbackTests(TestCase):
    timeout = 30

    async def setUp(self) -> None:
        self.node = Node(Config(secret=SECRET), reactor)
        self.node.start()
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            BinaryFactory(self.node.gateway)
        )
        self.endpoint = f"tcp:127.0.0.1:{self.port.getHost().port}"
        self.clients: list = []

    async def tearDown(self) -> None:
        for c in self.clients:
            c.transport.abortConnection()
        await self.port.stopListening()
        self.node.stop()

    async def client(self, user: str, device: str = "phone", **kw: object):
        c = await connect(
            reactor, self.endpoint, token=make_token(SECRET, user), device=device, **kw
        )
        self.clients.append(c)
        return c

    async def test_chat(self) -> None:
        alice = await self.client("alice")
        bob = await self.client("bob")
        receipt = await alice.send({"text": "hi", "raw": b"\x01\x02"}, to="bob")
        self.assertEqual(receipt["status"], "delivered")
        msg = await bob.messages.get()
        self.assertEqual(msg["body"], {"text": "hi", "raw": b"\x01\x02"})
        self.assertEqual((msg["seq"], msg["mid"]), (1, receipt["mid"]))

    async def test_many_messages_in_order(self) -> None:
        alice = await self.client("alice")
        bob = await self.client("bob")
        receipts = [alice.send(i, to="bob") for i in range(2000)]
        got = [(await bob.messages.get())["body"] for _ in range(2000)]
        self.assertEqual(got, list(range(2000)))
        statuses = {(await r)["status"] for r in receipts}
        self.assertEqual(statuses, {"delivered"})

    async def test_offline_then_resume(self) -> None:
        alice = await self.client("alice")
        for i in range(5):
            self.assertEqual((await alice.send(i, to="carol"))["status"], "stored")
        carol = await self.client("carol", auto_ack=False)
        got = [(await carol.messages.get())["seq"] for _ in range(5)]
        self.assertEqual(got, [1, 2, 3, 4, 5])
        carol.ack(3)
        await carol.bye()
        again = await self.client("carol")
        self.assertEqual((await again.messages.get())["seq"], 4)

    async def raw(self, data: bytes) -> bytes:
        """Connect, write ``data``, return all the broker wrote until it closed."""
        closed: Deferred[bytes] = Deferred()

        class Raw(Protocol):
            received = b""

            def connectionMade(self) -> None:
                self.transport.write(data)

            def dataReceived(self, chunk: bytes) -> None:
                self.received += chunk

            def connectionLost(self, reason: object = None) -> None:
                closed.callback(self.received)

        port = self.port.getHost().port
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Raw())
        return await closed

    async def test_bad_client_does_not_affect_others(self) -> None:
        alice = await self.client("alice")
        bob = await self.client("bob")
        answer = await self.raw(struct.pack(">I", 12) + b"\xff" * 12)
        self.assertEqual(cbor2.loads(answer[4:])["code"], 400)
        receipt = await alice.send("still here", to="bob")
        self.assertEqual(receipt["status"], "delivered")
        self.assertEqual((await bob.messages.get())["body"], "still here")

    async def test_huge_prefix_is_refused_and_closed(self) -> None:
        alice = await self.client("alice")
        answer = await self.raw(b"\xff\xff\xff\xff")
        self.assertEqual(cbor2.loads(answer[4:])["code"], 413)
        receipt = await alice.send(1, to="alice")
        self.assertEqual(receipt["status"], "delivered")

    async def test_room_limited_by_token(self) -> None:
        alice = await connect(
            reactor, self.endpoint, token=make_token(SECRET, "alice", rooms=["a"]), device="p"
        )
        self.clients.append(alice)
        await alice.join("a")
        d = alice.wait_for("error")
        alice.write_frame({"t": "join", "room": "b"})
        error = await d
        self.assertEqual(error["code"], 403)

    async def test_error_names_the_send(self) -> None:
        alice = await self.client("alice")
        with self.assertRaises(ClientError) as e:
            await alice.send(1, room="nowhere")
        self.assertEqual(e.exception.code, 404)
        self.assertTrue(e.exception.frame["ref"].startswith("phone-"))
