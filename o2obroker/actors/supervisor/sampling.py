"""Sampling: what the supervisor measures, and how one look at the node is made.

The sampler reads the process and the machine; the connection counts come
from the gateway, which counts connections as they open and close, so a
sample never walks the sockets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

DUPLEX = ("tcp", "ws")  # A: connections that push both ways
ASYNC = ("lp",)  # B: long-poll sessions


@dataclass(frozen=True, slots=True)
class Resources:
    """What the sampler measures: process CPU %, process RSS bytes, machine memory %."""

    cpu: float
    rss: int
    memory: float


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the node: resources plus connection counts by transport."""

    ts: float
    cpu: float
    rss: int
    memory: float
    connections: dict[str, int]
    duplex: int
    async_: int
    occupancy: float

    @property
    def total(self) -> int:
        return self.duplex + self.async_

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["async"] = out.pop("async_")
        out["total"] = self.total
        return out

    @classmethod
    def take(cls, ts: float, resources: Resources, connections: Mapping[str, int]) -> Sample:
        """Combine a sampler's reading with the gateway's counts at ``ts``."""
        counts = dict(connections)
        duplex = sum(counts.get(t, 0) for t in DUPLEX)
        async_ = sum(counts.get(t, 0) for t in ASYNC)
        return cls(
            ts=ts,
            cpu=resources.cpu,
            rss=resources.rss,
            memory=resources.memory,
            connections=counts,
            duplex=duplex,
            async_=async_,
            occupancy=occupancy(duplex, async_),
        )

    @classmethod
    def empty(cls, ts: float) -> Sample:
        """A stand-in before the first sample: nothing measured, nothing open."""
        return cls(ts, 0.0, 0, 0.0, {}, 0, 0, 0.0)


def occupancy(duplex: int, async_: int) -> float:
    """P = (A - B) / (A + B) x 100: +100 all duplex, -100 all long-poll, 0 when empty."""
    total = duplex + async_
    return 0.0 if total == 0 else (duplex - async_) * 100.0 / total


def occupancy_of(connections: Mapping[str, int]) -> float:
    """P of a gateway's connection counts by transport."""
    return occupancy(
        sum(connections.get(t, 0) for t in DUPLEX), sum(connections.get(t, 0) for t in ASYNC)
    )


class ISampler(Interface):
    def sample() -> Deferred[Resources]:
        """Measure the process and the system; may do its work off the reactor thread."""


@implementer(ISampler)
class PsutilSampler:
    """Reads psutil on the reactor thread.

    All three readings together cost about 70 µs here (they read small files
    under /proc), which is less than one message's work; psutil's
    ``net_connections``, which would cost milliseconds per thousand sockets, is
    never called: the gateway counts connections as they are made.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = self._this_process()

    def _this_process(self) -> Any:
        process = self._psutil.Process(os.getpid())
        process.cpu_percent(None)  # the first reading only sets the origin
        return process

    def sample(self) -> Deferred[Resources]:
        p = self._process
        if p.pid != os.getpid():
            # made before a fork: twistd builds the node, then daemonizes (two forks),
            # and the process measured would be the parent, long gone
            p = self._process = self._this_process()
        return succeed(
            Resources(
                cpu=p.cpu_percent(None),
                rss=p.memory_info().rss,
                memory=self._psutil.virtual_memory().percent,
            )
        )
