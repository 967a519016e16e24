"""Actors: objects with a mailbox, drained on the reactor thread in batches."""

from o2obroker.actors.actor import Actor, Scheduler
from o2obroker.actors.system import ActorSystem
from o2obroker.actors.user import IDevice, UserActor

__all__ = ["Actor", "ActorSystem", "IDevice", "Scheduler", "UserActor"]
