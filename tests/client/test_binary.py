"""The Python client's acks: a reader that says bye at once leaves no ack behind."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from o2obroker.client import connect
from o2obroker.client.binary import BinaryClient
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.transports.tcp import BinaryFactory
from o2obroker.wire import FrameSplitter, decode_cbor, encode_cbor, frame
from o2obroker.wire.limits import Limits

WELCOME = {"t": "welcome", "user": "u", "device": "tablet", "last": 1, "resumed": True}
MSG = {"t": "msg", "seq": 1, "mid": "m1", "from": "a", "to": "u", "body": 1, "ts": 1}


def written(transport: StringTransport) -> list[dict]:
    return [decode_cbor(p, Limits()) for p in FrameSplitter(1 << 20).feed(transport.value())]


class AckOrderTests(SynchronousTestCase):
    def client(self, **kw: bool) -> tuple[BinaryClient, StringTransport]:
        client = BinaryClient({"t": "hello", "user": "u", "device": "tablet"}, **kw)
        transport = StringTransport()
        client.makeConnection(transport)
        transport.clear()
        client.dataReceived(frame(encode_cbor(WELCOME)))
        return client, transport

    def test_a_queue_reader_that_says_bye_at_once_acked_first(self) -> None:
        client, transport = self.client()
        client.messages.get().addCallback(lambda _: client.bye())
        client.dataReceived(frame(encode_cbor(MSG)))
        self.assertEqual(written(transport), [{"t": "ack", "seq": 1}, {"t": "bye"}])

    def test_a_handler_that_raises_leaves_the_message_unacked(self) -> None:
        client, transport = self.client()

        def handler(msg: dict) -> None:
            raise RuntimeError("not processed")

        client.on_msg = handler
        with self.assertRaises(RuntimeError):
            client.dataReceived(frame(encode_cbor(MSG)))
        self.assertEqual(written(transport), [])

    def test_no_ack_without_auto_ack(self) -> None:
        client, transport = self.client(auto_ack=False)
        client.dataReceived(frame(encode_cbor(MSG)))
        self.assertEqual(written(transport), [])
        self.assertEqual(client.messages.pending, [MSG])


class AckLoopbackTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.node = Node(Config(auth="none"), reactor)
        self.node.start()
        self.port = reactor.listenTCP(0, BinaryFactory(self.node.gateway), interface="127.0.0.1")
        self.endpoint = f"tcp:127.0.0.1:{self.port.getHost().port}"

    async def tearDown(self) -> None:
        await self.port.stopListening()
        self.node.stop()

    async def test_read_then_bye_leaves_nothing_to_send_again(self) -> None:
        alice = await connect(reactor, self.endpoint, user="alice", device="phone")
        self.addCleanup(alice.transport.abortConnection)
        for i in range(3):
            await alice.send({"i": i}, to="bob")
        bob = await connect(reactor, self.endpoint, user="bob", device="tablet")
        self.assertEqual([(await bob.messages.get())["seq"] for _ in range(3)], [1, 2, 3])
        await bob.bye()
        for _ in range(20):  # the actor takes the ack on a later turn
            if self.successResultOf(self.node.backend.cursor("bob", "tablet")) == 3:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(self.successResultOf(self.node.backend.cursor("bob", "tablet")), 3)
