"""Store a batch of messages and deliver it: to local actors, or (in a cluster) other nodes;
and tell clients which node to connect to (the node directory, the app registry)."""

from o2obroker.routing.apps import AppRegistry
from o2obroker.routing.directory import (
    INodeDirectory,
    LocalDirectory,
    NodeInfo,
    RegistryDirectory,
    StaticDirectory,
    least_loaded,
    pick,
    rank,
)
from o2obroker.routing.messages import Delivery, Outgoing, Settlement
from o2obroker.routing.router import IMailbox, IPublisher, LocalPublisher, Policy, Router

__all__ = [
    "AppRegistry",
    "Delivery",
    "IMailbox",
    "INodeDirectory",
    "IPublisher",
    "LocalDirectory",
    "LocalPublisher",
    "NodeInfo",
    "Outgoing",
    "Policy",
    "RegistryDirectory",
    "Router",
    "Settlement",
    "StaticDirectory",
    "least_loaded",
    "pick",
    "rank",
]
