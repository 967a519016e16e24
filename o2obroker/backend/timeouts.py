"""A time limit on every call of any backend.

A networked backend may never answer a call (a server that hangs, a link that
drops packets). Callers hold a user's mailbox while they wait, so a call that
never fires would park that user for good. ``TimeoutBackend`` wraps any
IBackend: a call that has not fired after ``timeout`` seconds is cancelled and
fails with BackendUnavailable, and so does a call that fails with anything but
the interface's own errors, so callers handle one error, not a transport's many.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.defer import TimeoutError as CallTimedOut
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from o2obroker.backend.interface import BackendUnavailable, IBackend, StoreFull


def _unavailable(failure: Failure, name: str) -> Failure:
    if failure.check(BackendUnavailable, StoreFull):
        return failure
    if failure.check(CallTimedOut):
        return Failure(BackendUnavailable(f"{name}: no answer in time"))
    return Failure(BackendUnavailable(f"{name}: {failure.getErrorMessage() or failure.type}"))


def _timed(name: str) -> Callable[..., Deferred[Any]]:
    def call(self: TimeoutBackend, *args: Any) -> Deferred[Any]:
        try:
            d = getattr(self.inner, name)(*args)
        except Exception:
            # a backend that raises instead of failing its Deferred is unavailable too
            return fail(_unavailable(Failure(), name))
        if d.called:
            # answered at once (the embedded backend always is): no timer to set
            if not isinstance(d.result, Failure):
                return d
            return d.addErrback(_unavailable, name)
        d.addTimeout(self.timeout, self.clock)
        return d.addErrback(_unavailable, name)

    call.__name__ = name
    call.__doc__ = f"``{name}`` of the wrapped backend, failing with BackendUnavailable."
    return call


@implementer(IBackend)
class TimeoutBackend:
    """Every IBackend call of ``inner``, failing with BackendUnavailable after ``timeout`` s.

    Other attributes (counters a backend keeps for metrics) are read from
    ``inner``.
    """

    def __init__(self, inner: Any, clock: IReactorTime, timeout: float) -> None:
        self.inner = inner
        self.clock = clock
        self.timeout = timeout
        self.node_id = inner.node_id
        self.boot = inner.boot

    def __getattr__(self, name: str) -> Any:
        # only reached for what the class does not define: counters of the inner backend
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    append_many = _timed("append_many")
    # a cluster store's append that also publishes (RedisBackend)
    append_publish = _timed("append_publish")
    append = _timed("append")
    read = _timed("read")
    inbox_state = _timed("inbox_state")
    cursor = _timed("cursor")
    ack = _timed("ack")
    set_cursor = _timed("set_cursor")
    claim = _timed("claim")
    settle = _timed("settle")
    join = _timed("join")
    leave = _timed("leave")
    members = _timed("members")
    set_presence = _timed("set_presence")
    merge_presence = _timed("merge_presence")
    sweep_presence = _timed("sweep_presence")
    locate = _timed("locate")
    relocate = _timed("relocate")
    resync = _timed("resync")
    unlocate = _timed("unlocate")
    locations = _timed("locations")
    presence = _timed("presence")
    watch = _timed("watch")
    unwatch = _timed("unwatch")
    watching = _timed("watching")
    watchers = _timed("watchers")
    heartbeat = _timed("heartbeat")
    nodes = _timed("nodes")
    depart = _timed("depart")
