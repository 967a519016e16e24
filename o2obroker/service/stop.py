"""A graceful stop: on SIGTERM or SIGINT the node drains before its services stop.

twistd stops the application from a 'before shutdown' system event trigger
and the reactor waits for the Deferred that ``stopService`` returns: the
node's tree drains first (as ``POST /api/v1/drain`` does: hellos refused,
every client sent a 503 naming a live peer) while its ports still answer,
and stops as before once no connection is left or ``stop_drain`` seconds
have passed, whichever comes first.

By default Twisted ignores a second SIGTERM or SIGINT while it stops (its
``reactor.stop()`` raises ReactorNotRunning and logs it): the operator would
have to wait out the bound or send SIGKILL. While it drains, the node takes
a second signal as "stop now" instead.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:
    from o2obroker.service.node import Node

#: the signals that stop a node, and stop its drain when they come again
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name)
)

#: seconds a worker has after SIGTERM before its parent sends SIGKILL (no drain)
KILL_TIME = 15
#: what a draining worker has on top of ``stop_drain`` to stop its services
KILL_MARGIN = 10


def kill_time(stop_drain: float) -> float:
    """How long the workers' parent waits after SIGTERM before SIGKILL: a worker
    that drains for ``stop_drain`` seconds is never killed inside its bound."""
    return max(KILL_TIME, stop_drain + KILL_MARGIN) if stop_drain > 0 else KILL_TIME


class DrainOnStop:
    """Drains ``node`` for at most ``seconds``; the Deferred of ``__call__``
    fires (never fails) when no connection is left, the bound has passed, or
    a second stop signal came.

    ``call_from_signal`` puts the signal's work on the reactor thread
    (``reactor.callFromThread``); None leaves the process's signal handlers
    alone (tests).
    """

    log = Logger()

    def __init__(
        self,
        node: Node,
        seconds: float,
        clock: IReactorTime,
        call_from_signal: Callable[..., Any] | None = None,
    ) -> None:
        self.node = node
        self.seconds = seconds
        self.clock = clock
        self.call_from_signal = call_from_signal
        self._old: dict[int, Any] = {}

    def __call__(self) -> Deferred[None]:
        node, gateway = self.node, self.node.gateway
        self.log.warn(
            "node {node} stopping: draining for up to {seconds:g} s "
            "({n} connections; SIGTERM or SIGINT again stops at once)",
            node=node.config.node,
            seconds=self.seconds,
            n=gateway.open_connections(),
        )
        drained = node.supervisor.drain()  # as POST /api/v1/drain: the 503 names a peer
        waiting: Deferred[None] = Deferred()
        timer = self.clock.callLater(self.seconds, self._end, waiting, "the bound passed")
        drained.addCallbacks(
            lambda _: self._end(waiting, "drained"),
            lambda f: self._end(waiting, f"the drain failed ({f.getErrorMessage()})"),
        )
        self._trap(lambda: self._end(waiting, "stop signal again"))

        def done(result: object) -> None:
            self._untrap()
            if timer.active():
                timer.cancel()

        waiting.addBoth(done)
        return waiting

    def _end(self, waiting: Deferred[None], why: str) -> None:
        if waiting.called:
            return
        left = self.node.gateway.open_connections()
        if left:
            self.log.warn(
                "node {node} stops with {n} connections left: {why}",
                node=self.node.config.node,
                n=left,
                why=why,
            )
        else:
            self.log.info(
                "node {node} drained ({why}): stopping", node=self.node.config.node, why=why
            )
        waiting.callback(None)

    def _trap(self, again: Callable[[], None]) -> None:
        if self.call_from_signal is None:
            return
        call = self.call_from_signal
        for signum in STOP_SIGNALS:
            self._old[signum] = signal.signal(signum, lambda *_: call(again))

    def _untrap(self) -> None:
        old, self._old = self._old, {}
        for signum, handler in old.items():
            signal.signal(signum, handler)
