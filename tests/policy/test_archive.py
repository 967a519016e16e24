"""The archive: per conversation and room, capped by count and age, paged by mid.

``ArchiveContract`` holds every archive to the same results: the memory one
and the Redis one (against a real redis-server, one and two servers). What
only one of them has follows.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from o2obroker.backend.archive import (
    IArchive,
    MemoryArchive,
    conversation,
    room_thread,
)
from o2obroker.backend.interface import BackendUnavailable, StoredMessage
from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.backend.redis.archive import RedisArchive
from tests.redis_server import shared, unique_prefix


def msg(n: int, ts: int, frm: str = "alice", to: str | None = "bob", room: str | None = None):
    fields: dict[str, Any] = {"mid": f"m{n}", "from": frm, "from_device": "p", "body": n, "ts": ts}
    if room is None:
        fields["to"] = to
    else:
        fields["room"] = room
    return StoredMessage(f"m{n}", ts, fields)


class ArchiveContract:
    """What every IArchive does; a subclass says how to make one (5 per thread, 60 s)."""

    clock: Clock
    archive: Any

    def makeArchive(self, max_messages: int = 5, max_age: float = 60) -> Any:
        raise NotImplementedError

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(1000)
        self.archive = await self.makeArchive()

    async def page(self, thread: str, before: str | None = None, limit: int = 50) -> Any:
        messages, more = await self.archive.page(thread, before, limit)
        return [m.mid for m in messages], more

    def test_provides_the_interface(self) -> None:
        verifyObject(IArchive, self.archive)

    async def test_a_conversation_is_one_thread_from_both_sides(self) -> None:
        self.assertEqual(conversation("bob", "alice"), conversation("alice", "bob"))
        await self.archive.add([msg(1, 1_000_000), msg(2, 1_000_001, "bob", "alice")])
        await self.archive.add([msg(3, 1_000_002, room="r")])
        self.assertEqual(await self.page(conversation("bob", "alice")), (["m2", "m1"], False))
        self.assertEqual(await self.page(room_thread("r")), (["m3"], False))
        self.assertEqual(await self.page(conversation("alice", "carol")), ([], False))

    async def test_one_add_over_many_threads_keeps_each_in_order(self) -> None:
        batch = []
        for n in range(1, 31):
            pair = [("alice", "bob"), ("carol", "dave"), ("erin", "frank")][n % 3]
            batch.append(msg(n, 1_000_000 + n, *pair) if n % 4 else msg(n, 1_000_000 + n, room="r"))
        await self.archive.add(batch)
        for thread, want in [
            (conversation("alice", "bob"), [n for n in range(1, 31) if n % 3 == 0 and n % 4]),
            (room_thread("r"), [n for n in range(1, 31) if n % 4 == 0]),
        ]:
            mids, _ = await self.page(thread)
            self.assertEqual(mids, [f"m{n}" for n in reversed(want)][:5])

    async def test_messages_come_back_whole(self) -> None:
        fields = {
            "mid": "m1",
            "from": "alice",
            "from_device": "p",
            "to": "bob",
            "body": {"text": "你好 ✓", "raw": b"\x00\xff", "n": [1, 2.5, None, True]},
            "ts": 1_000_000,
        }
        await self.archive.add([StoredMessage("m1", 1_000_000, fields)])
        [m], more = await self.archive.page(conversation("alice", "bob"), None, 10)
        self.assertEqual((m.mid, m.ts, m.fields, more), ("m1", 1_000_000, fields, False))

    async def test_pages_back_by_before_and_limit(self) -> None:
        await self.archive.add([msg(n, 1_000_000 + n) for n in range(1, 6)])
        thread = conversation("alice", "bob")
        self.assertEqual(await self.page(thread, limit=2), (["m5", "m4"], True))
        self.assertEqual(await self.page(thread, "m4", 2), (["m3", "m2"], True))
        self.assertEqual(await self.page(thread, "m2", 2), (["m1"], False))
        self.assertEqual(await self.page(thread, "m1", 2), ([], False))
        self.assertEqual(await self.page(thread, "nope", 2), ([], False))
        self.assertEqual(await self.page(thread, limit=5), (["m5", "m4", "m3", "m2", "m1"], False))

    async def test_capped_by_count_per_thread(self) -> None:
        await self.archive.add([msg(n, 1_000_000 + n) for n in range(1, 9)])
        await self.archive.add([msg(20, 1_000_020, room="r")])
        thread = conversation("alice", "bob")
        self.assertEqual(await self.page(thread), (["m8", "m7", "m6", "m5", "m4"], False))
        self.assertEqual(await self.page(thread, "m5"), (["m4"], False))
        self.assertEqual(await self.page(thread, "m2"), ([], False))  # trimmed away
        self.assertEqual(await self.page(room_thread("r")), (["m20"], False))  # its own cap
        # one at a time past the cap: the oldest goes each time
        await self.archive.add([msg(9, 1_000_009)])
        self.assertEqual((await self.page(thread))[0], ["m9", "m8", "m7", "m6", "m5"])

    async def test_capped_by_age(self) -> None:
        await self.archive.add([msg(1, 1_000_000), msg(2, 1_030_000)])
        self.clock.advance(45)  # now 1045 s: m1 (1000 s) is 45 s old, not yet past 60 s
        self.assertEqual((await self.page(conversation("alice", "bob")))[0], ["m2", "m1"])
        self.clock.advance(30)  # 1075 s: m1 is 75 s old, m2 45 s
        self.assertEqual(await self.page(conversation("alice", "bob")), (["m2"], False))
        self.assertEqual(await self.page(conversation("alice", "bob"), "m1"), ([], False))
        self.clock.advance(30)
        self.assertEqual(await self.page(conversation("alice", "bob")), ([], False))

    async def test_expired_messages_go_when_the_thread_is_written(self) -> None:
        await self.archive.add([msg(n, 1_000_000 + n) for n in range(1, 4)])
        self.clock.advance(61)
        await self.archive.add([msg(4, 1_061_000)])
        self.assertEqual(await self.page(conversation("alice", "bob")), (["m4"], False))

    async def test_a_mid_is_archived_once(self) -> None:
        await self.archive.add([msg(1, 1_000_000)])
        await self.archive.add([msg(1, 1_000_000), msg(2, 1_000_001)])
        await self.archive.add([msg(2, 1_000_001)])
        self.assertEqual(await self.page(conversation("alice", "bob")), (["m2", "m1"], False))


class MemoryArchiveTests(ArchiveContract, TestCase):
    async def makeArchive(self, max_messages: int = 5, max_age: float = 60) -> Any:
        return MemoryArchive(self.clock, max_messages=max_messages, max_age=max_age)

    def test_counts_what_it_holds(self) -> None:
        self.archive.add([msg(n, 1_000_000 + n) for n in range(1, 9)])
        self.archive.add([msg(20, 1_000_020, room="r")])
        self.assertEqual(self.archive.stored, 6)
        self.clock.advance(200)
        self.successResultOf(self.archive.page(conversation("alice", "bob"), None, 5))
        self.assertEqual(self.archive.stored, 0)
        self.assertEqual(self.archive.threads, {})

    def test_an_idle_thread_is_dropped_by_writes_to_others(self) -> None:
        self.archive.add([msg(1, 1_000_000), msg(2, 1_000_000, "carol", "dave")])
        self.clock.advance(30)
        self.archive.add([msg(3, 1_030_000, "carol", "dave")])  # carol/dave stays live
        self.clock.advance(40)  # alice/bob: last written 70 s ago
        self.archive.add([msg(4, 1_070_000, "erin", "frank")])
        self.assertNotIn(conversation("alice", "bob"), self.archive.threads)
        # the live thread lost only its expired message, when written or read
        messages, more = self.successResultOf(
            self.archive.page(conversation("carol", "dave"), None, 50)
        )
        self.assertEqual(([m.mid for m in messages], more), (["m3"], False))
        self.assertEqual(self.archive.stored, 2)

    def test_memory_is_bounded_by_the_caps_not_the_traffic(self) -> None:
        for n in range(1, 1001):
            self.archive.add([msg(n, 1_000_000 + n)])
        self.assertEqual(self.archive.stored, 5)
        self.assertEqual(len(self.archive.threads), 1)


class RedisArchiveCase(TestCase):
    timeout = 30
    urls = "0"

    async def redisArchive(self, **kw: Any) -> RedisArchive:
        url = ",".join(shared(int(n)).url for n in self.urls.split(","))
        backend = RedisBackend(parse_urls(url), self.clock, reactor, prefix=unique_prefix())
        backend.start()
        self.addCleanup(backend.stop)
        await backend.when_ready()
        self.backend = backend
        return RedisArchive(backend, self.clock, **kw)


class RedisArchiveTests(ArchiveContract, RedisArchiveCase):
    async def makeArchive(self, max_messages: int = 5, max_age: float = 60) -> Any:
        return await self.redisArchive(max_messages=max_messages, max_age=max_age)

    async def keys(self) -> dict[str, tuple[str, int, int]]:
        """Every key of this archive: its type, size and time to live (ms)."""
        [shard] = self.backend.shards
        out = {}
        for key in await shard.call("KEYS", self.archive._prefix + ":*"):
            kind = (await shard.call("TYPE", key)).decode()
            size = await shard.call("XLEN" if kind == "stream" else "HLEN", key)
            out[key.decode()] = (kind, size, await shard.call("PTTL", key))
        return out

    async def test_a_thread_is_a_capped_stream_and_its_index_shrinks_with_it(self) -> None:
        await self.archive.add([msg(n, 1_000_000 + n) for n in range(1, 9)])
        await self.archive.add([msg(20, 1_000_020, room="r")])
        keys = await self.keys()
        p = self.archive._prefix
        self.assertEqual(
            {k: v[:2] for k, v in keys.items()},
            {
                f"{p}:{{a:c/alice/bob}}:arc": ("stream", 5),
                f"{p}:{{a:c/alice/bob}}:ids": ("hash", 5),
                f"{p}:{{a:r/r}}:arc": ("stream", 1),
                f"{p}:{{a:r/r}}:ids": ("hash", 1),
            },
        )
        # keys of a thread nobody writes to vanish after max_age and a margin
        for _, _, ttl in keys.values():
            self.assertTrue(60_000 < ttl <= 120_000, ttl)
        # expired on a read: both keys emptied
        self.clock.advance(200)
        await self.page(conversation("alice", "bob"))
        sizes = {k: v[1] for k, v in (await self.keys()).items() if "alice" in k}
        self.assertEqual(set(sizes.values()) - {0}, set())

    async def test_an_add_is_one_script_per_server(self) -> None:
        [shard] = self.backend.shards
        await self.archive.add([msg(0, 999_999)])  # the first call loads the script
        before = shard.calls
        await self.archive.add(
            [msg(n, 1_000_000 + n, f"u{n}", "v", room="r" if n % 2 else None) for n in range(50)]
        )
        self.assertEqual(shard.calls - before, 1)

    async def test_a_large_add_is_split_between_threads(self) -> None:
        archive = RedisArchive(self.backend, self.clock, max_messages=2000, max_age=60)
        await archive.add([msg(0, 999_999, "x", "y")])  # the first call loads the script
        [shard] = self.backend.shards
        before = shard.calls
        sizes = {"a": 1200, "b": 900, "c": 400}
        batch = [
            msg(n, 1_000_000 + n, u, "v")
            for n, u in enumerate(u for u, size in sizes.items() for _ in range(size))
        ]
        self.assertEqual(await archive.add(batch), 2500)
        # 1,000 messages a script at most, but one thread's 1,200 are never split
        self.assertEqual(shard.calls - before, 3)
        for user, size in sizes.items():
            stream, index = archive._where(conversation(user, "v"))[1]
            self.assertEqual(await shard.call("XLEN", stream), size)
            self.assertEqual(await shard.call("HLEN", index), size)
            messages, more = await archive.page(conversation(user, "v"), None, 2)
            last = max(n for n, m in enumerate(batch) if m.fields["from"] == user)
            self.assertEqual(
                ([m.mid for m in messages], more), ([f"m{last}", f"m{last - 1}"], True)
            )

    async def test_a_server_that_is_down_fails_at_once(self) -> None:
        await self.backend.stop()
        with self.assertRaises(BackendUnavailable):
            await self.archive.add([msg(1, 1_000_000)])
        with self.assertRaises(BackendUnavailable):
            await self.archive.page(conversation("alice", "bob"), None, 5)


class ShardedRedisArchiveTests(ArchiveContract, RedisArchiveCase):
    """The same contract with threads spread over two servers."""

    urls = "0,1"

    async def makeArchive(self, max_messages: int = 5, max_age: float = 60) -> Any:
        return await self.redisArchive(max_messages=max_messages, max_age=max_age)

    async def test_threads_spread_over_the_servers(self) -> None:
        await self.archive.add([msg(n, 1_000_000 + n, f"u{n}", "v") for n in range(40)])
        counts = []
        for shard in self.backend.shards:
            keys = await shard.call("KEYS", self.archive._prefix + ":*:arc")
            counts.append(len(keys))
        self.assertEqual(sum(counts), 40)
        self.assertTrue(all(c > 5 for c in counts), counts)
        for n in range(40):
            self.assertEqual(await self.page(conversation(f"u{n}", "v")), ([f"m{n}"], False))
