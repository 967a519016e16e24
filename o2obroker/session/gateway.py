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
from o2obroker.metrics import Stats
from o2obroker.session.auth import Authenticator
from o2obroker.session.drain import Drainer
from o2obroker.session.liveness import Liveness
from o2obroker.session.session import Session
from o2obroker.wire.errors import ProtocolError
from o2obroker.wire.limits import Limits


class IConnection(Interface):
    """What a session needs of its transport: encode and write, or close.

    Every transport provides all of it; nothing here is optional.
    """

    kind = Attribute("'mobile' (binary TCP) or 'web' (WebSocket, long-poll).")
    transport_name = Attribute("'tcp', 'ws' or 'lp'.")

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


@implementer(IGate)
class Gateway:
    """Shared by all transports of a node: limits, auth, heartbeats, counts.

    ``hb`` is the heartbeat interval of PROTOCOL.md section 3;
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
        # the application's connect hook (o2obroker/policy/hooks.py), or None
        self.connect_hook: Any = None

    def connect(self, conn: Any) -> Session:
        """A transport has a new connection: give it a session."""
        self.connections[conn.transport_name] += 1
        return Session(self, conn)

    def disconnected(self, conn: Any) -> None:
        self.connections[conn.transport_name] -= 1

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
