"""Heartbeats and deadlines for thousands of connections without a timer each.

Sessions are spread over buckets; a timer ticks once a second and looks at
one bucket, so each session is checked every ``hb / 4`` seconds and a tick
costs a fraction of all sessions, never all of them. Transports note the
time of their last byte from ``now``, a clock reading taken once per tick.

A deadline that must hold more closely than a bucket's round (the hello
deadline) goes into a queue in the order it was set: every deadline has the
same length, so the queue is sorted by construction and each tick takes from
its head only those that are due. A deadline holds to within one tick.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


class Checked(Protocol):
    def check(self, now: float) -> None: ...


class Overdue(Protocol):
    def overdue(self, now: float) -> None: ...


class Liveness:
    """Calls ``check(now)`` on every registered session every ``period`` seconds."""

    def __init__(self, clock: IReactorTime, period: float) -> None:
        self._clock = clock
        self.buckets: list[set[Any]] = [set() for _ in range(max(1, int(period)))]
        self._next = 0
        self._tick = 0
        self.now = clock.seconds()
        # [due time, object or None once it no longer waits], in the order they were set
        self.deadlines: deque[list[Any]] = deque()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    def start(self) -> None:
        # the clock may have moved since construction: sessions that open before
        # the first tick take their last-heard time from ``now``
        self.now = self._clock.seconds()
        self._loop.start(1.0, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def add(self, session: Checked) -> set[Any]:
        """Register a session; returns its bucket, which it hands back to ``remove``."""
        bucket = self.buckets[self._next]
        self._next = (self._next + 1) % len(self.buckets)
        bucket.add(session)
        return bucket

    def deadline(self, obj: Overdue, delay: float) -> list[Any]:
        """Call ``obj.overdue(now)`` on the first tick ``delay`` seconds from now.

        Every caller must use the same ``delay`` (the queue stays sorted); the
        entry returned is cancelled by setting its item 1 to None.
        """
        entry = [self._clock.seconds() + delay, obj]
        self.deadlines.append(entry)
        return entry

    def tick(self) -> None:
        self.now = now = self._clock.seconds()
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            obj = deadlines.popleft()[1]
            if obj is not None:
                obj.overdue(now)
        bucket = self.buckets[self._tick]
        self._tick = (self._tick + 1) % len(self.buckets)
        for session in list(bucket):
            session.check(now)

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)
