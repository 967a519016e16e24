"""Real nodes on one real Redis: what one node stores, another serves, across restarts."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.client import connect
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.session.auth import make_token
from o2obroker.transports.tcp import BinaryFactory
from tests.backend.test_redis_outage import eventually
from tests.redis_server import shared, unique_prefix

SECRET = "redis-node-secret-0123456789abcdef012"


class TwoNodesTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.prefix = unique_prefix()
        self.clients: list[Any] = []

    async def node(self, name: str) -> str:
        """A node on its own port and the shared Redis; its endpoint string."""
        config = Config(secret=SECRET, node=name)
        backend = RedisBackend(parse_urls(shared().url), reactor, reactor, name, prefix=self.prefix)
        node = Node(config, reactor, backend=backend)
        node.start()
        self.addCleanup(node.stop)
        # runs before node.stop: the node has seen its clients go
        self.addCleanup(eventually, lambda: not sum(node.gateway.connections.values()))
        await backend.when_ready()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            BinaryFactory(node.gateway)
        )
        self.addCleanup(port.stopListening)
        return f"tcp:127.0.0.1:{port.getHost().port}"

    async def client(self, endpoint: str, user: str, device: str = "phone", **kw: Any) -> Any:
        c = await connect(reactor, endpoint, token=make_token(SECRET, user), device=device, **kw)
        self.addCleanup(c.transport.abortConnection)
        return c

    async def test_stored_on_one_node_served_by_another(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice = await self.client(a, "alice")
        receipts = [await alice.send({"n": i, "raw": b"\x00"}, to="carol") for i in range(5)]
        self.assertEqual({r["status"] for r in receipts}, {"stored"})
        carol = await self.client(b, "carol", auto_ack=False)
        got = [await carol.messages.get() for _ in range(5)]
        self.assertEqual([m["seq"] for m in got], [1, 2, 3, 4, 5])
        self.assertEqual([m["mid"] for m in got], [r["mid"] for r in receipts])
        self.assertEqual(got[0]["body"], {"n": 0, "raw": b"\x00"})
        carol.ack(3)
        await carol.bye()
        # the cursor is in Redis too: the next connection, on the other node, goes on from 4
        again = await self.client(a, "carol")
        self.assertEqual((await again.messages.get())["seq"], 4)

    async def test_a_retried_send_id_is_deduplicated_across_nodes(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        on_a = await self.client(a, "alice", "phone")
        first = await on_a.send("once", to="dave", id="order-991")
        await on_a.bye()
        on_b = await self.client(b, "alice", "phone")
        again = await on_b.send("once", to="dave", id="order-991")
        self.assertEqual(again["mid"], first["mid"])
        dave = await self.client(b, "dave")
        self.assertEqual((await dave.messages.get())["body"], "once")
        self.assertEqual(len(dave.messages.pending), 0)
