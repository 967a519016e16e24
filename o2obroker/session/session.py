"""One device's session: hello, heartbeats, and the frames of an open session.

Transport-free: a transport hands it decoded frame maps and gives it an
IConnection to write to; the session hands the user's business to the user's
actor and never touches another user's.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from o2obroker.actors.user import IDevice
from o2obroker.session.auth import Identity
from o2obroker.session.ratelimit import ALLOWED, PERSISTENT, RateLimiter
from o2obroker.session.transfer import LARGE, Transfer
from o2obroker.wire import OutFrame, ProtocolError
from o2obroker.wire.frames import (
    Ack,
    Bye,
    Hello,
    History,
    Join,
    Leave,
    Ping,
    Pong,
    PresenceReport,
    Probe,
    Send,
    Unwatch,
    Watch,
    parse_frame,
)

if TYPE_CHECKING:
    from o2obroker.session.gateway import Gateway

# The states of a session, and which frames each one takes (h11-style: as data).
# CONNECTING: the hello passed, the application's connect hook has not answered yet
# (or the node's shared app registry has not been read yet).
HELLO, CONNECTING, OPEN, CLOSED = "hello", "connecting", "open", "closed"
#: seconds a hello waits for a node's first read of the shared app registry (at most half
#: of hello_timeout, so that a 503 says why, not a 401 that the hello came too late)
APPS_WAIT = 5.0
#: frames a device may send before its welcome (while the connect hook decides, or
#: the actor reads its inbox state); past this, 429 and closed
MAX_HELD = 64
PING: dict[str, Any] = {"t": "ping"}
PONG: dict[str, Any] = {"t": "pong"}
BYE: dict[str, Any] = {"t": "bye"}


@implementer(IDevice)
class Session:
    """The protocol state of one connection of one device."""

    log = Logger()
    service = False  # a client's device: it sends to rooms it is a member of

    __slots__ = (
        "__weakref__",
        "_bucket",
        "_early",
        "_gateway",
        "_hello_due",
        "actor",
        "conn",
        "connlog",
        "cursor",
        "device",
        "identity",
        "kind",
        "last_rx",
        "limiter",
        "next_probe",
        "partial_since",
        "pinged",
        "presence_kept",
        "presence_state",
        "presence_status",
        "since",
        "state",
        "transfer",
        "user",
        "welcomed",
    )

    def __init__(self, gateway: Gateway, conn: Any) -> None:
        self._gateway = gateway
        self.conn = conn
        self.connlog: Any = None  # the gateway's ConnectionLog of this connection
        self.welcomed = 0.0  # clock time of the welcome; 0 before it
        self.kind: str = conn.kind
        self.state = HELLO
        self.user: str | None = None
        self.device: str | None = None
        self.identity: Any = None
        self.actor: Any = None
        self.cursor = 0
        self.since = self.last_rx = gateway.liveness.now
        self.partial_since: float | None = None
        self.pinged = False
        # when a ping-every-hb rule would probe next: what the counters of saved pings compare to
        self.next_probe = self.since + gateway.hb
        self.presence_state = "online"
        self.presence_status = ""
        self.presence_kept = False  # set by the actor: back within the grace period
        self.transfer: Transfer | None = None  # made at the first large frame
        self.limiter = (
            RateLimiter(gateway.rate_limit, gateway.rate_burst, gateway.clock.seconds())
            if gateway.rate_limit
            else None
        )
        self._bucket = gateway.liveness.add(self)
        self._early: list[tuple[Any, int | None, bool]] | None = None
        # the hello deadline holds to the second, without a timer per connection
        self._hello_due: list[Any] | None = gateway.liveness.deadline(self, gateway.hello_timeout)

    def __repr__(self) -> str:
        return f"<Session {self.user}/{self.device} {self.conn.transport_name} {self.state}>"

    @property
    def live(self) -> bool:
        return self.state == OPEN

    # -- from the transport ---------------------------------------------

    def touch(self) -> None:
        """Bytes arrived: the device is alive."""
        self.last_rx = self._gateway.liveness.now
        self.pinged = False

    def receive(self, obj: Any, size: int | None = None, text: bool = False) -> None:
        """One decoded frame map from the device. ``size`` is the encoded size of
        the message it came in (``text``: as JSON), which spares measuring a
        small send's body again."""
        if self.state is OPEN:
            if self._early is not None:
                self._hold(obj, size, text)  # before the welcome: answered after it
                return
            if self.limiter is not None and self._rate_limited(obj):
                return
            try:
                frame = parse_frame(obj, self._gateway.limits, size, text)
            except ProtocolError as e:
                self.fail(e)
                return
            handler = _OPEN_HANDLERS.get(type(frame))
            if handler is None:
                self.fail(ProtocolError(400, f"frame type not supported: {obj.get('t')}"))
                return
            if type(frame) is Send and "from" in obj and obj["from"] != self.user:
                self.fail(ProtocolError(403, "sending as someone else", ref=frame.id))
                return
            handler(self, frame)
        elif self.state is HELLO:
            self._hello(obj)
        elif self.state is CONNECTING:
            self._hold(obj, size, text)

    def _hold(self, obj: Any, size: int | None, text: bool) -> None:
        """Keep a frame that came before the welcome, to handle after it."""
        held = self._early
        assert held is not None
        if len(held) >= MAX_HELD:
            self.fail(ProtocolError(429, "too many frames before welcome", fatal=True))
        else:
            held.append((obj, size, text))

    def _rate_limited(self, obj: Any) -> bool:
        """Drop a frame over the connection's rate; close a client that keeps on."""
        verdict = self.limiter.take(self._gateway.clock.seconds())
        if verdict == ALLOWED:
            return False
        ref = obj.get("id") if type(obj) is dict else None
        if verdict == PERSISTENT:
            self.fail(ProtocolError(429, "rate limit exceeded for 10 s", fatal=True))
        else:
            self.fail(ProtocolError(429, "rate limit exceeded", ref if type(ref) is str else None))
        return True

    def fail(self, error: ProtocolError) -> None:
        """Answer a bad frame with an error; close when the error says so.

        Before the welcome, any frame but a good hello ends the connection
        with 401 (a value rule broken by the first frame included).
        """
        if self.state is CLOSED:
            return
        if self.state is HELLO and not error.fatal:
            error = ProtocolError(401, f"no valid hello: {error.reason}", fatal=True)
        self._gateway.stats.errors[error.code] += 1
        self._gateway.error_sent(self, error.code, error.reason, error.fatal)
        if error.fatal:
            self.close(error.frame())
        else:
            self.conn.send(error.frame())

    def lost(self, linger: bool = True) -> None:
        """The connection is gone. Unless we closed it (``linger`` false), the
        device's presence stays for the grace period: it may be straight back."""
        self._no_deadline()
        if self._bucket is not None:
            self._bucket.discard(self)
            self._bucket = None
            self._gateway.disconnected(self.conn, self)
        was_open = self.state is OPEN
        self.state = CLOSED
        if was_open:
            self.actor.detach(self, linger)

    def close(self, last: dict[str, Any] | None = None) -> None:
        """Close from our side, with ``last`` as the final frame (the error or
        bye that says why); the device is gone at once.

        The session is closed before anything is written, so that a write that
        trips the transport's slow-consumer check cannot close it again.
        """
        if self.state is CLOSED:
            return
        self.lost(linger=False)
        self.conn.close(last)

    # -- heartbeats -----------------------------------------------------

    def overdue(self, now: float) -> None:
        """Called by Liveness once ``hello_timeout`` has passed since the connection."""
        self._hello_due = None
        if self.state is HELLO or self.state is CONNECTING:
            self.fail(ProtocolError(401, "no hello in time", fatal=True))

    def _no_deadline(self) -> None:
        due = self._hello_due
        if due is not None:
            due[1] = None  # let the queue drop this session now, not when it is due
            self._hello_due = None

    def check(self, now: float) -> None:
        """Called by Liveness every few seconds."""
        gw = self._gateway
        if self.state is HELLO or self.state is CONNECTING:
            return  # the hello deadline is kept by ``overdue``
        # the presence benchmark's baseline (naive) has no transfer hold
        held = (
            self.transfer is not None
            and self.transfer.active
            and not gw.naive_presence
            and self._held(now)
        )
        if (
            not held
            and self.partial_since is not None
            and now - self.partial_since >= gw.stall_timeout
        ):
            self.fail(ProtocolError(400, "frame stalled half-way", fatal=True))
            return
        silent = now - self.last_rx  # again: the end of a hold moves last_rx
        stats = gw.stats
        due = now >= self.next_probe
        if due:
            self.next_probe = now + gw.hb
        if held:
            if due:
                stats.pings_saved_transfer += 1
            return
        if silent >= 2 * gw.hb:
            if self.connlog is not None:
                self.connlog.reason = f"silent for {silent:.0f}s"
                self.connlog.kind = "silent"
            self.close()
        elif silent >= gw.hb and not self.pinged:
            self.pinged = True
            stats.pings_sent += 1
            self.conn.send(PING)
        elif due and silent < gw.hb:
            stats.pings_saved_live += 1

    # -- the transfer hold (transfer.py) --------------------------------------

    def receiving(self, size: int, have: int) -> None:
        """The transport holds ``have`` bytes of an incoming frame of ``size``."""
        if size < LARGE:
            return
        transfer = self.transfer
        if transfer is None:
            transfer = self.transfer = Transfer(self._gateway.transfer_rate)
        if not transfer.active:
            transfer.start("in", size, self._gateway.clock.seconds(), have)

    def received(self) -> None:
        """The incoming frame that started a hold is complete."""
        transfer = self.transfer
        if transfer is not None and transfer.direction == "in":
            transfer.finish(self._gateway.clock.seconds())

    def sending(self, size: int) -> None:
        """The transport queued a write of ``size`` bytes to the device."""
        if size < LARGE:
            return
        transfer = self.transfer
        if transfer is None:
            transfer = self.transfer = Transfer(self._gateway.transfer_rate)
        now = self._gateway.clock.seconds()
        if transfer.direction == "out":
            transfer.extend(size, now)
        elif not transfer.active:
            transfer.start("out", max(size, self.conn.unsent()), now)

    def _held(self, now: float) -> bool:
        """Whether the transfer under way still holds the device; ends it when not."""
        transfer = self.transfer
        assert transfer is not None
        if transfer.direction == "out" and self.conn.unsent() == 0:
            transfer.finish(self._gateway.clock.seconds())
            self._resume_probing(now)
            return False
        if now < transfer.until:
            return True
        transfer.lapse()
        self._resume_probing(now)
        return False

    def _resume_probing(self, now: float) -> None:
        # a held device was not asked: probe it now, close it only a full hb later
        self.last_rx = max(self.last_rx, now - self._gateway.hb)

    # -- hello ------------------------------------------------------------

    def _hello(self, obj: Any) -> None:
        gw = self._gateway
        if not isinstance(obj, dict) or obj.get("t") != "hello":
            self.fail(ProtocolError(401, "the first frame must be hello", fatal=True))
            return
        v = obj.get("v")
        # null is absent (version 1); a v that is not an integer is a bad hello
        if type(v) is int and v != 1:
            error = ProtocolError(400, "unsupported protocol version", fatal=True)
            frame = error.frame()
            frame["versions"] = [1]
            self._gateway.stats.errors[400] += 1
            gw.error_sent(self, 400, error.reason, True)
            self.close(frame)
            return
        try:
            hello = parse_frame(obj, gw.limits)
            assert isinstance(hello, Hello)
            identity = gw.auth.authenticate(hello)
        except ProtocolError as e:
            self.fail(ProtocolError(e.code if e.code == 401 else 400, e.reason, fatal=True))
            return
        apps = gw.apps
        if not apps.loaded:
            # a node just started: the shared registry is one round trip away; the
            # hello waits for it (frames after it are held), a while at most
            self.state = CONNECTING
            self._early = []
            d = apps.when_loaded().addTimeout(min(APPS_WAIT, gw.hello_timeout / 2), gw.clock)
            d.addCallbacks(self._apps_loaded, self._apps_unread, callbackArgs=(identity, hello))
            d.addErrback(lambda f: self.log.failure("hello", f))
            return
        self._admit(identity, hello)

    def _apps_loaded(self, _: object, identity: Identity, hello: Hello) -> None:
        if self.state is CONNECTING:  # else the connection went away meanwhile
            self._admit(identity, hello)

    def _apps_unread(self, f: Failure) -> None:
        f.trap(TimeoutError)
        if self.state is CONNECTING:
            self.fail(ProtocolError(503, "app registry not read yet", fatal=True))

    def _admit(self, identity: Identity, hello: Hello) -> None:
        """The hello is authenticated: check its app, the node's admission, the
        application's connect hook, then open the session."""
        gw = self._gateway
        apps = gw.apps
        if apps and not apps.admits(identity.app or hello.app or self.conn.url_app):
            # the token's claim wins, then the hello's, then the URL's (section 3)
            self.fail(ProtocolError(403, "unknown app", fatal=True))
            return
        refusal = gw.refusal()
        if refusal is not None:
            self.fail(refusal)
            return
        device = hello.device or f"{self.kind}-{os.urandom(4).hex()}"
        connect = gw.connect_hook
        if connect is not None:
            # business: the application's connect hook may refuse or rename (o2obroker/policy)
            self.state = CONNECTING
            if self._early is None:  # frames held while the app registry was read stay
                self._early = []
            d = connect.check(identity.user, device, self.conn.transport_name)
            d.addCallback(self._connect_answered, identity, hello, device)
            d.addErrback(lambda f: self.log.failure("connect hook", f))
            return
        self._open(identity, hello, device)

    def _connect_answered(self, answer: Any, identity: Identity, hello: Hello, device: str) -> None:
        if self.state is not CONNECTING:
            return  # the connection went away meanwhile
        if not answer.allowed:
            self.fail(ProtocolError(answer.code, answer.reason, fatal=True))
            return
        if answer.user is not None or answer.rooms is not None:
            identity = Identity(
                answer.user or identity.user,
                answer.rooms if answer.rooms is not None else identity.rooms,
                identity.app,
            )
        self._open(identity, hello, device)

    def _open(self, identity: Identity, hello: Hello, device: str) -> None:
        self._no_deadline()
        self.identity = identity
        self.user = identity.user
        self.device = device
        self.state = OPEN
        if self._early is None:
            self._early = []  # frames until the welcome wait for it (the actor sends it)
        self.presence_state = hello.state
        self.presence_status = hello.status
        self.actor = self._gateway.actors.user(identity.user)
        self.actor.attach(self, hello.resume_last)

    # -- for the user's actor (IDevice) -------------------------------------

    def welcome(self, last: int, resumed: bool) -> None:
        gw = self._gateway
        self.welcomed = gw.clock.seconds()
        gw.welcomed(self, last, resumed)
        self.conn.send(
            {
                "t": "welcome",
                "user": self.user,
                "device": self.device,
                "session": f"{gw.node_id}/{id(self):x}",
                "node": gw.node_id,
                "hb": gw.hb,
                "max_frame": gw.limits.max_frame,
                "resumed": resumed,
                "last": last,
                # presence kept through a short drop: no need to watch again (doc/presence.md)
                **({"presence_kept": True} if self.presence_kept else {}),
            }
        )
        # frames the device sent after its hello, in order: the ones the actor
        # handles queue behind this attach, so after the inbox backlog too
        held, self._early = self._early, None
        for obj, size, text in held or ():
            if self.state is not OPEN:
                break
            self.receive(obj, size, text)

    def send_msgs(self, items: list[tuple[int, Any]]) -> None:
        if self.state is OPEN:
            stats = self._gateway.stats
            stats.msgs_out += len(items)
            self.conn.send_msgs(items)
            # one sample a batch: its newest message, unless it waited for this device's hello
            accepted = items[-1][1].fields.get("ts", 0) / 1000.0
            if accepted >= self.welcomed:
                stats.latency.observe(max(0.0, self._gateway.clock.seconds() - accepted))

    def when_drained(self) -> Deferred[None] | None:
        """None while the device takes what is written (or its transport cannot
        tell); else a Deferred that fires once it does again."""
        if self.state is not OPEN:
            return None
        return self.conn.when_drained()

    def send_frame(self, frame: dict[str, Any]) -> None:
        if self.state is OPEN:
            if frame.get("t") == "error":
                code = frame.get("code", 0)
                self._gateway.stats.errors[code] += 1
                self._gateway.error_sent(self, code, frame.get("reason", ""), False)
            self.conn.send(frame)

    def send_presence(self, out: OutFrame) -> None:
        if self.state is OPEN:
            stats = self._gateway.stats
            stats.presence_frames += 1
            stats.presence_bytes += self.conn.send_out(out)

    def receipts(self, items: list[tuple[str, str, int, str]]) -> None:
        """Answer sends, all written at once: (send id, mid, ts, status) each."""
        self._gateway.stats.receipts.update(item[3] for item in items)
        if self.state is OPEN:
            frames = [
                {"t": "receipt", "id": send_id, "mid": mid, "ts": ts, "status": status}
                for send_id, mid, ts, status in items
            ]
            self.conn.send_many(frames)

    def replaced(self) -> None:
        if self.state is OPEN:
            self.state = CLOSED  # the actor has already let go of this device
            self._gateway.stats.errors[409] += 1
            self._gateway.error_sent(self, 409, "replaced", True)
            self.lost()
            self.conn.close({"t": "error", "code": 409, "reason": "replaced"})

    def may_join(self, room: str) -> bool:
        return bool(self.identity.may_join(room))

    # -- frames of an open session ---------------------------------------

    def _on_send(self, frame: Send) -> None:
        self._gateway.stats.msgs_in += 1
        self.actor.submit(self, frame)

    def _on_ack(self, frame: Ack) -> None:
        self.actor.ack(self, frame.seq)

    def _on_join(self, frame: Join) -> None:
        self.actor.join(self, frame.room, frame.id)

    def _on_leave(self, frame: Leave) -> None:
        self.actor.leave(self, frame.room, frame.id)

    def _on_ping(self, frame: Ping) -> None:
        self.conn.send(PONG)

    def _on_pong(self, frame: Pong) -> None:
        pass

    def _on_bye(self, frame: Bye) -> None:
        if self.connlog is not None:
            self.connlog.reason = self.connlog.kind = "bye"
        self.close(BYE)

    def _on_presence(self, frame: PresenceReport) -> None:
        # a report without a status keeps the device's status text
        if frame.status is not None:
            self.presence_status = frame.status
        self.presence_state = frame.state
        self.actor.report(self, frame.state, self.presence_status)

    def _on_watch(self, frame: Watch) -> None:
        self.actor.watch(self, list(frame.users), frame.since)

    def _on_unwatch(self, frame: Unwatch) -> None:
        self.actor.unwatch(self, list(frame.users))

    def _on_probe(self, frame: Probe) -> None:
        self.actor.probe(self, list(frame.users))

    def _on_history(self, frame: History) -> None:
        self.actor.history(self, frame)


_OPEN_HANDLERS: dict[type, Any] = {
    Send: Session._on_send,
    Ack: Session._on_ack,
    Join: Session._on_join,
    Leave: Session._on_leave,
    Ping: Session._on_ping,
    Pong: Session._on_pong,
    Bye: Session._on_bye,
    PresenceReport: Session._on_presence,
    Watch: Session._on_watch,
    Unwatch: Session._on_unwatch,
    Probe: Session._on_probe,
    History: Session._on_history,
}
