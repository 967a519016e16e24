"""The Redis backend against a real redis-server: the contract suite, then what only Redis has."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from o2obroker.backend.redis import RedisBackend, parse_urls
from tests.backend.contract import BackendContract
from tests.redis_server import shared, unique_prefix


class RedisCase(TestCase):
    """Backends on the process's shared redis-server, each under its own key prefix."""

    timeout = 30

    def redisBackend(self, url: str | None = None, **kw: Any) -> Any:
        url = url or shared().url
        kw.setdefault("prefix", unique_prefix())
        b = RedisBackend(parse_urls(url), self.clock, reactor, **kw)
        b.start()
        self.addCleanup(b.stop)
        return b


class RedisContractTests(BackendContract, RedisCase):
    def makeBackend(self, **limits: Any) -> RedisBackend:
        return self.redisBackend(**limits)

    async def backendReady(self, backend: Any) -> None:
        await backend.when_ready()
