"""The node registry, kept from this node's side: heartbeats out, live peers in.

Every ``interval`` seconds the node publishes its record (the same record
``/api/v1/nodes`` shows) with a lifetime of two intervals, then reads every
live record back. A node that stops beating is dead for every other node
within two of its intervals; a clean stop removes the record at once. What
was read last feeds the supervisor's redirects: the least loaded live peer of
the same cluster that is not draining.

Death is acted on when it happens, not at the next beat: each read tells when
the first peer's record lapses (its ``expires``), and the registry reads again
right then, so the sweeper (``on_beat``) takes a dead node's devices away
within two of the dead node's intervals of its last beat, whatever the phase
of this node's own beats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

#: a record lives this many intervals: one missed beat is not yet death
TTL_INTERVALS = 2
#: a lapse is read this long after the record's ``expires``: the store
#: compares milliseconds, and a read at the very instant may round to before
LAPSE_MARGIN = 0.002


class Registry:
    """Heartbeats of one node, and the live nodes it last saw."""

    log = Logger()

    def __init__(
        self,
        backend: Any,  # IBackend
        clock: IReactorTime,
        record: Callable[[], dict[str, Any]],
        *,
        interval: float = 2.0,
        cluster: str = "default",
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.record = record
        self.interval = interval
        self.cluster = cluster
        #: the live records read at the last beat, this node's included
        self.nodes: list[dict[str, Any]] = []
        self._beating: Deferred[None] | None = None
        #: what is under way is a lapse's read, not a beat: a beat asked for
        #: meanwhile is still owed (``_beat_owed``), this node's record unwritten
        self._reading = False
        self._beat_owed = False
        self._waiters: list[Deferred[None]] = []
        self._failing = False
        #: called after every beat that read the registry: the presence sweeper
        self.on_beat: Callable[[], object] | None = None
        #: called when a beat finds that this node's record had lapsed (peers took
        #: it for dead, and may have swept what it keeps in the backend)
        self.on_rejoin: Callable[[], object] | None = None
        self._beaten = False  # a beat of this start has been recorded
        self._loop = LoopingCall(self.beat)
        self._loop.clock = clock
        #: the read due when the first peer's record lapses
        self._lapse: IDelayedCall | None = None

    @property
    def ttl(self) -> float:
        return TTL_INTERVALS * self.interval

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> Deferred[None]:
        """Stop beating and leave the registry, so peers stop counting on us now."""
        self._cancel_lapse()
        if not self._loop.running:
            return succeed(None)
        self._loop.stop()
        d = self.backend.depart()
        return d.addErrback(lambda f: None)  # then the record lapses by itself

    @property
    def running(self) -> bool:
        return bool(self._loop.running)

    def beat_anew(self) -> Deferred[None]:
        """A beat that starts now, or after the one under way (which may have
        been sent before what the caller knows of happened)."""
        if self._beating is None or self._reading:
            return self.beat()  # a read under way writes nothing: the beat owed is new
        return self.beat().addCallback(lambda _: self.beat())

    def beat(self) -> Deferred[None]:
        """Publish this node's record, then read the live ones; one beat at a
        time: while one is under way, fire when it is done instead. While a
        lapse's read is under way, the beat follows it: a read writes nothing,
        and a beat missed would bring this node's own lapse a beat closer."""
        if self._beating is not None:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            self._beat_owed = self._beat_owed or self._reading
            return waiter
        self._beating = d = self.backend.heartbeat(self.record(), self.ttl)
        d.addCallback(self._beat)
        d.addCallback(lambda _: self.backend.nodes())
        d.addCallbacks(self._seen, self._failed)
        d.addBoth(self._done)
        return d

    def _beat(self, continued: bool | None) -> None:
        first, self._beaten = not self._beaten, True
        if continued is False and not first:
            self.log.warn("node registry: this node's record had lapsed; recording its state again")
            if self.on_rejoin is not None:
                self.on_rejoin()

    def _lapsed(self) -> None:
        """A peer's record lapsed just now: read the registry again (a beat under
        way reads it anyway), so that its death is acted on at once."""
        self._lapse = None
        if self._beating is not None or not self._loop.running:
            return
        self._reading = True
        self._beating = d = self.backend.nodes()
        d.addCallbacks(self._seen, self._failed)
        d.addBoth(self._done)

    def _cancel_lapse(self) -> None:
        if self._lapse is not None and self._lapse.active():
            self._lapse.cancel()
        self._lapse = None

    def _watch_lapses(self, nodes: list[dict[str, Any]]) -> None:
        """Be told when the first peer's record lapses, unless it beats first."""
        self._cancel_lapse()
        me = self.backend.node_id
        lapses = [
            r["expires"]
            for r in nodes
            if r.get("id") != me and isinstance(r.get("expires"), (int, float))
        ]
        if lapses and self._loop.running:
            delay = max(0.0, min(lapses) - self.clock.seconds()) + LAPSE_MARGIN
            self._lapse = self.clock.callLater(delay, self._lapsed)

    def _seen(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        self._watch_lapses(nodes)
        if self.on_beat is not None:
            self.on_beat()
        if self._failing:
            self._failing = False
            self.log.info("node registry reachable again: {n} live nodes", n=len(nodes))

    def _failed(self, f: Failure) -> None:
        # peers we cannot read may be dead: send nobody to them meanwhile
        self.nodes = []
        if not self._failing:
            self._failing = True
            self.log.warn("node registry: heartbeat failed ({why})", why=f.getErrorMessage())

    def _done(self, _: object) -> None:
        self._beating = None
        self._reading = False
        if self._beat_owed:
            self._beat_owed = False
            if self._loop.running:
                self.beat()  # the waiters fire when it is done
                return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def peers(self) -> list[dict[str, Any]]:
        """Live nodes of this node's cluster, as the supervisor's redirects take them.

        A peer is ``{"node", "load" (its occupancy P), "draining", "advice"}``
        plus its client addresses ``ws``, ``lp`` and ``tcp``.
        """
        me = self.backend.node_id
        cluster = self.cluster
        out = []
        for r in self.nodes:
            if r.get("cluster", "default") != cluster or r.get("id") == me:
                continue
            where = r.get("addresses") or {}
            peer = {k: where[k] for k in ("ws", "lp", "tcp") if where.get(k)}
            peer.update(
                node=r.get("id"),
                load=r.get("occupancy") or 0,
                draining=bool(r.get("draining")),
                advice=r.get("advice") or "ws",
            )
            out.append(peer)
        return out
