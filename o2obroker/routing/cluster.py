"""The publisher of a cluster: stored messages reach live devices on any node.

Each node subscribes to the channel of every user it has a live device of
(the actor tracks its user on a device's attach, untracks it when the last
one goes). Storing a batch publishes it in the same step: the backend's
append script also publishes each user's stored messages on the user's
channel, one publish per user per batch, the bytes of the inbox as they are,
so a message is encoded once, by the node that took the send. The local
actors get their messages at once, as on one node; the other nodes with
devices of a user write them to those devices without decoding them (a
binary device) or decoding them once (JSON); a node skips what it stored
itself. The receiver counts of the publishes decide ``delivered`` (some node
with a live device took it) or ``stored``. A device's hello also goes on its
user's channel, so that the same device on another node is replaced there
(409).

A user-level presence change goes on the channels of the user's watchers,
so it reaches every node where a watcher has a live device; the frame is
encoded once for all of them.

A payload is bytes: a kind (``M`` messages, ``r`` a device replaced, ``p``
a presence frame), the origin node, then what it carries; for messages the
first seq (a big-endian double) and the messages as the store packs them
(o2obroker/backend/redis/backend.py, ``pack_messages``), seqs following on.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import cbor2
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from o2obroker.backend.interface import StoredMessage
from o2obroker.backend.redis.backend import ENTRY, decode_blob, pack_messages
from o2obroker.routing.messages import Delivery
from o2obroker.routing.router import IPublisher, LocalPublisher
from o2obroker.wire import OutFrame

#: actors told to resync per reactor turn, after a resubscribe or a rejoin
RESYNC_SLICE = 500

_FIRST = struct.Struct(">d")


def messages_head(origin: bytes) -> bytes:
    """What a payload of messages from ``origin`` starts with."""
    return b"M" + bytes((len(origin),)) + origin


def encode_messages(origin: bytes, first: int, messages: list[StoredMessage]) -> bytes:
    """The payload the store publishes for messages stored from seq ``first`` on."""
    return messages_head(origin) + _FIRST.pack(first) + pack_messages(messages)


def encode_replace(origin: bytes, device: str) -> bytes:
    return b"r" + bytes((len(origin),)) + origin + device.encode()


def encode_presence(origin: bytes, frame: dict[str, Any]) -> bytes:
    return b"p" + bytes((len(origin),)) + origin + cbor2.dumps(frame)


def decode(payload: bytes) -> tuple[bytes, bytes, Any]:
    """(kind, origin, deliveries or the replaced device's name); ValueError
    for bytes that are not a whole payload."""
    kind = payload[:1]
    if kind not in (b"M", b"r", b"p") or len(payload) < 2 or len(payload) < 2 + payload[1]:
        raise ValueError("not a payload")
    n = payload[1]
    origin = payload[2 : 2 + n]
    at = 2 + n
    if kind == b"r":
        return kind, origin, payload[at:].decode()
    if kind == b"p":
        return kind, origin, OutFrame(cbor2.loads(payload[at:]))
    return kind, origin, decode_messages(payload, at)


def decode_messages(payload: bytes, at: int) -> list[Delivery]:
    """The deliveries of a messages payload from ``at`` (its first seq) on."""
    if len(payload) < at + _FIRST.size:
        raise ValueError("a truncated payload")
    (first,) = _FIRST.unpack_from(payload, at)
    seq = int(first)
    at += _FIRST.size
    items: list[Delivery] = []
    size, unpack, end = ENTRY.size, ENTRY.unpack_from, len(payload)
    while at < end:
        if at + size > end:
            raise ValueError("a truncated payload")
        _, dlen, blen = unpack(payload, at)
        at += size
        if at + dlen + blen > end:
            raise ValueError("a truncated payload")
        skip = payload[at : at + dlen].decode() if dlen else None
        at += dlen
        items.append((seq, decode_blob(payload[at : at + blen]), skip))
        at += blen
        seq += 1
    return items


@implementer(IPublisher)
class ClusterPublisher(LocalPublisher):
    """Delivery to this node's actors at once, and to the other nodes by publish.

    The store publishes what it stores, so the other nodes have their part by
    then: ``publish`` and ``settle`` are the local publisher's, for this
    node's actors (the sender's actor routed the batch: it is on this node).

    ``backend`` has ``append_publish`` (storing and publishing a batch),
    ``publish_many({user: payload})`` (firing with receiver counts) and
    ``bus`` (``subscribe``, ``unsubscribe``, ``has``, and the ``on_message``
    and ``on_ready`` seams), as RedisBackend does.
    """

    log = Logger()

    def __init__(
        self, actors: dict[str, Any], backend: Any, node_id: str, clock: IReactorTime
    ) -> None:
        super().__init__(actors, backend)
        self._clock = clock
        # users whose actors are still to be told to resync, each once
        self._resync: deque[str] = deque()
        self._queued: set[str] = set()
        self._resyncing: IDelayedCall | None = None
        # what a pass waits for before it starts, while it waits
        self._gate: Deferred[object] | None = None
        #: called before a pass starts; the pass waits for its Deferred. The
        #: node beats here, so that a record lapsed with the same outage (a
        #: Redis restart) is found now and its rejoin joins this pass
        self.before_resync: Callable[[], Deferred[object]] | None = None
        self._bus = bus = backend.bus
        self._origin = node_id.encode()
        self._head = messages_head(self._origin)
        # the last presence payload and its frame: a change is published once
        # per watcher, and a node with many of them decodes it once
        self._last_presence: tuple[bytes, OutFrame] | None = None
        bus.on_message = self.received
        bus.on_ready = self.resubscribed

    # -- IPublisher ------------------------------------------------------------

    def store(
        self, inboxes: dict[str, list[StoredMessage]], skips: dict[str, list[str | None]]
    ) -> Deferred[tuple[dict[str, list[int]], set[str]]]:
        d = self._backend.append_publish(inboxes, skips, self._head)

        def counted(stored: tuple[dict[str, list[int]], dict[str, int]]) -> Any:
            seqs, counts = stored
            has = self._bus.has
            # this node's own subscription is counted too: its actor answers in publish
            elsewhere = {u for u, n in counts.items() if n > 1 or (n == 1 and not has(u))}
            return seqs, elsewhere

        return d.addCallback(counted)

    def track(self, user: str) -> Deferred[None]:
        return self._bus.subscribe(user)

    def untrack(self, user: str) -> None:
        self._bus.unsubscribe(user)

    def replace(self, user: str, device: str) -> None:
        d = self._backend.publish_many({user: encode_replace(self._origin, device)})
        d.addErrback(
            lambda f: self.log.warn(
                "telling other nodes of {user}/{device} failed: {why}",
                user=user,
                device=device,
                why=f.getErrorMessage(),
            )
        )

    def presence(self, frame: dict[str, Any], watchers: frozenset[str]) -> None:
        """Publish a user-level presence change on its watchers' channels: the
        nodes with a live device of a watcher hand it to that watcher's actor."""
        payload = encode_presence(self._origin, frame)
        d = self._backend.publish_many(dict.fromkeys(watchers, payload))
        d.addErrback(
            lambda f: self.log.warn(
                "publishing presence of {user} failed: {why}",
                user=frame.get("user"),
                why=f.getErrorMessage(),
            )
        )

    # -- from the bus -------------------------------------------------------------

    def received(self, user: str, payload: bytes) -> None:
        """What another node published for ``user``; never raises."""
        last = self._last_presence
        if last is not None and payload == last[0]:
            actor = self._actors.get(user)
            if actor is not None:
                actor.tell(("presence_out", last[1]))
            return
        try:
            kind, origin, what = decode(payload)
        except Exception:
            self.log.failure("a bad payload on the channel of {user}", user=user)
            return
        if origin == self._origin:
            return  # handed to the actor when it was published
        actor = self._actors.get(user)
        if actor is None:
            return
        if kind == b"M":
            if what:
                actor.deliver(what)
        elif kind == b"r":
            actor.displaced(what)
        elif kind == b"p":
            self._last_presence = (payload, what)
            actor.tell(("presence_out", what))

    def resubscribed(self, users: list[str]) -> None:
        """Channels subscribed again after a reconnect: what was published in
        between is lost, so each actor reads its inbox from what it wrote."""
        self.resync(users)

    def rejoined(self, users: list[str]) -> None:
        """This node's registry record had lapsed: peers may have swept its
        presence parts and device locations, so each actor records them again."""
        self.resync(users)

    def resync(self, users: list[str]) -> None:
        """Tell the actors of ``users`` to resync, ``RESYNC_SLICE`` a reactor
        turn, not every user at once. Both triggers want the same pass (an
        actor's resync records its state again and reads its inbox), so a
        user already waiting for one is not queued again: after a Redis
        restart, which brings both, each user is resynced once."""
        queue, queued = self._resync, self._queued
        for user in users:
            if user not in queued:
                queued.add(user)
                queue.append(user)
        if not queue or self._resyncing is not None or self._gate is not None:
            return
        if self.before_resync is None:
            self._resyncing = self._clock.callLater(0, self._resync_some)
            return
        self._gate = gate = maybeDeferred(self.before_resync)
        gate.addErrback(lambda f: self.log.warn("before a resync: {why}", why=f.getErrorMessage()))
        gate.addBoth(self._gate_open)

    def _gate_open(self, _: object) -> None:
        self._gate = None
        if self._resync and self._resyncing is None:
            self._resync_some()

    def _resync_some(self) -> None:
        self._resyncing = None
        queue, queued, actors = self._resync, self._queued, self._actors
        ready_for = self._bus.ready_for
        for _ in range(min(RESYNC_SLICE, len(queue))):
            user = queue.popleft()
            queued.discard(user)
            actor = actors.get(user)
            # a user whose subscriber is away now is named again when it is back
            if actor is not None and ready_for(user):
                actor.resync()
        if queue:
            self._resyncing = self._clock.callLater(0, self._resync_some)
