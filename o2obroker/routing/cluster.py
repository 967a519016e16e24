"""The publisher of a cluster: stored messages reach live devices on any node.

Each node subscribes to the channel of every user it has a live device of
(the actor tracks its user on a device's attach, untracks it when the last
one goes). Publishing a batch hands each user's stored messages to the local
actor at once, as on one node, and publishes them on the user's channel, one
script per Redis server for the whole batch, so the other nodes with devices
of that user write them too; a node skips what it published itself. The
receiver counts decide ``delivered`` (some node with a live device took it)
or ``stored``. A device's hello also goes on its user's channel, so that the
same device on another node is replaced there (409).

A user-level presence change goes on the channels of the user's watchers,
so it reaches every node where a watcher has a live device; the frame is
encoded once for all of them.

A payload is bytes: a kind (``m`` messages, ``r`` a device replaced, ``p``
a presence frame), the origin node, then the entries, each message encoded
once for all its recipients.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

import cbor2
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from o2obroker.backend.interface import StoredMessage
from o2obroker.routing.messages import Delivery, Settlement
from o2obroker.routing.router import IPublisher
from o2obroker.wire import OutFrame

#: actors told to read their inboxes again per reactor turn, after a resubscribe
RESYNC_SLICE = 500

_ENTRY = struct.Struct(">QBI")  # seq, length of the skipped device, length of the message


def encode_messages(origin: bytes, items: list[Delivery], blobs: dict[int, bytes]) -> bytes:
    """A user's deliveries as a payload; ``blobs`` caches each message's encoding
    by identity, so a room message is encoded once for all its members."""
    out = [b"m", bytes((len(origin),)), origin]
    for seq, message, skip in items:
        blob = blobs.get(id(message))
        if blob is None:
            blob = blobs[id(message)] = cbor2.dumps([message.mid, message.ts, message.fields])
        device = skip.encode() if skip is not None else b""
        out += (_ENTRY.pack(seq, len(device), len(blob)), device, blob)
    return b"".join(out)


def encode_replace(origin: bytes, device: str) -> bytes:
    return b"r" + bytes((len(origin),)) + origin + device.encode()


def encode_presence(origin: bytes, frame: dict[str, Any]) -> bytes:
    return b"p" + bytes((len(origin),)) + origin + cbor2.dumps(frame)


def decode(payload: bytes) -> tuple[bytes, bytes, Any]:
    """(kind, origin, deliveries or the replaced device's name); ValueError
    for bytes that are not a whole payload."""
    kind = payload[:1]
    if kind not in (b"m", b"r", b"p") or len(payload) < 2 or len(payload) < 2 + payload[1]:
        raise ValueError("not a payload")
    n = payload[1]
    origin = payload[2 : 2 + n]
    at = 2 + n
    if kind == b"r":
        return kind, origin, payload[at:].decode()
    if kind == b"p":
        return kind, origin, OutFrame(cbor2.loads(payload[at:]))
    items: list[Delivery] = []
    size = _ENTRY.size
    while at < len(payload):
        seq, dlen, blen = _ENTRY.unpack_from(payload, at)
        at += size
        if at + dlen + blen > len(payload):
            raise ValueError("a truncated payload")
        skip = payload[at : at + dlen].decode() if dlen else None
        at += dlen
        mid, ts, fields = cbor2.loads(payload[at : at + blen])
        at += blen
        items.append((seq, StoredMessage(mid, ts, fields, blen), skip))
    return kind, origin, items


@implementer(IPublisher)
class ClusterPublisher:
    """Delivery to this node's actors at once, and to the other nodes by publish.

    ``backend`` has ``publish_many({user: payload})`` (firing with receiver
    counts) and ``bus`` (``subscribe``, ``unsubscribe``, ``has``, and the
    ``on_message`` and ``on_ready`` seams), as RedisBackend does.
    """

    log = Logger()

    def __init__(
        self, actors: dict[str, Any], backend: Any, node_id: str, clock: IReactorTime
    ) -> None:
        self._actors = actors
        self._clock = clock
        # users whose actors are still to be told to read their inboxes again
        self._resync: deque[str] = deque()
        self._resyncing: IDelayedCall | None = None
        self._backend = backend
        self._bus = bus = backend.bus
        self._origin = node_id.encode()
        # the last presence payload and its frame: a change is published once
        # per watcher, and a node with many of them decodes it once
        self._last_presence: tuple[bytes, OutFrame] | None = None
        bus.on_message = self.received
        bus.on_ready = self.resubscribed

    # -- IPublisher ------------------------------------------------------------

    def publish(self, deliveries: dict[str, list[Delivery]]) -> Deferred[set[str]]:
        reached = set()
        actors = self._actors
        payloads = {}
        blobs: dict[int, bytes] = {}
        origin = self._origin
        for user, items in deliveries.items():
            actor = actors.get(user)
            if actor is not None:
                actor.deliver(items)
                if actor.reachable():
                    reached.add(user)
            payloads[user] = encode_messages(origin, items, blobs)
        d = self._backend.publish_many(payloads)

        def counted(counts: dict[str, int]) -> set[str]:
            has = self._bus.has
            for user, n in counts.items():
                # this node's own subscription is counted too: its actor answered above
                if n > 1 or (n == 1 and not has(user)):
                    reached.add(user)
            return reached

        def failed(f: Failure) -> set[str]:
            # stored is stored: the other nodes' devices get these at their next
            # resume, or when a later message shows them the gap
            self.log.warn("publishing to other nodes failed: {why}", why=f.getErrorMessage())
            return reached

        return d.addCallbacks(counted, failed)

    def settle(self, user: str, settlement: Settlement) -> None:
        # the sender's actor routed the batch: it is on this node
        actor = self._actors.get(user)
        if actor is not None:
            actor.settled(settlement)

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
        if kind == b"m":
            if what:
                actor.deliver(what)
        elif kind == b"r":
            actor.displaced(what)
        elif kind == b"p":
            self._last_presence = (payload, what)
            actor.tell(("presence_out", what))

    def resubscribed(self, users: list[str]) -> None:
        """Channels subscribed again after a reconnect: what was published in
        between is lost, so each actor reads its inbox from what it wrote;
        ``RESYNC_SLICE`` actors a reactor turn, not every user at once."""
        self._resync.extend(users)
        if self._resyncing is None:
            self._resyncing = self._clock.callLater(0, self._resync_some)

    def _resync_some(self) -> None:
        self._resyncing = None
        queue, actors = self._resync, self._actors
        for _ in range(min(RESYNC_SLICE, len(queue))):
            actor = actors.get(queue.popleft())
            if actor is not None:
                actor.resync()
        if queue:
            self._resyncing = self._clock.callLater(0, self._resync_some)
