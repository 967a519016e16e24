"""Mailboxes on a reactor: one message at a time per actor, batched scheduling.

An actor's messages are tuples whose first item names the handler. The
scheduler drains every ready actor in one reactor call, so queueing a message
costs a deque append, not a reactor call. Consecutive messages of a kind the
actor declares batchable reach their handler together, which lets one backend
call serve a whole batch. A handler that returns a Deferred holds the mailbox
until it fires, so an actor's messages are never reordered by I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

Message = tuple[Any, ...]


class Scheduler:
    """Runs ready actors, all of them in one reactor call per turn."""

    log = Logger()

    def __init__(self, clock: IReactorTime, *, budget: int = 2000) -> None:
        self._clock = clock
        self._ready: deque[Actor] = deque()
        self._call: IDelayedCall | None = None
        self.budget = budget  # messages an actor may handle before others get a turn
        self.runs = 0

    def ready(self, actor: Actor) -> None:
        self._ready.append(actor)
        if self._call is None:
            self._call = self._clock.callLater(0, self.run)

    def run(self) -> None:
        """Drain every actor that was ready when the run began."""
        self._call = None
        self.runs += 1
        ready = self._ready
        for _ in range(len(ready)):
            ready.popleft()._drain(self.budget)

    def pending(self) -> int:
        return len(self._ready)


class Actor:
    """A mailbox with handlers. Subclasses fill ``handlers`` and ``batched``."""

    log = Logger()
    #: kinds whose consecutive messages are handed over as one list
    batched: ClassVar[frozenset[str]] = frozenset()
    #: kind -> method name; a batched handler takes a list of messages
    handlers: ClassVar[dict[str, str]] = {}

    __slots__ = ("_busy", "_draining", "_mailbox", "_queued", "_scheduler")

    #: kind -> function, made once per class from ``handlers``: a table of bound
    #: methods per actor would cost more than the rest of an idle actor
    _functions: ClassVar[dict[str, Callable[[Any, Any], Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._functions = {kind: getattr(cls, name) for kind, name in cls.handlers.items()}

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        # made on the first message and dropped when drained: an empty deque
        # costs more than half a kilobyte, and most actors are idle
        self._mailbox: deque[Message] | None = None
        self._queued = False  # in the scheduler's ready queue
        self._busy = False  # a handler's Deferred has not fired yet
        self._draining = False

    def tell(self, message: Message) -> None:
        """Queue a message; it is handled on a later reactor turn, in order."""
        mailbox = self._mailbox
        if mailbox is None:
            mailbox = self._mailbox = deque()
        mailbox.append(message)
        if not (self._queued or self._busy or self._draining):
            self._queued = True
            self._scheduler.ready(self)

    def _drain(self, budget: int) -> None:
        self._queued = False
        self._draining = True
        try:
            self._drain_some(budget)
        finally:
            self._draining = False
        if not self._mailbox and not self._busy:
            self._mailbox = None
            self.idle()

    def _drain_some(self, budget: int) -> None:
        mailbox = self._mailbox
        if mailbox is None:
            return
        batched = self.batched
        functions = self._functions
        while mailbox and not self._busy:
            if budget <= 0:
                self._queued = True
                self._scheduler.ready(self)
                return
            kind = mailbox[0][0]
            if kind in batched:
                batch = [mailbox.popleft()]
                while mailbox and mailbox[0][0] == kind and len(batch) < budget:
                    batch.append(mailbox.popleft())
                budget -= len(batch)
                arg: Any = batch
            else:
                arg = mailbox.popleft()
                budget -= 1
            try:
                result = functions[kind](self, arg)
            except Exception:
                self.log.failure("actor {actor!r} failed on {kind}", actor=self, kind=kind)
                self._recover()
                continue
            if isinstance(result, Deferred):
                self._busy = True
                result.addErrback(self._failed, kind)
                result.addBoth(self._resume)
                # a Deferred that has fired already has run _resume: go on here

    def _failed(self, failure: Failure, kind: str) -> None:
        self.log.failure("actor {actor!r} failed on {kind}", failure, actor=self, kind=kind)
        self._recover()

    def _resume(self, _: object) -> None:
        self._busy = False
        if self._draining:
            return
        if self._mailbox:
            if not self._queued:
                self._queued = True
                self._scheduler.ready(self)
        else:
            self._mailbox = None
            self.idle()

    def _recover(self) -> None:
        """Called after a handler failed: reset what the actor holds and go on."""

    def idle(self) -> None:
        """Called when the mailbox is empty and nothing is pending."""
