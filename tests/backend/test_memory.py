"""The in-memory backend: the contract suite, also with answers a turn late, and its counter."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from o2obroker.backend import MemoryBackend
from o2obroker.backend.interface import StoreFull
from tests.backend.contract import BackendContract, LaterBackend, msg


class MemoryContractTests(BackendContract, TestCase):
    def makeBackend(self, **limits: Any) -> MemoryBackend:
        return MemoryBackend(self.clock, **limits)


class LaterContractTests(BackendContract, TestCase):
    """Every answer a reactor turn late: the suite must not rely on synchronous firing."""

    def makeBackend(self, **limits: Any) -> LaterBackend:
        return LaterBackend(MemoryBackend(self.clock, **limits), reactor)

    def test_answers_come_a_turn_later(self) -> None:
        d = self.b.append("bob", [msg(1)])
        self.assertNoResult(d)
        return d.addCallback(self.assertEqual, [1])


class MemoryCounterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.b = MemoryBackend(self.clock, inbox_cap=5, inbox_ttl=100, device_ttl=50)

    def test_stored_counts_what_inboxes_hold(self) -> None:
        self.b.append("bob", [msg(i) for i in range(8)])  # the cap of 5 drops 3
        self.b.append_many({"eve": [msg(1)]})
        self.assertEqual(self.b.stored, 6)
        self.b.ack("bob", "phone", 6)  # acknowledged by its only device: 4, 5, 6 leave
        self.assertEqual(self.b.stored, 3)
        self.clock.advance(101)  # past the inbox's ttl
        self.b.read("bob", 0, 10)
        self.b.read("eve", 0, 10)
        self.assertEqual(self.b.stored, 0)

    def test_claim_cap_bounds_memory(self) -> None:
        b = MemoryBackend(self.clock, dedupe_cap=3)
        for i in range(5):
            b.claim("alice", 1, [(f"c-{i}", f"m{i}")])
        self.assertEqual(len(b._sent["alice"].ids), 3)


class MemoryStoreTests(SynchronousTestCase):
    """Cursors set back by a resume, and the stored-bytes caps of this backend."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.b = MemoryBackend(self.clock, inbox_cap=5, inbox_ttl=100, device_ttl=50)

    def result(self, d: Any) -> Any:
        return self.successResultOf(d)

    def test_set_cursor_moves_back_and_keeps_what_is_kept(self) -> None:
        self.b.append("bob", [msg(i) for i in range(3)])
        self.b.ack("bob", "web", 0)  # another device has acknowledged nothing
        self.assertEqual(self.result(self.b.ack("bob", "phone", 3)), 3)
        self.assertEqual(self.result(self.b.set_cursor("bob", "phone", 1)), 1)
        self.assertEqual(self.result(self.b.cursor("bob", "phone")), 1)
        self.assertEqual([s for s, _ in self.result(self.b.read("bob", 1, 10))], [2, 3])
        # ack never moves back; set_cursor is clamped to the last seq
        self.assertEqual(self.result(self.b.ack("bob", "phone", 0)), 1)
        self.assertEqual(self.result(self.b.set_cursor("bob", "phone", 99)), 3)
        self.assertEqual(self.result(self.b.set_cursor("bob", "phone", -5)), 0)

    def test_set_cursor_forward_trims_like_ack(self) -> None:
        self.b.append("bob", [msg(i) for i in range(3)])
        self.assertEqual(self.result(self.b.set_cursor("bob", "phone", 2)), 2)
        self.assertEqual(self.result(self.b.inbox_state("bob")).first, 3)

    def test_set_cursor_back_past_the_last_trims_nothing(self) -> None:
        # the data-loss case: a resume above the last seq must not act as an ack
        self.b.append("bob", [msg(i) for i in range(3)])
        self.assertEqual(self.result(self.b.set_cursor("bob", "phone", 0)), 0)
        self.assertEqual(self.result(self.b.inbox_state("bob")).first, 1)
        self.assertEqual(len(self.result(self.b.read("bob", 0, 10))), 3)

    def test_stored_bytes_follow_what_inboxes_hold(self) -> None:
        self.b.append("bob", [msg(i, size=10) for i in range(8)])  # the cap of 5 drops 3
        self.b.append("eve", [msg(1, size=7)])
        self.assertEqual(self.b.stored_bytes, 57)
        self.b.ack("bob", "phone", 6)  # 4, 5, 6 leave
        self.assertEqual(self.b.stored_bytes, 27)
        self.clock.advance(101)
        self.b.read("bob", 0, 10)
        self.b.read("eve", 0, 10)
        self.assertEqual(self.b.stored_bytes, 0)

    def test_per_user_byte_cap_refuses_that_user_only(self) -> None:
        b = MemoryBackend(self.clock, max_user_bytes=100)
        self.result(b.append("bob", [msg(1, size=60)]))
        f = self.failureResultOf(
            b.append_many({"bob": [msg(2, size=30), msg(3, size=30)], "eve": [msg(4, size=90)]}),
            StoreFull,
        )
        self.assertEqual(f.value.refused, {"bob"})
        self.assertEqual(f.value.stored, {"eve": [1]})
        # none of bob's is stored, eve's is
        self.assertEqual(self.result(b.inbox_state("bob")).last, 1)
        self.assertEqual(b.stored_bytes, 150)
        self.assertEqual(b.refused, 2)
        # exactly up to the cap fits
        self.assertEqual(self.result(b.append("bob", [msg(5, size=40)])), [2])

    def test_total_byte_cap(self) -> None:
        b = MemoryBackend(self.clock, max_bytes=100)
        for i in range(5):
            self.result(b.append(f"u{i}", [msg(i, size=20)]))
        f = self.failureResultOf(b.append("u9", [msg(9, size=1)]), StoreFull)
        self.assertEqual(f.value.refused, {"u9"})
        # acknowledged messages make room
        b.ack("u0", "phone", 1)
        self.assertEqual(self.result(b.append("u9", [msg(9, size=20)])), [1])

    def test_expired_messages_make_room_before_a_refusal(self) -> None:
        b = MemoryBackend(self.clock, max_user_bytes=100, inbox_ttl=10)
        self.result(b.append("bob", [msg(1, ts=0, size=100)]))
        self.clock.advance(11)
        self.assertEqual(self.result(b.append("bob", [msg(2, ts=11_000, size=100)])), [2])
        self.assertEqual(b.stored_bytes, 100)
