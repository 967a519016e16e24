"""The embedded backend: one process, nothing to install, nothing kept across restarts."""

from __future__ import annotations

import uuid
from collections import deque
from operator import attrgetter
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from o2obroker.backend.interface import (
    OFFLINE,
    IBackend,
    InboxState,
    Location,
    Presence,
    Receipt,
    Resynced,
    StoredMessage,
    StoreFull,
)

DAY = 24 * 3600.0
_size = attrgetter("size")


class _Inbox:
    __slots__ = ("bytes", "cursors", "entries", "last")

    def __init__(self) -> None:
        # an empty tuple until the first message: an empty deque costs 600 bytes
        self.entries: deque[tuple[int, StoredMessage]] | tuple[()] = ()
        self.last = 0
        self.bytes = 0  # the sizes of the entries held
        # device -> [cursor, last seen (seconds)]
        self.cursors: dict[str, list[float]] = {}


class _SentIds:
    """A user's recent send ids: a dict for look-ups, a deque for expiry in order.

    (A dict alone, trimmed from its front, makes ``next(iter(d))`` walk every
    deleted slot before the first live one: linear, not constant.)
    """

    __slots__ = ("ids", "order", "statuses")

    def __init__(self) -> None:
        self.ids: dict[str, tuple[str, int]] = {}  # send id -> (mid, ts)
        # final statuses apart from the receipts: settling a batch is one dict.update
        self.statuses: dict[str, str] = {}
        self.order: deque[tuple[float, str]] = deque()

    def expire(self, now: float, cap: int) -> None:
        order, ids, statuses = self.order, self.ids, self.statuses
        while order and (order[0][0] <= now or len(order) > cap):
            send_id = order.popleft()[1]
            del ids[send_id]
            statuses.pop(send_id, None)

    def kept(self, send_id: str) -> Receipt | None:
        first = self.ids.get(send_id)
        if first is None:
            return None
        return Receipt(first[0], first[1], self.statuses.get(send_id))


_RANK = {"online": 3, "busy": 2, "away": 1, "offline": 0}


@implementer(IBackend)
class MemoryBackend:
    """Inboxes, cursors, rooms and send-id dedupe in dicts.

    Limits are the ones of doc/protocol.md section 4: an inbox keeps at most
    ``inbox_cap`` messages (oldest dropped first) for at most ``inbox_ttl``
    seconds, and a message leaves once every device seen within
    ``device_ttl`` has acknowledged it. Send ids are remembered for
    ``dedupe_ttl`` seconds, at most ``dedupe_cap`` per user.

    What the inboxes hold is bounded in bytes too (StoredMessage.size): at
    most ``max_user_bytes`` per user and ``max_bytes`` in all (0: no bound).
    Past either, ``append_many`` refuses with StoreFull rather than grow the
    process without end.
    """

    def __init__(
        self,
        clock: IReactorTime,
        node_id: str = "n1",
        *,
        inbox_cap: int = 10_000,
        inbox_ttl: float = 7 * DAY,
        device_ttl: float = 7 * DAY,
        dedupe_ttl: float = 600.0,
        dedupe_cap: int = 100_000,
        offline_ttl: float = DAY,
        max_bytes: int = 0,
        max_user_bytes: int = 0,
    ) -> None:
        self.node_id = node_id
        self.boot = uuid.uuid4().hex[:12]
        self._clock = clock
        self._inbox_cap = inbox_cap
        self._inbox_ttl = inbox_ttl
        self._device_ttl = device_ttl
        self._dedupe_ttl = dedupe_ttl
        self._dedupe_cap = dedupe_cap
        self._epoch = uuid.uuid4().hex[:12]
        self._inboxes: dict[str, _Inbox] = {}
        self._sent: dict[str, _SentIds] = {}
        self._rooms: dict[str, set[str]] = {}
        self._max_bytes = max_bytes
        self._max_user_bytes = max_user_bytes
        #: messages held in all inboxes, counted as they come and go (a metric)
        self.stored = 0
        #: their sizes (StoredMessage.size), what the byte caps bound (a metric)
        self.stored_bytes = 0
        #: messages refused because a byte cap had no room for them (a metric)
        self.refused = 0
        self._presence: dict[str, Presence] = {}
        # user -> node id -> that node's part (merge_presence)
        self._parts: dict[str, dict[str, Presence]] = {}
        # offline records, oldest first: kept offline_ttl seconds for watches with since
        self._offline_ttl = offline_ttl
        self._offline: deque[tuple[float, str, Presence]] = deque()
        self._watching: dict[str, set[str]] = {}  # watcher -> users
        self._watchers: dict[str, set[str]] = {}  # user -> watchers
        # the node registry: node id -> (expires, record); one process, one node
        self._nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        # user -> device -> where it is live; one process: always this node
        self._locations: dict[str, dict[str, Location]] = {}

    # -- inbox -------------------------------------------------------------

    def _inbox(self, user: str) -> _Inbox:
        box = self._inboxes.get(user)
        if box is None:
            box = self._inboxes[user] = _Inbox()
        return box

    def _drop_first(self, box: _Inbox) -> None:
        size = box.entries.popleft()[1].size  # type: ignore[union-attr]
        box.bytes -= size
        self.stored_bytes -= size
        self.stored -= 1

    def _expire(self, box: _Inbox) -> None:
        entries = self._entries_alive(box)
        while len(entries) > self._inbox_cap:
            self._drop_first(box)

    def _entries_alive(self, box: _Inbox) -> deque[tuple[int, StoredMessage]]:
        entries = box.entries
        if entries:
            horizon = (self._clock.seconds() - self._inbox_ttl) * 1000
            while entries and entries[0][1].ts < horizon:
                self._drop_first(box)
        return entries

    def append_many(
        self, inboxes: dict[str, list[StoredMessage]]
    ) -> Deferred[dict[str, list[int]]]:
        out: dict[str, list[int]] = {}
        refused: list[str] = []
        max_bytes, max_user_bytes = self._max_bytes, self._max_user_bytes
        for user, messages in inboxes.items():
            box = self._inbox(user)
            size = sum(map(_size, messages))
            if (max_user_bytes and box.bytes + size > max_user_bytes) or (
                max_bytes and self.stored_bytes + size > max_bytes
            ):
                # what has expired makes room before anything is refused
                self._entries_alive(box)
                if (max_user_bytes and box.bytes + size > max_user_bytes) or (
                    max_bytes and self.stored_bytes + size > max_bytes
                ):
                    refused.append(user)
                    self.refused += len(messages)
                    continue
            out[user] = self._store(box, messages, size)
        if refused:
            return fail(StoreFull(frozenset(refused), out))
        return succeed(out)

    def _store(self, box: _Inbox, messages: list[StoredMessage], size: int) -> list[int]:
        first = box.last + 1
        entries = box.entries
        if not entries:
            entries = box.entries = deque()
        entries.extend(zip(range(first, first + len(messages)), messages, strict=True))
        box.last += len(messages)
        self.stored += len(messages)
        box.bytes += size
        self.stored_bytes += size
        if len(entries) > self._inbox_cap:
            self._expire(box)
        return list(range(first, box.last + 1))

    def append(self, user: str, messages: list[StoredMessage]) -> Deferred[list[int]]:
        return self.append_many({user: messages}).addCallback(lambda seqs: seqs[user])

    def read(self, user: str, after: int, limit: int) -> Deferred[list[tuple[int, StoredMessage]]]:
        box = self._inboxes.get(user)
        if box is None:
            return succeed([])
        entries = self._entries_alive(box)
        if not entries or entries[-1][0] <= after:
            return succeed([])
        # seqs in an inbox are consecutive, so the start is an index, not a search
        start = max(0, after + 1 - entries[0][0])
        out = []
        for i in range(start, min(len(entries), start + limit)):
            out.append(entries[i])
        return succeed(out)

    def inbox_state(self, user: str) -> Deferred[InboxState]:
        box = self._inboxes.get(user)
        if box is None:
            return succeed(InboxState(last=0, first=1, epoch=self._epoch))
        entries = self._entries_alive(box)
        first = entries[0][0] if entries else box.last + 1
        return succeed(InboxState(last=box.last, first=first, epoch=self._epoch))

    def cursor(self, user: str, device: str) -> Deferred[int]:
        box = self._inboxes.get(user)
        if box is None:
            return succeed(0)
        known = box.cursors.get(device)
        if known is not None:
            return succeed(int(known[0]))
        return succeed(int(max((c[0] for c in box.cursors.values()), default=0)))

    def ack(self, user: str, device: str, seq: int) -> Deferred[int]:
        box = self._inbox(user)
        now = self._clock.seconds()
        seq = min(seq, box.last)
        known = box.cursors.get(device)
        if known is None:
            known = box.cursors[device] = [0, now]
        known[1] = now
        if seq > known[0]:
            known[0] = seq
            self._trim_acked(box, now)
        return succeed(int(known[0]))

    def set_cursor(self, user: str, device: str, seq: int) -> Deferred[int]:
        box = self._inbox(user)
        now = self._clock.seconds()
        seq = max(0, min(seq, box.last))
        known = box.cursors.get(device)
        if known is None:
            known = box.cursors[device] = [0, now]
        known[1] = now
        forward = seq > known[0]
        known[0] = seq
        if forward:
            self._trim_acked(box, now)
        return succeed(seq)

    def _trim_acked(self, box: _Inbox, now: float) -> None:
        horizon = now - self._device_ttl
        for device in [d for d, (_, seen) in box.cursors.items() if seen < horizon]:
            del box.cursors[device]
        floor = min(c[0] for c in box.cursors.values())
        entries = box.entries
        dropped = size = 0
        while entries and entries[0][0] <= floor:
            size += entries.popleft()[1].size  # type: ignore[union-attr]
            dropped += 1
        box.bytes -= size
        self.stored_bytes -= size
        self.stored -= dropped
        if not entries:
            box.entries = ()

    # -- send-id dedupe ----------------------------------------------------

    def claim(
        self, user: str, ts: int, claims: list[tuple[str, str]]
    ) -> Deferred[list[Receipt | None]]:
        sent = self._sent.get(user)
        if sent is None:
            sent = self._sent[user] = _SentIds()
        now = self._clock.seconds()
        sent.expire(now, self._dedupe_cap)
        out: list[Receipt | None] = []
        expires = now + self._dedupe_ttl
        ids, order = sent.ids, sent.order
        for send_id, mid in claims:
            if send_id not in ids:
                ids[send_id] = (mid, ts)
                order.append((expires, send_id))
                out.append(None)
            else:
                out.append(sent.kept(send_id))
        if len(order) > self._dedupe_cap:
            sent.expire(now, self._dedupe_cap)
        return succeed(out)

    def settle(self, user: str, statuses: dict[str, str]) -> Deferred[None]:
        sent = self._sent.get(user)
        if sent is not None:
            sent.statuses.update(statuses)
            if len(sent.statuses) > len(sent.ids):
                # some ids expired before they settled: drop their statuses
                ids = sent.ids
                sent.statuses = {k: v for k, v in sent.statuses.items() if k in ids}
        return succeed(None)

    # -- rooms -------------------------------------------------------------

    def join(self, room: str, user: str) -> Deferred[int]:
        members = self._rooms.setdefault(room, set())
        members.add(user)
        return succeed(len(members))

    def leave(self, room: str, user: str) -> Deferred[int]:
        members = self._rooms.get(room)
        if members is None:
            return succeed(0)
        members.discard(user)
        if not members:
            del self._rooms[room]
        return succeed(len(members))

    def members(self, room: str) -> Deferred[frozenset[str]]:
        return succeed(frozenset(self._rooms.get(room, ())))

    # -- presence ----------------------------------------------------------

    def _forget_offline(self, now: float) -> None:
        """Drop offline records older than ``offline_ttl``, oldest first."""
        offline = self._offline
        while offline and offline[0][0] <= now:
            _, gone, record = offline.popleft()
            if self._presence.get(gone) is record:
                del self._presence[gone]  # no record: a watch with since sends it anyway

    def set_presence(self, user: str, presence: Presence) -> Deferred[None]:
        now = self._clock.seconds()
        offline = self._offline
        self._forget_offline(now)
        if presence.devices == 0 and presence.state == "offline":
            if presence.ts == 0:
                self._presence.pop(user, None)
                return succeed(None)
            offline.append((now + self._offline_ttl, user, presence))
        self._presence[user] = presence
        return succeed(None)

    def merge_presence(self, user: str, part: Presence) -> Deferred[tuple[Presence, Presence]]:
        return succeed(self._merge(user, part))

    def _merge(self, user: str, part: Presence) -> tuple[Presence, Presence]:
        parts = self._parts.get(user)
        if part.devices == 0 and part.state == "offline":
            if parts is not None:
                parts.pop(self.node_id, None)
                if not parts:
                    del self._parts[user]
                    parts = None
        elif parts is None:
            parts = self._parts[user] = {self.node_id: part}
        else:
            parts[self.node_id] = part
        now = self._clock.seconds()
        self._forget_offline(now)
        before = self._presence.get(user, OFFLINE)
        state, status, count, latest = "offline", "", 0, -1
        if parts:
            nodes = self._nodes
            for node, p in parts.items():
                rank = _RANK[p.state]
                if rank == 0 or (node != self.node_id and nodes.get(node, (0.0,))[0] <= now):
                    continue
                count += p.devices
                best = _RANK[state]
                if rank > best or (rank == best and p.ts > latest):
                    state, status, latest = p.state, p.status, p.ts
        ts = part.ts if state != before.state or status != before.status else before.ts
        after = Presence(state, status, count, ts)
        self.set_presence(user, after)
        return before, after

    def sweep_presence(self, limit: int) -> Deferred[dict[str, tuple[Presence, Presence]]]:
        return succeed({})  # one process, one node: no part of another node to sweep

    def locate(self, user: str, device: str) -> Deferred[Location | None]:
        here = Location(self.node_id, self.boot)
        before = self._locations.setdefault(user, {}).get(device)
        self._locations[user][device] = here
        return succeed(before if before is not None and before != here else None)

    def relocate(self, user: str, devices: list[str]) -> Deferred[dict[str, Location]]:
        return succeed(self._relocate(user, devices))

    def _relocate(self, user: str, devices: list[str]) -> dict[str, Location]:
        here = Location(self.node_id, self.boot)
        now = self._clock.seconds()
        live = {Location(n, r.get("boot", "")) for n, (e, r) in self._nodes.items() if e > now}
        located = self._locations.setdefault(user, {})
        elsewhere = {}
        for device in devices:
            at = located.get(device)
            if at is not None and at != here and at in live:
                elsewhere[device] = at
            else:
                located[device] = here
        return elsewhere

    def resync(self, user: str, part: Presence, devices: list[str]) -> Deferred[Resynced]:
        # one process: nothing to gather, every call is answered at once
        change, elsewhere = self._merge(user, part), self._relocate(user, devices)
        box = self._inboxes.get(user)
        return succeed(Resynced(change, elsewhere, box.last if box is not None else 0))

    def unlocate(self, user: str, device: str) -> Deferred[None]:
        devices = self._locations.get(user)
        if devices is not None and devices.get(device) == (self.node_id, self.boot):
            del devices[device]
            if not devices:
                del self._locations[user]
        return succeed(None)

    def locations(self, users: list[str]) -> Deferred[dict[str, dict[str, Location]]]:
        known = self._locations
        return succeed({u: dict(known[u]) for u in users if u in known})

    def presence(self, users: list[str]) -> Deferred[dict[str, Presence]]:
        if self._offline:
            self._forget_offline(self._clock.seconds())
        known = self._presence
        return succeed({u: known.get(u, OFFLINE) for u in users})

    def watch(self, watcher: str, users: list[str], cap: int) -> Deferred[bool]:
        watching = self._watching.get(watcher, set())
        new = set(users) - watching
        if len(watching) + len(new) > cap:
            return succeed(False)
        if new:
            self._watching[watcher] = watching | new
            for user in new:
                self._watchers.setdefault(user, set()).add(watcher)
        return succeed(True)

    def unwatch(self, watcher: str, users: list[str]) -> Deferred[None]:
        watching = self._watching.get(watcher)
        if watching:
            for user in users:
                if user in watching:
                    watching.discard(user)
                    watchers = self._watchers[user]
                    watchers.discard(watcher)
                    if not watchers:
                        del self._watchers[user]
            if not watching:
                del self._watching[watcher]
        return succeed(None)

    def watching(self, watcher: str) -> Deferred[frozenset[str]]:
        return succeed(frozenset(self._watching.get(watcher, ())))

    def watchers(self, users: list[str]) -> Deferred[dict[str, frozenset[str]]]:
        index = self._watchers
        # copies: the caller fans out over several reactor turns while lists change
        return succeed({u: frozenset(index[u]) for u in users if u in index})

    # -- node registry -----------------------------------------------------

    def heartbeat(self, record: dict[str, Any], ttl: float) -> Deferred[bool]:
        now = self._clock.seconds()
        expires = now + ttl
        before = self._nodes.get(self.node_id)
        self._nodes[self.node_id] = (expires, {**record, "boot": self.boot, "expires": expires})
        return succeed(before is not None and before[0] > now)

    def nodes(self) -> Deferred[list[dict[str, Any]]]:
        now = self._clock.seconds()
        for node, (expires, _) in list(self._nodes.items()):
            if expires <= now:
                del self._nodes[node]
        return succeed([dict(self._nodes[n][1]) for n in sorted(self._nodes)])

    def depart(self) -> Deferred[None]:
        self._nodes.pop(self.node_id, None)
        return succeed(None)
