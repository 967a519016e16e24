"""The backend contract: one interface, an in-memory and a Redis implementation.

Every call returns a Deferred, even where the in-memory backend could answer at
once, so that a networked implementation fits without changing any caller.
Calls take lists where a caller may have many items at once: the per-user actors
batch their work, and one call per batch keeps Deferreds off the per-message path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from zope.interface import Attribute, Interface

from o2obroker.wire import MessageTemplate


class StoredMessage(MessageTemplate):
    """One inbox entry, as kept for a user: the msg frame minus its seq.

    ``fields`` is the frame a recipient gets without ``seq`` (mid, from,
    from_device, to or room, body, ts). The entry is its own template: the
    encodings of everything but the seq are made once, on first use, and
    spliced with each recipient's seq. Backends that serialise a message keep
    ``fields`` and rebuild the entry from them.
    """

    __slots__ = ("mid", "ts")

    def __init__(self, mid: str, ts: int, fields: dict[str, Any]) -> None:
        MessageTemplate.__init__(self, fields)
        self.mid = mid
        self.ts = ts

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredMessage):
            return NotImplemented
        return (self.mid, self.ts, self.fields) == (other.mid, other.ts, other.fields)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StoredMessage({self.mid!r}, {self.ts!r}, {self.fields!r})"


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
    """A user's presence as watchers see it (PROTOCOL.md section 5).

    ``devices`` counts the devices that are not invisible, so an invisible user
    looks exactly like one with no device. ``ts`` (ms since the epoch) is when
    ``state`` or ``status`` last changed.
    """

    state: str = "offline"
    status: str = ""
    devices: int = 0
    ts: int = 0


OFFLINE = Presence()


class BackendUnavailable(Exception):
    """A backend call failed or timed out; it may or may not have been applied.

    Callers answer the client with an error it may retry: sends carry ids, and
    a retried id is deduplicated, so a call that did apply is not applied twice.
    """


class StoreFull(Exception):
    """The store refused a write: it is out of memory. Nothing of the call was
    applied; the write may succeed once inboxes have been read and trimmed."""


class IBackend(Interface):
    """Cluster-wide state. Every method returns a Deferred."""

    node_id = Attribute("This node's id.")

    def append(user: str, messages: list[StoredMessage]) -> Any:
        """Store messages in the user's inbox; fire with the list of seqs given."""

    def append_many(inboxes: dict[str, list[StoredMessage]]) -> Any:
        """Store messages in several users' inboxes in one call; fire with
        {user: list of seqs given}, like ``append`` for each user."""

    def read(user: str, after: int, limit: int) -> Any:
        """Fire with up to ``limit`` (seq, StoredMessage) pairs with seq > after, in order."""

    def inbox_state(user: str) -> Any:
        """Fire with the user's InboxState."""

    def cursor(user: str, device: str) -> Any:
        """Fire with the device's cursor, or, for a device never seen, the highest
        cursor of the user's other devices (0 if none)."""

    def ack(user: str, device: str, seq: int) -> Any:
        """Move the device's cursor to ``seq`` (never backwards; clamped to the
        inbox's last seq) and drop what every recent device has acknowledged.
        Fire with the new cursor."""

    def set_cursor(user: str, device: str, seq: int) -> Any:
        """Set the device's cursor to min(seq, the inbox's last seq), even
        backwards (a client resuming from an older position). Fire with it."""

    def claim(user: str, ts: int, claims: list[tuple[str, str]]) -> Any:
        """Record (send id, mid) pairs accepted at ``ts``, for ids that are new;
        keep the first record of an id seen before. Fire with a list holding
        None for each new id and the kept Receipt for each repeated one."""

    def settle(user: str, statuses: dict[str, str]) -> Any:
        """Record the final status of accepted send ids."""

    def join(room: str, user: str) -> Any:
        """Make user a member of room; fire with the member count."""

    def leave(room: str, user: str) -> Any:
        """Remove user from room; fire with the member count left."""

    def members(room: str) -> Any:
        """Fire with the set of member user ids (empty when the room does not exist)."""

    def set_presence(user: str, presence: Presence) -> Any:
        """Record the user-level presence of ``user`` (OFFLINE forgets it).

        An offline record with a ``ts`` is kept: a watch with ``since`` must
        learn that a user went offline after that time."""

    def presence(users: list[str]) -> Any:
        """Fire with {user: Presence} for every user asked (OFFLINE when unknown)."""

    def watch(watcher: str, users: list[str], cap: int) -> Any:
        """Add users to the watch list of ``watcher``. Fire with True, or with
        False and no change when the list would pass ``cap`` users."""

    def unwatch(watcher: str, users: list[str]) -> Any:
        """Remove users from the watch list of ``watcher``."""

    def watching(watcher: str) -> Any:
        """Fire with the frozenset of users on the watch list of ``watcher``."""

    def watchers(users: list[str]) -> Any:
        """Fire with {user: frozenset of watchers}, leaving out users nobody watches."""
