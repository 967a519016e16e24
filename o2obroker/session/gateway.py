"""The gateway: where every transport's connections become sessions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from o2obroker.actors import ActorSystem
from o2obroker.actors.supervisor import IGate
from o2obroker.logs import Budget
from o2obroker.metrics import Stats
from o2obroker.routing import AppRegistry
from o2obroker.session.auth import Authenticator
from o2obroker.session.drain import Drainer
from o2obroker.session.liveness import Liveness
from o2obroker.session.service import ServiceSender
from o2obroker.session.session import Session
from o2obroker.wire.errors import ProtocolError
from o2obroker.wire.limits import Limits


class IConnection(Interface):
    """What a session needs of its transport: encode and write, or close.

    Every transport provides all of it; nothing here is optional.
    """

    kind = Attribute("'mobile' (binary TCP) or 'web' (WebSocket, long-poll).")
    transport_name = Attribute("'tcp', 'ws' or 'lp'.")
    url_app = Attribute(
        "The app named in the URL the connection was opened by (WebSocket, "
        "long-poll), or None: the hello's app when the hello names none."
    )

    def send(frame: dict[str, Any]) -> None:
        """Encode and write one server frame."""

    def send_many(frames: list[dict[str, Any]]) -> None:
        """Encode and write several server frames at once."""

    def send_msgs(items: list[tuple[int, Any]]) -> None:
        """Write msg frames given as (seq, MessageTemplate), in order."""

    def send_out(frame: Any) -> int:
        """Write one OutFrame (encoded once for all its recipients) in this
        connection's encoding; return the bytes written."""

    def close(last: dict[str, Any] | None = None) -> None:
        """Write ``last`` (if given), then close after what was written has
        been sent. Once called, the connection writes nothing more."""

    def unsent() -> int:
        """Bytes written but not yet taken by the peer: for the transfer hold,
        which ends when this is 0."""

    def when_drained() -> Deferred[None] | None:
        """None while the peer takes what is written; else a Deferred that fires
        once it does again (or the connection is gone)."""


def peer_of(conn: Any) -> str:
    """``host:port`` of a connection's peer, as well as its transport can tell."""
    peer = getattr(conn, "peer", None)  # Autobahn's "tcp:1.2.3.4:5678"; long-poll's own
    if isinstance(peer, str):
        kind, _, rest = peer.partition(":")
        return rest if kind in ("tcp", "tcp4", "tcp6") else peer
    transport = getattr(conn, "transport", None)
    address = transport.getPeer() if transport is not None else None
    host = getattr(address, "host", None)
    if host is None:
        return "-"
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


class ConnectionLog:
    """What the log keeps of one connection: its peer, when it opened, why it
    ended, and how many error frames it was sent (their lines on a budget)."""

    __slots__ = ("budget", "errors", "kind", "opened", "peer", "reason")

    def __init__(self, peer: str, opened: float) -> None:
        self.peer = peer
        self.opened = opened
        self.reason: str | None = None  # set by whoever closes it; else the peer went away
        self.kind = "lost"  # the reason as a metric label: bye, lost, silent, or an error code
        self.errors = 0
        self.budget: Budget | None = None  # made at the first error


# error lines of one connection: this many at once, then one per ERROR_LINE_EVERY seconds
ERROR_LINE_BURST = 5
ERROR_LINE_EVERY = 10.0


@implementer(IGate)
class Gateway:
    """Shared by all transports of a node: limits, auth, heartbeats, counts.

    ``hb`` is the heartbeat interval of doc/protocol.md section 3;
    ``hello_timeout`` closes a connection that never says hello, and
    ``stall_timeout`` one whose frame stops arriving half-way.
    """

    log = Logger()

    def __init__(
        self,
        actors: ActorSystem,
        authenticator: Authenticator,
        limits: Limits,
        clock: IReactorTime,
        *,
        node_id: str = "n1",
        hb: int = 30,
        hello_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        stats: Stats | None = None,
        transfer_rate: float = 32 << 10,
        naive_presence: bool = False,
        rate_limit: float = 0.0,
        rate_burst: int = 0,
        apps: AppRegistry | None = None,
    ) -> None:
        self.actors = actors
        self.auth = authenticator
        self.limits = limits
        self.clock = clock
        self.node_id = node_id
        self.hb = hb
        self.hello_timeout = hello_timeout
        self.stall_timeout = stall_timeout
        self.liveness = Liveness(clock, max(1, hb // 4))
        self.connections: Counter[str] = Counter()
        self.sessions = 0
        self.accepting = True  # False while draining
        self.drainer = Drainer(clock, self.session_groups, self.open_connections)
        # set by the supervisor: returns a 503 (with a redirect) to refuse a hello
        self.admission: Callable[[], ProtocolError | None] | None = None
        self.stats = stats or Stats()
        # first guess of a link's rate (bytes/s) for the transfer hold, before it is measured
        self.transfer_rate = transfer_rate
        # the presence benchmark's baseline: no transfer hold
        self.naive_presence = naive_presence
        # frames a second per connection, and how many at once (0: no limit)
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst or max(1, int(2 * rate_limit))
        # sends of back-end services (HTTP API, console): the one path they take in
        self.service = ServiceSender(self)
        # the application's connect hook (o2obroker/policy/hooks.py), or None
        self.connect_hook: Any = None
        # business ids every hello must name one of; empty: not checked
        self.apps = apps if apps is not None else AppRegistry()

    def connect(self, conn: Any) -> Session:
        """A transport has a new connection: give it a session."""
        self.connections[conn.transport_name] += 1
        self.stats.opened[conn.transport_name] += 1
        session = Session(self, conn)
        record = session.connlog = ConnectionLog(peer_of(conn), self.clock.seconds())
        self.log.info(
            "{transport} {peer} open",
            event="open",
            transport=conn.transport_name,
            peer=record.peer,
        )
        return session

    def disconnected(self, conn: Any, session: Session | None = None) -> None:
        self.connections[conn.transport_name] -= 1
        record = session.connlog if session is not None else None
        if record is None:
            return
        # a connection that never got its welcome was refused (bad hello, 503...), or gave up
        (self.stats.closed if session.welcomed else self.stats.refused)[record.kind] += 1
        duration = round(self.clock.seconds() - record.opened, 3)
        suppressed = record.budget.suppressed if record.budget is not None else 0
        errors_text = ""
        if record.errors:
            errors_text = f" ({record.errors} error frames sent"
            errors_text += f", {suppressed} not logged)" if suppressed else ")"
        self.log.info(
            "{transport} {peer} closed {_who} after {duration}s: {reason}{_errors_text}",
            event="close",
            transport=conn.transport_name,
            peer=record.peer,
            _who=f"{session.user}/{session.device}" if session.user else "before hello",
            user=session.user,
            device=session.device,
            duration=duration,
            reason=record.reason or "connection lost",
            errors=record.errors,
            suppressed=suppressed,
            _errors_text=errors_text,
        )

    def welcomed(self, session: Session, last: int, resumed: bool) -> None:
        """A hello was accepted: the welcome is on its way."""
        record = session.connlog
        self.log.info(
            "{transport} {peer} hello {user}/{device}",
            event="hello",
            transport=session.conn.transport_name,
            peer=record.peer if record is not None else "-",
            user=session.user,
            device=session.device,
            last=last,
            resumed=resumed,
        )

    def error_sent(self, session: Session, code: int, reason: str, fatal: bool) -> None:
        """An error frame went to a connection: log it, on the connection's budget."""
        record = session.connlog
        if record is None:
            return
        record.errors += 1
        if fatal:
            record.reason = f"{code} {reason}"
            record.kind = str(code)
        now = self.clock.seconds()
        budget = record.budget
        if budget is None:
            budget = record.budget = Budget(now, ERROR_LINE_BURST)
        # an error that ends the connection comes once, and says why it ended: always logged
        if not fatal and not budget.take(now, ERROR_LINE_BURST, ERROR_LINE_EVERY):
            return
        held, budget.held = budget.held, 0
        self.log.info(
            "{transport} {peer} error {code} to {_who}: {reason}{_held_text}",
            event="error",
            transport=session.conn.transport_name,
            peer=record.peer,
            _who=f"{session.user}/{session.device}" if session.user else "(no hello)",
            user=session.user,
            device=session.device,
            code=code,
            reason=reason,
            held=held,
            _held_text=f" ({held} earlier error lines not logged)" if held else "",
        )

    def refusal(self) -> ProtocolError | None:
        """Why a new hello must be refused (503), or None to let it in."""
        if not self.accepting:
            return self.drainer.error or ProtocolError(503, "node is draining", fatal=True)
        if self.admission is not None:
            return self.admission()
        return None

    def open_connections(self) -> int:
        return sum(self.connections.values())

    def drain(self, error: ProtocolError | None = None, rate: float = 200.0) -> Deferred[None]:
        """Refuse new hellos and send every session away with ``error`` (a 503,
        perhaps naming a better node), ``rate`` a second; fire when none is left."""
        self.accepting = False
        if error is None:
            error = ProtocolError(503, "node is draining", fatal=True)
        return self.drainer.start(error, rate)

    def resume(self) -> None:
        """Take clients again; a drain still waiting fails with CancelledError."""
        self.accepting = True
        self.drainer.stop()

    def session_groups(self) -> list[set[Any]]:
        """Every session, in the liveness buckets: callers take a few at a time."""
        return self.liveness.buckets

    def start(self) -> None:
        self.liveness.start()

    def stop(self) -> None:
        self.liveness.stop()
        self.drainer.halt()
