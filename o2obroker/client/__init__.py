"""A Python client for the binary TCP protocol, for services, tools, tests and benchmarks."""

from o2obroker.client.binary import BinaryClient, ClientClosed, ClientError, connect

__all__ = ["BinaryClient", "ClientClosed", "ClientError", "connect"]
