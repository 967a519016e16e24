"""The IBackend contract: one suite that every backend passes with the same results.

Mix ``BackendContract`` into a trial ``TestCase`` and give it ``makeBackend(**limits)``
returning a backend whose timestamps come from ``self.clock`` (a task.Clock the
suite advances). Limits are passed by the names MemoryBackend takes. Every
call is awaited, so a backend whose Deferreds fire later (a network, or
LaterBackend below) runs the same tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.interface import Method
from zope.interface.verify import verifyObject

from o2obroker.backend import IBackend, StoredMessage
from o2obroker.backend.interface import OFFLINE, Location, Presence, Receipt, Resynced


def msg(i: int, ts: int = 0, size: int = 0) -> StoredMessage:
    # the fields a broker stores: they hold the message's own mid and ts
    return StoredMessage(f"m{i}", ts, {"mid": f"m{i}", "body": i, "ts": ts}, size)


def seqs(entries: list[tuple[int, StoredMessage]]) -> list[int]:
    return [s for s, _ in entries]


class BackendContract:
    """Mixed into a trial TestCase; ``self.b`` is a backend with small limits."""

    clock: Clock
    b: Any
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsInstance: Any
    assertNotEqual: Any

    def makeBackend(self, **limits: Any) -> Any:
        raise NotImplementedError

    async def backendReady(self, backend: Any) -> None:
        """Wait until a new backend takes calls (a networked one connects first)."""

    async def fresh(self, **limits: Any) -> Any:
        backend = self.makeBackend(**limits)
        await self.backendReady(backend)
        return backend

    async def setUp(self) -> None:
        self.clock = Clock()
        self.b = await self.fresh(inbox_cap=5, inbox_ttl=100, device_ttl=50)

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    async def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IBackend, self.b))

    async def test_seqs_are_consecutive_per_user(self) -> None:
        self.assertEqual(await self.b.append("bob", [msg(1), msg(2)]), [1, 2])
        self.assertEqual(await self.b.append("bob", [msg(3)]), [3])
        self.assertEqual(await self.b.append("eve", [msg(4)]), [1])

    async def test_append_many(self) -> None:
        await self.b.append("bob", [msg(0)])
        got = await self.b.append_many({"bob": [msg(1), msg(2)], "eve": [msg(3)], "ann": []})
        self.assertEqual(got, {"bob": [2, 3], "eve": [1], "ann": []})
        self.assertEqual(seqs(await self.b.read("bob", 0, 10)), [1, 2, 3])
        [(seq, kept)] = await self.b.read("eve", 0, 10)
        self.assertEqual((seq, kept), (1, msg(3)))
        self.assertEqual(await self.b.append_many({}), {})

    async def test_messages_come_back_equal(self) -> None:
        # bytes, nesting, unicode and big ints survive the store
        body = {"raw": b"\x00\xff\x80", "n": [1, 2.5, None, True], "t": "h\u00e9 \U0001f600"}
        m = StoredMessage("mid-1", self.now_ms(), {"t": "msg", "mid": "mid-1", "body": body})
        await self.b.append("bob", [m])
        [(_, kept)] = await self.b.read("bob", 0, 1)
        self.assertEqual(kept, m)
        self.assertEqual(kept.fields["body"]["raw"], b"\x00\xff\x80")

    async def test_read_after(self) -> None:
        await self.b.append("bob", [msg(i) for i in range(4)])
        self.assertEqual(seqs(await self.b.read("bob", 2, 10)), [3, 4])
        self.assertEqual(seqs(await self.b.read("bob", 0, 2)), [1, 2])
        self.assertEqual(seqs(await self.b.read("bob", -5, 1)), [1])
        self.assertEqual(await self.b.read("bob", 4, 10), [])
        self.assertEqual(await self.b.read("bob", 0, 0), [])
        self.assertEqual(await self.b.read("nobody", 0, 10), [])

    async def test_inbox_state(self) -> None:
        empty = await self.b.inbox_state("bob")
        self.assertEqual((empty.last, empty.first), (0, 1))
        self.assertIsInstance(empty.epoch, str)
        await self.b.append("bob", [msg(1), msg(2)])
        state = await self.b.inbox_state("bob")
        self.assertEqual((state.last, state.first), (2, 1))
        # the epoch holds while the store does
        self.assertEqual(state.epoch, empty.epoch)

    async def test_cap_drops_oldest(self) -> None:
        await self.b.append("bob", [msg(i) for i in range(8)])
        state = await self.b.inbox_state("bob")
        self.assertEqual((state.last, state.first), (8, 4))
        self.assertEqual(seqs(await self.b.read("bob", 0, 10)), [4, 5, 6, 7, 8])

    async def test_cap_within_one_batch_of_many(self) -> None:
        got = await self.b.append_many({"bob": [msg(i) for i in range(7)], "eve": [msg(9)]})
        self.assertEqual(got["bob"], list(range(1, 8)))
        self.assertEqual(seqs(await self.b.read("bob", 0, 10)), [3, 4, 5, 6, 7])

    async def test_expiry(self) -> None:
        t0 = self.now_ms()
        await self.b.append("bob", [msg(1, ts=t0)])
        self.clock.advance(50)
        await self.b.append("bob", [msg(2, ts=t0 + 50_000)])
        self.clock.advance(60)
        self.assertEqual(seqs(await self.b.read("bob", 0, 10)), [2])
        self.assertEqual((await self.b.inbox_state("bob")).first, 2)
        self.clock.advance(50)
        self.assertEqual(await self.b.read("bob", 0, 10), [])
        state = await self.b.inbox_state("bob")
        # the seq goes on: last is kept though every message expired
        self.assertEqual((state.last, state.first), (2, 3))
        self.assertEqual(await self.b.append("bob", [msg(3, ts=self.now_ms())]), [3])

    async def test_expiry_of_a_long_run(self) -> None:
        # more expired messages than one look at the front takes
        b = await self.fresh(inbox_cap=500, inbox_ttl=100)
        t0 = self.now_ms()
        await b.append("bob", [msg(i, ts=t0) for i in range(300)])
        self.clock.advance(101)
        await b.append("bob", [msg(300, ts=self.now_ms())])
        self.assertEqual(seqs(await b.read("bob", 0, 10)), [301])

    async def test_cursor_of_new_device_is_highest_of_others(self) -> None:
        await self.b.append("bob", [msg(i) for i in range(4)])
        self.assertEqual(await self.b.cursor("bob", "tablet"), 0)
        await self.b.ack("bob", "phone", 3)
        await self.b.ack("bob", "web", 1)
        self.assertEqual(await self.b.cursor("bob", "tablet"), 3)
        self.assertEqual(await self.b.cursor("bob", "web"), 1)
        self.assertEqual(await self.b.cursor("nobody", "web"), 0)

    async def test_ack_clamps_and_never_goes_back(self) -> None:
        await self.b.append("bob", [msg(1), msg(2)])
        self.assertEqual(await self.b.ack("bob", "phone", 99), 2)
        self.assertEqual(await self.b.ack("bob", "phone", 1), 2)
        self.assertEqual(await self.b.ack("nobody", "phone", 5), 0)

    async def test_set_cursor_goes_back_too(self) -> None:
        await self.b.append("bob", [msg(i) for i in range(4)])
        self.assertEqual(await self.b.set_cursor("bob", "phone", 3), 3)
        self.assertEqual(await self.b.set_cursor("bob", "phone", 1), 1)
        self.assertEqual(await self.b.cursor("bob", "phone"), 1)
        self.assertEqual(await self.b.set_cursor("bob", "phone", 99), 4)
        self.assertEqual(await self.b.set_cursor("bob", "phone", -3), 0)
        self.assertEqual(await self.b.set_cursor("nobody", "phone", 7), 0)

    async def test_set_cursor_forward_trims_like_ack(self) -> None:
        await self.b.append("bob", [msg(i) for i in range(4)])
        await self.b.set_cursor("bob", "phone", 2)
        self.assertEqual((await self.b.inbox_state("bob")).first, 3)

    async def test_acked_by_every_recent_device_leaves(self) -> None:
        await self.b.append("bob", [msg(i) for i in range(4)])
        await self.b.ack("bob", "web", 0)  # devices register their cursor when they attach
        await self.b.ack("bob", "phone", 3)
        self.assertEqual((await self.b.inbox_state("bob")).first, 1)
        await self.b.ack("bob", "web", 2)
        self.assertEqual((await self.b.inbox_state("bob")).first, 3)
        self.assertEqual(seqs(await self.b.read("bob", 0, 10)), [3, 4])
        # a device not seen for device_ttl no longer holds messages back
        self.clock.advance(60)
        await self.b.ack("bob", "phone", 4)
        self.assertEqual((await self.b.inbox_state("bob")).first, 5)
        # and its cursor is gone with it: a new device starts from the others'
        self.assertEqual(await self.b.cursor("bob", "web"), 4)

    async def test_claim_dedupes_until_ttl(self) -> None:
        b = await self.fresh(dedupe_ttl=10)
        r1 = Receipt("m1", 1, None)
        self.assertEqual(await b.claim("alice", 1, [("c-1", "m1")]), [None])
        self.assertEqual(await b.claim("alice", 2, [("c-1", "m2")]), [r1])
        await b.settle("alice", {"c-1": "delivered"})
        [kept] = await b.claim("alice", 3, [("c-1", "m3")])
        self.assertEqual(kept, Receipt("m1", 1, "delivered"))
        self.assertEqual(await b.claim("bob", 1, [("c-1", "m1")]), [None])
        self.clock.advance(11)
        self.assertEqual(await b.claim("alice", 4, [("c-1", "m4")]), [None])
        self.assertEqual(await b.claim("alice", 5, [("c-1", "m5")]), [Receipt("m4", 4, None)])

    async def test_claim_a_batch(self) -> None:
        ts = self.now_ms()
        got = await self.b.claim("alice", ts, [("a", "m1"), ("b", "m2"), ("a", "m3")])
        self.assertEqual(got, [None, None, Receipt("m1", ts, None)])
        await self.b.settle("alice", {"a": "stored", "b": "delivered", "never": "stored"})
        got = await self.b.claim("alice", ts + 5, [("b", "x"), ("never", "m9"), ("a", "y")])
        self.assertEqual(got, [Receipt("m2", ts, "delivered"), None, Receipt("m1", ts, "stored")])
        # ids with odd bytes in them are ids like any other
        weird = "c-\n-\u00e9-1"
        self.assertEqual(await self.b.claim("alice", ts, [(weird, "mid\nx")]), [None])
        self.assertEqual(
            await self.b.claim("alice", ts, [(weird, "z")]), [Receipt("mid\nx", ts, None)]
        )

    async def test_claim_cap(self) -> None:
        b = await self.fresh(dedupe_cap=3)
        for i in range(5):
            await b.claim("alice", 1, [(f"c-{i}", f"m{i}")])
        # the oldest went first; the newest three are kept
        self.assertEqual(await b.claim("alice", 1, [("c-4", "x")]), [Receipt("m4", 1, None)])
        self.assertEqual(await b.claim("alice", 1, [("c-0", "x")]), [None])

    async def test_settle_after_expiry_is_dropped(self) -> None:
        b = await self.fresh(dedupe_ttl=10)
        await b.claim("alice", 1, [("c-1", "m1")])
        self.clock.advance(11)
        await b.settle("alice", {"c-1": "delivered"})
        self.assertEqual(await b.claim("alice", 2, [("c-1", "m2")]), [None])
        self.assertEqual(await b.claim("alice", 2, [("c-1", "m3")]), [Receipt("m2", 2, None)])

    async def test_rooms(self) -> None:
        self.assertEqual(await self.b.join("r", "a"), 1)
        self.assertEqual(await self.b.join("r", "b"), 2)
        self.assertEqual(await self.b.join("r", "b"), 2)
        self.assertEqual(await self.b.members("r"), {"a", "b"})
        self.assertEqual(await self.b.leave("r", "a"), 1)
        self.assertEqual(await self.b.leave("r", "a"), 1)
        self.assertEqual(await self.b.leave("r", "b"), 0)
        self.assertEqual(await self.b.members("r"), frozenset())
        self.assertEqual(await self.b.leave("nowhere", "a"), 0)
        self.assertIsInstance(await self.b.members("nowhere"), frozenset)

    async def test_presence(self) -> None:
        busy = Presence("busy", "in a meeting \u00e9", 2, self.now_ms())
        await self.b.set_presence("bob", busy)
        got = await self.b.presence(["bob", "eve"])
        self.assertEqual(got, {"bob": busy, "eve": OFFLINE})
        await self.b.set_presence("bob", Presence("offline", "", 0, self.now_ms()))
        self.assertEqual(await self.b.presence(["bob"]), {"bob": OFFLINE})
        # invisible devices: offline to watchers, but still a record
        invisible = Presence("offline", "", 1, 5)
        await self.b.set_presence("eve", invisible)
        self.assertEqual(await self.b.presence(["eve"]), {"eve": invisible})
        self.assertEqual(await self.b.presence([]), {})

    async def test_merge_presence_returns_the_user_level_change(self) -> None:
        b = self.b
        t1 = self.now_ms()
        before, after = await b.merge_presence("bob", Presence("busy", "meeting", 2, t1))
        self.assertEqual((before, after), (OFFLINE, Presence("busy", "meeting", 2, t1)))
        self.assertEqual(await b.presence(["bob"]), {"bob": after})
        # one device more: the count moves, the time does not (no frame is due)
        self.clock.advance(1)
        before, again = await b.merge_presence("bob", Presence("busy", "meeting", 3, self.now_ms()))
        self.assertEqual((before, again), (after, Presence("busy", "meeting", 3, t1)))
        # every device gone: offline, kept with its time for watches with since
        self.clock.advance(1)
        t3 = self.now_ms()
        before, gone = await b.merge_presence("bob", Presence("offline", "", 0, t3))
        self.assertEqual((before, gone), (again, Presence("offline", "", 0, t3)))
        self.assertEqual(await b.presence(["bob"]), {"bob": gone})

    async def test_merge_presence_of_invisible_devices_is_offline(self) -> None:
        before, after = await self.b.merge_presence("eve", Presence("offline", "", 0, 7))
        # nothing was known and nothing changed: no time, no record
        self.assertEqual((before, after), (OFFLINE, OFFLINE))
        self.assertEqual(await self.b.presence(["eve"]), {"eve": OFFLINE})

    async def test_offline_records_are_kept_for_a_while(self) -> None:
        b = await self.fresh(offline_ttl=100)
        self.clock.advance(50)
        went = Presence("offline", "", 0, self.now_ms())
        await b.set_presence("bob", went)
        # kept with its time: a watch with since learns that bob went offline
        self.assertEqual(await b.presence(["bob"]), {"bob": went})
        self.clock.advance(99)
        self.assertEqual(await b.presence(["bob"]), {"bob": went})
        self.clock.advance(1)
        self.assertEqual(await b.presence(["bob"]), {"bob": OFFLINE})
        # an offline report without a time is forgotten at once
        await b.set_presence("eve", Presence("busy", "", 1, self.now_ms()))
        await b.set_presence("eve", OFFLINE)
        self.assertEqual(await b.presence(["eve"]), {"eve": OFFLINE})

    async def test_watch_lists(self) -> None:
        self.assertTrue(await self.b.watch("ann", ["bob", "eve"], 3))
        self.assertTrue(await self.b.watch("cat", ["bob"], 3))
        self.assertEqual(await self.b.watching("ann"), {"bob", "eve"})
        self.assertEqual(
            await self.b.watchers(["bob", "eve", "zed"]),
            {"bob": {"ann", "cat"}, "eve": {"ann"}},
        )
        await self.b.unwatch("ann", ["bob", "zed"])
        self.assertEqual(await self.b.watching("ann"), {"eve"})
        self.assertEqual(await self.b.watchers(["bob"]), {"bob": {"cat"}})
        await self.b.unwatch("ann", ["eve"])
        self.assertEqual(await self.b.watching("ann"), frozenset())
        self.assertEqual(await self.b.watchers(["eve"]), {})

    async def test_watch_cap(self) -> None:
        self.assertTrue(await self.b.watch("ann", ["a", "b"], 3))
        # users already watched, and repeats, do not count twice
        self.assertTrue(await self.b.watch("ann", ["a", "b", "c", "c"], 3))
        self.assertFalse(await self.b.watch("ann", ["d"], 3))
        self.assertEqual(await self.b.watching("ann"), {"a", "b", "c"})
        self.assertEqual(await self.b.watchers(["d"]), {})

    async def test_registry_heartbeat_and_ttl(self) -> None:
        self.assertEqual(await self.b.nodes(), [])
        record = {"id": self.b.node_id, "addresses": {"tcp": "h:1"}, "occupancy": 12.5}
        await self.b.heartbeat(record, 4.0)
        # kept with this start's boot id and when it lapses (the node's clock)
        kept = {**record, "boot": self.b.boot, "expires": 4.0}
        self.assertEqual(await self.b.nodes(), [kept])
        self.clock.advance(3.9)
        self.assertEqual(await self.b.nodes(), [kept])
        # beaten again: alive another ttl from now, with the new record
        record = {**record, "occupancy": 50.0}
        await self.b.heartbeat(record, 4.0)
        self.clock.advance(3.9)
        self.assertEqual(await self.b.nodes(), [{**kept, "occupancy": 50.0, "expires": 7.9}])
        self.clock.advance(0.2)  # past the ttl of the last beat: dead
        self.assertEqual(await self.b.nodes(), [])

    async def test_a_beat_says_whether_the_record_was_alive(self) -> None:
        record = {"id": self.b.node_id}
        self.assertFalse(await self.b.heartbeat(record, 4.0))  # new
        self.clock.advance(3.9)
        self.assertTrue(await self.b.heartbeat(record, 4.0))
        self.clock.advance(4.0)  # lapsed: peers may have swept this node
        self.assertFalse(await self.b.heartbeat(record, 4.0))
        self.assertTrue(await self.b.heartbeat(record, 4.0))

    async def test_relocate(self) -> None:
        b = self.b
        here = Location(b.node_id, b.boot)
        await b.heartbeat({"id": b.node_id}, 60.0)
        self.assertEqual(await b.relocate("bob", []), {})
        self.assertEqual(await b.relocate("bob", ["phone", "laptop"]), {})
        self.assertEqual(await b.locations(["bob"]), {"bob": {"phone": here, "laptop": here}})
        self.assertEqual(await b.relocate("bob", ["phone"]), {})  # here already

    async def test_resync_merges_relocates_and_tells_the_inbox_top(self) -> None:
        b = self.b
        here = Location(b.node_id, b.boot)
        await b.heartbeat({"id": b.node_id}, 60.0)
        await b.append("bob", [msg(1), msg(2)])
        self.clock.advance(5)
        t1 = self.now_ms()
        await b.merge_presence("eve", Presence("away", "", 1, t1))
        # calls of one turn (a networked backend sends them together)
        bob, eve, zed = await gatherResults(
            [
                b.resync("bob", Presence("busy", "call", 2, t1), ["phone", "laptop"]),
                # its devices went invisible meanwhile
                b.resync("eve", Presence("offline", "", 0, t1 + 1), ["phone"]),
                b.resync("zed", Presence("online", "", 1, t1), []),
            ]
        )
        busy = Presence("busy", "call", 2, t1)
        self.assertEqual(bob, Resynced((OFFLINE, busy), {}, 2))
        self.assertEqual(
            eve, Resynced((Presence("away", "", 1, t1), Presence("offline", "", 0, t1 + 1)), {}, 0)
        )
        self.assertEqual(zed.last, 0)
        self.assertEqual(await b.presence(["bob"]), {"bob": busy})
        self.assertEqual(
            await b.locations(["bob", "eve"]),
            {"bob": {"phone": here, "laptop": here}, "eve": {"phone": here}},
        )
        # again: nothing new, everything where it was
        (again,) = await gatherResults([b.resync("bob", busy, ["phone"])])
        self.assertEqual(again, Resynced((busy, busy), {}, 2))

    async def test_registry_depart(self) -> None:
        await self.b.heartbeat({"id": self.b.node_id}, 60.0)
        await self.b.depart()
        self.assertEqual(await self.b.nodes(), [])

    async def test_locations(self) -> None:
        b = self.b
        here = Location(b.node_id, b.boot)
        await b.heartbeat({"id": b.node_id}, 60.0)
        self.assertEqual(await b.locations(["bob"]), {})
        # a device new here, or back here, was nowhere else
        self.assertIsNone(await b.locate("bob", "phone"))
        self.assertIsNone(await b.locate("bob", "phone"))
        self.assertIsNone(await b.locate("bob", "laptop"))
        self.assertIsNone(await b.locate("eve", "phone"))
        self.assertEqual(
            await b.locations(["bob", "eve", "zed"]),
            {"bob": {"phone": here, "laptop": here}, "eve": {"phone": here}},
        )
        await b.unlocate("bob", "phone")
        await b.unlocate("bob", "tablet")  # never here: nothing happens
        self.assertEqual(await b.locations(["bob"]), {"bob": {"laptop": here}})
        await b.unlocate("bob", "laptop")
        self.assertEqual(await b.locations(["bob", "eve"]), {"eve": {"phone": here}})
        self.assertEqual(await b.sweep_presence(10), {})  # this node is alive


@implementer(IBackend)
class LaterBackend:
    """Wraps a backend so that every call runs, and its Deferred fires, a
    reactor turn later: callers that rely on synchronous firing break on it."""

    def __init__(self, backend: Any, reactor: IReactorTime) -> None:
        self._backend = backend
        self._reactor = reactor
        self.node_id = backend.node_id
        self.boot = backend.boot

    def _later(self, name: str, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()

        def run() -> None:
            getattr(self._backend, name)(*args).chainDeferred(d)

        self._reactor.callLater(0, run)
        return d


def _deferring(name: str) -> Any:
    def method(self: LaterBackend, *args: Any) -> Deferred[Any]:
        return self._later(name, *args)

    method.__name__ = name
    return method


for _name, _spec in IBackend.namesAndDescriptions():
    if isinstance(_spec, Method):
        setattr(LaterBackend, _name, _deferring(_name))
