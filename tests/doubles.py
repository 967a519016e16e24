"""A backend whose calls can be made to fail, hang or wait, for the failure tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from zope.interface import implementer

from o2obroker.backend.interface import IBackend

METHODS = sorted(name for name in IBackend.names() if name not in ("node_id", "boot"))


def _method(name: str) -> Callable[..., Deferred[Any]]:
    def call(self: FlakyBackend, *args: Any) -> Deferred[Any]:
        self.calls.append(name)
        mode = self.modes.get(name)
        if mode is None:
            return getattr(self.inner, name)(*args)
        if mode == "fail":
            # what a network client fails with, not the interface's own error
            return fail(ConnectionLost("backend connection lost"))
        d: Deferred[Any] = Deferred()
        if mode == "hold":
            self.held.append((d, name, args))
        else:
            self.hung.append(d)
        return d

    call.__name__ = name
    return call


@implementer(IBackend)
class FlakyBackend:
    """Wraps a working backend; ``break_(mode, *names)`` makes calls misbehave.

    ``fail``: the call fails at once (ConnectionLost). ``hang``: it never
    fires. ``hold``: it waits until ``release()``, which then makes the call
    on the working backend, as a slow network would. No names: every call.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.node_id = inner.node_id
        self.boot = inner.boot
        self.modes: dict[str, str] = {}
        self.calls: list[str] = []
        self.hung: list[Deferred[Any]] = []
        self.held: list[tuple[Deferred[Any], str, tuple[Any, ...]]] = []

    def break_(self, mode: str, *names: str) -> None:
        assert mode in ("fail", "hang", "hold")
        for name in names or METHODS:
            assert name in METHODS, name
            self.modes[name] = mode

    def heal(self) -> None:
        self.modes.clear()

    def release(self) -> None:
        held, self.held = self.held, []
        for d, name, args in held:
            getattr(self.inner, name)(*args).chainDeferred(d)


for _name in METHODS:
    setattr(FlakyBackend, _name, _method(_name))
