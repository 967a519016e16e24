"""The Redis backend against a real redis-server: the contract suite, then what only Redis has."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import cbor2
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from o2obroker.backend import BackendUnavailable, MemoryBackend, StoredMessage
from o2obroker.backend.interface import OFFLINE, Location, Presence
from o2obroker.backend.redis import RedisBackend, jump_hash, parse_urls, shard_of
from tests.backend.contract import BackendContract, msg
from tests.redis_server import shared, unique_prefix


class RedisCase(TestCase):
    """Backends on the process's shared redis-server, each under its own key prefix."""

    timeout = 30

    def redisBackend(self, url: str | None = None, **kw: Any) -> Any:
        url = url or shared().url
        kw.setdefault("prefix", unique_prefix())
        b = RedisBackend(parse_urls(url), self.clock, reactor, **kw)
        b.start()
        self.addCleanup(b.stop)
        return b


class RedisContractTests(BackendContract, RedisCase):
    def makeBackend(self, **limits: Any) -> RedisBackend:
        return self.redisBackend(**limits)

    async def backendReady(self, backend: Any) -> None:
        await backend.when_ready()


class ShardedContractTests(BackendContract, RedisCase):
    """The same contract with users and rooms spread over two servers."""

    def makeBackend(self, **limits: Any) -> RedisBackend:
        return self.redisBackend(f"{shared(0).url},{shared(1).url}", **limits)

    async def backendReady(self, backend: Any) -> None:
        await backend.when_ready()


class ShardingTests(RedisCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_jump_hash_moves_a_share_of_keys(self) -> None:
        keys = range(2000)
        three = [jump_hash(k * 7919 + 13, 3) for k in keys]
        four = [jump_hash(k * 7919 + 13, 4) for k in keys]
        self.assertEqual(set(three), {0, 1, 2})
        moved = [(a, b) for a, b in zip(three, four, strict=True) if a != b]
        # a new bucket takes about a quarter, and keys only ever move to it
        self.assertTrue(350 < len(moved) < 650, len(moved))
        self.assertEqual({b for _, b in moved}, {3})

    def test_shard_of_is_pinned(self) -> None:
        # Nodes of different versions must agree on where a user lives: a change
        # here moves users' data, so it must be deliberate (and migrated).
        self.assertEqual(shard_of("u:alice", 2), 1)
        self.assertEqual(
            [shard_of(f"u:user{i}", 2) for i in range(10)], [0, 1, 0, 0, 1, 0, 0, 0, 0, 0]
        )
        self.assertEqual(shard_of("u:anything", 1), 0)

    async def test_users_spread_and_each_stays_on_one_server(self) -> None:
        prefix = unique_prefix()
        b = self.redisBackend(f"{shared(0).url},{shared(1).url}", prefix=prefix)
        await b.when_ready()
        users = [f"user{i}" for i in range(40)]
        await b.append_many({u: [msg(1)] for u in users})
        for u in users:
            await b.ack(u, "phone", 0)
            await b.claim(u, 1, [("c", "m")])
        placed: dict[str, set[int]] = {}
        for i, shard in enumerate(b.shards):
            for key in await shard.call("KEYS", f"{prefix}:*"):
                user = key.decode().split("{u:")[1].split("}")[0]
                placed.setdefault(user, set()).add(i)
        self.assertEqual(set(placed), set(users))
        # every key of one user on one server, and both servers used
        self.assertTrue(all(len(s) == 1 for s in placed.values()))
        self.assertEqual(set().union(*placed.values()), {0, 1})
        for u in users:
            self.assertEqual(placed[u], {shard_of("u:" + u, 2)})

    async def test_a_resync_of_many_users_costs_a_script_per_shard(self) -> None:
        b = self.redisBackend(f"{shared(0).url},{shared(1).url}", prefix=unique_prefix())
        await b.when_ready()
        await b.heartbeat({"id": b.node_id}, 60.0)
        users = [f"user{i}" for i in range(40)]
        await b.append_many({u: [msg(1)] for u in users[:3]})
        part = Presence("online", "", 1, 5)
        before = [s.calls for s in b.shards]
        found = await gatherResults([b.resync(u, part, ["phone"]) for u in users])
        sent = [s.calls - n for s, n in zip(b.shards, before, strict=True)]
        # each shard one script for its users; the registry's shard also the
        # live nodes, this boot into the set of indexed ones, and an index write
        # for each of the two indexes, all users in one
        self.assertEqual(sent, [5, 1])
        self.assertEqual([r.last for r in found], [1, 1, 1] + [0] * 37)
        self.assertEqual({r.presence for r in found}, {(OFFLINE, part)})
        here = Location(b.node_id, b.boot)
        self.assertEqual(await b.locations(users), {u: {"phone": here} for u in users})
        # in the indexes a sweeper reads if this node dies
        head = f"{b._prefix}:{{nodes}}:"
        for kind in ("parts", "located"):
            indexed = await b.shards[0].call("SMEMBERS", f"{head}{kind}:{b._here}")
            self.assertEqual({u.decode() for u in indexed}, set(users))

    async def test_a_resync_that_cannot_be_sent_fails_every_caller(self) -> None:
        b = RedisBackend(parse_urls(shared(0).url), Clock(), reactor)  # never started
        calls = [b.resync(u, Presence("online", "", 1, 5), ["phone"]) for u in ("ann", "bob")]
        for d in calls:
            with self.assertRaises(BackendUnavailable):
                await d

    async def test_a_resync_gathered_when_the_backend_stops_fails_then(self) -> None:
        b = RedisBackend(parse_urls(shared(0).url), Clock(), reactor)
        b.start()
        await b.when_ready()
        d = b.resync("ann", Presence("online", "", 1, 5), ["phone"])
        stopped = b.stop()
        # at once, not in a later turn against closed connections
        self.failureResultOf(d, BackendUnavailable)
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.func == b._resync_batch], [])
        await stopped


class TurnBatchTests(RedisCase):
    """The everyday presence path: the calls of one reactor turn share a read
    of the live nodes and a script per shard, whatever the number of users."""

    def setUp(self) -> None:
        self.clock = Clock()

    async def twoShards(self) -> RedisBackend:
        b = self.redisBackend(f"{shared(0).url},{shared(1).url}", prefix=unique_prefix())
        await b.when_ready()
        await b.heartbeat({"id": b.node_id}, 60.0)
        return b

    async def test_a_turn_of_hellos_costs_a_script_per_shard(self) -> None:
        b = await self.twoShards()
        users = [f"user{i}" for i in range(200)]
        part = Presence("online", "", 1, 5)
        before = [s.calls for s in b.shards]
        located = [b.locate(u, "phone") for u in users]
        merged = [b.merge_presence(u, part) for u in users]
        self.assertEqual(await gatherResults(located), [None] * 200)
        self.assertEqual(await gatherResults(merged), [(OFFLINE, part)] * 200)
        sent = [s.calls - n for s, n in zip(b.shards, before, strict=True)]
        # each shard a locate and a merge script for its users; the registry's
        # shard also the live nodes, this boot into the set of indexed ones and
        # one write for each of the two indexes (one command a user before)
        self.assertEqual(sent, [6, 2])
        here = Location(b.node_id, b.boot)
        self.assertEqual(await b.locations(users), {u: {"phone": here} for u in users})
        self.assertEqual(await b.presence(users), {u: part for u in users})
        head = f"{b._prefix}:{{nodes}}:"
        for kind in ("parts", "located"):
            indexed = await b.shards[0].call("SMEMBERS", f"{head}{kind}:{b._here}")
            self.assertEqual({u.decode() for u in indexed}, set(users))

    async def test_a_turn_of_hellos_with_their_inbox_reads_costs_a_script_per_shard(
        self,
    ) -> None:
        b = await self.twoShards()
        users = [f"user{i}" for i in range(200)]
        await b.append_many({u: [msg(1), msg(2)] for u in users[:50]})
        part = Presence("online", "", 1, 5)
        before = [s.calls for s in b.shards]
        # what a hello asks of the backend (UserActor._on_attach and the presence hub)
        located = [b.locate(u, "phone") for u in users]
        states = [b.inbox_state(u) for u in users]
        merged = [b.merge_presence(u, part) for u in users]
        self.assertEqual(await gatherResults(located), [None] * 200)
        got = await gatherResults(states)
        self.assertEqual(await gatherResults(merged), [(OFFLINE, part)] * 200)
        sent = [s.calls - n for s, n in zip(b.shards, before, strict=True)]
        # the turn without its inbox reads (above), and one inbox script per
        # shard: one command a hello before
        self.assertEqual(sent, [7, 3])
        self.assertEqual([(s.last, s.first) for s in got[:50]], [(2, 1)] * 50)
        self.assertEqual([(s.last, s.first) for s in got[50:]], [(0, 1)] * 150)
        # a user keeps the epoch it was given first
        again = await gatherResults([b.inbox_state(u) for u in users])
        self.assertEqual([s.epoch for s in again], [s.epoch for s in got])

    async def test_a_turn_shares_one_read_of_the_live_nodes(self) -> None:
        b = await self.twoShards()
        reads = []
        live = b._live
        b._live = lambda now: reads.append(now) or live(now)
        part = Presence("online", "", 1, 5)
        calls = [b.merge_presence(u, part) for u in ("ann", "bob")]
        calls.append(b.relocate("cat", ["phone", "web"]))
        calls.append(b.locations(["ann", "cat"]))
        calls.append(b.relocate("dan", ["phone"]))
        merged, bob, cat, _, dan = await gatherResults(calls)
        self.assertEqual(len(reads), 1)
        self.assertEqual((merged, bob, cat, dan), ((OFFLINE, part), (OFFLINE, part), {}, {}))
        here = Location(b.node_id, b.boot)
        self.assertEqual(await b.locations(["cat"]), {"cat": {"phone": here, "web": here}})
        # alone in its turn, a look-up still reads the live nodes once
        self.assertEqual(await b.locations(["dan"]), {"dan": {"phone": here}})
        self.assertEqual(len(reads), 3)

    async def test_an_inbox_read_of_a_turn_does_not_see_a_later_write(self) -> None:
        b = await self.twoShards()
        await b.append("ann", [msg(1)])
        state = b.inbox_state("ann")
        appended = b.append("ann", [msg(2)])
        self.assertEqual((await state).last, 1)
        self.assertEqual(await appended, [2])
        state = b.inbox_state("ann")
        acked = b.ack("ann", "phone", 2)
        self.assertEqual((await state).last, 2)
        await acked

    async def test_calls_of_one_turn_keep_their_order(self) -> None:
        b = await self.twoShards()
        urls = f"{shared(0).url},{shared(1).url}"
        other = self.redisBackend(urls, prefix=b._prefix, node_id="n2")
        await other.when_ready()
        await other.heartbeat({"id": "n2"}, 60.0)
        self.assertIsNone(await other.locate("ann", "phone"))
        online, away = Presence("online", "", 1, 5), Presence("away", "", 1, 6)
        first = b.locate("ann", "phone")
        gone = b.unlocate("ann", "phone")
        again = b.locate("ann", "tablet")
        merges = [b.merge_presence("ann", online), b.merge_presence("ann", away)]
        # the phone was the other node's: it is told to replace it there
        self.assertEqual(await first, Location("n2", other.boot))
        await gone
        self.assertIsNone(await again)
        self.assertEqual(await gatherResults(merges), [(OFFLINE, online), (online, away)])
        here = Location(b.node_id, b.boot)
        self.assertEqual(await b.locations(["ann"]), {"ann": {"tablet": here}})
        self.assertEqual(await b.presence(["ann"]), {"ann": away})
        # the index writes of the turn: the last word on a user counts
        await b.merge_presence("bob", online)
        await gatherResults([b.merge_presence("bob", OFFLINE), b.merge_presence("ann", online)])
        indexed = await b.shards[0].call("SMEMBERS", f"{b._prefix}:{{nodes}}:parts:{b._here}")
        self.assertEqual({u.decode() for u in indexed}, {"ann"})

    async def test_a_turn_that_cannot_be_sent_fails_every_caller(self) -> None:
        b = RedisBackend(parse_urls(shared(0).url), Clock(), reactor)  # never started
        calls = [b.locate(u, "phone") for u in ("ann", "bob")]
        calls += [b.merge_presence(u, Presence("online", "", 1, 5)) for u in ("ann", "bob")]
        calls += [b.inbox_state(u) for u in ("ann", "bob")]
        calls += [b.relocate("ann", ["phone"]), b.locations(["ann", "bob"])]
        for d in calls:
            with self.assertRaises(BackendUnavailable):
                await d

    async def test_a_watch_of_many_users_costs_a_script_per_shard(self) -> None:
        b = await self.twoShards()
        users = [f"user{i}" for i in range(500)]
        before = [s.calls for s in b.shards]
        self.assertTrue(await b.watch("ann", users, 1000))
        sent = [s.calls - n for s, n in zip(b.shards, before, strict=True)]
        # the watch list on ann's shard, then a reverse index script per shard
        # and per 500 users (one command a user before)
        self.assertLessEqual(sum(sent), 4)
        self.assertEqual(await b.watching("ann"), frozenset(users))
        self.assertEqual(await b.watchers(users), {u: frozenset({"ann"}) for u in users})
        before = [s.calls for s in b.shards]
        await b.unwatch("ann", users[:300])
        self.assertLessEqual(sum(s.calls for s in b.shards) - sum(before), 3)
        found = await b.watchers(users)
        self.assertEqual(found, {u: frozenset({"ann"}) for u in users[300:]})


def _calls(info: bytes) -> dict[str, int]:
    out = {}
    for line in info.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name[8:]] = int(rest.split(",")[0].split("=")[1])
    return out


class RoundTripTests(RedisCase):
    def setUp(self) -> None:
        self.clock = Clock()

    async def test_a_batch_for_many_users_is_one_script_call(self) -> None:
        b = self.redisBackend()
        await b.when_ready()
        shard = b.shards[0]
        await shard.call("CONFIG", "RESETSTAT")
        got = await b.append_many({f"u{i}": [msg(j) for j in range(10)] for i in range(50)})
        self.assertEqual(got["u49"], list(range(1, 11)))
        calls = _calls(await shard.call("INFO", "commandstats"))
        # commands run by the script count too; the client sent one EVALSHA
        self.assertEqual(calls["evalsha"], 1)
        self.assertEqual(calls["xadd"], 500)
        self.assertNotIn("eval", calls)

    async def test_a_huge_batch_is_cut_into_scripts_of_bounded_size(self) -> None:
        # Redis serves no one else while a script runs: 2,500 messages make 3 scripts
        b = self.redisBackend()
        await b.when_ready()
        shard = b.shards[0]
        await shard.call("CONFIG", "RESETSTAT")
        got = await b.append_many({f"u{i}": [msg(j) for j in range(50)] for i in range(50)})
        self.assertEqual(got["u0"], list(range(1, 51)))
        self.assertEqual(got["u49"], list(range(1, 51)))
        calls = _calls(await shard.call("INFO", "commandstats"))
        self.assertEqual(calls["evalsha"], 3)
        # one user's messages are never split, however many
        await shard.call("CONFIG", "RESETSTAT")
        got = await b.append_many({"big": [msg(j) for j in range(1500)], "small": [msg(1)]})
        self.assertEqual(got["big"], list(range(1, 1501)))
        self.assertEqual(_calls(await shard.call("INFO", "commandstats"))["evalsha"], 2)


class SameAsMemoryTests(RedisCase):
    """Random runs of every operation on both backends, compared call by call."""

    def setUp(self) -> None:
        self.clock = Clock()

    async def run_both(self, seed: int, steps: int) -> None:
        rnd = random.Random(seed)
        limits = {"inbox_cap": 6, "inbox_ttl": 40, "device_ttl": 30, "dedupe_ttl": 20}
        limits["dedupe_cap"] = 5
        memory = MemoryBackend(self.clock, **limits)
        redis = self.redisBackend(**limits)
        await redis.when_ready()
        users = ["ann", "bob", "cat"]
        devices = ["phone", "web", "tab"]
        n = 0

        def some_msgs() -> list[StoredMessage]:
            nonlocal n
            out = []
            for _ in range(rnd.randrange(0, 4)):
                n += 1
                out.append(msg(n, ts=int(self.clock.seconds() * 1000)))
            return out

        ops: list[Callable[[], tuple[str, Callable[[Any], Any]]]] = [
            lambda: ("append_many", {u: some_msgs() for u in rnd.sample(users, 2)}),
            lambda: ("append", rnd.choice(users), some_msgs()),
            lambda: ("read", rnd.choice(users), rnd.randrange(-1, 12), rnd.randrange(0, 5)),
            lambda: ("cursor", rnd.choice(users), rnd.choice(devices)),
            lambda: ("ack", rnd.choice(users), rnd.choice(devices), rnd.randrange(-1, 15)),
            lambda: ("set_cursor", rnd.choice(users), rnd.choice(devices), rnd.randrange(-1, 15)),
            lambda: (
                "claim",
                rnd.choice(users),
                rnd.randrange(1000),
                [
                    (f"c{rnd.randrange(8)}", f"m{rnd.randrange(99)}")
                    for _ in range(rnd.randrange(4))
                ],
            ),
            lambda: (
                "settle",
                rnd.choice(users),
                {f"c{rnd.randrange(8)}": rnd.choice(["stored", "delivered"])},
            ),
            lambda: ("join", "room", rnd.choice(users)),
            lambda: ("leave", "room", rnd.choice(users)),
            lambda: ("members", "room"),
            lambda: (
                "set_presence",
                rnd.choice(users),
                Presence(rnd.choice(["online", "away", "offline"]), "", rnd.randrange(2), 7),
            ),
            lambda: ("presence", rnd.sample(users, 2)),
            lambda: ("watch", rnd.choice(users), rnd.sample(users, 2), 2),
            lambda: ("unwatch", rnd.choice(users), rnd.sample(users, 1)),
            lambda: ("watching", rnd.choice(users)),
            lambda: ("watchers", users),
        ]
        for step in range(steps):
            if rnd.random() < 0.15:
                self.clock.advance(rnd.choice([1, 5, 15]))
            name, *args = rnd.choice(ops)()
            want = await getattr(memory, name)(*args)
            got = await getattr(redis, name)(*args)
            self.assertEqual(got, want, f"seed {seed}, step {step}: {name}{tuple(args)!r}")
            if name in ("append", "append_many", "ack", "set_cursor", "read"):
                for user in users:
                    a, b = await memory.inbox_state(user), await redis.inbox_state(user)
                    self.assertEqual((b.last, b.first), (a.last, a.first), f"seed {seed}, {step}")

    async def test_random_runs(self) -> None:
        for seed in range(3):
            await self.run_both(seed, 250)


class RegistryTests(RedisCase):
    def setUp(self) -> None:
        self.clock = Clock()

    async def test_nodes_see_each_other_and_a_silent_one_lapses(self) -> None:
        prefix = unique_prefix()
        a = self.redisBackend(node_id="a", prefix=prefix)
        b = self.redisBackend(node_id="b", prefix=prefix)
        await a.when_ready()
        await b.when_ready()
        await b.heartbeat({"id": "b", "draining": False}, 2.0)
        await a.heartbeat({"id": "a", "draining": True}, 2.0)
        # each record with its boot and when it lapses
        expected = [
            {"id": "a", "draining": True, "boot": a.boot, "expires": 2.0},
            {"id": "b", "draining": False, "boot": b.boot, "expires": 2.0},
        ]
        self.assertEqual(await a.nodes(), expected)
        self.assertEqual(await b.nodes(), expected)
        self.clock.advance(1.5)
        await a.heartbeat({"id": "a", "draining": True}, 2.0)
        self.clock.advance(1.0)  # b's last beat is 2.5 s old: dead for everyone
        self.assertEqual(
            await b.nodes(), [{"id": "a", "draining": True, "boot": a.boot, "expires": 3.5}]
        )
        await a.depart()
        self.assertEqual(await b.nodes(), [])


class PresenceAcrossNodesTests(RedisCase):
    """Two nodes' parts of one user's presence, merged in Redis."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)

    async def nodes(self, url: str | None = None) -> tuple[Any, Any]:
        prefix = unique_prefix()
        a = self.redisBackend(url, node_id="a", prefix=prefix)
        b = self.redisBackend(url, node_id="b", prefix=prefix)
        await a.when_ready()
        await b.when_ready()
        await a.heartbeat({"id": "a"}, 10.0)
        await b.heartbeat({"id": "b"}, 10.0)
        return a, b

    def ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    async def test_online_once_and_offline_with_the_last_device(self) -> None:
        for url in (None, f"{shared(0).url},{shared(1).url}"):
            a, b = await self.nodes(url)
            t0 = self.ms()
            online = Presence("online", "", 1, t0)
            self.assertEqual(await a.merge_presence("bob", online), (OFFLINE, online))
            # bob's second device, on the other node: no user-level change
            self.clock.advance(1)
            before, after = await b.merge_presence("bob", Presence("online", "", 1, self.ms()))
            self.assertEqual((before, after), (online, Presence("online", "", 2, t0)))
            # the first device goes: still online, on b
            self.clock.advance(1)
            before, after = await a.merge_presence("bob", Presence("offline", "", 0, self.ms()))
            self.assertEqual(after, Presence("online", "", 1, t0))
            # the last one goes: offline, at that time
            self.clock.advance(1)
            t3 = self.ms()
            before, after = await b.merge_presence("bob", Presence("offline", "", 0, t3))
            self.assertEqual(after, Presence("offline", "", 0, t3))
            self.assertEqual(await a.presence(["bob"]), {"bob": after})

    async def test_the_latest_part_wins_the_status_and_the_best_state_wins(self) -> None:
        a, b = await self.nodes()
        await a.merge_presence("bob", Presence("busy", "on a", 1, self.ms()))
        self.clock.advance(1)
        _, after = await b.merge_presence("bob", Presence("busy", "on b", 1, self.ms()))
        self.assertEqual(after, Presence("busy", "on b", 2, self.ms()))
        self.clock.advance(1)
        _, after = await a.merge_presence("bob", Presence("away", "gone", 1, self.ms()))
        self.assertEqual((after.state, after.status, after.devices), ("busy", "on b", 2))

    async def test_a_dead_nodes_devices_do_not_count(self) -> None:
        a, b = await self.nodes()
        t0 = self.ms()
        await b.merge_presence("bob", Presence("online", "", 1, t0))
        # b stops beating; once its record lapses, only a's parts count
        self.clock.advance(5)
        await a.heartbeat({"id": "a"}, 10.0)
        self.clock.advance(5)
        t1 = self.ms()
        before, after = await a.merge_presence("bob", Presence("offline", "", 0, t1))
        self.assertEqual((before.state, after), ("online", Presence("offline", "", 0, t1)))

    async def test_a_sweep_removes_a_dead_nodes_parts_and_tells_the_changes(self) -> None:
        a, b = await self.nodes()
        t0 = self.ms()
        for user in ("bob", "carol", "dave"):
            await b.merge_presence(user, Presence("online", "", 1, t0))
        await a.merge_presence("dave", Presence("busy", "", 1, t0))
        # b alive: nothing to sweep
        self.assertEqual(await a.sweep_presence(10), {})
        self.clock.advance(5)
        await a.heartbeat({"id": "a"}, 10.0)
        self.clock.advance(5)
        t1 = self.ms()
        # b's record lapsed: two users a sweep (the limit), then none
        first = await a.sweep_presence(2)
        second = await a.sweep_presence(2)
        swept = {**first, **second}
        self.assertEqual((len(first), len(second)), (2, 1))
        gone = Presence("offline", "", 0, t1)
        self.assertEqual(swept["bob"], (Presence("online", "", 1, t0), gone))
        self.assertEqual(swept["carol"], (Presence("online", "", 1, t0), gone))
        # dave is still busy on a: a count and a state change
        self.assertEqual(swept["dave"][1], Presence("busy", "", 1, t1))
        self.assertEqual(await a.sweep_presence(2), {})
        self.assertEqual(await a.presence(["bob"]), {"bob": gone})

    async def test_a_node_started_again_does_not_count_its_previous_life(self) -> None:
        for url in (None, f"{shared(0).url},{shared(1).url}"):
            a, b = await self.nodes(url)
            t0 = self.ms()
            await b.merge_presence("bob", Presence("online", "", 1, t0))
            await b.locate("bob", "phone")
            # b is killed and started again under the same id, long before its
            # record would lapse: a new boot, which beats at once
            b2 = self.redisBackend(url, node_id="b", prefix=b._prefix)
            await b2.when_ready()
            self.assertNotEqual(b2.boot, b.boot)
            await b2.heartbeat({"id": "b"}, 10.0)
            self.assertEqual(await a.locations(["bob"]), {})  # the old boot's phone is gone
            self.clock.advance(1)
            t1 = self.ms()
            # its parts count for no merge, and the first sweep takes them away
            swept = await b2.sweep_presence(10)
            gone = Presence("offline", "", 0, t1)
            self.assertEqual(swept, {"bob": (Presence("online", "", 1, t0), gone)})
            self.assertEqual(await a.presence(["bob"]), {"bob": gone})
            self.assertEqual(await a.sweep_presence(10), {})
            # the sweep dropped the old boot's location: the device is nowhere else
            self.assertIsNone(await b2.locate("bob", "phone"))
            self.assertEqual(await a.locations(["bob"]), {"bob": {"phone": Location("b", b2.boot)}})

    async def test_locations_across_nodes(self) -> None:
        for url in (None, f"{shared(0).url},{shared(1).url}"):
            a, b = await self.nodes(url)
            here_a, here_b = Location("a", a.boot), Location("b", b.boot)
            self.assertIsNone(await a.locate("bob", "phone"))
            await a.locate("bob", "laptop")
            # the phone says hello on b: it was on a, which is to replace it
            self.assertEqual(await b.locate("bob", "phone"), here_a)
            self.assertEqual(
                await a.locations(["bob"]), {"bob": {"phone": here_b, "laptop": here_a}}
            )
            # a closing the phone it lost leaves b's location alone
            await a.unlocate("bob", "phone")
            self.assertEqual(
                await b.locations(["bob"]), {"bob": {"phone": here_b, "laptop": here_a}}
            )

    async def test_relocate_leaves_a_device_a_live_node_took(self) -> None:
        for url in (None, f"{shared(0).url},{shared(1).url}"):
            a, b = await self.nodes(url)
            await a.locate("bob", "phone")
            await a.locate("bob", "tablet")
            await b.locate("bob", "phone")  # a later hello on b
            # a's location of the tablet was swept; a puts back what is its own
            await a._user_shard("bob").call("HDEL", a._key("bob", "loc"), "tablet")
            on_a, on_b = Location("a", a.boot), Location("b", b.boot)
            self.assertEqual(await a.relocate("bob", ["phone", "tablet"]), {"phone": on_b})
            self.assertEqual(await a.locations(["bob"]), {"bob": {"phone": on_b, "tablet": on_a}})
            # once b is dead, what it held is a's again
            self.clock.advance(11)
            await a.heartbeat({"id": "a"}, 10.0)
            self.assertEqual(await a.relocate("bob", ["phone"]), {})
            self.assertEqual(await a.locations(["bob"]), {"bob": {"phone": on_a, "tablet": on_a}})

    async def test_a_sweep_drops_a_dead_nodes_locations(self) -> None:
        a, b = await self.nodes()
        await b.locate("bob", "phone")  # an invisible device: a location, no presence part
        await b.locate("carol", "phone")
        await b.merge_presence("carol", Presence("online", "", 1, self.ms()))
        await a.locate("carol", "laptop")
        self.clock.advance(5)
        await a.heartbeat({"id": "a"}, 10.0)
        self.clock.advance(5)
        # b lapsed: its locations no longer show, and a sweep removes them
        here_a = Location("a", a.boot)
        self.assertEqual(await a.locations(["bob", "carol"]), {"carol": {"laptop": here_a}})
        # carol's merge tells a change; bob, invisible, was offline and stays so
        swept = await a.sweep_presence(10)
        self.assertEqual(
            {u: after.devices for u, (_, after) in swept.items()}, {"carol": 0, "bob": 0}
        )
        self.assertEqual(swept["bob"][0], swept["bob"][1])
        self.assertEqual(swept["carol"][0].state, "online")
        self.assertEqual(await a.sweep_presence(10), {})
        for user in ("bob", "carol"):
            kept = await a._user_shard(user).call("HGETALL", a._key(user, "loc"))
            self.assertNotIn(b"b/" + b.boot.encode(), kept)
        reg = a.shards[0]
        self.assertEqual(await reg.call("SMEMBERS", a._parted()), [f"a/{a.boot}".encode()])

    async def test_a_record_of_an_older_release_is_read_and_replaced(self) -> None:

        a, _ = await self.nodes()
        old = Presence("busy", "x", 1, 5)
        key = a._key("bob", "pres")
        await a._user_shard("bob").call("SET", key, cbor2.dumps(["busy", "x", 1, 5]))
        self.assertEqual(await a.presence(["bob"]), {"bob": old})
        t = self.ms()
        before, after = await a.merge_presence("bob", Presence("online", "", 1, t))
        self.assertEqual((before, after), (OFFLINE, Presence("online", "", 1, t)))
        self.assertEqual(await a.presence(["bob"]), {"bob": after})
