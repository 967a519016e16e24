"""The cross-node bus: one subscriber connection per Redis server, kept subscribed.

A node subscribes to the channel of each user it has a live device of, and
every node publishes stored messages on their recipients' channels (through
the command connection: ``RedisBackend.publish_many``). The subscriber is its
own small RESP client on hiredis rather than txredisapi's: that one neither
resubscribes after a reconnect nor keeps the confirmations of a multi-channel
SUBSCRIBE apart, and both are the whole job here.

Each subscriber's state is declared in ``TRANSITIONS``. After every (re)connect
it subscribes again to every channel wanted, in SUBSCRIBE batches of at most
``BATCH`` channels, and only once each is confirmed is it ``ready``: then
``on_ready`` is told the channels, because pub/sub keeps nothing published
while a connection was down and those users' inboxes must be read again.
While not ready, a new subscription fails at once (the caller answers 503),
as every other backend call does while its server is unreachable. A PING
every ``ping_interval`` seconds that gets no answer by the next one replaces
the connection: a half-open link would otherwise deliver nothing, silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import hiredis
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from o2obroker.backend.interface import BackendUnavailable
from o2obroker.backend.redis.shard import make_endpoint
from o2obroker.backend.redis.url import RedisTarget

#: channels one SUBSCRIBE or UNSUBSCRIBE names at most
BATCH = 512

# state -> states it may go to, with what the log says on the way
TRANSITIONS: dict[str, dict[str, str | None]] = {
    "idle": {"connecting": None, "stopped": None},
    "connecting": {"resubscribing": None, "down": None, "stopped": None},
    "resubscribing": {
        "ready": "redis {name} subscriber: subscribed to {n} channels",
        "down": "redis {name} subscriber: connection lost ({why}) while subscribing",
        "stopped": None,
    },
    "ready": {
        "down": "redis {name} subscriber: connection lost ({why}); resubscribing when back",
        "stopped": None,
    },
    "down": {"resubscribing": None, "stopped": None},
    "stopped": {},
}


def command(*args: bytes) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _SubscriberProtocol(Protocol):
    def __init__(self, owner: Subscriber) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()

    def connectionMade(self) -> None:
        self.owner._connected(self)

    def dataReceived(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while True:
            reply = reader.gets()
            if reply is False:
                return
            self.owner._reply(self, reply)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.owner._lost(self, reason)

    def send(self, *args: bytes) -> None:
        self.transport.write(command(*args))


class _Factory(Factory):
    noisy = False

    def __init__(self, owner: Subscriber) -> None:
        self.owner = owner

    def buildProtocol(self, addr: Any) -> _SubscriberProtocol:
        p = _SubscriberProtocol(self.owner)
        p.factory = self
        return p


class Subscriber:
    """The subscriptions of this node on one Redis server, kept across reconnects."""

    log = Logger()

    def __init__(
        self,
        target: RedisTarget,
        reactor: Any,
        on_message: Callable[[bytes, bytes], None],
        on_ready: Callable[[list[bytes]], None],
        *,
        timeout: float = 5.0,
        ca: str | None = None,
        ping_interval: float = 10.0,
    ) -> None:
        self.name = target.name
        self.target = target
        self._reactor = reactor
        self.on_message = on_message
        self.on_ready = on_ready
        self.state = "idle"
        #: the channels this node wants, whatever the connection's state
        self.wanted: set[bytes] = set()
        self._conn: _SubscriberProtocol | None = None
        self._auth_pending = False
        self._unconfirmed: set[bytes] = set()
        # channel -> subscribe or unsubscribe, sent at the end of this reactor turn
        self._ops: dict[bytes, bool] = {}
        self._waiting: dict[bytes, list[Deferred[None]]] = {}
        self._flush: Any = None
        self._pong = True
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = reactor
        self._ping_interval = ping_interval
        self._service = ClientService(
            make_endpoint(reactor, target, ca, timeout),
            _Factory(self),
            retryPolicy=self._retry_delay,
            clock=reactor,
        )

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _enter(self, state: str, why: str = "") -> None:
        if state == self.state or state not in TRANSITIONS[self.state]:
            return
        message = TRANSITIONS[self.state][state]
        self.state = state
        if message:
            level = self.log.info if state == "ready" else self.log.warn
            level(message, name=self.name, why=why, n=len(self.wanted))

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        self._enter("connecting")
        self._service.startService()
        if self._ping_interval:
            self._pinger.start(self._ping_interval, now=False)

    def stop(self) -> Deferred[None]:
        self._enter("stopped")
        if self._pinger.running:
            self._pinger.stop()
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._fail_waiting("stopped")
        return self._service.stopService()

    def _retry_delay(self, attempt: int) -> float:
        return float(min(0.5 * 2 ** min(attempt - 1, 10), 10.0))

    def _connected(self, conn: _SubscriberProtocol) -> None:
        if self.state == "stopped":
            conn.transport.loseConnection()
            return
        self._conn = conn
        self._pong = True
        self._enter("resubscribing")
        t = self.target
        if t.password is not None:
            self._auth_pending = True
            user = [t.username.encode()] if t.username else []
            conn.send(b"AUTH", *user, t.password.encode())
        self._ops.clear()
        self._unconfirmed = set(self.wanted)
        if not self._unconfirmed:
            self._ready()
            return
        self._send(conn, b"SUBSCRIBE", self._unconfirmed)

    def _ready(self) -> None:
        self._enter("ready")
        if self.wanted:
            self.on_ready(sorted(self.wanted))

    def _lost(self, conn: _SubscriberProtocol, reason: Failure | None) -> None:
        if self._conn is not conn:
            return
        self._conn = None
        why = reason.getErrorMessage() if reason is not None else "closed"
        self._enter("down", why)
        self._ops.clear()
        self._fail_waiting(why)

    def _fail_waiting(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for ds in waiting.values():
            for d in ds:
                d.errback(BackendUnavailable(f"redis {self.name} subscriber: {why}"))

    def _ping(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if not self._pong:
            # the last PING is unanswered: a stuck or half-open link
            conn.transport.abortConnection()
            return
        self._pong = False
        conn.send(b"PING")

    # -- subscriptions ---------------------------------------------------------

    def subscribe(self, channel: bytes) -> Deferred[None]:
        """Fires once the channel is subscribed; fails at once while not ready."""
        if self.state != "ready":
            return fail(BackendUnavailable(f"redis {self.name} subscriber: {self.state}"))
        if channel in self.wanted and self._ops.get(channel) is None:
            waiting = self._waiting.get(channel)
            if waiting is None:
                return succeed(None)
        else:
            self.wanted.add(channel)
            self._ops[channel] = True
            self._schedule()
        d: Deferred[None] = Deferred()
        self._waiting.setdefault(channel, []).append(d)
        return d

    def unsubscribe(self, channel: bytes) -> None:
        self.wanted.discard(channel)
        if self._conn is None:
            return  # the next connection subscribes to what is wanted then
        if self._ops.get(channel) is True:
            # never sent: nobody waits for its confirmation any more
            for d in self._waiting.pop(channel, ()):
                d.callback(None)
        self._ops[channel] = False
        self._schedule()

    def _schedule(self) -> None:
        if self._flush is None or not self._flush.active():
            self._flush = self._reactor.callLater(0, self._send_ops)

    def _send_ops(self) -> None:
        conn, ops = self._conn, self._ops
        if conn is None or not ops:
            return
        self._ops = {}
        subs = [c for c, on in ops.items() if on]
        unsubs = [c for c, on in ops.items() if not on]
        if unsubs:
            self._send(conn, b"UNSUBSCRIBE", unsubs)
        if subs:
            self._send(conn, b"SUBSCRIBE", subs)

    @staticmethod
    def _send(conn: _SubscriberProtocol, verb: bytes, channels: Iterable[bytes]) -> None:
        channels = list(channels)
        for i in range(0, len(channels), BATCH):
            conn.send(verb, *channels[i : i + BATCH])

    def _reply(self, conn: _SubscriberProtocol, reply: Any) -> None:
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"message":
                self.on_message(reply[1], reply[2])
            elif kind == b"subscribe":
                self._confirmed(reply[1])
            elif kind == b"pong":
                self._pong = True
            return
        if reply == b"PONG":
            # subscribed to no channel, the link is not in subscribe mode: a plain +PONG
            self._pong = True
            return
        if self._auth_pending:
            self._auth_pending = False
            if isinstance(reply, Exception):
                self.log.warn(
                    "redis {name} subscriber: login refused ({why}); retrying",
                    name=self.name,
                    why=str(reply),
                )
                conn.transport.abortConnection()
            return
        if isinstance(reply, Exception):
            self.log.warn("redis {name} subscriber: {why}", name=self.name, why=str(reply))

    def _confirmed(self, channel: bytes) -> None:
        for d in self._waiting.pop(channel, ()):
            d.callback(None)
        if self.state == "resubscribing":
            self._unconfirmed.discard(channel)
            if not self._unconfirmed:
                self._ready()

    def has(self, channel: bytes) -> bool:
        """Whether this node is subscribed to ``channel`` now (confirmed)."""
        return self.state == "ready" and channel in self.wanted and channel not in self._waiting


class Bus:
    """The subscribers of a node, one per Redis server, channels placed like users' keys.

    ``on_message(user, payload)`` gets what is published to a user's channel;
    ``on_ready(users)`` the users whose channels were subscribed again after a
    reconnect (what was published meanwhile is lost: read their inboxes).
    """

    def __init__(
        self,
        targets: list[RedisTarget],
        reactor: Any,
        place: Callable[[str], int],
        channel: Callable[[str], bytes],
        *,
        timeout: float = 5.0,
        ca: str | None = None,
        ping_interval: float = 10.0,
    ) -> None:
        self._place = place
        self._channel = channel
        self.on_message: Callable[[str, bytes], None] = lambda user, payload: None
        self.on_ready: Callable[[list[str]], None] = lambda users: None
        self.subscribers = [
            Subscriber(
                t,
                reactor,
                self._message,
                self._ready,
                timeout=timeout,
                ca=ca,
                ping_interval=ping_interval,
            )
            for t in targets
        ]
        # the channel's prefix, to find the user in a channel name
        head, _, tail = channel("\0").partition(b"\0")
        self._head, self._tail = len(head), len(tail)

    @property
    def ready(self) -> bool:
        return all(s.ready for s in self.subscribers)

    def start(self) -> None:
        for s in self.subscribers:
            s.start()

    def stop(self) -> Deferred[Any]:
        from twisted.internet.defer import DeferredList

        return DeferredList([s.stop() for s in self.subscribers])

    def _user(self, channel: bytes) -> str:
        return channel[self._head : len(channel) - self._tail].decode()

    def _message(self, channel: bytes, payload: bytes) -> None:
        self.on_message(self._user(channel), payload)

    def _ready(self, channels: list[bytes]) -> None:
        self.on_ready([self._user(c) for c in channels])

    def subscribe(self, user: str) -> Deferred[None]:
        return self.subscribers[self._place(user)].subscribe(self._channel(user))

    def unsubscribe(self, user: str) -> None:
        self.subscribers[self._place(user)].unsubscribe(self._channel(user))

    def has(self, user: str) -> bool:
        return self.subscribers[self._place(user)].has(self._channel(user))

    def ready_for(self, user: str) -> bool:
        """Whether the subscriber of ``user``'s channel is subscribed to all it
        wants (when it is not, its ``on_ready`` names the user later)."""
        return self.subscribers[self._place(user)].ready
