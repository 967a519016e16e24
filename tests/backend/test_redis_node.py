"""Real nodes on one real Redis: what one node stores, another serves, across restarts."""

from __future__ import annotations

from tests.redis_nodes import RedisNodesCase

SECRET = "redis-node-secret-0123456789abcdef012"


class TwoNodesTests(RedisNodesCase):
    secret = SECRET

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
