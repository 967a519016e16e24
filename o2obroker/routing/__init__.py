"""Find where a message goes: a local actor, or (in a cluster) another node."""

from o2obroker.routing.envelope import Envelope, ReplyTo
from o2obroker.routing.router import IMailbox, Router

__all__ = ["Envelope", "IMailbox", "ReplyTo", "Router"]
