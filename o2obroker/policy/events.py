"""Offline and presence events for the application: batched, retried, never lost quietly.

Events wait in a bounded queue and go out as ``{"hook": kind, "events": [...]}``,
up to ``batch`` at a time, one call in flight per queue so that they arrive in
order. A failed call is retried after a backoff that doubles up to
``max_backoff``, with the same events and the same ids, so nothing is lost while
the application is down for a while; each event carries an ``id`` unique across
the cluster, so a receiver drops repeats (a call that timed out may have
arrived). Past ``cap`` waiting events the oldest are dropped, counted and
logged: a push for a message an hour old is worth less than one for now.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter, deque
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from o2obroker.policy.hooks import HookClient


class EventQueue:
    """One hook's queue of events."""

    log = Logger()

    def __init__(
        self,
        kind: str,
        client: HookClient,
        clock: IReactorTime,
        *,
        node_id: str = "n1",
        batch: int = 100,
        window: float = 0.2,
        cap: int = 10_000,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        self.kind = kind
        self.client = client
        self.clock = clock
        self.batch = batch
        self.window = window
        self.cap = cap
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._ids = itertools.count(1)
        self._prefix = f"{node_id}.{os.urandom(4).hex()}."
        self._queue: deque[dict[str, Any]] = deque()
        self._inflight: list[dict[str, Any]] | None = None
        self._call_d: Any = None  # the hook call under way
        self._call: IDelayedCall | None = None
        self._delay = 0.0  # the current backoff; 0 while the application answers
        self._logged_drops = 0
        self.counts: Counter[str] = Counter()
        self.running = True

    def __len__(self) -> int:
        return len(self._queue) + len(self._inflight or ())

    def add(self, event: dict[str, Any]) -> None:
        """Queue one event; it is given its id here."""
        event["id"] = f"{self._prefix}{next(self._ids):x}"
        queue = self._queue
        queue.append(event)
        if len(self) > self.cap:
            queue.popleft()
            self.counts["dropped"] += 1
            self._log_drops()
        if self._call is None and self._inflight is None and self.running:
            self._call = self.clock.callLater(self.window, self._send)

    def _log_drops(self) -> None:
        # one line per power of two dropped: loud at first, never a flood
        dropped = self.counts["dropped"]
        if dropped >= 2 * self._logged_drops or self._logged_drops == 0:
            self._logged_drops = dropped
            self.log.error(
                "{kind} hook: queue full ({cap} events), {n} oldest dropped so far",
                kind=self.kind,
                cap=self.cap,
                n=dropped,
            )

    def _send(self) -> None:
        self._call = None
        if not self._queue or self._inflight is not None or not self.running:
            return
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self.batch, len(queue)))]
        self._inflight = batch
        d = self._call_d = self.client.call(self.kind, {"events": batch})
        d.addCallbacks(self._sent, self._failed)

    def _sent(self, _: Any) -> None:
        batch = self._inflight or []
        self._inflight = None
        self.counts["sent"] += len(batch)
        self._delay = 0.0
        if self._queue and self.running:
            # the rest goes now: a backlog after an outage drains at once
            self._call = self.clock.callLater(0, self._send)

    def _failed(self, failure: Failure) -> None:
        batch = self._inflight or []
        self._inflight = None
        self.counts["retried"] += len(batch)
        queue = self._queue
        queue.extendleft(reversed(batch))
        while len(queue) > self.cap:
            queue.popleft()
            self.counts["dropped"] += 1
            self._log_drops()
        self._delay = min(self.max_backoff, self._delay * 2 if self._delay else self.backoff)
        if self.running:
            self._call = self.clock.callLater(self._delay, self._send)

    def stop(self) -> None:
        """Stop sending; what is queued is logged as lost (the queue is in memory)."""
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._call_d is not None and not self._call_d.called:
            self._call_d.cancel()  # its events go back to the queue, then are counted below
        if len(self):
            self.log.warn(
                "{kind} hook: {n} events not sent at shutdown", kind=self.kind, n=len(self)
            )
