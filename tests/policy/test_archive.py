"""The memory archive: per conversation and room, capped by count and age, paged by mid."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from o2obroker.backend.archive import (
    IArchive,
    MemoryArchive,
    conversation,
    room_thread,
)
from o2obroker.backend.interface import StoredMessage


def msg(n: int, ts: int, frm: str = "alice", to: str | None = "bob", room: str | None = None):
    fields: dict[str, Any] = {"mid": f"m{n}", "from": frm, "from_device": "p", "body": n, "ts": ts}
    if room is None:
        fields["to"] = to
    else:
        fields["room"] = room
    return StoredMessage(f"m{n}", ts, fields)


class ArchiveTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.archive = MemoryArchive(self.clock, max_messages=5, max_age=60)

    def page(self, thread: str, before: str | None = None, limit: int = 50) -> Any:
        messages, more = self.successResultOf(self.archive.page(thread, before, limit))
        return [m.mid for m in messages], more

    def test_provides_the_interface(self) -> None:
        verifyObject(IArchive, self.archive)

    def test_a_conversation_is_one_thread_from_both_sides(self) -> None:
        self.assertEqual(conversation("bob", "alice"), conversation("alice", "bob"))
        self.archive.add([msg(1, 1_000_000), msg(2, 1_000_001, "bob", "alice")])
        self.archive.add([msg(3, 1_000_002, room="r")])
        self.assertEqual(self.page(conversation("bob", "alice")), (["m2", "m1"], False))
        self.assertEqual(self.page(room_thread("r")), (["m3"], False))
        self.assertEqual(self.page(conversation("alice", "carol")), ([], False))

    def test_pages_back_by_before_and_limit(self) -> None:
        self.archive.add([msg(n, 1_000_000 + n) for n in range(1, 6)])
        thread = conversation("alice", "bob")
        self.assertEqual(self.page(thread, limit=2), (["m5", "m4"], True))
        self.assertEqual(self.page(thread, "m4", 2), (["m3", "m2"], True))
        self.assertEqual(self.page(thread, "m2", 2), (["m1"], False))
        self.assertEqual(self.page(thread, "m1", 2), ([], False))
        self.assertEqual(self.page(thread, "nope", 2), ([], False))

    def test_capped_by_count_per_thread(self) -> None:
        self.archive.add([msg(n, 1_000_000 + n) for n in range(1, 9)])
        self.archive.add([msg(20, 1_000_020, room="r")])
        thread = conversation("alice", "bob")
        self.assertEqual(self.page(thread), (["m8", "m7", "m6", "m5", "m4"], False))
        self.assertEqual(self.page(thread, "m5"), (["m4"], False))
        self.assertEqual(self.page(thread, "m2"), ([], False))  # trimmed away
        self.assertEqual(self.page(room_thread("r")), (["m20"], False))  # its own cap
        self.assertEqual(self.archive.stored, 6)

    def test_capped_by_age(self) -> None:
        self.archive.add([msg(1, 1_000_000), msg(2, 1_030_000)])
        self.clock.advance(45)  # now 1045 s: m1 (1000 s) is older than 60 s... not yet
        self.assertEqual(self.page(conversation("alice", "bob"))[0], ["m2", "m1"])
        self.clock.advance(30)  # 1075 s: m1 is 75 s old, m2 45 s
        self.assertEqual(self.page(conversation("alice", "bob"))[0], ["m2"])
        self.clock.advance(30)
        self.assertEqual(self.page(conversation("alice", "bob")), ([], False))
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
        self.assertEqual(self.page(conversation("carol", "dave")), (["m3"], False))
        self.assertEqual(self.archive.stored, 2)

    def test_memory_is_bounded_by_the_caps_not_the_traffic(self) -> None:
        for n in range(1, 1001):
            self.archive.add([msg(n, 1_000_000 + n)])
        self.assertEqual(self.archive.stored, 5)
        self.assertEqual(len(self.archive.threads), 1)

    def test_a_mid_is_archived_once(self) -> None:
        self.archive.add([msg(1, 1_000_000)])
        self.archive.add([msg(1, 1_000_000)])
        self.assertEqual(self.page(conversation("alice", "bob")), (["m1"], False))
