"""The message archive: what was delivered, per conversation and per room, for history.

Independent of inboxes (which empty as devices acknowledge), the archive keeps
the last messages of every conversation (a pair of users) and every room,
capped by count and age, and pages back through them by ``before`` (a mid) and
``limit``, newest first (doc/protocol.md section 4, History). The memory archive is
the embedded one; a networked backend implements the same interface.
"""

from __future__ import annotations

from collections import OrderedDict, deque
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
    than ``max_age`` seconds.

    Threads are kept in the order they were last written to: a thread not
    written to for ``max_age`` holds only expired messages and is dropped whole
    from the front, O(1) per write; a live thread trims its own oldest messages
    when it is written to or read. Memory is bounded by the caps, not by the
    traffic of the last ``max_age`` seconds.
    """

    def __init__(
        self, clock: IReactorTime, *, max_messages: int = 1000, max_age: float = 7 * 86400.0
    ) -> None:
        self.clock = clock
        self.max_messages = max_messages
        self.max_age = max_age
        self.threads: OrderedDict[str, _Thread] = OrderedDict()
        self.stored = 0

    def _cutoff(self) -> int:
        return int((self.clock.seconds() - self.max_age) * 1000)

    def add(self, messages: list[StoredMessage]) -> Deferred[None]:
        threads, cap = self.threads, self.max_messages
        cutoff = self._cutoff()
        for m in messages:
            key = thread_of(m.fields)
            thread = threads.get(key)
            if thread is None:
                thread = threads[key] = _Thread()
            elif m.mid in thread.index:
                continue
            else:
                threads.move_to_end(key)
            entries = thread.entries
            thread.index[m.mid] = thread.first + len(entries)
            entries.append(m)
            self.stored += 1
            if len(entries) > cap:
                thread.drop_oldest()
                self.stored -= 1
            self._trim(thread, cutoff)
        self._expire(cutoff)
        return succeed(None)

    def _trim(self, thread: _Thread, cutoff: int) -> None:
        entries = thread.entries
        while entries and entries[0].ts <= cutoff:
            thread.drop_oldest()
            self.stored -= 1

    def _expire(self, cutoff: int) -> None:
        threads = self.threads
        while threads:
            thread = next(iter(threads.values()))
            entries = thread.entries
            if entries and entries[-1].ts > cutoff:
                return
            threads.popitem(last=False)
            self.stored -= len(entries)

    def page(self, thread: str, before: str | None, limit: int) -> Deferred[tuple[list[Any], bool]]:
        cutoff = self._cutoff()
        self._expire(cutoff)
        found = self.threads.get(thread)
        if found is None:
            return succeed(([], False))
        self._trim(found, cutoff)
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
