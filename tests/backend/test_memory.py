"""The in-memory backend: inbox seqs, cursors, trimming, dedupe, rooms."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from o2obroker.backend import IBackend, MemoryBackend, StoredMessage
from o2obroker.backend.interface import Receipt


def msg(i: int, ts: int = 0) -> StoredMessage:
    return StoredMessage(f"m{i}", ts, {"t": "msg", "mid": f"m{i}", "body": i})


class MemoryBackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.b = MemoryBackend(self.clock, inbox_cap=5, inbox_ttl=100, device_ttl=50)

    def result(self, d: Any) -> Any:
        return self.successResultOf(d)

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IBackend, self.b))

    def test_seqs_are_consecutive_per_user(self) -> None:
        self.assertEqual(self.result(self.b.append("bob", [msg(1), msg(2)])), [1, 2])
        self.assertEqual(self.result(self.b.append("bob", [msg(3)])), [3])
        self.assertEqual(self.result(self.b.append("eve", [msg(4)])), [1])

    def test_read_after(self) -> None:
        self.b.append("bob", [msg(i) for i in range(4)])
        self.assertEqual([s for s, _ in self.result(self.b.read("bob", 2, 10))], [3, 4])
        self.assertEqual([s for s, _ in self.result(self.b.read("bob", 0, 2))], [1, 2])
        self.assertEqual(self.result(self.b.read("bob", 4, 10)), [])
        self.assertEqual(self.result(self.b.read("nobody", 0, 10)), [])

    def test_stored_counts_what_inboxes_hold(self) -> None:
        self.b.append("bob", [msg(i) for i in range(8)])  # the cap of 5 drops 3
        self.b.append("eve", [msg(1)])
        self.assertEqual(self.b.stored, 6)
        self.b.ack("bob", "phone", 6)  # acknowledged by its only device: 4, 5, 6 leave
        self.assertEqual(self.b.stored, 3)
        self.clock.advance(101)  # past the inbox's ttl
        self.b.read("bob", 0, 10)
        self.b.read("eve", 0, 10)
        self.assertEqual(self.b.stored, 0)

    def test_cap_drops_oldest(self) -> None:
        self.b.append("bob", [msg(i) for i in range(8)])
        state = self.result(self.b.inbox_state("bob"))
        self.assertEqual((state.last, state.first), (8, 4))
        self.assertEqual([s for s, _ in self.result(self.b.read("bob", 0, 10))], [4, 5, 6, 7, 8])

    def test_expiry(self) -> None:
        self.b.append("bob", [msg(1, ts=0)])
        self.clock.advance(50)
        self.b.append("bob", [msg(2, ts=50_000)])
        self.clock.advance(60)
        self.assertEqual([s for s, _ in self.result(self.b.read("bob", 0, 10))], [2])
        self.assertEqual(self.result(self.b.inbox_state("bob")).first, 2)

    def test_cursor_of_new_device_is_highest_of_others(self) -> None:
        self.b.append("bob", [msg(i) for i in range(4)])
        self.b.ack("bob", "phone", 3)
        self.b.ack("bob", "web", 1)
        self.assertEqual(self.result(self.b.cursor("bob", "tablet")), 3)
        self.assertEqual(self.result(self.b.cursor("bob", "web")), 1)

    def test_ack_clamps_and_never_goes_back(self) -> None:
        self.b.append("bob", [msg(1), msg(2)])
        self.assertEqual(self.result(self.b.ack("bob", "phone", 99)), 2)
        self.assertEqual(self.result(self.b.ack("bob", "phone", 1)), 2)

    def test_acked_by_every_recent_device_leaves(self) -> None:
        self.b.append("bob", [msg(i) for i in range(4)])
        self.b.ack("bob", "web", 0)  # devices register their cursor when they attach
        self.b.ack("bob", "phone", 3)
        self.assertEqual(self.result(self.b.inbox_state("bob")).first, 1)
        self.b.ack("bob", "web", 2)
        self.assertEqual(self.result(self.b.inbox_state("bob")).first, 3)
        # a device not seen for device_ttl no longer holds messages back
        self.clock.advance(60)
        self.b.ack("bob", "phone", 4)
        self.assertEqual(self.result(self.b.inbox_state("bob")).first, 5)

    def test_claim_dedupes_until_ttl(self) -> None:
        b = MemoryBackend(self.clock, dedupe_ttl=10)
        r1 = Receipt("m1", 1, None)
        self.assertEqual(self.result(b.claim("alice", 1, [("c-1", "m1")])), [None])
        self.assertEqual(self.result(b.claim("alice", 2, [("c-1", "m2")])), [r1])
        b.settle("alice", {"c-1": "delivered"})
        [kept] = self.result(b.claim("alice", 3, [("c-1", "m3")]))
        self.assertEqual(kept, Receipt("m1", 1, "delivered"))
        self.assertEqual(self.result(b.claim("bob", 1, [("c-1", "m1")])), [None])
        self.clock.advance(11)
        self.assertEqual(self.result(b.claim("alice", 4, [("c-1", "m4")])), [None])

    def test_claim_cap(self) -> None:
        b = MemoryBackend(self.clock, dedupe_cap=3)
        for i in range(5):
            b.claim("alice", 1, [(f"c-{i}", f"m{i}")])
        self.assertEqual(len(b._sent["alice"].ids), 3)
        # the oldest went first
        self.assertEqual(self.result(b.claim("alice", 1, [("c-0", "x")])), [None])

    def test_rooms(self) -> None:
        self.assertEqual(self.result(self.b.join("r", "a")), 1)
        self.assertEqual(self.result(self.b.join("r", "b")), 2)
        self.assertEqual(self.result(self.b.join("r", "b")), 2)
        self.assertEqual(self.result(self.b.members("r")), {"a", "b"})
        self.assertEqual(self.result(self.b.leave("r", "a")), 1)
        self.assertEqual(self.result(self.b.leave("r", "b")), 0)
        self.assertEqual(self.result(self.b.members("r")), frozenset())
