"""Stand-ins for the supervisor's collaborators, and a supervisor on a task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from o2obroker.actors.actor import Scheduler
from o2obroker.actors.supervisor import Resources, Supervisor, SupervisorSettings
from o2obroker.session.gateway import Gateway
from o2obroker.wire.limits import Limits


class FakeSampler:
    """Returns whatever the test put in ``resources``; ``hold`` makes it slow."""

    def __init__(self) -> None:
        self.resources = Resources(cpu=1.0, rss=50 << 20, memory=20.0)
        self.calls = 0
        self.pending: Deferred[Resources] | None = None
        self.hold = False

    def sample(self) -> Deferred[Resources]:
        self.calls += 1
        if self.hold:
            self.pending = Deferred()
            return self.pending
        return succeed(self.resources)


class FakeSession:
    """A session in the gateway's liveness groups: ``fail`` writes the error and
    leaves, like Session."""

    def __init__(self, gate: Gateway, transport: str) -> None:
        self.gate = gate
        self.transport_name = transport
        self.frames: list[dict[str, Any]] = []
        self.closed = False
        gate.connections[transport] += 1
        self.group = gate.liveness.add(self)

    def check(self, now: float) -> None:
        pass

    def fail(self, error: Any) -> None:
        if self.closed:
            return
        self.frames.append(error.frame())
        if error.fatal:
            self.closed = True
            self.group.discard(self)
            self.gate.connections[self.transport_name] -= 1


def make_gate(clock: Clock) -> Gateway:
    """A real gateway on ``clock`` for sessions that only need draining and counting."""
    return Gateway(None, None, Limits(), clock)  # type: ignore[arg-type]


def open_sessions(gate: Gateway, transport: str = "tcp", n: int = 1) -> list[FakeSession]:
    return [FakeSession(gate, transport) for _ in range(n)]


class RecordingHook:
    """An IHook that keeps what it was given; tests decide when it finishes."""

    description = "recording hook"

    def __init__(self, *, wait: bool = False) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.wait = wait
        self.running: list[Deferred[None]] = []

    def fire(self, payload: dict[str, Any]) -> Deferred[None]:
        self.payloads.append(payload)
        if not self.wait:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.running.append(d)
        return d


class Rig:
    """A supervisor on a task.Clock with a fake gate, sampler and hooks."""

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.gate = make_gate(self.clock)
        self.sampler = FakeSampler()
        self.scale_out = RecordingHook()
        self.scale_in = RecordingHook()
        self.peers: list[dict[str, Any]] = []
        self.settings = SupervisorSettings(**settings)
        self.supervisor = Supervisor(
            Scheduler(self.clock),
            self.clock,
            self.settings,
            self.gate,
            sampler=self.sampler,
            node_id="n1",
            scale_out=self.scale_out,
            scale_in=self.scale_in,
            peers=lambda: self.peers,
        )
        self.gate.admission = self.supervisor.refusal

    def sample(self, *, cpu: float = 1.0, memory: float = 20.0, advance: float = 0.0) -> None:
        """Move the clock, then take and handle one sample with these readings."""
        if advance:
            self.clock.advance(advance)
        self.sampler.resources = Resources(cpu=cpu, rss=50 << 20, memory=memory)
        self.supervisor.tick()
        self.clock.advance(0)  # the actor's mailbox runs on the next turn

    def open(self, transport: str = "tcp", n: int = 1) -> list[FakeSession]:
        return open_sessions(self.gate, transport, n)

    def set_connections(self, tcp: int = 0, ws: int = 0, lp: int = 0) -> None:
        c = self.gate.connections
        c["tcp"], c["ws"], c["lp"] = tcp, ws, lp
