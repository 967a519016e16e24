"""The actors of one node, and how the router makes them."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from o2obroker.actors.actor import Scheduler
from o2obroker.actors.presence import PresenceHub
from o2obroker.actors.user import MidSource, UserActor
from o2obroker.routing import Router


class ActorSystem:
    """Makes a UserActor per user on demand and hands them to the router."""

    def __init__(
        self,
        router: Router,
        clock: IReactorTime,
        presence: PresenceHub | None = None,
        business: Any = None,
    ) -> None:
        self.router = router
        self.clock = clock
        self.scheduler = Scheduler(clock)
        self.presence = presence or PresenceHub(router.backend, router, clock)
        self.mids = MidSource(router.backend.node_id)
        # the business layer (o2obroker/policy), or None: then actors pay nothing for it
        self.business = business if business is not None and business.active else None
        router.set_spawner(self._spawn)

    def _spawn(self, user: str) -> UserActor:
        return UserActor(
            user, self.scheduler, self.router, self.clock, self.mids, self.presence, self.business
        )

    def user(self, user: str) -> UserActor:
        """The actor of ``user`` on this node, made if needed."""
        return self.router.actor(user)

    def __len__(self) -> int:
        return len(self.router.actors)
