"""Presence (doc/protocol.md section 5): the user-level rule and the fan-out to watchers.

Presence is pushed, never pulled: devices report their own state, the user's
actor folds its devices into one user-level state (``UserPresence``), and only
a change of that state or its status text travels on. The node's
``PresenceHub`` collects such changes for a short window, so a burst of
changes of one user reaches its watchers as its last state only (or as
nothing, when the burst ends where it began), and fans each change out in
slices of a bounded number of watchers per reactor turn.

Where things live, so that a cluster can move them: the user-level state and
the watch lists are in the backend (``IBackend.set_presence``, ``watch``,
``watchers``...); per-device entries live with the user's actor, which owns
its devices; the hub keeps only the changes of the current window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from o2obroker.backend.interface import OFFLINE, BackendUnavailable, IBackend, Presence
from o2obroker.metrics import Stats
from o2obroker.routing import Router
from o2obroker.wire import OutFrame

STATES = ("online", "busy", "away", "offline")
#: how available a state is: the user-level state is its devices' best
RANK = {"online": 3, "busy": 2, "away": 1, "offline": 0}


class DeviceEntry:
    """One device's own report. ``order`` grows with every report of the user,
    so the latest report of a state wins its status text; ``until`` is set
    while a lost device is kept for the grace period."""

    __slots__ = ("order", "state", "status", "until")

    def __init__(self, state: str, status: str, order: int) -> None:
        self.state = state
        self.status = status
        self.order = order
        self.until: float | None = None


def aggregate(entries: Iterable[DeviceEntry]) -> tuple[str, str, int]:
    """The user-level (state, status, visible device count) of doc/protocol.md section 5.

    Offline when no device is there or every one is invisible; else the most
    available state (online > busy > away), with the status text of the
    device that last reported that state. Invisible devices are not counted,
    so an invisible user cannot be told from an absent one.
    """
    best: DeviceEntry | None = None
    best_rank = 0
    count = 0
    for entry in entries:
        rank = RANK[entry.state]
        if rank == 0:
            continue
        count += 1
        if rank > best_rank or (rank == best_rank and entry.order > best.order):  # type: ignore[union-attr]
            best, best_rank = entry, rank
    if best is None:
        return "offline", "", 0
    return best.state, best.status, count


def presence_frame(user: str, presence: Presence) -> dict[str, Any]:
    return {
        "t": "presence",
        "user": user,
        "state": presence.state,
        "status": presence.status,
        "ts": presence.ts,
        "devices": presence.devices,
    }


class UserPresence:
    """The presence of one user's devices on this node, owned by the user's actor.

    Every method is called from the actor's handlers, so one user's changes
    are serialised. ``wake`` is how a grace-period timer gets back into the
    actor's mailbox: the timer never touches the entries itself.
    """

    __slots__ = ("_call", "_order", "entries", "hub", "published", "user", "wake")

    def __init__(self, user: str, hub: PresenceHub, wake: Callable[[], None]) -> None:
        self.user = user
        self.hub = hub
        self.wake = wake
        self.entries: dict[str, DeviceEntry] = {}
        self.published: Presence = OFFLINE
        self._order = 0
        self._call: IDelayedCall | None = None

    @property
    def lingering(self) -> bool:
        """Whether a lost device is still kept for its grace period."""
        # from the entries, not the timer: between the timer firing and the
        # actor handling it, the device is still in its grace period
        return any(e.until is not None for e in self.entries.values())

    def is_lingering(self, device: str) -> bool:
        entry = self.entries.get(device)
        return entry is not None and entry.until is not None

    def attached(self, device: str, state: str = "online", status: str = "") -> None:
        """A device got its welcome: it counts from now on (a device back within
        its grace period just takes its old place)."""
        self._order += 1
        self.entries[device] = DeviceEntry(state, status, self._order)
        self._update()

    def report(self, device: str, state: str, status: str) -> None:
        """A device reported its own presence."""
        entry = self.entries.get(device)
        if entry is None or entry.until is not None:
            return
        self._order += 1
        entry.state, entry.status, entry.order = state, status, self._order
        self._update()

    def detached(self, device: str, linger: bool) -> None:
        """A device is gone. With ``linger`` (the link dropped) it is kept for the
        hub's grace period, so a quick reconnect shows nothing to watchers."""
        entry = self.entries.get(device)
        if entry is None:
            return
        hub = self.hub
        if linger and hub.grace > 0 and not hub.naive and hub.running:
            entry.until = hub.clock.seconds() + hub.grace
            if self._call is None:
                self._call = hub.clock.callLater(hub.grace, self._expired)
                hub.lingering.add(self)
            return
        del self.entries[device]
        self._update()

    def resynced(self, change: tuple[Presence, Presence]) -> None:
        """This node's part was recorded again (what the backend held of it may
        have been swept) and merged into ``change``: watchers hear of it only
        if that is news."""
        self.hub.merged_change(self.user, change)

    def _expired(self) -> None:
        self._call = None
        self.hub.lingering.discard(self)
        self.wake()

    def expire(self) -> None:
        """Drop the devices whose grace period is over (from the actor's mailbox)."""
        now = self.hub.clock.seconds()
        gone = [n for n, e in self.entries.items() if e.until is not None and e.until <= now]
        for name in gone:
            del self.entries[name]
        later = [e.until for e in self.entries.values() if e.until is not None]
        if later and self._call is None and self.hub.running:
            self._call = self.hub.clock.callLater(max(0.0, min(later) - now), self._expired)
            self.hub.lingering.add(self)
        if gone:
            self._update()

    def stop(self) -> None:
        """The node stops: drop the grace timer (the entries go with the process)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _update(self) -> None:
        state, status, count = aggregate(self.entries.values())
        old = self.published
        changed = state != old.state or status != old.status
        if not changed and count == old.devices:
            return
        ts = self.hub.now_ms() if changed else old.ts
        new = self.published = Presence(state, status, count, ts)
        self.hub.record(self.user, old, new, changed)


class PresenceHub:
    """Records user-level changes and fans them out to watchers, coalesced and sliced.

    ``window`` seconds of changes are gathered before the watchers are looked
    up, one backend call for all the changed users; a user that changed
    several times in the window is sent once, with its last state, and not at
    all when it ended where it started. Deliveries are queued to the watchers'
    actors, at most ``slice_size`` per reactor turn.

    ``skew`` seconds are taken off a watch's ``since`` before it is compared to
    the records' ``ts``: another node's clock that runs behind this one's must
    not hide a change.

    ``merged`` is for a cluster: the backend merges this node's part of a
    user's presence with the other nodes' (``IBackend.merge_presence``), a
    change is one of the merged user-level state, and it goes to watchers on
    other nodes through the router's publisher too.

    ``naive`` is the baseline the benchmark measures against, a broker that
    follows the protocol and nothing more: no grace period, no coalescing,
    every change of the user-level state sent to its watchers at once.
    """

    log = Logger()

    def __init__(
        self,
        backend: IBackend,
        router: Router,
        clock: IReactorTime,
        *,
        window: float = 0.5,
        grace: float = 20.0,
        skew: float = 5.0,
        watch_cap: int = 1000,
        slice_size: int = 1000,
        naive: bool = False,
        merged: bool = False,
        stats: Stats | None = None,
    ) -> None:
        self.backend = backend
        self.router = router
        self.clock = clock
        self.window = window
        self.grace = grace
        self.skew_ms = int(skew * 1000)
        self.watch_cap = watch_cap
        self.slice_size = slice_size
        self.naive = naive
        self.merged = merged
        self._sweeping = False
        self.stats = stats or Stats()
        # user -> (state watchers last heard of, latest state), for this window
        self._pending: dict[str, tuple[Presence, Presence]] = {}
        # pending users whose state a watch or probe answered meanwhile: that
        # watcher may know a state of the middle of the burst, so it is sent
        self._read: set[str] = set()
        self._timer: IDelayedCall | None = None
        self._work: deque[tuple[OutFrame, Iterator[str]]] = deque()
        self._pump_call: IDelayedCall | None = None
        # users whose actor waits for a grace period to end, so that stop() ends them
        self.lingering: set[UserPresence] = set()
        self.running = True
        # told (user, state, ts) when a user goes from offline to not, or back: the
        # application's presence hook (o2obroker/policy); None when not configured
        self.on_edge: Callable[[str, str, int], None] | None = None

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def _failed(self, failure: Failure, what: str, **fields: Any) -> None:
        """A backend that cannot be reached is a state the node recovers from
        (a warning); anything else is a bug (a failure with its traceback)."""
        if failure.check(BackendUnavailable):
            self.log.warn(what + ": {error}", error=failure.getErrorMessage(), **fields)
        else:
            self.log.failure(what, failure, **fields)

    # -- from the users' actors ---------------------------------------------

    def record(self, user: str, old: Presence, new: Presence, changed: bool) -> None:
        """A user's presence record changed; ``changed`` when watchers must hear of it."""
        if self.merged:
            # this node's part: whether watchers hear of it is the merge's answer
            d = self.backend.merge_presence(user, new)
            d.addCallback(self._merged, user)
            d.addErrback(self._failed, "merging presence of {user}", user=user)
            return
        self.backend.set_presence(user, new).addErrback(
            self._failed, "recording presence of {user}", user=user
        )
        self._changed(user, old, new, changed)

    def sweep(self) -> None:
        """Take the presence of dead nodes' devices away, ``slice_size`` users a
        call, and tell the watchers what changed at once; called after every
        read of the registry (each beat, and when a peer's record lapses)."""
        if not self.merged or not self.running or self._sweeping:
            return
        self._sweeping = True
        d = self.backend.sweep_presence(self.slice_size)
        d.addCallback(self._swept)
        d.addErrback(self._failed, "sweeping dead nodes' presence")
        d.addBoth(self._swept_all)

    def _swept(self, changes: dict[str, tuple[Presence, Presence]]) -> bool:
        for user, change in changes.items():
            self._merged(change, user)
        # a dead node's devices are news already late by the time its record
        # lapsed: they go out now, not after the window (with what was pending)
        if self._timer is not None and changes:
            self._timer.cancel()
            self._flush()
        return len(changes) >= self.slice_size

    def _swept_all(self, more: object) -> None:
        self._sweeping = False
        if more is True and self.running:
            self.clock.callLater(0, self.sweep)

    def merged_change(self, user: str, change: tuple[Presence, Presence]) -> None:
        """A user-level (before, after) that the backend merged (a resync's)."""
        self._merged(change, user)

    def _merged(self, change: tuple[Presence, Presence], user: str) -> None:
        before, after = change
        changed = before.state != after.state or before.status != after.status
        self._changed(user, before, after, changed)

    def _changed(self, user: str, old: Presence, new: Presence, changed: bool) -> None:
        if self.on_edge is not None and (old.state == "offline") != (new.state == "offline"):
            self.on_edge(user, new.state, new.ts)
        if not changed or not self.running:
            return
        if self.naive:
            self._look_up({user: new})
            return
        held = self._pending.get(user)
        if held is not None:
            self.stats.presence_coalesced += 1
            self._pending[user] = (held[0], new)
            return
        self._pending[user] = (old, new)
        if self._timer is None:
            self._timer = self.clock.callLater(self.window, self._flush)

    def _flush(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, {}
        read, self._read = self._read, set()
        changes = {}
        for user, (before, after) in pending.items():
            if before.state == after.state and before.status == after.status and user not in read:
                self.stats.presence_coalesced += 1  # a burst that ended where it began
            else:
                changes[user] = after
        if changes:
            self._look_up(changes)

    def _look_up(self, changes: dict[str, Presence]) -> None:
        d = self.backend.watchers(list(changes))
        d.addCallback(self._queue, changes)
        d.addErrback(self._failed, "looking up watchers")

    def _queue(self, watchers: dict[str, frozenset[str]], changes: dict[str, Presence]) -> None:
        publish = self.router.publisher.presence if self.merged else None
        for user, presence in changes.items():
            those = watchers.get(user)
            if those:
                frame = presence_frame(user, presence)
                self._work.append((OutFrame(frame), iter(those)))
                if publish is not None:
                    publish(frame, those)
        if self._work and self._pump_call is None:
            self._pump()

    def _pump(self) -> None:
        """Hand up to ``slice_size`` deliveries to watchers' actors, then yield the turn."""
        self._pump_call = None
        budget = self.slice_size
        work = self._work
        actors = self.router.actors
        while work and budget > 0:
            out, watchers = work[0]
            for watcher in watchers:
                actor = actors.get(watcher)
                # a watcher whose device dropped a moment ago keeps what it misses
                if actor is not None and (actor.devices or actor.presence.lingering):
                    actor.tell(("presence_out", out))
                budget -= 1
                if budget == 0:
                    break
            else:
                work.popleft()
        if work:
            self._pump_call = self.clock.callLater(0, self._pump)

    def stop(self) -> None:
        """Cancel every timer of presence; changes from now on are only recorded."""
        self.running = False
        for call in (self._timer, self._pump_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._pump_call = None
        self._work.clear()
        self._pending.clear()
        for user in list(self.lingering):
            user.stop()
        self.lingering.clear()

    # -- look-ups served from the broker's state ------------------------------

    def lookup(self, users: list[str]) -> Deferred[dict[str, Presence]]:
        """The presence of each user, as the HTTP API and probes answer it."""
        return self.backend.presence(users)

    def answer(self, users: list[str]) -> Deferred[dict[str, Presence]]:
        """Like ``lookup``, for a watch or probe: a burst under way for one of
        these users is then sent even if it ends where it began."""
        if self._pending:
            pending = self._pending
            self._read.update(u for u in users if u in pending)
        return self.backend.presence(users)

    def room_presence(self, room: str) -> Deferred[dict[str, int]]:
        """How many of a room's members are in each state (offline included)."""

        def count(found: dict[str, Presence]) -> dict[str, int]:
            counts = dict.fromkeys(STATES, 0)
            for presence in found.values():
                counts[presence.state] += 1
            return counts

        d = self.backend.members(room)
        d.addCallback(lambda members: self.backend.presence(sorted(members)))
        return d.addCallback(count)
