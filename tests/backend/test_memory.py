"""The in-memory backend: the contract suite, also with answers a turn late, and its counter."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from o2obroker.backend import MemoryBackend
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
