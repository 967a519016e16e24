"""The session and presence suites again, on a backend whose every answer comes a turn late.

A networked backend never answers in the same turn; the callers above it
(actors, sessions, the presence hub) must not depend on it. This runs their
own end-to-end tests unchanged on LaterBackend.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from o2obroker.backend import MemoryBackend
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.transports.tcp import BinaryFactory
from o2obroker.wire.limits import Limits
from tests import harness
from tests.backend.contract import LaterBackend
from tests.presence import test_presence
from tests.session import test_session


class LaterHarness(harness.Harness):
    def __init__(self, **settings: Any) -> None:
        limits = settings.pop("limits", Limits())
        self.config = Config(limits=limits, **settings)
        self.config.check()
        self.clock = Clock()
        c = self.config
        memory = MemoryBackend(
            self.clock,
            c.node,
            inbox_cap=c.inbox_cap,
            inbox_ttl=c.inbox_ttl,
            dedupe_ttl=c.dedupe_ttl,
        )
        self.node = Node(c, self.clock, backend=LaterBackend(memory, self.clock))
        self.factory = BinaryFactory(self.node.gateway)

    def flush(self) -> None:
        # every backend answer is a turn of its own: allow for chains of them
        for _ in range(200):
            if not self.clock.getDelayedCalls():
                return
            self.clock.advance(0)


def _later(module: Any, case: type) -> type:
    def setUp(self: Any) -> Any:
        self.patch(module, "Harness", LaterHarness)
        return case.setUp(self)

    def successResultOf(self: Any, d: Any) -> Any:
        # a test that asks the backend itself waits for the answer's turn too
        if getattr(self, "h", None) is not None:
            self.h.flush()
        return case.successResultOf(self, d)

    attributes = {"setUp": setUp, "successResultOf": successResultOf, "__module__": __name__}
    return type(f"Later{case.__name__}", (case,), attributes)


for _module in (test_session, test_presence):
    for _name, _case in list(vars(_module).items()):
        if isinstance(_case, type) and _name.endswith("Tests") and hasattr(_case, "setUp"):
            globals()[f"Later{_name}"] = _later(_module, _case)
