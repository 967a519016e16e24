"""The gateway: where every transport's connections become sessions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from o2obroker.actors import ActorSystem
from o2obroker.metrics import Stats
from o2obroker.session.auth import Authenticator
from o2obroker.session.liveness import Liveness
from o2obroker.session.service import ServiceSender
from o2obroker.session.session import Session
from o2obroker.wire.errors import ProtocolError
from o2obroker.wire.limits import Limits


class IConnection(Interface):
    """What a session needs of its transport: encode and write, or close."""

    kind = Attribute("'mobile' (binary TCP) or 'web' (WebSocket, long-poll).")
    transport_name = Attribute("'tcp', 'ws' or 'lp'.")

    def send(frame: dict[str, Any]) -> None:
        """Encode and write one server frame."""

    def send_many(frames: list[dict[str, Any]]) -> None:
        """Encode and write several server frames at once (optional: a
        connection without it gets them one by one through ``send``)."""

    def send_msgs(items: list[tuple[int, Any]]) -> None:
        """Write msg frames given as (seq, MessageTemplate), in order."""

    def close() -> None:
        """Close after what was written has been sent."""

    def send_out(frame: Any) -> int:
        """Write one OutFrame in this connection's encoding; return the bytes written.
        (Optional: without it, the session falls back to ``send``.)"""

    def unsent() -> int:
        """Bytes written but not yet taken by the peer, for the transfer hold.
        (Optional: without it, a large write is taken as delivered at once.)"""


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
        self.accepting = True
        # set by the supervisor: returns a 503 (with a redirect) to refuse a hello
        self.admission: Callable[[], ProtocolError | None] | None = None
        self.stats = stats or Stats()
        # first guess of a link's rate (bytes/s) for the transfer hold, before it is measured
        self.transfer_rate = transfer_rate
        # the benchmark's baseline: ping every device every hb, whatever it did
        self.naive_presence = naive_presence
        # frames a second per connection, and how many at once (0: no limit)
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst or max(1, int(2 * rate_limit))
        # sends of back-end services (HTTP API, console): the one path they take in
        self.service = ServiceSender(self)

    def connect(self, conn: Any) -> Session:
        """A transport has a new connection: give it a session."""
        self.connections[conn.transport_name] += 1
        return Session(self, conn)

    def disconnected(self, conn: Any) -> None:
        self.connections[conn.transport_name] -= 1

    def refusal(self) -> ProtocolError | None:
        """Why a new hello must be refused (503), or None to let it in."""
        if self.admission is not None:
            return self.admission()
        if not self.accepting:
            return ProtocolError(503, "node is draining", fatal=True)
        return None

    def session_groups(self) -> list[set[Any]]:
        """Every session, in the liveness buckets: callers take a few at a time."""
        return self.liveness.buckets

    def start(self) -> None:
        self.liveness.start()

    def stop(self) -> None:
        self.liveness.stop()
