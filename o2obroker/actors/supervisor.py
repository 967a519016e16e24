"""The supervisor: a node watching its own load and acting on it.

It samples the process's CPU and memory and the node's connection counts on a
timer, and from each sample decides three things:

* **alerts** and the **scale hooks** (a command or a webhook that adds or
  removes nodes), through an explicit alert state machine with hysteresis and
  a cooldown, so a load hovering at a threshold fires the scale-out hook once;
* the **transport advice** for new clients: the duplex channel (WebSocket) or
  the async one (long-poll), from the occupancy P = (A - B) / (A + B) x 100,
  where A counts duplex connections (binary TCP and WebSocket) and B
  long-poll sessions;
* **self-protection**: past a hard limit, new hellos are refused with 503 and
  a redirect to a less loaded node when one is known.

``drain()`` stops new connections and closes the open ones at a bounded rate,
each with a 503 that names a better node. Everything here is transport-free:
the gateway, the sampler, the hooks, the clock and the source of known nodes
are given to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import Attribute, Interface, implementer

from o2obroker.actors.actor import Actor, Message, Scheduler
from o2obroker.wire.errors import ProtocolError

DUPLEX = ("tcp", "ws")  # A: connections that push both ways
ASYNC = ("lp",)  # B: long-poll sessions

# -- the alert state machine, as data ---------------------------------------
#
# Every sample classifies the load as OVER (some metric at or above its
# threshold), UNDER (every metric below its clear mark, threshold x alert_clear)
# or BETWEEN, and says whether the cooldown since the hook last fired has
# passed. The table maps (state, level, cooled) to the next state and the
# actions to run. Hysteresis: an alert ends only UNDER the clear marks, so a
# load hovering at a threshold stays in one alert. Cooldown: a new alert within
# ``alert_cooldown`` of the last scale-out is recorded but its hook is held,
# and fires when the cooldown has passed if the load is still OVER.

NORMAL, ALERTING, COOLDOWN = "normal", "alerting", "cooldown"
OVER, BETWEEN, UNDER = "over", "between", "under"

TRANSITIONS: dict[tuple[str, str, bool], tuple[str, tuple[str, ...]]] = {
    (NORMAL, OVER, True): (ALERTING, ("alert", "scale_out")),
    (NORMAL, OVER, False): (ALERTING, ("alert", "hold")),
    (NORMAL, BETWEEN, True): (NORMAL, ()),
    (NORMAL, BETWEEN, False): (NORMAL, ()),
    (NORMAL, UNDER, True): (NORMAL, ()),
    (NORMAL, UNDER, False): (NORMAL, ()),
    (ALERTING, OVER, False): (ALERTING, ()),
    (ALERTING, OVER, True): (ALERTING, ("release",)),
    (ALERTING, BETWEEN, False): (ALERTING, ()),
    (ALERTING, BETWEEN, True): (ALERTING, ()),
    (ALERTING, UNDER, False): (COOLDOWN, ("recovered",)),
    (ALERTING, UNDER, True): (NORMAL, ("recovered",)),
    (COOLDOWN, OVER, False): (ALERTING, ("alert", "hold")),
    (COOLDOWN, OVER, True): (ALERTING, ("alert", "scale_out")),
    (COOLDOWN, BETWEEN, False): (COOLDOWN, ()),
    (COOLDOWN, BETWEEN, True): (NORMAL, ()),
    (COOLDOWN, UNDER, False): (COOLDOWN, ()),
    (COOLDOWN, UNDER, True): (NORMAL, ()),
}


# -- samples ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resources:
    """What the sampler measures: process CPU %, process RSS bytes, system memory %."""

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


def occupancy(duplex: int, async_: int) -> float:
    """P = (A - B) / (A + B) x 100: +100 all duplex, -100 all long-poll, 0 when empty."""
    total = duplex + async_
    return 0.0 if total == 0 else (duplex - async_) * 100.0 / total


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
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # the first reading only sets the origin

    def sample(self) -> Deferred[Resources]:
        p = self._process
        return succeed(
            Resources(
                cpu=p.cpu_percent(None),
                rss=p.memory_info().rss,
                memory=self._psutil.virtual_memory().percent,
            )
        )


# -- hooks --------------------------------------------------------------------


class IHook(Interface):
    """Something outside the node that adds or removes capacity."""

    description = Attribute("What it runs, for logs and the console.")

    def fire(payload: dict[str, Any]) -> Deferred[None]:
        """Hand the payload over; fire when done, fail when the hook failed."""


class HookFailed(Exception):
    """A hook ran but did not succeed (exit status, HTTP status, timeout)."""


class _CommandProtocol(ProcessProtocol):
    def __init__(self, stdin: bytes, done: Deferred[None]) -> None:
        self._stdin = stdin
        self._done = done
        self.output = bytearray()
        self.killed: str | None = None  # why, when the hook killed it

    def connectionMade(self) -> None:
        self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        if len(self.output) < 4096:
            self.output += data[: 4096 - len(self.output)]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        if self.killed is not None:
            self._done.errback(HookFailed(self.killed))
        elif code == 0:
            self._done.callback(None)
        else:
            text = bytes(self.output).decode("utf-8", "replace").strip()
            self._done.errback(HookFailed(f"exit status {code}: {text[-500:]}"))


@implementer(IHook)
class CommandHook:
    """Runs a command with the payload as JSON on its stdin, through spawnProcess.

    The command is split like a shell would (no shell runs it); it inherits the
    node's environment and is killed after ``timeout`` seconds. The returned
    Deferred fires once the process has ended, never before, so no process
    outlives the hook's run unnoticed.
    """

    def __init__(self, reactor: Any, command: str | list[str], timeout: float = 30.0) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ValueError("empty hook command")
        self.description = shlex.join(self.argv)
        self._reactor = reactor
        self.timeout = timeout

    def fire(self, payload: dict[str, Any]) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        proto = _CommandProtocol(json.dumps(payload).encode() + b"\n", done)
        try:
            process = self._reactor.spawnProcess(proto, self.argv[0], self.argv, env=None)
        except Exception as e:
            return fail(HookFailed(f"cannot start {self.argv[0]}: {e}"))

        def kill() -> None:
            proto.killed = f"no exit after {self.timeout:g}s: killed"
            with contextlib.suppress(ProcessExitedAlready):
                process.signalProcess("KILL")

        timer = self._reactor.callLater(self.timeout, kill)

        def cancel(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(cancel)


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IHook)
class WebhookHook:
    """POSTs the payload as JSON to a URL; any 2xx answer is success."""

    def __init__(self, reactor: Any, url: str, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http:// or https://, not {url!r}")
        self.url = url
        self.description = f"POST {url}"
        self._reactor = reactor
        self._agent = Agent(reactor)
        self.timeout = timeout

    def fire(self, payload: dict[str, Any]) -> Deferred[None]:
        headers = Headers({b"content-type": [b"application/json"]})
        body = _Body(json.dumps(payload).encode())
        d = self._agent.request(b"POST", self.url.encode(), headers, body)

        def answered(response: Any) -> Deferred[None]:
            def check(data: bytes) -> None:
                if not 200 <= response.code < 300:
                    text = data[:500].decode("utf-8", "replace")
                    raise HookFailed(f"HTTP {response.code}: {text}")

            return readBody(response).addCallback(check)

        d.addCallback(answered)
        d.addTimeout(self.timeout, self._reactor)
        return d


def make_hook(
    reactor: Any, command: str | None, url: str | None, timeout: float = 30.0
) -> IHook | None:
    """The hook a config asks for: a command, a webhook, or none."""
    if command:
        return CommandHook(reactor, command, timeout)
    if url:
        return WebhookHook(reactor, url, timeout)
    return None


# -- the gateway, as the supervisor sees it ----------------------------------


class IGate(Interface):
    """What the supervisor needs of the node's gateway (session layer)."""

    connections = Attribute("Open connections by transport name: a Mapping[str, int].")
    accepting = Attribute("False: new hellos are refused with 503.")
    admission = Attribute("A callable returning a ProtocolError to refuse a hello, or None.")

    def session_groups() -> Iterable[Iterable[Any]]:
        """Every open session, in groups; a session closed with ``fail`` leaves its group."""


class Unavailable(ProtocolError):
    """Error 503 with the address of a better node (PROTOCOL.md section 7)."""

    def __init__(self, reason: str, redirect: dict[str, Any] | None = None) -> None:
        super().__init__(503, reason, fatal=True)
        self.redirect = redirect

    def frame(self) -> dict[str, Any]:
        out = super().frame()
        if self.redirect:
            out["redirect"] = self.redirect
        return out


# -- settings -------------------------------------------------------------------


@dataclass
class SupervisorSettings:
    """Thresholds and rates; 0 turns a threshold off. See doc/operations.md."""

    interval: float = 5.0
    # alerts and the scale-out hook
    alert_connections: int = 0
    alert_cpu: float = 90.0
    alert_memory: float = 90.0
    alert_clear: float = 0.8
    alert_cooldown: float = 300.0
    # the scale-in hook: every metric at or below its mark for scale_in_after seconds
    scale_in_connections: int = 0
    scale_in_cpu: float = 10.0
    scale_in_memory: float = 50.0
    scale_in_after: float = 600.0
    # refusing new connections
    hard_connections: int = 0
    hard_memory: float = 0.0
    # transport advice: long-poll when P >= advice_async_above, WebSocket again when
    # P <= advice_duplex_below; always WebSocket below advice_min_connections
    advice_async_above: float = 80.0
    advice_duplex_below: float = 50.0
    advice_min_connections: int = 1000
    # drain
    drain_rate: float = 200.0
    recent_alerts: int = 100

    @classmethod
    def from_config(cls, config: Any) -> SupervisorSettings:
        """Take every config key of the same name (``sample_interval`` for ``interval``)."""
        values = {}
        for name in cls.__dataclass_fields__:
            key = "sample_interval" if name == "interval" else name
            if hasattr(config, key):
                values[name] = getattr(config, key)
        return cls(**values)


# -- the supervisor -----------------------------------------------------------------


class Supervisor(Actor):
    """Samples the node, runs the alert state machine, advises, protects, drains.

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
        peers: Callable[[], Iterable[Mapping[str, Any]]] = tuple,
    ) -> None:
        super().__init__(scheduler)
        self.clock = clock
        self.settings = settings
        self.gate = gate
        self.sampler = sampler
        self.node_id = node_id
        self.scale_out = scale_out
        self.scale_in = scale_in
        self.peers = peers
        self.state = NORMAL
        self.last: Sample | None = None
        self.transport = "ws"
        self.draining = False
        self.counts: Counter[str] = Counter()  # alerts, hook runs and failures
        self._alerts: deque[dict[str, Any]] = deque(maxlen=settings.recent_alerts)
        self._fired_at: float | None = None  # when scale-out last fired
        self._held: dict[str, Any] | None = None  # a scale-out waiting for its cooldown
        self._quiet_since: float | None = None
        self._scaled_in = False
        self._sampling = False
        self._overloaded = False
        self._redirect: dict[str, Any] | None = None
        self._running: dict[str, Deferred[None]] = {}
        self._waiters: list[Deferred[None]] = []
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock
        self._drain_loop: LoopingCall | None = None
        self._drain_queue: deque[Any] = deque()
        self._drain_group: Any = ()
        self._drain_next = 0

    def __repr__(self) -> str:
        return f"<Supervisor {self.node_id} {self.state} transport={self.transport}>"

    # -- timer -------------------------------------------------------------------

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.settings.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._drain_loop is not None and self._drain_loop.running:
            self._drain_loop.stop()

    def tick(self) -> None:
        """Take a sample, unless the previous one is still being taken."""
        if self._sampling:
            return
        self._sampling = True
        d = self.sampler.sample()
        d.addCallback(lambda resources: self.tell(("sample", resources)))
        d.addErrback(lambda f: self.log.failure("sampling failed", f))
        d.addBoth(self._sampled)

    def _sampled(self, _: object) -> None:
        self._sampling = False

    # -- a sample ------------------------------------------------------------------

    def _on_sample(self, message: Message) -> None:
        resources: Resources = message[1]
        counts = dict(self.gate.connections)
        duplex = sum(counts.get(t, 0) for t in DUPLEX)
        async_ = sum(counts.get(t, 0) for t in ASYNC)
        sample = Sample(
            ts=self.clock.seconds(),
            cpu=resources.cpu,
            rss=resources.rss,
            memory=resources.memory,
            connections=counts,
            duplex=duplex,
            async_=async_,
            occupancy=occupancy(duplex, async_),
        )
        self.last = sample
        self.counts["samples"] += 1
        self._refresh_redirect()
        s = self.settings
        self._overloaded = bool(s.hard_memory and sample.memory >= s.hard_memory)
        self._advise(sample)
        level, reasons = self.level(sample)
        self.step(level, sample, reasons)
        self._consider_scale_in(sample)

    def level(self, sample: Sample) -> tuple[str, dict[str, list[float]]]:
        """OVER, BETWEEN or UNDER, and the metrics at or over their thresholds."""
        s = self.settings
        marks = (
            ("connections", sample.total, s.alert_connections),
            ("cpu", sample.cpu, s.alert_cpu),
            ("memory", sample.memory, s.alert_memory),
        )
        over = {name: [value, limit] for name, value, limit in marks if limit and value >= limit}
        if over:
            return OVER, over
        if all(value < limit * s.alert_clear for _, value, limit in marks if limit):
            return UNDER, {}
        return BETWEEN, {}

    def step(self, level: str, sample: Sample, reasons: dict[str, list[float]]) -> None:
        """Feed one classified sample to the alert state machine."""
        now = self.clock.seconds()
        cooled = self._fired_at is None or now - self._fired_at >= self.settings.alert_cooldown
        before = self.state
        self.state, actions = TRANSITIONS[(before, level, cooled)]
        for action in actions:
            getattr(self, f"_do_{action}")(sample, reasons)

    def _do_alert(self, sample: Sample, reasons: dict[str, list[float]]) -> None:
        self.counts["alerts"] += 1
        text = ", ".join(f"{k} {v:g} >= {lim:g}" for k, (v, lim) in sorted(reasons.items()))
        self.log.warn("node {node} overloaded: {text}", node=self.node_id, text=text)
        self._record("alert", sample, reasons=reasons)

    def _do_hold(self, sample: Sample, reasons: dict[str, list[float]]) -> None:
        self._held = reasons
        self._alerts[-1]["hook"] = "held (cooldown)"

    def _do_release(self, sample: Sample, reasons: dict[str, list[float]]) -> None:
        if self._held is not None:
            self._held = None
            self._do_scale_out(sample, reasons)

    def _do_scale_out(self, sample: Sample, reasons: dict[str, list[float]]) -> None:
        self._fired_at = self.clock.seconds()
        if self._alerts and self._alerts[-1]["event"] == "alert":
            self._alerts[-1]["hook"] = "fired" if self.scale_out else "none configured"
        self._fire("scale_out", self.scale_out, sample, reasons)

    def _do_recovered(self, sample: Sample, reasons: dict[str, list[float]]) -> None:
        self._held = None
        self.log.info("node {node} load back under its clear marks", node=self.node_id)
        self._record("recovered", sample)

    def _consider_scale_in(self, sample: Sample) -> None:
        s = self.settings
        quiet = (
            self.state == NORMAL
            and sample.total <= s.scale_in_connections
            and sample.cpu <= s.scale_in_cpu
            and sample.memory <= s.scale_in_memory
        )
        if not quiet:
            self._quiet_since = None
            self._scaled_in = False
            return
        if self._quiet_since is None:
            self._quiet_since = sample.ts
        if not self._scaled_in and sample.ts - self._quiet_since >= s.scale_in_after:
            self._scaled_in = True  # once per quiet stretch
            self._record("scale_in", sample, hook="fired" if self.scale_in else "none configured")
            self._fire("scale_in", self.scale_in, sample, {})

    def _fire(
        self, event: str, hook: IHook | None, sample: Sample, reasons: dict[str, list[float]]
    ) -> None:
        if hook is None:
            return
        if event in self._running:
            self.log.warn("{event} hook still running: not started again", event=event)
            return
        payload = {
            "event": event,
            "node": self.node_id,
            "ts": sample.ts,
            "reasons": reasons,
            "metrics": sample.as_dict(),
            "thresholds": asdict(self.settings),
        }
        self.counts[f"{event}_runs"] += 1
        self.log.info("{event}: running {hook}", event=event, hook=hook.description)
        d = self._running[event] = hook.fire(payload)

        def failed(f: Failure) -> None:
            self.counts[f"{event}_failures"] += 1
            self.log.error("{event} hook failed: {why}", event=event, why=f.getErrorMessage())
            self._record("hook_failed", sample, hook=event, error=f.getErrorMessage())

        def done(_: object) -> None:
            self._running.pop(event, None)

        d.addErrback(failed).addBoth(done)

    def _record(self, event: str, sample: Sample, **extra: Any) -> None:
        entry = {"ts": sample.ts, "event": event, "node": self.node_id, "state": self.state}
        entry.update(extra)
        entry["metrics"] = sample.as_dict()
        self._alerts.append(entry)

    # -- transport advice -------------------------------------------------------------

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

    # -- self-protection ------------------------------------------------------------------

    def _refresh_redirect(self) -> None:
        best: Mapping[str, Any] | None = None
        for peer in self.peers():
            if peer.get("node") == self.node_id or peer.get("draining"):
                continue
            if best is None or peer.get("load", 0) < best.get("load", 0):
                best = peer
        self._redirect = (
            None if best is None else {k: best[k] for k in ("ws", "tcp", "lp") if best.get(k)}
        )

    def refusal(self) -> ProtocolError | None:
        """Called for every hello: a 503 to refuse it with, or None to let it in."""
        gate = self.gate
        if self.draining or not gate.accepting:
            return Unavailable("node is draining", self._redirect)
        limit = self.settings.hard_connections
        if limit and sum(gate.connections.values()) > limit:
            return Unavailable("node overloaded", self._redirect)
        if self._overloaded:
            return Unavailable("node overloaded", self._redirect)
        return None

    def alerts(self) -> list[dict[str, Any]]:
        """The recent alerts, recoveries and hook failures, oldest first."""
        return list(self._alerts)

    # -- drain ---------------------------------------------------------------------------

    def drain(self) -> Deferred[None]:
        """Stop taking clients and send the connected ones elsewhere, a few at a time.

        Fires when no connection is left. New hellos get 503 from now on; each
        open session gets a 503 with the redirect and is closed, at most
        ``drain_rate`` per second. ``resume()`` undoes it.
        """
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if not self.draining:
            self._refresh_redirect()
            self.draining = True
            self.gate.accepting = False
            self.log.warn("node {node} draining", node=self.node_id)
            self._record("drain", self.last or _empty_sample(self.clock.seconds()))
            self._drain_loop = LoopingCall(self._drain_tick)
            self._drain_loop.clock = self.clock
            self._drain_loop.start(0.1, now=True)
        elif self._empty():
            self._drained()
        return d

    def resume(self) -> None:
        """Take clients again; drain() Deferreds still waiting fail with CancelledError."""
        if not self.draining:
            return
        self.draining = False
        self.gate.accepting = True
        if self._drain_loop is not None and self._drain_loop.running:
            self._drain_loop.stop()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(CancelledError("drain cancelled: the node takes clients again"))
        self.log.info("node {node} takes clients again", node=self.node_id)

    def _empty(self) -> bool:
        return sum(self.gate.connections.values()) <= 0

    def _drain_tick(self) -> None:
        """Send up to drain_rate / 10 sessions away, from a copy of one group at a time.

        Taking the first few of a set again and again would walk the slots of
        the sessions already gone each time (sets do not shrink), which grows
        with the node; a copy of one group (liveness bucket) costs one pass
        over it, once. A session leaves its group as soon as it is sent away.
        """
        budget = max(1, int(self.settings.drain_rate * 0.1))
        error = Unavailable("node is draining", self._redirect)
        groups = self.gate.session_groups()
        queue = self._drain_queue
        sent = refills = 0
        while sent < budget:
            if not queue:
                if refills == len(groups):
                    break  # every group looked at in this slice: nothing left
                refills += 1
                self._drain_group = groups[self._drain_next % len(groups)]
                self._drain_next += 1
                queue.extend(self._drain_group)
                continue
            session = queue.popleft()
            if session in self._drain_group:  # not gone on its own meanwhile
                session.fail(error)
                sent += 1
        self.counts["drained"] += sent
        if self._empty():
            self._drained()

    def _drained(self) -> None:
        if self._drain_loop is not None and self._drain_loop.running:
            self._drain_loop.stop()
        self.log.info("node {node} drained: no connection left", node=self.node_id)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

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


def _empty_sample(ts: float) -> Sample:
    return Sample(ts, 0.0, 0, 0.0, {}, 0, 0, 0.0)
