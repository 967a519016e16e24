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

# The drain's states and what moves it, as data. SENDING runs a slice every
# SLICE seconds; RESTING is a drain still on (hellos refused) with no slices
# running: the node went empty, or stopped. Asked again, a resting drain looks
# again at once, so whoever connected since is sent away too.
IDLE, SENDING, RESTING = "idle", "sending", "resting"

TRANSITIONS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    (IDLE, "start"): (SENDING, ("take_error", "run_slices")),
    (SENDING, "start"): (SENDING, ()),
    (RESTING, "start"): (SENDING, ("run_slices",)),
    (SENDING, "empty"): (RESTING, ("stop_slices", "release")),
    (SENDING, "halt"): (RESTING, ("stop_slices",)),
    (RESTING, "halt"): (RESTING, ()),
    (IDLE, "halt"): (IDLE, ()),
    (SENDING, "stop"): (IDLE, ("stop_slices", "forget", "cancel")),
    (RESTING, "stop"): (IDLE, ("forget", "cancel")),
    (IDLE, "stop"): (IDLE, ()),
}


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
        self.state = IDLE
        self.error: ProtocolError | None = None  # what sessions and hellos get, while on
        self.rate = 200.0
        self.sent = 0  # sessions sent away, over the node's life
        self._offered: tuple[ProtocolError, float] | None = None
        self._loop: LoopingCall | None = None
        self._waiters: list[Deferred[None]] = []
        self._queue: deque[Any] = deque()
        self._group: Any = ()
        self._next = 0

    def _input(self, name: str) -> None:
        self.state, actions = TRANSITIONS[(self.state, name)]
        for action in actions:
            getattr(self, f"_do_{action}")()

    # -- inputs ---------------------------------------------------------------------

    def start(self, error: ProtocolError, rate: float) -> Deferred[None]:
        """Begin (or join) a drain; the Deferred fires when no connection is left.

        A drain already on keeps the error and rate it began with.
        """
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        self._offered = (error, rate)
        self._input("start")
        return d

    def stop(self) -> None:
        """Give up: the waiters fail with CancelledError, the open sessions stay."""
        self._input("stop")

    def halt(self) -> None:
        """The node stops: no more slices; the drain stays on, its waiters wait."""
        self._input("halt")

    # -- actions ------------------------------------------------------------------------

    def _do_take_error(self) -> None:
        assert self._offered is not None
        self.error, self.rate = self._offered

    def _do_run_slices(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(SLICE, now=True)  # the first slice (and perhaps the end) now

    def _do_stop_slices(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def _do_release(self) -> None:
        self.log.info("drained: no connection left ({sent} sent away)", sent=self.sent)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _do_forget(self) -> None:
        self.error = None
        self._queue.clear()
        self._group = ()

    def _do_cancel(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(CancelledError("drain cancelled: the node takes clients again"))

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
            self._input("empty")
