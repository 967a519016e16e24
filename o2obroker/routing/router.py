"""The router: the one place that knows where a user's actor lives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from zope.interface import Interface

from o2obroker.backend.interface import IBackend
from o2obroker.routing.envelope import Envelope


class IMailbox(Interface):
    """What the router needs of a user's actor."""

    def deliver(envelopes: list[Envelope]) -> None:
        """Queue envelopes for this user, in order; never raises, never blocks."""

    def settled(envelopes: list[Envelope]) -> None:
        """Envelopes this user sent have reached every recipient: answer them."""


class Router:
    """Maps user ids to the actors of this node, creating them on demand.

    A message for a user with no actor here still goes through an actor, made
    for the occasion: it batches the inbox writes like any other and is dropped
    when idle. The cluster backend adds the user→node look-up in front of this.
    """

    log = Logger()

    def __init__(self, backend: IBackend) -> None:
        self.backend = backend
        self.actors: dict[str, Any] = {}
        self._spawn: Callable[[str], Any] | None = None

    def set_spawner(self, spawn: Callable[[str], Any]) -> None:
        """Tell the router how to make an actor; the actor layer calls this."""
        self._spawn = spawn

    def actor(self, user: str) -> Any:
        """The local actor of ``user``, made if there is none."""
        actor = self.actors.get(user)
        if actor is None:
            assert self._spawn is not None, "no actor system attached to the router"
            actor = self.actors[user] = self._spawn(user)
        return actor

    def forget(self, user: str, actor: Any) -> None:
        """An idle actor leaves memory; its state is in the backend."""
        if self.actors.get(user) is actor:
            del self.actors[user]

    def deliver(self, user: str, envelopes: list[Envelope]) -> None:
        """Send envelopes to one user, in order, as one message to its actor."""
        self.actor(user).deliver(envelopes)
