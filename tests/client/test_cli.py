"""python -m o2obroker.client against a real node on a loopback port."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from o2obroker.client import connect
from o2obroker.config import Config
from o2obroker.service.facade import Broker
from o2obroker.service.node import Node
from o2obroker.transports.tcp import BinaryFactory


class CommandLineTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.node = Node(Config(auth="none"), reactor)
        self.node.start()
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            BinaryFactory(self.node.gateway)
        )
        self.endpoint = f"tcp:127.0.0.1:{self.port.getHost().port}"

    async def tearDown(self) -> None:
        await self.port.stopListening()
        self.node.stop()

    def cli(self, *args: str):
        return getProcessOutputAndValue(
            sys.executable,
            ["-m", "o2obroker.client", "--endpoint", self.endpoint, *args],
            env=dict(os.environ),
        )

    async def test_send_prints_the_receipt(self) -> None:
        out, err, code = await self.cli("--user", "alice", "send", "--to", "bob", '{"n": 1}')
        self.assertEqual(code, 0, err)
        receipt = json.loads(out)
        self.assertEqual((receipt["t"], receipt["status"]), ("receipt", "stored"))
        bob = await connect(reactor, self.endpoint, user="bob", device="phone")
        self.addCleanup(bob.transport.abortConnection)
        msg = await bob.messages.get()
        self.assertEqual(
            (msg["from"], msg["body"], msg["mid"]), ("alice", {"n": 1}, receipt["mid"])
        )

    async def test_listen_prints_messages(self) -> None:
        alice = await connect(reactor, self.endpoint, user="alice", device="phone")
        self.addCleanup(alice.transport.abortConnection)
        for i in range(2):
            await alice.send({"i": i}, to="carol")
        out, err, code = await self.cli("--user", "carol", "listen", "--count", "2")
        self.assertEqual(code, 0, err)
        lines = [json.loads(line) for line in out.decode().splitlines()]
        self.assertEqual([m["body"] for m in lines], [{"i": 0}, {"i": 1}])
        self.assertEqual([m["seq"] for m in lines], [1, 2])

    async def test_listen_prints_bytes_as_base64(self) -> None:
        # the protocol's JSON form of bytes, as a browser would get them
        alice = await connect(reactor, self.endpoint, user="alice", device="phone")
        self.addCleanup(alice.transport.abortConnection)
        await alice.send({"pic": b"\x00\xff"}, to="carol")
        out, err, code = await self.cli("--user", "carol", "listen", "--count", "1")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["body"], {"pic": {"$bytes": "AP8="}})

    async def test_a_body_that_is_not_json_is_a_usage_error(self) -> None:
        out, err, code = await self.cli("--user", "alice", "send", "--to", "bob", "hi there")
        self.assertEqual((out, code), (b"", 2), err)
        self.assertIn(b"argument body: not JSON", err)
        self.assertNotIn(b"Traceback", err)
        self.assertEqual(self.node.gateway.connections["tcp"], 0)

    async def test_error_exits_non_zero(self) -> None:
        _, err, code = await self.cli("--user", "alice", "send", "--room", "nowhere", "1")
        self.assertEqual(code, 1)
        self.assertIn(b"404", err)

    async def until_listening(self, user: str, connections: int = 1) -> None:
        actors = self.node.router.actors
        for _ in range(250):
            actor = actors.get(user)
            if (
                actor is not None
                and len(actor.devices)
                and self.node.gateway.connections["tcp"] == connections
            ):
                return
            await deferLater(reactor, 0.02, lambda: None)
        self.fail(f"{user} never connected")

    async def test_listen_exits_with_the_reason_when_kicked(self) -> None:
        running = self.cli("--user", "carol", "listen")
        await self.until_listening("carol")
        self.assertEqual(Broker(self.node).kick("carol"), 1)
        out, err, code = await running
        self.assertEqual((out, code), (b"", 1), err)
        self.assertEqual(err, b"error: 503 disconnected by the operator\n")

    async def test_listen_exits_when_replaced(self) -> None:
        running = self.cli("--user", "carol", "--device", "tab", "listen", "--reconnect")
        await self.until_listening("carol")
        other = await connect(reactor, self.endpoint, user="carol", device="tab")
        self.addCleanup(other.transport.abortConnection)
        _, err, code = await running
        self.assertEqual((code, err), (1, b"error: 409 replaced\n"))

    async def test_listen_reconnects_and_resumes(self) -> None:
        alice = await connect(reactor, self.endpoint, user="alice", device="phone")
        self.addCleanup(alice.transport.abortConnection)
        running = self.cli("--user", "carol", "listen", "--reconnect", "--count", "2")
        await self.until_listening("carol", 2)
        await alice.send({"n": 1}, to="carol")
        device = self.node.router.actors["carol"].devices["cli"]
        for _ in range(250):  # until the listener has acknowledged it
            if device.cursor == 1:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(device.cursor, 1)
        Broker(self.node).kick("carol")
        stored = await alice.send({"n": 2}, to="carol")  # while it is away, or back already
        self.assertIn(stored["status"], ("stored", "delivered"))
        out, err, code = await running
        self.assertEqual(code, 0, err)
        lines = [json.loads(line) for line in out.decode().splitlines()]
        self.assertEqual([(m["seq"], m["body"]) for m in lines], [(1, {"n": 1}), (2, {"n": 2})])
        self.assertIn(b"closed: 503 disconnected by the operator; reconnecting", err)
