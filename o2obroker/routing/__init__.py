"""Find where a message goes: a local actor, or (in a cluster) another node."""

from o2obroker.routing.envelope import Envelope, settle_all
from o2obroker.routing.router import IMailbox, Router

__all__ = ["Envelope", "IMailbox", "Router", "settle_all"]
