"""Store a batch of messages and deliver it: to local actors, or (in a cluster) other nodes."""

from o2obroker.routing.messages import Delivery, Outgoing, Settlement
from o2obroker.routing.router import IMailbox, IPublisher, LocalPublisher, Policy, Router

__all__ = [
    "Delivery",
    "IMailbox",
    "IPublisher",
    "LocalPublisher",
    "Outgoing",
    "Policy",
    "Router",
    "Settlement",
]
