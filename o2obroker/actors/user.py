"""UserActor: everything that happens to one user on this node, one thing at a time."""

from __future__ import annotations

import itertools
import os
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from o2obroker.actors.actor import Actor, Message, Scheduler
from o2obroker.actors.history import read_history
from o2obroker.actors.presence import PresenceHub, UserPresence, presence_frame
from o2obroker.actors.supervisor.admission import Unavailable
from o2obroker.backend.interface import (
    BackendUnavailable,
    IBackend,
    InboxState,
    Location,
    Receipt,
    Resynced,
    StoredMessage,
)
from o2obroker.policy.pipeline import REJECTED_STATUS
from o2obroker.routing import Delivery, IMailbox, Outgoing, Router, Settlement
from o2obroker.routing.router import UNAVAILABLE
from o2obroker.wire import MessageTemplate, OutFrame, ProtocolError

BACKLOG_PAGE = 500
#: bytes of backlog written before waiting for the device to take them: well
#: under the default max_queue (4 MiB), so a resume never trips it by itself
BACKLOG_BYTES = 256 * 1024
#: what a stored message counts beyond its body's size: mid, sender, device,
#: recipient, ts and the keys (an estimate; encoding it to measure would cost more)
FIELDS_SIZE = 128


class IDevice(Interface):
    """One connected device of a user, as its actor sees it (a session)."""

    user = Attribute("The authenticated user id.")
    device = Attribute("The device name, unique per user.")
    kind = Attribute("'mobile' or 'web'.")
    cursor = Attribute("Highest seq this device has acknowledged or been resumed at.")
    live = Attribute("Whether the device takes frames now.")
    service = Attribute(
        "True for a back-end service's sender (API, console): it may publish to any room."
    )

    def welcome(last: int, resumed: bool) -> None:
        """The device is attached: send the welcome frame."""

    def send_msgs(items: list[tuple[int, MessageTemplate]]) -> None:
        """Write msg frames (seq, template) to the device, in order."""

    def send_frame(frame: dict[str, Any]) -> None:
        """Write one server frame."""

    def send_presence(out: OutFrame) -> None:
        """Write one presence frame, encoded once for all the watchers it goes to."""

    def receipts(items: list[tuple[str, str, int, str]]) -> None:
        """Answer sends: (send id, mid, ts, status), in order."""

    def replaced() -> None:
        """Another connection took this device's name: close with 409."""

    def fail(error: ProtocolError) -> None:
        """Answer with the error frame; close the connection when it is fatal."""

    def when_drained() -> Deferred[None] | None:
        """None while the device takes what is written; else a Deferred that
        fires once it does again (or is gone)."""

    def may_join(room: str) -> bool:
        """Whether the device's credentials allow joining ``room``."""


@implementer(IDevice)
class SendOnlyDevice:
    """A sender that is not a connection: a back-end service (the HTTP API's
    publish, the console's ``broker.send``), as the user's actor sees a device.

    Never attached, it receives no messages; it takes the one receipt or
    error frame that answers its send, through ``answered``. ``service``
    lets it publish to any room.
    """

    user: str | None = None
    kind = "service"
    device = "service"
    live = False
    service = True
    cursor = 0

    def answered(self, frame: dict[str, Any]) -> None:
        """The receipt or the error that answers the send."""
        raise NotImplementedError

    def receipts(self, items: list[tuple[str, str, int, str]]) -> None:
        for send_id, mid, ts, status in items:
            self.answered({"t": "receipt", "id": send_id, "mid": mid, "ts": ts, "status": status})

    def send_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("t") == "error":
            self.answered(frame)

    def fail(self, error: ProtocolError) -> None:
        self.answered(error.frame())

    def send_msgs(self, items: list[Any]) -> None:
        pass

    def send_presence(self, out: OutFrame) -> None:
        pass

    def welcome(self, last: int, resumed: bool) -> None:
        pass

    def replaced(self) -> None:
        pass

    def when_drained(self) -> Deferred[None] | None:
        return None

    def may_join(self, room: str) -> bool:
        return False


class MidSource:
    """Message ids unique across a cluster: node, process incarnation, counter."""

    def __init__(self, node_id: str) -> None:
        self._prefix = f"{node_id}.{os.urandom(4).hex()}."
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):x}"

    def take(self, n: int) -> list[str]:
        """``n`` ids at once, for a batch."""
        prefix, count = self._prefix, self._count
        return [f"{prefix}{next(count):x}" for _ in range(n)]


@implementer(IMailbox)
class UserActor(Actor):
    """Owns one user's devices on this node and serialises what happens to them.

    Sends from the user's devices are claimed (deduplicated by id) and handed
    to the router a batch at a time; the router stores them and settles them
    back by user id. Messages stored for the user arrive as deliveries and
    are written to every live device, each in its own encoding, from
    templates encoded once. The actor keeps only what is its user's on this
    node: device handles, their cursors, presence. Connections never hold
    user state: a device handle is only a way to reach a connection.
    """

    batched: ClassVar[frozenset[str]] = frozenset(
        {"deliver", "submit", "receipt", "ack", "presence", "presence_out"}
    )
    handlers: ClassVar[dict[str, str]] = {
        "deliver": "_on_deliver",
        "submit": "_on_submit",
        "receipt": "_on_receipt",
        "ack": "_on_ack",
        "attach": "_on_attach",
        "detach": "_on_detach",
        "join": "_on_join",
        "leave": "_on_leave",
        "presence": "_on_presence",
        "presence_out": "_on_presence_out",
        "presence_expire": "_on_presence_expire",
        "displaced": "_on_displaced",
        "resync": "_on_resync",
        "watch": "_on_watch",
        "unwatch": "_on_unwatch",
        "probe": "_on_probe",
        "history": "_on_history",
    }

    __slots__ = (
        "_business",
        "_clock",
        "_inflight",
        "_mids",
        "_missed",
        "_router",
        "_written",
        "backend",
        "devices",
        "presence",
        "user",
    )

    def __init__(
        self,
        user: str,
        scheduler: Scheduler,
        router: Router,
        clock: IReactorTime,
        mids: MidSource,
        presence: PresenceHub,
        business: Any = None,
    ) -> None:
        super().__init__(scheduler)
        # the node's business layer (o2obroker/policy), None when nothing is configured
        self._business = business
        # the node's one hub: a hub of its own would fan this user's changes out alone
        self.presence = UserPresence(user, presence, self._grace_over)
        # device in its grace period -> {watched user: latest change it missed}
        self._missed: dict[str, dict[str, OutFrame]] = {}
        self.user = user
        self.backend: IBackend = router.backend
        self.devices: dict[str, Any] = {}
        self._router = router
        self._clock = clock
        self._mids = mids
        # send id -> (mid, ts, devices waiting for it) while its delivery is under way
        self._inflight: dict[str, tuple[str, int, list[Any]]] = {}
        # device -> highest seq written to it (its resume point, its backlog,
        # deliveries): a delivery at or below it is not written twice, and one
        # past the next seq shows a gap (a publish lost or overtaken between nodes)
        self._written: dict[str, int] | None = {}

    def _grace_over(self) -> None:
        self.tell(("presence_expire",))

    def __repr__(self) -> str:
        return f"<UserActor {self.user} devices={sorted(self.devices)}>"

    # -- the messages, for sessions and the router -------------------------

    def deliver(self, items: list[Delivery]) -> None:
        self.tell(("deliver", items))

    def settled(self, settlement: Settlement) -> None:
        self.tell(("receipt", settlement))

    def reachable(self) -> bool:
        return any(device.live for device in self.devices.values())

    def displaced(self, device: str) -> None:
        """The same device of this user said hello on another node: replace it here."""
        self.tell(("displaced", device))

    def resync(self) -> None:
        """Deliveries may have been lost (the bus reconnected): read the inbox
        again from what each device was written."""
        self.tell(("resync",))

    def submit(self, device: Any, send: Any) -> None:
        self.tell(("submit", device, send))

    def attach(self, device: Any, resume_last: int | None) -> None:
        self.tell(("attach", device, resume_last))

    def detach(self, device: Any, linger: bool = False) -> None:
        """The device is gone; with ``linger`` (its link dropped) its presence
        stays for the grace period, in case it comes straight back."""
        self.tell(("detach", device, linger))

    def ack(self, device: Any, seq: int) -> None:
        self.tell(("ack", device, seq))

    def join(self, device: Any, room: str, ref: str | None = None) -> None:
        """Join ``room``; an error answering it names ``ref`` (the frame's id)."""
        self.tell(("join", device, room, ref))

    def leave(self, device: Any, room: str, ref: str | None = None) -> None:
        self.tell(("leave", device, room, ref))

    def report(self, device: Any, state: str, status: str) -> None:
        self.tell(("presence", device, state, status))

    def watch(self, device: Any, users: list[str], since: int | None = None) -> None:
        self.tell(("watch", device, users, since))

    def unwatch(self, device: Any, users: list[str]) -> None:
        self.tell(("unwatch", device, users))

    def probe(self, device: Any, users: list[str]) -> None:
        self.tell(("probe", device, users))

    def history(self, device: Any, frame: Any) -> None:
        self.tell(("history", device, frame))

    # -- messages for the user ----------------------------------------------

    def _on_deliver(self, batch: list[Message]) -> Deferred[None] | None:
        items: list[Delivery] = batch[0][1] if len(batch) == 1 else [i for m in batch for i in m[1]]
        written = self._written
        if written is None:
            written = self._written = {}
        gaps = []
        for name, device in self.devices.items():
            if not device.live:
                continue
            after = written.get(name, 0)
            fresh = items
            if items[0][0] != after + 1 or items[-1][0] != after + len(items):
                # not the next run of seqs: some written already, or out of order
                fresh = sorted((i for i in items if i[0] > after), key=_seq)
                if not fresh:
                    continue
                if any(item[0] != after + n for n, item in enumerate(fresh, 1)):
                    gaps.append((device, after))  # a seq is missing: read the inbox
                    continue
            written[name] = fresh[-1][0]
            out = [(seq, m) for seq, m, skip in fresh if skip != name]
            if out:
                device.send_msgs(out)
        if not gaps:
            return None
        return self._backlogs(gaps)

    def _backlogs(self, devices: list[tuple[Any, int]]) -> Deferred[None]:
        """The inbox of each device from its point, one device after the other."""
        d: Deferred[None] = succeed(None)
        for device, after in devices:
            d.addCallback(lambda _, dv=device, a=after: self._send_backlog(dv, a))
        return d.addErrback(self._unavailable_quietly)

    def _unavailable_quietly(self, failure: Failure) -> None:
        # the next delivery or resume reads again
        self.log.warn(
            "reading the inbox of {user} again failed: {error}",
            user=self.user,
            error=failure.getErrorMessage(),
        )

    def _on_resync(self, message: Message) -> Deferred[None] | None:
        """After a resubscribe, or a beat that found this node's record lapsed:
        what was published meanwhile is lost, and what this node keeps in the
        backend may have been swept. A device that said hello on another node
        meanwhile is replaced here (its location says so; the channel's word
        of it was lost), the others are located here again, the user's part
        of presence is recorded again, and each device behind the inbox is
        sent it from what it was written. One backend call, which the backend
        gathers with the other users' of this turn."""
        if not self.devices:
            return None
        d = self.backend.resync(self.user, self.presence.published, list(self.devices))
        return d.addCallbacks(self._resynced, self._unresynced)

    def _resynced(self, found: Resynced) -> Deferred[None] | None:
        self.presence.resynced(found.presence)
        for name in found.elsewhere:
            self._displace(name)
        return self._resync_backlogs(found.last)

    def _unlocated(self, failure: Failure) -> None:
        self.log.warn(
            "device locations of {user}: {error}", user=self.user, error=failure.getErrorMessage()
        )

    def _unresynced(self, failure: Failure) -> Deferred[None] | None:
        self.log.warn("resyncing {user}: {error}", user=self.user, error=failure.getErrorMessage())
        return self._resync_backlogs(None)

    def _resync_backlogs(self, last: int | None) -> Deferred[None] | None:
        """The inbox of each live device that is behind ``last`` (every one
        when it is not known)."""
        written = self._written or {}
        devices = [(d, written.get(n, 0)) for n, d in self.devices.items() if d.live]
        if last is not None:
            devices = [(d, after) for d, after in devices if after < last]
        return self._backlogs(devices) if devices else None

    def _on_displaced(self, message: Message) -> None:
        self._displace(message[1])

    def _displace(self, name: str) -> None:
        """The same device of this user said hello on another node: 409 here."""
        old = self.devices.pop(name, None)
        if old is None:
            return
        if self._written:
            self._written.pop(name, None)
        self.presence.detached(name, False)
        old.replaced()
        if not self.devices:
            self._router.publisher.untrack(self.user)

    # -- sends of the user --------------------------------------------------

    def _on_submit(self, batch: list[Message]) -> Deferred[None]:
        ts = int(self._clock.seconds() * 1000)
        mids = self._mids.take(len(batch))
        accepted = [(m[1], m[2], mid) for m, mid in zip(batch, mids, strict=True)]
        d = self.backend.claim(self.user, ts, [(send.id, mid) for _, send, mid in accepted])
        return d.addCallbacks(
            self._route_claimed,
            self._claim_failed,
            callbackArgs=(accepted, ts),
            errbackArgs=(accepted,),
        )

    def _claim_failed(self, failure: Failure, accepted: list[tuple[Any, Any, str]]) -> None:
        self.log.warn(
            "claiming sends of {user} failed: {error}",
            user=self.user,
            error=failure.getErrorMessage(),
        )
        for device, send, _ in accepted:
            device.send_frame(_error(*UNAVAILABLE, send.id))

    def _route_claimed(
        self, kept: list[Receipt | None], accepted: list[tuple[Any, Any, str]], ts: int
    ) -> Deferred[None] | None:
        # the message pipeline screens the claimed batch before it is routed:
        # rejected sends are answered and dropped, rewritten ones carry their
        # new body (o2obroker/policy/pipeline.py, doc/business.md)
        business = self._business
        if business is not None and business.pipeline is not None:
            d = business.pipeline.screen(self.user, self.backend, kept, accepted)
            return d.addCallback(lambda screened: self._route_screened(*screened, ts))
        return self._route_screened(kept, accepted, ts)

    def _route_screened(
        self, kept: list[Receipt | None], accepted: list[tuple[Any, Any, str]], ts: int
    ) -> Deferred[None] | None:
        """Hand the new sends of a claimed batch to the router; answer repeats."""
        items = []
        inflight = self._inflight
        for (device, send, mid), old in zip(accepted, kept, strict=True):
            if old is None:
                items.append(self._outgoing(device, send, mid, ts))
                inflight[send.id] = (mid, ts, [device])
            elif old.status == REJECTED_STATUS:
                # an id refused by policy stays refused
                device.send_frame(_error(403, "rejected by policy", send.id))
            elif old.status is not None:
                device.receipts([(send.id, old.mid, old.ts, old.status)])
            elif send.id in inflight:
                inflight[send.id][2].append(device)
            else:
                # Claimed but never settled: its delivery failed, or the node
                # that took it died. Deliver again under the same mid; clients
                # drop duplicates.
                items.append(self._outgoing(device, send, old.mid, old.ts))
                inflight[send.id] = (old.mid, old.ts, [device])
        if not items:
            return None
        return self._router.route(self.user, items)

    def _outgoing(self, device: Any, send: Any, mid: str, ts: int) -> Outgoing:
        user = self.user
        name = device.device
        if send.room is None:
            fields = {
                "mid": mid,
                "from": user,
                "from_device": name,
                "to": send.to,
                "body": send.body,
                "ts": ts,
            }
        else:
            fields = {
                "mid": mid,
                "from": user,
                "from_device": name,
                "room": send.room,
                "body": send.body,
                "ts": ts,
            }
        message = StoredMessage(mid, ts, fields, send.size + FIELDS_SIZE)
        if send.room is None:
            return Outgoing(user, send.id, name, message, send.to)
        # a back-end service (the HTTP API's publish) may publish to any room
        return Outgoing(user, send.id, name, message, None, send.room, device.service)

    def _on_receipt(self, batch: list[Message]) -> None:
        answers: dict[Any, list[tuple[str, str, int, str]]] = {}
        inflight = self._inflight
        for _, (statuses, errors) in batch:
            for send_id, (code, reason) in errors.items():
                # not recorded as settled: a retry with this id delivers again
                waiting = inflight.pop(send_id, None)
                if waiting is not None:
                    for device in waiting[2]:
                        device.send_frame(_error(code, reason, send_id))
            for send_id, status in statuses.items():
                waiting = inflight.pop(send_id, None)
                if waiting is None:
                    continue
                mid, ts, devices = waiting
                answer = (send_id, mid, ts, status)
                for device in devices:
                    box = answers.get(device)
                    if box is None:
                        answers[device] = [answer]
                    else:
                        box.append(answer)
        for device, items in answers.items():
            device.receipts(items)
        if len(batch) == 1:
            statuses = batch[0][1].statuses
        else:
            statuses = {}
            for _, settlement in batch:
                statuses.update(settlement.statuses)
        if statuses:
            self.backend.settle(self.user, statuses).addErrback(
                lambda f: self.log.warn(
                    "settling receipts of {user} failed: {error}",
                    user=self.user,
                    error=f.getErrorMessage(),
                )
            )

    # -- devices --------------------------------------------------------------

    def _on_ack(self, batch: list[Message]) -> None:
        highest: dict[Any, int] = {}
        for _, device, seq in batch:
            if seq > highest.get(device, -1):
                highest[device] = seq
        for device, seq in highest.items():
            before = device.cursor
            if seq <= before:
                continue  # an ack below the cursor is ignored
            device.cursor = seq
            self.backend.ack(self.user, device.device, seq).addCallbacks(
                _set_cursor(device), self._ack_failed, errbackArgs=(device, seq, before)
            )

    def _ack_failed(self, failure: Failure, device: Any, seq: int, before: int) -> None:
        self.log.warn(
            "ack of {user}/{device} failed: {error}",
            user=self.user,
            device=device.device,
            error=failure.getErrorMessage(),
        )
        # not stored: the same ack again must reach the backend
        if device.cursor == seq:
            device.cursor = before

    def _on_attach(self, message: Message) -> Deferred[None]:
        _, device, resume_last = message
        name = device.device
        old = self.devices.pop(name, None)
        if old is not None and old is not device:
            old.replaced()
        if self._written:
            self._written.pop(name, None)
        # back within its grace period: what it missed of its watch list is kept for it
        device.presence_kept = self.presence.is_lingering(name)
        user, backend = self.user, self.backend
        publisher = self._router.publisher

        def tracked(_: None) -> Deferred[InboxState]:
            # subscribed first: what is stored from now on reaches this actor,
            # and what was stored before is in the inbox read next. The device
            # is located here at the same time (one round trip): where it was
            # before, if elsewhere, is told to replace it
            located = backend.locate(user, name).addCallback(replace)
            state = backend.inbox_state(user)
            d = gatherResults([located, state], consumeErrors=True)
            return d.addCallbacks(lambda both: both[1], _first_error)

        def replace(before: Location | None) -> None:
            if before is not None:
                publisher.replace(user, name)

        def with_state(state: InboxState) -> Deferred[None]:
            if resume_last is None:
                # the cursor kept for the device (or the user's highest, for a new one)
                d = backend.cursor(user, name)
                d.addCallback(lambda cursor: backend.set_cursor(user, name, cursor))
                return d.addCallback(welcome, state, True)
            if resume_last > state.last:
                # the client saw seqs this store never gave: the store was reset.
                # Nothing kept is dropped for it: it gets all of it, unresumed.
                d = backend.set_cursor(user, name, state.first - 1)
                return d.addCallback(welcome, state, False)
            # the client says where it is, even below the cursor kept (a
            # device restored from a backup gets again what is still kept)
            return backend.set_cursor(user, name, resume_last).addCallback(welcome, state, True)

        def welcome(cursor: int, state: InboxState, resumed: bool) -> Deferred[None] | None:
            resumed = resumed and state.first <= cursor + 1
            device.cursor = cursor
            if cursor:
                # the device has these: deliveries of them queued meanwhile are not written
                if self._written is None:
                    self._written = {}
                self._written[name] = cursor
            device.welcome(state.last, resumed)
            return self._send_backlog(device, cursor)

        d = publisher.track(user).addErrback(_not_subscribed)
        d.addCallback(tracked).addCallback(with_state)
        return d.addCallbacks(
            lambda _: self._attached(device), self._attach_failed, errbackArgs=(device,)
        )

    def _attach_failed(self, failure: Failure, device: Any) -> None:
        self.log.warn(
            "attaching {user}/{device} failed: {error}",
            user=self.user,
            device=device.device,
            error=failure.getErrorMessage(),
        )
        if self._written:
            self._written.pop(device.device, None)
        if not self.devices:
            self._router.publisher.untrack(self.user)
        # it may have been located here before the failure
        self.backend.unlocate(self.user, device.device).addErrback(lambda f: None)
        # not attached; the client connects again and resumes. While this node
        # cannot hear what is published for the user (its subscriber is away),
        # a live peer can: the 503 names one
        elsewhere = self._router.elsewhere
        redirect = elsewhere() if failure.check(NotSubscribed) and elsewhere else None
        device.fail(Unavailable(UNAVAILABLE[1], redirect))

    def _send_backlog(self, device: Any, after: int) -> Deferred[None] | None:
        """Write the inbox above ``after`` a slice at a time, each slice once the
        device has taken the last: a large backlog to a slow link waits for it
        instead of piling up past max_queue. A slice holds at most
        BACKLOG_PAGE messages and BACKLOG_BYTES of them (one more turn between
        slices lets a connection that writes once a turn show it is behind), so
        that a backlog larger than max_queue reaches a device that reads it
        instead of closing it as a slow consumer at every resume. The mailbox
        is held meanwhile, so nothing new overtakes the backlog."""

        def page(entries: list[tuple[int, StoredMessage]]) -> Deferred[None] | None:
            if not entries or not device.live:
                return None
            items = [
                (seq, m)
                for seq, m in entries
                if not _own_room_message(m.fields, self.user, device.device)
            ]
            return write(items, entries[-1][0], len(entries) == BACKLOG_PAGE)

        def write(
            items: list[tuple[int, StoredMessage]], last: int, more: bool
        ) -> Deferred[None] | None:
            if not device.live:
                return None
            cut, size = 0, 0
            for _, m in items:
                cut += 1
                size += m.size or FIELDS_SIZE
                if size >= BACKLOG_BYTES:
                    break
            chunk, rest = items[:cut], items[cut:]
            if self._written is None:
                self._written = {}
            self._written[device.device] = chunk[-1][0] if rest else last
            if chunk:
                device.send_msgs(chunk)
            if not rest and not more:
                return None

            def go_on(_: object = None) -> Deferred[None] | None:
                if rest:
                    return write(rest, last, more)
                return self._send_backlog(device, last)

            def when_taken(_: object = None) -> Deferred[None] | None:
                drained = device.when_drained()
                return go_on() if drained is None else drained.addCallback(go_on)

            if size < BACKLOG_BYTES:
                return when_taken()
            # a connection that writes once a turn shows it is behind after it
            return deferLater(self._clock, 0, when_taken)

        return self.backend.read(self.user, after, BACKLOG_PAGE).addCallback(page)

    def _attached(self, device: Any) -> None:
        if getattr(device, "live", True):
            self.devices[device.device] = device
            self.presence.attached(
                device.device,
                getattr(device, "presence_state", "online"),
                getattr(device, "presence_status", ""),
            )
            for out in self._missed.pop(device.device, {}).values():
                device.send_presence(out)

    def _on_detach(self, message: Message) -> None:
        device = message[1]
        name = device.device
        if self.devices.get(name) is device:
            del self.devices[name]
            if self._written:
                self._written.pop(name, None)
            self.backend.unlocate(self.user, name).addErrback(self._unlocated)
            self.presence.detached(name, message[2] if len(message) > 2 else False)
            if not self.devices:
                self._router.publisher.untrack(self.user)

    # -- rooms ------------------------------------------------------------------

    def _on_join(self, message: Message) -> Deferred[None] | None:
        # answered here, in the order of the user's other joins, not ahead of them
        _, device, room, ref = message
        if not device.may_join(room):
            device.send_frame(_error(403, "room not allowed by token", ref))
            return None

        def joined(count: int) -> None:
            device.send_frame({"t": "joined", "room": room, "members": count})

        d = self.backend.join(room, self.user)
        return d.addCallbacks(joined, self._unavailable, errbackArgs=(device, "join", ref))

    def _on_leave(self, message: Message) -> Deferred[None]:
        _, device, room, ref = message

        def left(_: int) -> None:
            device.send_frame({"t": "left", "room": room})

        d = self.backend.leave(room, self.user)
        return d.addCallbacks(left, self._unavailable, errbackArgs=(device, "leave", ref))

    def _unavailable(
        self, failure: Failure, device: Any, what: str, ref: str | None = None
    ) -> None:
        """A backend call for a device's frame failed: tell the device, which may
        send the frame again; the actor holds nothing of it."""
        self.log.warn(
            "{what} of {user} failed: {error}",
            what=what,
            user=self.user,
            error=failure.getErrorMessage(),
        )
        device.send_frame(_error(*UNAVAILABLE, ref))

    # -- presence (doc/protocol.md section 5; the rules are in presence.py) -------

    def _on_presence(self, batch: list[Message]) -> None:
        presence = self.presence
        for _, device, state, status in batch:
            if self.devices.get(device.device) is device:
                presence.report(device.device, state, status)

    def _on_presence_expire(self, message: Message) -> None:
        self.presence.expire()
        for name in [n for n in self._missed if not self.presence.is_lingering(n)]:
            del self._missed[name]

    def _on_presence_out(self, batch: list[Message]) -> None:
        """Changes of watched users, fanned out by the hub: to every live device."""
        outs = [m[1] for m in batch]
        for device in self.devices.values():
            if device.live:
                for out in outs:
                    device.send_presence(out)
        if self.presence.lingering:
            # a device that dropped a moment ago gets these when it is back
            for name, entry in self.presence.entries.items():
                if entry.until is not None and name not in self.devices:
                    missed = self._missed.setdefault(name, {})
                    for out in outs:
                        missed[out.frame["user"]] = out

    def _on_watch(self, message: Message) -> Deferred[None]:
        _, device, users, since = message
        hub = self.presence.hub

        def added(ok: bool) -> Deferred[None] | None:
            if not ok:
                device.send_frame(
                    _error(400, f"watch list full: at most {hub.watch_cap} users", None)
                )
                return None
            return self._answer_presence(device, users, since)

        d = self.backend.watch(self.user, users, hub.watch_cap).addCallback(added)
        return d.addErrback(self._unavailable, device, "watch")

    def _on_unwatch(self, message: Message) -> Deferred[None]:
        d = self.backend.unwatch(self.user, message[2])
        return d.addErrback(self._unavailable, message[1], "unwatch")

    def _on_probe(self, message: Message) -> Deferred[None]:
        _, device, users = message
        return self._answer_presence(device, users).addErrback(self._unavailable, device, "probe")

    def _answer_presence(
        self, device: Any, users: list[str], since: int | None = None
    ) -> Deferred[None]:
        """The current state of each user, from the broker's own state; with
        ``since``, of those whose state changed since then (less the skew
        margin) and of those with no record, whose last change is unknown."""
        floor = None if since is None else since - self.presence.hub.skew_ms

        def answer(found: dict[str, Any]) -> None:
            for user in dict.fromkeys(users):
                presence = found[user]
                if floor is None or presence.ts == 0 or presence.ts >= floor:
                    device.send_presence(OutFrame(presence_frame(user, presence)))

        return self.presence.hub.answer(users).addCallback(answer)

    # -- history (doc/protocol.md section 4; o2obroker/actors/history.py) ---------

    def _on_history(self, message: Message) -> Deferred[None]:
        _, device, frame = message
        archive = self._business.archive if self._business is not None else None
        d = read_history(
            archive,
            self.backend,
            self.user,
            peer=frame.peer,
            room=frame.room,
            before=frame.before,
            limit=frame.limit,
        )

        def answer(page: dict[str, Any]) -> None:
            device.send_frame({"t": "history", "ref": frame.id, **page})

        def refused(f: Any) -> None:
            f.trap(ProtocolError)
            device.send_frame(_error(f.value.code, f.value.reason, frame.id))

        return d.addCallbacks(answer, refused)

    # -- life cycle -------------------------------------------------------

    def idle(self) -> None:
        if not self.devices and not self._inflight and not self.presence.lingering:
            self._router.forget(self.user, self)

    def _recover(self) -> None:
        # device handles stay; anything half-done is answered by the client's
        # retry (send ids dedupe) or its resume (inbox and cursor)
        for device in [d for d in self.devices.values() if not getattr(d, "live", True)]:
            del self.devices[device.device]
            self.presence.detached(device.device, False)


class NotSubscribed(Exception):
    """This node cannot subscribe to the user's channel now (its subscriber is
    reconnecting): a device welcomed here would miss what is published to it."""


def _not_subscribed(failure: Failure) -> None:
    failure.trap(BackendUnavailable)
    raise NotSubscribed(failure.getErrorMessage())


def _first_error(failure: Failure) -> Failure:
    # gatherResults wraps the first failure; the attach's errback wants it itself
    if failure.check(FirstError):
        return failure.value.subFailure  # type: ignore[no-any-return]
    return failure


def _error(code: int, reason: str, ref: str | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"t": "error", "code": code, "reason": reason}
    if ref is not None:
        frame["ref"] = ref
    return frame


def _own_room_message(fields: dict[str, Any], user: str, device: str) -> bool:
    """A device is never sent its own room message, not on resume either."""
    return "room" in fields and fields["from"] == user and fields["from_device"] == device


def _set_cursor(device: Any) -> Any:
    def set_cursor(cursor: int) -> None:
        device.cursor = max(device.cursor, cursor)

    return set_cursor


def _seq(item: Delivery) -> int:
    return item[0]
