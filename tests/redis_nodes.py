"""Broker nodes in this process on the shared real Redis, each on a loopback port."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.client import connect
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.session.auth import make_token
from o2obroker.transports.tcp import BinaryFactory
from tests.backend.test_redis_outage import eventually
from tests.redis_server import shared, unique_prefix


class RedisNodesCase(TestCase):
    """``node(name)`` starts a node on a key prefix of its own test; ``client``
    connects a binary client to one. Everything is stopped after the test."""

    timeout = 30
    secret = "redis-nodes-secret-0123456789abcdef"

    def setUp(self) -> None:
        self.prefix = unique_prefix()
        self.nodes: dict[str, Node] = {}

    async def node(self, name: str, **settings: Any) -> str:
        """A node with its own binary port; its endpoint string, once it takes clients."""
        config = Config(secret=self.secret, node=name, **settings)
        backend = RedisBackend(parse_urls(shared().url), reactor, reactor, name, prefix=self.prefix)
        node = self.nodes[name] = Node(config, reactor, backend=backend)
        node.start()
        self.addCleanup(node.stop)
        # runs before node.stop: the node has seen its clients go
        self.addCleanup(eventually, lambda: not sum(node.gateway.connections.values()))
        await backend.when_ready()
        await eventually(lambda: backend.bus.ready)
        await eventually(lambda: node.apps.loaded)  # hellos get 503 until then
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            BinaryFactory(node.gateway)
        )
        self.addCleanup(port.stopListening)
        return f"tcp:127.0.0.1:{port.getHost().port}"

    async def client(self, endpoint: str, user: str, device: str = "phone", **kw: Any) -> Any:
        c = await connect(
            reactor, endpoint, token=make_token(self.secret, user), device=device, **kw
        )
        self.addCleanup(c.transport.abortConnection)
        return c
