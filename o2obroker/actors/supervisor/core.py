"""The supervisor actor: samples the node on a timer and hands each sample on.

Each part has its own module: ``sampling`` measures, ``alerts`` is the alert
state machine that decides when a scale hook runs, ``hooks`` runs commands
and webhooks, ``admission`` decides what new clients are told. Draining is
the gateway's: the supervisor only asks it to drain, with the 503 (and the
better node) that clients are sent away with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from o2obroker.actors.actor import Actor, Message, Scheduler
from o2obroker.actors.supervisor.admission import Admission, Peers, Unavailable
from o2obroker.actors.supervisor.alerts import ALERTING, Alerts, Reasons
from o2obroker.actors.supervisor.hooks import HookRunner, IHook
from o2obroker.actors.supervisor.sampling import Resources, Sample
from o2obroker.actors.supervisor.settings import SupervisorSettings
from o2obroker.wire.errors import ProtocolError


class Supervisor(Actor):
    """Samples the node and feeds the alerts, the hooks and the admission rules.

    Samples reach the actor's mailbox, so a sample, a drain and the console's
    calls are handled one at a time, in order, like any actor's messages.
    """

    log = Logger()
    handlers: ClassVar[dict[str, str]] = {"sample": "_on_sample"}

    def __init__(
        self,
        scheduler: Scheduler,
        clock: IReactorTime,
        settings: SupervisorSettings,
        gate: Any,
        *,
        sampler: Any,
        node_id: str = "n1",
        scale_out: IHook | None = None,
        scale_in: IHook | None = None,
        peers: Peers = tuple,
    ) -> None:
        super().__init__(scheduler)
        self.clock = clock
        self.settings = settings
        self.gate = gate
        self.sampler = sampler
        self.node_id = node_id
        self.last: Sample | None = None
        self.counts: Counter[str] = Counter()  # samples, alerts, hook runs and failures
        self.hooks = HookRunner(
            {"scale_out": scale_out, "scale_in": scale_in},
            counts=self.counts,
            failed=self._hook_failed,
        )
        self.machine = Alerts(clock, settings, self._scale, node_id=node_id, counts=self.counts)
        self.admission = Admission(settings, gate, node_id=node_id, peers=peers)
        self._sampling = False
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    def __repr__(self) -> str:
        return f"<Supervisor {self.node_id} {self.state} transport={self.transport}>"

    # -- what the parts know, by the names the console and the API use ----------------

    @property
    def state(self) -> str:
        """The alert state: normal, alerting or cooldown."""
        return self.machine.state

    @property
    def transport(self) -> str:
        """The transport new clients are advised to use: ws or lp."""
        return self.admission.transport

    @property
    def draining(self) -> bool:
        return not self.gate.accepting

    @property
    def peers(self) -> Peers:
        """A callable returning the known nodes, for redirects."""
        return self.admission.peers

    @peers.setter
    def peers(self, peers: Peers) -> None:
        self.admission.peers = peers

    # -- timer ---------------------------------------------------------------------------

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.settings.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def tick(self) -> None:
        """Take a sample, unless the previous one is still being taken."""
        if self._sampling:
            return
        self._sampling = True
        # a sampler that raises must not stop the LoopingCall: it fails this sample only
        d = maybeDeferred(self.sampler.sample)
        d.addCallback(lambda resources: self.tell(("sample", resources)))
        d.addErrback(lambda f: self.log.failure("sampling failed", f))
        d.addBoth(self._sampled)

    def _sampled(self, _: object) -> None:
        self._sampling = False

    def _on_sample(self, message: Message) -> None:
        resources: Resources = message[1]
        sample = Sample.take(self.clock.seconds(), resources, self.gate.connections)
        self.last = sample
        self.counts["samples"] += 1
        self.admission.update(sample)
        self.machine.feed(sample)

    # -- hooks ---------------------------------------------------------------------------

    def _scale(self, event: str, sample: Sample, reasons: Reasons) -> str:
        payload = {
            "event": event,
            "node": self.node_id,
            "ts": sample.ts,
            "reasons": reasons,
            "metrics": sample.as_dict(),
            "thresholds": asdict(self.settings),
        }
        return self.hooks.run(event, payload)

    def _hook_failed(self, event: str, why: str) -> None:
        sample = self.last or Sample.empty(self.clock.seconds())
        self.machine.record("hook_failed", sample, hook=event, error=why)

    # -- new clients ------------------------------------------------------------------------

    def refusal(self) -> ProtocolError | None:
        """The gateway asks for every hello: a 503 to refuse it with, or None."""
        return self.admission.refusal()

    def takes_clients(self) -> bool:
        """Whether the hello of one more client would be let in now."""
        return self.gate.accepting and self.admission.refusal(incoming=1) is None

    def better_node(self) -> Mapping[str, Any] | None:
        """The least loaded other live node that takes clients, when one is known."""
        return self.admission.better

    def advice(self) -> dict[str, Any]:
        """What new clients are told: ``{"transport": "ws" | "lp", ...}``."""
        last = self.last
        return {
            "transport": self.transport,
            "occupancy": last.occupancy if last else 0.0,
            "duplex": last.duplex if last else 0,
            "async": last.async_ if last else 0,
            "draining": self.draining,
        }

    def alerts(self) -> list[dict[str, Any]]:
        """The recent alerts, recoveries, scale-ins, hook failures and drains, oldest first."""
        return self.machine.recent()

    # -- drain ------------------------------------------------------------------------------

    def drain(self) -> Deferred[None]:
        """Ask the gateway to drain: clients go to the better node, ``drain_rate`` a second.

        Fires when no connection is left; ``resume()`` undoes it.
        """
        if not self.draining:
            self.admission.find_better()
            self.log.warn("node {node} draining", node=self.node_id)
            self.machine.record("drain", self.last or Sample.empty(self.clock.seconds()))
        error = Unavailable("node is draining", self.admission.redirect)
        return self.gate.drain(error, self.settings.drain_rate)

    def resume(self) -> None:
        """Take clients again; drain() Deferreds still waiting fail with CancelledError."""
        if self.draining:
            self.gate.resume()
            self.log.info("node {node} takes clients again", node=self.node_id)

    # -- metrics ----------------------------------------------------------------------------

    def gauges(self) -> dict[str, float]:
        """Numbers for the node's Prometheus collector."""
        last = self.last
        return {
            "cpu_percent": last.cpu if last else 0.0,
            "rss_bytes": last.rss if last else 0,
            "memory_percent": last.memory if last else 0.0,
            "occupancy_percent": last.occupancy if last else 0.0,
            "alerting": 1 if self.state == ALERTING else 0,
            "draining": 1 if self.draining else 0,
            "advice_longpoll": 1 if self.transport == "lp" else 0,
        }


SUPERVISOR_GAUGES: dict[str, str] = {
    "cpu_percent": "CPU used by this process at the last sample, in %.",
    "rss_bytes": "Resident memory of this process at the last sample.",
    "memory_percent": "System memory in use at the last sample, in %.",
    "occupancy_percent": "P = (duplex - long-poll) / all connections x 100.",
    "alerting": "1 while the node is over an alert threshold.",
    "draining": "1 while the node is draining.",
    "advice_longpoll": "1 while new clients are advised to use long-poll.",
}
