"""The backend contract: one interface, an in-memory and a Redis implementation.

Every call returns a Deferred, even where the in-memory backend could answer at
once, so that a networked implementation fits without changing any caller.
Calls take lists where a caller may have many items at once: the per-user actors
batch their work, and one call per batch keeps Deferreds off the per-message path.

Any call may fail. A backend on the network fails a call with
``BackendUnavailable`` (wrap it in ``TimeoutBackend`` so that a call that never
answers fails too); callers answer what the call carried with an error and keep
nothing half-done. Only ``append_many`` refuses on purpose, with ``StoreFull``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import cbor2
from zope.interface import Attribute, Interface

from o2obroker.wire import MessageTemplate


class BackendUnavailable(Exception):
    """A backend call failed or timed out; it may or may not have been applied.

    Callers answer the client with an error it may retry: sends carry ids, and
    a retried id is deduplicated, so a call that did apply is not applied twice.
    """


class StoreFull(Exception):
    """``append_many`` refused some inboxes: the stored-bytes cap (per user or
    node-wide), or the store's own memory, has no room for their messages.

    ``refused`` holds the users whose messages were not stored (none of them),
    or None when the store cannot tell which (Redis out of memory): then take
    it that nothing of the call was stored. ``stored`` maps every other user
    of the call to its seqs, as a successful call would have: they are stored.
    """

    def __init__(
        self,
        refused: frozenset[str] | None = None,
        stored: dict[str, list[int]] | None = None,
        reason: str = "store full",
    ) -> None:
        super().__init__(reason)
        self.refused = refused
        self.stored = stored if stored is not None else {}


class StoredMessage(MessageTemplate):
    """One inbox entry, as kept for a user: the msg frame minus its seq.

    ``fields`` is the frame a recipient gets without ``seq`` (mid, from,
    from_device, to or room, body, ts). The entry is its own template: the
    encodings of everything but the seq are made once, on first use, and
    spliced with each recipient's seq. Backends that serialise a message keep
    ``fields`` and rebuild the entry from them.

    ``size`` is what the entry counts against the stored-bytes caps: its
    encoded size as far as it is known without encoding it again (the body's
    size from decoding the send, plus the other fields); a backend that
    serialises the entry may count the serialised length instead.
    """

    __slots__ = ("mid", "size", "ts")

    def __init__(self, mid: str, ts: int, fields: dict[str, Any], size: int = 0) -> None:
        MessageTemplate.__init__(self, fields)
        self.mid = mid
        self.ts = ts
        self.size = size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredMessage):
            return NotImplemented
        return (self.mid, self.ts, self.fields) == (other.mid, other.ts, other.fields)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StoredMessage({self.mid!r}, {self.ts!r}, {self.fields!r})"


class EncodedMessage(StoredMessage):
    """A stored message as a store or another node hands it over: the CBOR
    map of its fields (``cbor_map()``), decoded only when something reads
    them (a JSON device, a hook, a resume that skips a device's own room
    messages). A binary device is written the bytes as they came.
    """

    __slots__ = ()

    def __init__(self, blob: bytes) -> None:
        # fields, mid and ts stay unset until read: see __getattr__
        self.adopt_cbor_map(blob)
        self._json_rest = None
        self.size = len(blob)

    def __getattr__(self, name: str) -> Any:
        # only reached for a slot not set yet: the decoded fields
        if name not in _DECODED:
            raise AttributeError(name)
        fields = cbor2.loads(self.cbor_map())
        if not isinstance(fields, dict):
            raise ValueError("a stored message is not a map")
        self.fields = self._rest = fields
        self.mid = fields.get("mid", "")
        self.ts = fields.get("ts", 0)
        return getattr(self, name)


_DECODED = frozenset({"fields", "_rest", "mid", "ts"})


@dataclass(frozen=True, slots=True)
class InboxState:
    """What a resuming device needs to know about a user's inbox."""

    last: int  # highest seq ever given (0 if none)
    first: int  # lowest seq still kept (last + 1 when the inbox is empty)
    epoch: str  # changes when the store is reset; a cursor from another epoch is void


class Receipt(NamedTuple):
    """The answer to an accepted send, kept so that a retried id gets it again."""

    mid: str
    ts: int
    status: str | None  # None while the first delivery is still under way


@dataclass(frozen=True, slots=True)
class Presence:
    """A user's presence as watchers see it (doc/protocol.md section 5).

    ``devices`` counts the devices that are not invisible, so an invisible user
    looks exactly like one with no device. ``ts`` (ms since the epoch) is when
    ``state`` or ``status`` last changed.
    """

    state: str = "offline"
    status: str = ""
    devices: int = 0
    ts: int = 0


OFFLINE = Presence()


class Location(NamedTuple):
    """Where a live device is: a node, and which start of it (its boot id).

    A node restarted under the same id gets a new boot id, so what its
    previous life left behind (presence parts, locations) never passes for
    the new one's.
    """

    node: str
    boot: str


class Resynced(NamedTuple):
    """What ``IBackend.resync`` found for one user."""

    #: the user-level presence (before, after), as ``merge_presence`` gives it
    presence: tuple[Presence, Presence]
    #: the devices a live node located since, which this node is to replace
    elsewhere: dict[str, Location]
    #: the highest seq of the user's inbox: a device written up to it missed nothing
    last: int


class IBackend(Interface):
    """Cluster-wide state. Every method returns a Deferred."""

    node_id = Attribute("This node's id.")
    boot = Attribute("The id of this start of the node, new every time the backend is made.")

    def append_many(inboxes: dict[str, list[StoredMessage]]) -> Any:
        """Store messages in the inboxes of many users, one call for a whole batch.

        Fire with {user: seqs given, in the order of its messages}. Each user's
        messages are stored all or none. Fails with ``StoreFull`` when the
        stored-bytes cap refuses some users (the others are stored, see
        StoreFull), with ``BackendUnavailable`` when the call failed: then any
        of the users' messages may or may not be stored.
        """

    def append(user: str, messages: list[StoredMessage]) -> Any:
        """``append_many`` for one user: fire with the list of seqs given.
        Fails like append_many (StoreFull, BackendUnavailable)."""

    def read(user: str, after: int, limit: int) -> Any:
        """Fire with up to ``limit`` (seq, StoredMessage) pairs with seq > after, in order.
        Fails with BackendUnavailable."""

    def inbox_state(user: str) -> Any:
        """Fire with the user's InboxState. Fails with BackendUnavailable."""

    def cursor(user: str, device: str) -> Any:
        """Fire with the device's cursor, or, for a device never seen, the highest
        cursor of the user's other devices (0 if none). Fails with BackendUnavailable."""

    def ack(user: str, device: str, seq: int) -> Any:
        """Move the device's cursor to ``seq`` (never backwards; clamped to the
        inbox's last seq) and drop what every recent device has acknowledged.
        Fire with the new cursor. Fails with BackendUnavailable (the cursor
        may or may not have moved)."""

    def set_cursor(user: str, device: str, seq: int) -> Any:
        """Set the device's cursor to ``min(seq, last)``, backwards too (a resume
        says where the device really is), and mark the device as seen. Moving
        back drops nothing; moving forward drops what every recent device has
        acknowledged, as ``ack`` does. Fire with the new cursor. Fails with
        BackendUnavailable."""

    def claim(user: str, ts: int, claims: list[tuple[str, str]]) -> Any:
        """Record (send id, mid) pairs accepted at ``ts``, for ids that are new;
        keep the first record of an id seen before. Fire with a list holding
        None for each new id and the kept Receipt for each repeated one.
        Fails with BackendUnavailable (the ids may or may not be recorded)."""

    def settle(user: str, statuses: dict[str, str]) -> Any:
        """Record the final status of accepted send ids. Fails with
        BackendUnavailable; an id left unsettled is delivered again, under
        its first mid, when it is retried."""

    def join(room: str, user: str) -> Any:
        """Make user a member of room; fire with the member count.
        Fails with BackendUnavailable."""

    def leave(room: str, user: str) -> Any:
        """Remove user from room; fire with the member count left.
        Fails with BackendUnavailable."""

    def members(room: str) -> Any:
        """Fire with the set of member user ids (empty when the room does not exist).
        Fails with BackendUnavailable."""

    def set_presence(user: str, presence: Presence) -> Any:
        """Record the user-level presence of ``user`` (OFFLINE forgets it).

        An offline record with a ``ts`` is kept: a watch with ``since`` must
        learn that a user went offline after that time. Fails with
        BackendUnavailable."""

    def merge_presence(user: str, part: Presence) -> Any:
        """Record this node's part of ``user``'s presence (its devices folded into
        one Presence; offline with no device removes it) and fire with the
        user-level (before, after): ``before`` is what watchers last heard of,
        ``after`` the parts of every live node merged by the rule of
        doc/protocol.md section 5, the status text of the latest part winning.
        A node whose heartbeat lapsed counts as having no device. ``after.ts``
        moves to ``part.ts`` only when state or status changed; a publish is
        due only then. Fails with BackendUnavailable."""

    def sweep_presence(limit: int) -> Any:
        """Remove the presence parts and device locations of up to ``limit``
        users of one dead node (its heartbeat lapsed, or it was started again
        under a new boot id), and fire with {user: (before, after)} as
        ``merge_presence`` would for each, so that their watchers hear of what
        changed. Fires with {} when no dead node has anything left. Fails with
        BackendUnavailable."""

    def locate(user: str, device: str) -> Any:
        """Record that ``device`` of ``user`` is live on this node (this boot),
        and fire with where it was live before if that was another node or
        boot (a Location: where to replace it), else None. The last call for
        a device wins, so of two hellos on two nodes exactly one replaces the
        other. Fails with BackendUnavailable."""

    def unlocate(user: str, device: str) -> Any:
        """Forget the location of ``device`` of ``user`` if it is still this
        node's (a device that moved on is left where it went).
        Fails with BackendUnavailable."""

    def relocate(user: str, devices: list[str]) -> Any:
        """Locate ``devices`` of ``user`` here again where their location was
        lost (swept, or left by a dead node), but not where a live node located
        one since (a later hello there wins): fire with {device: Location} of
        those, which this node is to replace. Fails with BackendUnavailable."""

    def resync(user: str, part: Presence, devices: list[str]) -> Any:
        """After a resubscribe or a rejoin: ``merge_presence(user, part)`` and
        ``relocate(user, devices)`` in one step, and the inbox's highest seq;
        fire with a Resynced. A networked backend gathers the calls of a
        reactor turn into a few round trips for all their users, so a node
        resyncing many users does not pay several per user. Fails with
        BackendUnavailable."""

    def locations(users: list[str]) -> Any:
        """Fire with {user: {device: Location}} of the devices live on live
        nodes, leaving out users with none. Fails with BackendUnavailable."""

    def presence(users: list[str]) -> Any:
        """Fire with {user: Presence} for every user asked (OFFLINE when unknown).
        Fails with BackendUnavailable."""

    def watch(watcher: str, users: list[str], cap: int) -> Any:
        """Add users to the watch list of ``watcher``. Fire with True, or with
        False and no change when the list would pass ``cap`` users.
        Fails with BackendUnavailable."""

    def unwatch(watcher: str, users: list[str]) -> Any:
        """Remove users from the watch list of ``watcher``. Fails with BackendUnavailable."""

    def watching(watcher: str) -> Any:
        """Fire with the frozenset of users on the watch list of ``watcher``.
        Fails with BackendUnavailable."""

    def watchers(users: list[str]) -> Any:
        """Fire with {user: frozenset of watchers}, leaving out users nobody watches.
        Fails with BackendUnavailable."""

    def heartbeat(record: dict[str, Any], ttl: float) -> Any:
        """Publish this node's registry record (JSON-able: id, addresses, load),
        alive for ``ttl`` seconds from now unless beaten again. The record
        kept gets ``boot`` (this start's id) and ``expires`` (when it lapses,
        seconds since the epoch on this node's clock) added. Fire with True
        when this boot's record was alive until now, False when it is new or
        had lapsed: then peers may have swept what this node keeps in the
        backend (presence parts, locations), and it is to record them again.
        Fails with BackendUnavailable."""

    def nodes() -> Any:
        """Fire with the records of every live node (their ttl not yet passed),
        ordered by id, each with its ``boot`` and ``expires``; a record past
        its ttl is forgotten. Fails with BackendUnavailable."""

    def depart() -> Any:
        """Remove this node's record at once (a clean stop): peers need not wait
        for its ttl. Fails with BackendUnavailable."""
