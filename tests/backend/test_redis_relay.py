"""The Redis backend's store path for a cluster: a batch stored and published at once."""

from __future__ import annotations

from typing import Any

import cbor2
from twisted.internet.task import Clock

from o2obroker.backend import EncodedMessage, StoredMessage
from o2obroker.backend.redis import shard_of
from o2obroker.routing.cluster import decode
from tests.backend.test_redis import RedisCase, _calls
from tests.backend.test_redis_outage import eventually
from tests.redis_server import shared


class StoreAndPublishTests(RedisCase):
    """A batch is stored and published by one script, from one encoding of each message."""

    def setUp(self) -> None:
        self.clock = Clock()

    async def listening(self, b: Any, *users: str) -> list[tuple[str, bytes]]:
        got: list[tuple[str, bytes]] = []
        b.bus.on_message = lambda user, payload: got.append((user, payload))
        await b.when_ready()
        await eventually(lambda: b.bus.ready)
        for user in users:
            await b.bus.subscribe(user)
        return got

    async def test_stored_and_published_in_one_script_the_same_bytes(self) -> None:
        b = self.redisBackend()
        got = await self.listening(b, "bob")
        shard = b.shards[0]
        await shard.call("CONFIG", "RESETSTAT")
        m1, m2, m3 = (message(f"m{i}", i) for i in (1, 2, 3))
        seqs, counts = await b.append_publish(
            {"bob": [m1, m2], "carol": [m3]}, {"bob": [None, "phone"]}, b"M\x01x"
        )
        self.assertEqual(seqs, {"bob": [1, 2], "carol": [1]})
        # bob's channel has this node's subscriber, carol's none
        self.assertEqual(counts, {"bob": 1, "carol": 0})
        calls = _calls(await shard.call("INFO", "commandstats"))
        self.assertEqual((calls["evalsha"], calls["publish"], calls["xadd"]), (1, 2, 3))
        await eventually(lambda: got)
        [(user, payload)] = got
        kind, origin, items = decode(payload)
        self.assertEqual((user, kind, origin), ("bob", b"M", b"x"))
        self.assertEqual([(s, m, k) for s, m, k in items], [(1, m1, None), (2, m2, "phone")])
        # the inbox keeps the bytes the channel carried: the frames' own encoding
        entries = await shard.call("XRANGE", b._key("bob", "inbox"), "-", "+")
        self.assertEqual([e[1][3] for e in entries], [m1.cbor_map(), m2.cbor_map()])
        self.assertEqual(items[1][1].cbor(2), m2.cbor(2))

    async def test_append_many_publishes_nothing(self) -> None:
        b = self.redisBackend()
        got = await self.listening(b, "bob")
        shard = b.shards[0]
        await shard.call("CONFIG", "RESETSTAT")
        self.assertEqual(await b.append_many({"bob": [message("m1", 1)]}), {"bob": [1]})
        self.assertNotIn("publish", _calls(await shard.call("INFO", "commandstats")))
        await b.bus.subscribe("bob")  # a round trip on the subscriber: nothing came
        self.assertEqual(got, [])

    async def test_each_user_is_published_on_its_own_shard(self) -> None:
        b = self.redisBackend(f"{shared(0).url},{shared(1).url}")
        users = [f"user{i}" for i in range(6)]
        got = await self.listening(b, *users)
        self.assertEqual({shard_of("u:" + u, 2) for u in users}, {0, 1})
        inboxes = {u: [message(f"{u}-1", 1), message(f"{u}-2", 2)] for u in users}
        _, counts = await b.append_publish(inboxes, {}, b"M\x01x")
        self.assertEqual(counts, dict.fromkeys(users, 1))
        await eventually(lambda: len(got) == len(users))
        for user, payload in got:
            self.assertEqual(
                decode(payload)[2], [(1, inboxes[user][0], None), (2, inboxes[user][1], None)]
            )

    async def test_entries_of_an_earlier_release_read_as_before(self) -> None:
        # earlier releases kept [mid, ts, fields]; so does a message whose
        # fields do not hold its own mid and ts
        b = self.redisBackend()
        await b.when_ready()
        odd = StoredMessage("m1", 5, {"t": "msg", "body": 1})
        await b.append_many({"bob": [odd, message("m2", 6)]})
        entries = await b.shards[0].call("XRANGE", b._key("bob", "inbox"), "-", "+")
        self.assertEqual(cbor2.loads(entries[0][1][3]), ["m1", 5, {"t": "msg", "body": 1}])
        [(_, first), (_, second)] = await b.read("bob", 0, 10)
        self.assertEqual((first, second), (odd, message("m2", 6)))
        self.assertNotIsInstance(first, EncodedMessage)
        self.assertIsInstance(second, EncodedMessage)


def message(mid: str, ts: int) -> StoredMessage:
    return StoredMessage(mid, ts, {"mid": mid, "from": "a", "to": "b", "body": [ts], "ts": ts})


class DedupeCommandsTests(RedisCase):
    """Claims and settlements of a batch are a few commands for the whole batch."""

    def setUp(self) -> None:
        self.clock = Clock()

    async def test_a_batch_of_claims_and_settlements_in_chunks(self) -> None:
        from o2obroker.backend.interface import Receipt

        b = self.redisBackend()
        await b.when_ready()
        shard = b.shards[0]
        await shard.call("CONFIG", "RESETSTAT")
        # 2,500 ids, one of them twice across a chunk's edge: three chunks
        claims = [(f"c-{i}", f"m{i}") for i in range(2499)] + [("c-10", "again")]
        got = await b.claim("alice", 7, claims)
        self.assertEqual(got[:2499], [None] * 2499)
        self.assertEqual(got[2499], Receipt("m10", 7, None))
        calls = _calls(await shard.call("INFO", "commandstats"))
        self.assertEqual((calls["hmget"], calls["hset"], calls["rpush"]), (3, 3, 3))
        self.assertNotIn("hget", calls)  # none per id
        await shard.call("CONFIG", "RESETSTAT")
        statuses = {f"c-{i}": "delivered" for i in range(2500)}
        statuses["gone"] = "stored"  # not claimed (or expired): skipped
        await b.settle("alice", statuses)
        calls = _calls(await shard.call("INFO", "commandstats"))
        self.assertEqual((calls["hmget"], calls["hset"]), (3, 3))
        again = await b.claim("alice", 8, [("c-2498", "x"), ("gone", "y"), ("c-0", "z")])
        self.assertEqual(
            again, [Receipt("m2498", 7, "delivered"), None, Receipt("m0", 7, "delivered")]
        )
