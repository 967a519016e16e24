"""Admission: what a new client is told. Come in or go elsewhere, and which transport.

Past a hard limit a hello is refused with error 503 and, when one is known, the
addresses of a better node; below it, the transport advice says whether new
clients should open a WebSocket or poll. Both are decided at each sample and
read for every hello, so reading them costs a few attribute look-ups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from o2obroker.actors.supervisor.sampling import Sample
from o2obroker.actors.supervisor.settings import SupervisorSettings
from o2obroker.wire.errors import ProtocolError

Peers = Callable[[], Iterable[Mapping[str, Any]]]


class IGate(Interface):
    """What the supervisor needs of the node's gateway (session layer)."""

    connections = Attribute("Open connections by transport name: a Mapping[str, int].")
    accepting = Attribute("False while the gateway drains: new hellos are refused with 503.")
    admission = Attribute("A callable returning a ProtocolError to refuse a hello, or None.")

    def drain(error: ProtocolError, rate: float) -> Deferred[None]:
        """Refuse new hellos with ``error``, send every open session away with it
        at ``rate`` a second, and fire when no connection is left."""

    def resume() -> None:
        """Take clients again; a drain still waiting fails with CancelledError."""


class Unavailable(ProtocolError):
    """Error 503 with the address of a better node (doc/protocol.md section 7)."""

    def __init__(self, reason: str, redirect: dict[str, Any] | None = None) -> None:
        super().__init__(503, reason, fatal=True)
        self.redirect = redirect

    def frame(self) -> dict[str, Any]:
        out = super().frame()
        if self.redirect:
            out["redirect"] = self.redirect
        return out


class Admission:
    """Hard limits, the better node to send clients to, and the transport advice."""

    log = Logger()

    def __init__(
        self,
        settings: SupervisorSettings,
        gate: Any,
        *,
        node_id: str = "n1",
        peers: Peers = tuple,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.node_id = node_id
        self.peers = peers
        self.transport = "ws"
        self.better: Mapping[str, Any] | None = None  # the least loaded other node
        self._overloaded = False

    def update(self, sample: Sample) -> None:
        """Decide from a new sample: the better node, the memory limit, the advice."""
        self.find_better()
        s = self.settings
        self._overloaded = bool(s.hard_memory and sample.memory >= s.hard_memory)
        self._advise(sample)

    # -- where else -------------------------------------------------------------------

    def find_better(self) -> None:
        """The least loaded known node that is not this one and not draining."""
        best: Mapping[str, Any] | None = None
        for peer in self.peers():
            if peer.get("node") == self.node_id or peer.get("draining"):
                continue
            if best is None or peer.get("load", 0) < best.get("load", 0):
                best = peer
        self.better = best

    @property
    def redirect(self) -> dict[str, Any] | None:
        """The better node's addresses, as a 503's ``redirect`` carries them."""
        best = self.better
        return None if best is None else {k: best[k] for k in ("ws", "tcp", "lp") if best.get(k)}

    def redirect_now(self) -> dict[str, Any] | None:
        """``redirect`` from the peers as of now, not as of the last sample."""
        self.find_better()
        return self.redirect

    def refusal(self, incoming: int = 0) -> ProtocolError | None:
        """Called for every hello: a 503 to refuse it with, or None to let it in.

        The hello's own connection is already counted; ``incoming`` adds
        clients not connected yet, for asking whether one more would get in.
        """
        limit = self.settings.hard_connections
        if limit and sum(self.gate.connections.values()) + incoming > limit:
            return Unavailable("node overloaded", self.redirect)
        if self._overloaded:
            return Unavailable("node overloaded", self.redirect)
        return None

    # -- which transport ------------------------------------------------------------------

    def _advise(self, sample: Sample) -> None:
        s = self.settings
        if sample.total < s.advice_min_connections:
            advice = "ws"
        elif sample.occupancy >= s.advice_async_above:
            advice = "lp"
        elif sample.occupancy <= s.advice_duplex_below:
            advice = "ws"
        else:
            advice = self.transport  # between the marks: keep what was advised
        if advice != self.transport:
            self.log.info(
                "transport advice now {advice} (P = {p:.0f}%)", advice=advice, p=sample.occupancy
            )
            self.transport = advice
