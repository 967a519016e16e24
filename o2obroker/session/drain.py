"""Draining a node: sending every session away at a bounded rate.

The gateway owns this. While a drain runs, the gateway refuses new hellos with
the drain's error, and every open session is failed with the same error (a
503 that may name a better node), at most ``rate`` a second in slices every
0.1 s, never all in one reactor turn: the clients reconnect elsewhere without
a stampede. The drain fires its waiters when no connection is left.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from o2obroker.wire.errors import ProtocolError

SLICE = 0.1  # seconds between two batches of sessions sent away


class Drainer:
    """Fails open sessions with an error, ``rate`` a second, until none is left.

    ``groups`` returns the sessions in groups (the liveness buckets); a session
    failed with a fatal error leaves its group. ``remaining`` counts the open
    connections: the drain is over when it reaches 0.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        groups: Callable[[], Sequence[set[Any]]],
        remaining: Callable[[], int],
    ) -> None:
        self.clock = clock
        self.groups = groups
        self.remaining = remaining
        self.error: ProtocolError | None = None  # set while draining
        self.rate = 200.0
        self.sent = 0  # sessions sent away, over the node's life
        self._loop: LoopingCall | None = None
        self._waiters: list[Deferred[None]] = []
        self._queue: deque[Any] = deque()
        self._group: Any = ()
        self._next = 0

    @property
    def active(self) -> bool:
        return self.error is not None

    def start(self, error: ProtocolError, rate: float) -> Deferred[None]:
        """Begin (or join) a drain; the Deferred fires when no connection is left."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if self.error is None:
            self.error = error
            self.rate = rate
        if self._loop is None:  # new, or over and asked again: look again at once
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(SLICE, now=True)
        return d

    def stop(self) -> None:
        """Give up: the waiters fail with CancelledError, the open sessions stay."""
        if self.error is None:
            return
        self.error = None
        self._stop_loop()
        self._queue.clear()
        self._group = ()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(CancelledError("drain cancelled: the node takes clients again"))

    def halt(self) -> None:
        """The node stops: no more slices; the drain stays on, its waiters wait."""
        self._stop_loop()

    def _tick(self) -> None:
        """Send up to rate x SLICE sessions away, from a copy of one group at a time.

        Taking the first few of a set again and again would walk the slots of
        the sessions already gone each time (sets do not shrink), which grows
        with the node; a copy of one group (liveness bucket) costs one pass
        over it, once. A session leaves its group as soon as it is sent away.
        """
        budget = max(1, int(self.rate * SLICE))
        error = self.error
        groups = self.groups()
        queue = self._queue
        sent = refills = 0
        while sent < budget:
            if not queue:
                if refills == len(groups):
                    break  # every group looked at in this slice: nothing left
                refills += 1
                self._group = groups[self._next % len(groups)]
                self._next += 1
                queue.extend(self._group)
                continue
            session = queue.popleft()
            if session in self._group:  # not gone on its own meanwhile
                session.fail(error)
                sent += 1
        self.sent += sent
        if self.remaining() <= 0:
            self._done()

    def _done(self) -> None:
        if self._loop is not None:
            self.log.info("drained: no connection left ({sent} sent away)", sent=self.sent)
        self._stop_loop()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _stop_loop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
