"""Nodes in one process on one real Redis: delivery, rooms and replacement across nodes."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.config import Config
from o2obroker.service.node import Node
from tests.backend.test_redis_outage import eventually
from tests.redis_nodes import RedisNodesCase
from tests.redis_server import shared, unique_prefix

SECRET = "cluster-node-secret-0123456789abcdef"


class ClusterNodesTests(RedisNodesCase):
    secret = SECRET

    async def test_delivered_to_a_device_on_another_node(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        bob = await self.client(b, "bob")
        alice = await self.client(a, "alice")
        receipts = [await alice.send({"n": i}, to="bob") for i in range(5)]
        self.assertEqual({r["status"] for r in receipts}, {"delivered"})
        got = [await bob.messages.get() for _ in range(5)]
        self.assertEqual([m["seq"] for m in got], [1, 2, 3, 4, 5])
        self.assertEqual([m["body"] for m in got], [{"n": i} for i in range(5)])
        self.assertEqual([m["mid"] for m in got], [r["mid"] for r in receipts])

    async def test_stored_when_no_node_has_a_device(self) -> None:
        a, _ = await self.node("a"), await self.node("b")
        alice = await self.client(a, "alice")
        self.assertEqual((await alice.send("hi", to="nobody"))["status"], "stored")

    async def test_stored_after_the_last_device_left_the_other_node(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        bob = await self.client(b, "bob")
        alice = await self.client(a, "alice")
        self.assertEqual((await alice.send("one", to="bob"))["status"], "delivered")
        await bob.bye()
        bus = self.nodes["b"].store.bus
        await eventually(lambda: not bus.has("bob"))
        self.assertEqual((await alice.send("two", to="bob"))["status"], "stored")

    async def test_every_device_on_every_node_gets_it_in_order(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        phone = await self.client(a, "bob", "phone")
        laptop = await self.client(b, "bob", "laptop")
        alice = await self.client(a, "alice")
        await alice.send("x", to="bob")
        await alice.send("y", to="bob")
        for device in (phone, laptop):
            got = [await device.messages.get() for _ in range(2)]
            self.assertEqual([(m["seq"], m["body"]) for m in got], [(1, "x"), (2, "y")])

    async def test_rooms_span_nodes_and_the_sending_device_gets_no_copy(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice_phone = await self.client(a, "alice", "phone")
        alice_laptop = await self.client(b, "alice", "laptop")
        carol = await self.client(b, "carol")
        for c in (alice_phone, carol):
            await c.join("lobby")
        receipt = await alice_phone.send("hello room", room="lobby")
        self.assertEqual(receipt["status"], "accepted")
        self.assertEqual((await carol.messages.get())["body"], "hello room")
        self.assertEqual((await alice_laptop.messages.get())["body"], "hello room")
        # the sending device: nothing, though its user's inbox holds it
        await alice_phone.send("ping", to="alice")
        self.assertEqual((await alice_phone.messages.get())["body"], "ping")

    async def test_a_hello_on_another_node_replaces_the_device_with_409(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        first = await self.client(a, "dave", "phone")
        replaced = first.wait_for("error")
        await self.client(b, "dave", "phone")
        error = await replaced
        self.assertEqual((error["code"], error["reason"]), (409, "replaced"))
        await first.closed
        # node a has no device of dave left: it no longer listens for him
        await eventually(lambda: not self.nodes["a"].store.bus.has("dave"))

    async def test_what_was_published_while_the_subscriber_was_down_arrives(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        bob = await self.client(b, "bob")
        alice = await self.client(a, "alice")
        self.assertEqual((await alice.send("before", to="bob"))["status"], "delivered")
        self.assertEqual((await bob.messages.get())["body"], "before")
        bus = self.nodes["b"].store.bus
        # drop every subscriber connection of the server: pub/sub forgets them
        await self.nodes["a"].store.shards[0].call("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: not bus.ready)
        lost = await alice.send("during", to="bob")
        self.assertEqual(lost["status"], "stored")  # nobody was listening
        await eventually(lambda: bus.ready)
        got = await bob.messages.get()
        self.assertEqual((got["seq"], got["body"]), (2, "during"))
        self.assertEqual((await alice.send("after", to="bob"))["status"], "delivered")
        self.assertEqual((await bob.messages.get())["seq"], 3)

    async def test_a_gap_in_the_seqs_is_filled_from_the_inbox_in_order(self) -> None:
        from o2obroker.backend import StoredMessage
        from o2obroker.routing.cluster import encode_messages

        _, b = await self.node("a"), await self.node("b")
        bob = await self.client(b, "bob", auto_ack=False)
        store = self.nodes["a"].store
        now = int(reactor.seconds() * 1000)
        m1, m2 = (
            StoredMessage(m, now, {"mid": m, "from": "x", "to": "bob", "body": n, "ts": now})
            for n, m in ((1, "m1"), (2, "m2"))
        )
        self.assertEqual(await store.append_many({"bob": [m1, m2]}), {"bob": [1, 2]})
        # only seq 2's publish arrives (seq 1's was lost or is late)
        await store.publish_many({"bob": encode_messages(b"a", 2, [m2])})
        got = [await bob.messages.get() for _ in range(2)]
        self.assertEqual([(m["seq"], m["body"]) for m in got], [(1, 1), (2, 2)])
        # the late publish of seq 1 is not written again
        await store.publish_many({"bob": encode_messages(b"a", 1, [m1])})
        m3 = StoredMessage("m3", now, {**m2.fields, "mid": "m3", "body": 3})
        self.assertEqual(await store.append_many({"bob": [m3]}), {"bob": [3]})
        await store.publish_many({"bob": encode_messages(b"a", 3, [m3])})
        got = await bob.messages.get()
        self.assertEqual((got["seq"], got["body"]), (3, 3))  # seq 1 came before it: not again
        self.assertEqual(len(bob.messages.pending), 0)


class DirectoryOverRegistryTests(TestCase):
    """On Redis, route and free-host look-ups see every live node of the registry."""

    timeout = 30

    def setUp(self) -> None:
        self.prefix = unique_prefix()

    def node(self, name: str) -> Node:
        config = Config(secret=SECRET, node=name)
        backend = RedisBackend(parse_urls(shared().url), reactor, reactor, name, prefix=self.prefix)
        node = Node(config, reactor, backend=backend)
        node.start()
        self.addCleanup(node.stop)
        return node

    async def test_each_node_routes_over_every_live_node(self) -> None:
        a, b = self.node("na"), self.node("nb")
        await a.store.when_ready()
        await b.store.when_ready()

        async def ids(node: Node) -> set[str]:
            return {n.id for n in await node.directory.nodes()}

        # each node counts itself at once, before its first heartbeat is read back
        self.assertIn("na", await ids(a))
        await eventually(lambda: len(b.registry.peers()) >= 1 and len(a.registry.peers()) >= 1)
        self.assertEqual(await ids(a), {"na", "nb"})
        self.assertEqual(await ids(b), {"na", "nb"})
        # a node that leaves is no longer routed to
        await b.stop()
        await eventually(lambda: not a.registry.peers())
        self.assertEqual(await ids(a), {"na"})
