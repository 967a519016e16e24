"""The message archive: what was delivered, per conversation and per room, for history.

Independent of inboxes (which empty as devices acknowledge), the archive keeps
the last messages of every conversation (a pair of users) and every room,
capped by count and age, and pages back through them by ``before`` (a mid) and
``limit``, newest first (PROTOCOL.md section 4, History). The memory archive is
the embedded one; a networked backend implements the same interface.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from o2obroker.backend.interface import StoredMessage


def conversation(a: str, b: str) -> str:
    """The archive key of the conversation between users ``a`` and ``b``
    (user ids have no '/', so the pair is unambiguous)."""
    return f"c/{a}/{b}" if a <= b else f"c/{b}/{a}"


def room_thread(room: str) -> str:
    """The archive key of a room."""
    return f"r/{room}"


def thread_of(fields: dict[str, Any]) -> str:
    """The archive key a stored message belongs to."""
    room = fields.get("room")
    if room is not None:
        return room_thread(room)
    return conversation(fields["from"], fields["to"])


class IArchive(Interface):
    """Delivered messages by conversation and room. Every method returns a Deferred."""

    def add(messages: list[StoredMessage]) -> Any:
        """Archive delivered messages, each under its conversation or room, in
        order. A mid already archived is not added again."""

    def page(thread: str, before: str | None, limit: int) -> Any:
        """Fire with (messages, more): up to ``limit`` messages of ``thread``
        older than the one with mid ``before`` (or the newest, without it),
        newest first; ``more`` when older ones are kept. A ``before`` that is
        not (or no longer) archived gives an empty page."""


class _Thread:
    __slots__ = ("entries", "first", "index")

    def __init__(self) -> None:
        self.entries: deque[StoredMessage] = deque()
        self.first = 0  # number of entries[0]; numbers grow by one per message
        self.index: dict[str, int] = {}  # mid -> number

    def drop_oldest(self) -> None:
        del self.index[self.entries.popleft().mid]
        self.first += 1


@implementer(IArchive)
class MemoryArchive:
    """The archive in dicts: at most ``max_messages`` per thread, none older
    than ``max_age`` seconds. Expiry by age costs O(1) per message: one queue
    of (ts, thread) in arrival order is trimmed at every write."""

    def __init__(
        self, clock: IReactorTime, *, max_messages: int = 1000, max_age: float = 7 * 86400.0
    ) -> None:
        self.clock = clock
        self.max_messages = max_messages
        self.max_age = max_age
        self.threads: dict[str, _Thread] = {}
        self._ages: deque[tuple[int, str]] = deque()
        self.stored = 0

    def add(self, messages: list[StoredMessage]) -> Deferred[None]:
        threads, ages, cap = self.threads, self._ages, self.max_messages
        for m in messages:
            key = thread_of(m.fields)
            thread = threads.get(key)
            if thread is None:
                thread = threads[key] = _Thread()
            elif m.mid in thread.index:
                continue
            thread.index[m.mid] = thread.first + len(thread.entries)
            thread.entries.append(m)
            ages.append((m.ts, key))
            self.stored += 1
            if len(thread.entries) > cap:
                thread.drop_oldest()
                self.stored -= 1
        self._expire()
        return succeed(None)

    def _expire(self) -> None:
        cutoff = int((self.clock.seconds() - self.max_age) * 1000)
        ages, threads = self._ages, self.threads
        while ages and ages[0][0] <= cutoff:
            key = ages.popleft()[1]
            thread = threads.get(key)
            if thread is None:
                continue
            entries = thread.entries
            while entries and entries[0].ts <= cutoff:
                thread.drop_oldest()
                self.stored -= 1
            if not entries:
                del threads[key]

    def page(self, thread: str, before: str | None, limit: int) -> Deferred[tuple[list[Any], bool]]:
        self._expire()
        found = self.threads.get(thread)
        if found is None:
            return succeed(([], False))
        entries = found.entries
        if before is None:
            end = len(entries)
        else:
            number = found.index.get(before)
            if number is None:
                return succeed(([], False))
            end = number - found.first
        start = max(0, end - limit)
        return succeed(([entries[i] for i in range(end - 1, start - 1, -1)], start > 0))
