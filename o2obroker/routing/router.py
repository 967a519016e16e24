"""The router: stores a batch of messages and delivers it, wherever its users are.

One sender's actor hands the router its accepted batch (an outbox of sends to
many users and rooms). The router applies the node's policy, fans rooms out to
their members, stores everything in one backend call, hands what was stored to
the users' devices through a publisher, and settles each send with its sender,
by user id. Today the publisher is local (the actors of this node); a cluster
backend plugs a cross-node publisher in behind the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from o2obroker.backend.interface import IBackend, StoredMessage, StoreFull
from o2obroker.metrics import Stats
from o2obroker.routing.messages import Delivery, Outgoing, Settlement

#: The policy seam: takes a claimed batch, fires with the batch to route: the
#: same items, possibly rewritten (``Outgoing.message``) or refused
#: (``Outgoing.refuse``), never dropped; a failure answers the batch with 503.
Policy = Callable[[list[Outgoing]], Deferred[list[Outgoing]]]

UNAVAILABLE = (503, "backend unavailable")
STORE_FULL = (503, "store full")


class IMailbox(Interface):
    """What the router needs of a user's actor on this node."""

    def deliver(items: list[Delivery]) -> None:
        """Queue stored messages for this user's devices, in order; never raises."""

    def settled(settlement: Settlement) -> None:
        """Sends of this user have been settled: answer them."""

    def reachable() -> bool:
        """Whether a device of this user here takes messages now."""

    def displaced(device: str) -> None:
        """The same device of this user said hello on another node: close it here (409)."""

    def resync() -> None:
        """What was published for this user may have been lost: read the inbox again."""


class IPublisher(Interface):
    """Where stored messages go next: to the nodes where their users are live."""

    def store(
        inboxes: dict[str, list[StoredMessage]], skips: dict[str, list[str | None]]
    ) -> Deferred[tuple[dict[str, list[int]], set[str]]]:
        """Store each user's messages (``IBackend.append_many``) and hand them
        to the other nodes with a live device of the user in the same step;
        ``skips`` names, per message of a user, the device not to write it to
        (users without one are left out). Fire with ({user: seqs}, the users
        a live device on another node took them for). Fails as append_many."""

    def publish(deliveries: dict[str, list[Delivery]]) -> Deferred[set[str]]:
        """Hand each user's stored messages to its live devices on this node.
        Fire with the users that have a live device here to take them (with
        those of ``store``, their sends are ``delivered``; the others'
        ``stored``). Never fails: what is stored reaches a device at its next
        resume anyway."""

    def settle(user: str, settlement: Settlement) -> None:
        """Tell the actor of ``user``, wherever it is, how its sends ended."""

    def track(user: str) -> Deferred[None]:
        """A device of ``user`` is attaching here: from when this fires, what is
        published for the user reaches this node's actor. Fails when that
        cannot be had now (the attach then fails, and the client retries)."""

    def untrack(user: str) -> None:
        """The last device of ``user`` here is gone."""

    def replace(user: str, device: str) -> None:
        """``device`` of ``user`` said hello here: replace it on other nodes."""

    def presence(frame: dict[str, Any], watchers: frozenset[str]) -> None:
        """Hand a presence frame to the ``watchers``' live devices on other nodes."""


@implementer(IPublisher)
class LocalPublisher:
    """The publisher of one node: every live device is on this node.

    A user without an actor here has no device here: nothing is made for it,
    its messages wait in its inbox.
    """

    def __init__(self, actors: dict[str, Any], backend: IBackend) -> None:
        self._actors = actors
        self._backend = backend

    def store(
        self, inboxes: dict[str, list[StoredMessage]], skips: dict[str, list[str | None]]
    ) -> Deferred[tuple[dict[str, list[int]], set[str]]]:
        return self._backend.append_many(inboxes).addCallback(_nowhere_else)

    def publish(self, deliveries: dict[str, list[Delivery]]) -> Deferred[set[str]]:
        reached = set()
        actors = self._actors
        for user, items in deliveries.items():
            actor = actors.get(user)
            if actor is not None:
                # told even without a live device: one may be attaching, and
                # its backlog read may have come before these were stored
                actor.deliver(items)
                if actor.reachable():
                    reached.add(user)
        return succeed(reached)

    def settle(self, user: str, settlement: Settlement) -> None:
        actor = self._actors.get(user)
        if actor is not None:
            actor.settled(settlement)

    def track(self, user: str) -> Deferred[None]:
        return succeed(None)

    def untrack(self, user: str) -> None:
        pass

    def replace(self, user: str, device: str) -> None:
        pass

    def presence(self, frame: dict[str, Any], watchers: frozenset[str]) -> None:
        pass  # every watcher's device is here: the presence hub hands it over


class Router:
    """Routes batches of sends, and maps user ids to the actors of this node.

    ``policy`` is the seam between a send's acceptance and its delivery
    (filters, hooks): None routes batches as they come.
    """

    log = Logger()

    def __init__(
        self,
        backend: IBackend,
        publisher: IPublisher | None = None,
        *,
        policy: Policy | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.backend = backend
        self.actors: dict[str, Any] = {}
        self.publisher: IPublisher = publisher or LocalPublisher(self.actors, backend)
        self.policy = policy
        #: business hooks, None when off: ``offline(user, messages)`` for what was
        #: stored for a user with no live device (the application's push), and
        #: ``archive(messages)`` for every message stored, once per send
        self.offline: Callable[[str, list[StoredMessage]], None] | None = None
        self.archive: Callable[[list[StoredMessage]], Deferred[Any]] | None = None
        self.stats = stats or Stats()
        self._spawn: Callable[[str], Any] | None = None

    # -- the actors of this node -------------------------------------------

    def set_spawner(self, spawn: Callable[[str], Any]) -> None:
        """Tell the router how to make an actor; the actor layer calls this."""
        self._spawn = spawn

    def actor(self, user: str) -> Any:
        """The local actor of ``user``, made if there is none."""
        actor = self.actors.get(user)
        if actor is None:
            assert self._spawn is not None, "no actor system attached to the router"
            actor = self.actors[user] = self._spawn(user)
        return actor

    def forget(self, user: str, actor: Any) -> None:
        """An idle actor leaves memory; its state is in the backend."""
        if self.actors.get(user) is actor:
            del self.actors[user]

    # -- routing ------------------------------------------------------------

    def route(self, sender: str, items: list[Outgoing]) -> Deferred[None]:
        """Deliver one batch of ``sender``'s sends and settle each of them.

        Fires once every item is settled (with a receipt status or an error)
        and what was stored has been handed on; never fails. The caller holds
        its mailbox meanwhile, so a sender's batches are stored in order.
        """
        if self.policy is None:
            return self._resolve(items, sender)
        try:
            d = self.policy(items)
        except Exception:
            d = fail()
        return d.addCallbacks(
            self._checked, self._failed, callbackArgs=(sender, items), errbackArgs=(sender, items)
        )

    def _checked(
        self, routed: list[Outgoing], sender: str, items: list[Outgoing]
    ) -> Deferred[None]:
        """A policy answers every item: one it dropped would never be settled."""
        if routed is not items and len(routed) != len(items):
            kept = {id(i) for i in routed}
            dropped = [i for i in items if id(i) not in kept]
            self.log.error("policy dropped {n} sends of {sender}", n=len(dropped), sender=sender)
            for item in dropped:
                item.refuse(*UNAVAILABLE)
            routed = routed + dropped
        return self._resolve(routed, sender)

    def _resolve(self, items: list[Outgoing], sender: str) -> Deferred[None]:
        rooms = {i.room for i in items if i.room is not None and i.error is None}
        if not rooms:
            return self._store(items, sender, None)
        names = sorted(rooms)
        d = gatherResults([self.backend.members(r) for r in names], consumeErrors=True)
        return d.addCallbacks(
            lambda found: self._store(items, sender, dict(zip(names, found, strict=True))),
            self._failed,
            errbackArgs=(sender, items),
        )

    def _store(
        self, items: list[Outgoing], sender: str, members: dict[str, frozenset[str]] | None
    ) -> Deferred[None]:
        """Group the batch by recipient and store it in one backend call."""
        # per recipient, the items of its messages, in order
        routed: dict[str, list[Outgoing]] = {}
        for item in items:
            if item.error is not None:
                continue
            to = item.to
            if to is not None:
                box = routed.get(to)
                if box is None:
                    routed[to] = [item]
                else:
                    box.append(item)
                continue
            assert members is not None
            room_members = members.get(item.room, ())  # type: ignore[arg-type]
            if not room_members:
                item.refuse(404, "no such room")
            elif sender not in room_members and not item.service:
                item.refuse(403, "not a member of this room")
            else:
                for member in room_members:
                    routed.setdefault(member, []).append(item)
        if not routed:
            self._settle(sender, items, set())
            return succeed(None)
        inboxes = {user: [item.message for item in its] for user, its in routed.items()}
        own = routed.get(sender)
        skips = {}
        if own is not None and any(item.room is not None for item in own):
            # the sender's own user: a room message skips the device that sent it
            skips[sender] = [item.device if item.room is not None else None for item in own]
        d = self.publisher.store(inboxes, skips)
        return d.addCallbacks(
            self._publish,
            self._store_failed,
            callbackArgs=(sender, items, routed),
            errbackArgs=(sender, items, routed),
        )

    def _store_failed(
        self,
        failure: Failure,
        sender: str,
        items: list[Outgoing],
        routed: dict[str, list[Outgoing]],
    ) -> Deferred[None] | None:
        if not failure.check(StoreFull):
            return self._failed(failure, sender, items)
        full: StoreFull = failure.value  # type: ignore[assignment]
        refused = 0
        # a store that cannot tell which inboxes it refused stored none of them
        for user in full.refused if full.refused is not None else list(routed):
            for item in routed.pop(user, ()):
                if item.error is None:
                    refused += 1
                item.refuse(*STORE_FULL)
        self.stats.store_refused += refused
        # what was stored is delivered; a room send refused for one member is
        # answered 503, and its retry comes again under the same mid
        return self._publish((full.stored, set()), sender, items, routed)

    def _publish(
        self,
        stored: tuple[dict[str, list[int]], set[str]],
        sender: str,
        items: list[Outgoing],
        routed: dict[str, list[Outgoing]],
    ) -> Deferred[None]:
        seqs, elsewhere = stored
        deliveries: dict[str, list[Delivery]] = {}
        for user, user_items in routed.items():
            if user != sender:
                deliveries[user] = [
                    (seq, item.message, None)
                    for seq, item in zip(seqs[user], user_items, strict=True)
                ]
            else:
                # the sender's own user: a room message skips the device that sent it
                deliveries[user] = [
                    (seq, item.message, item.device if item.room is not None else None)
                    for seq, item in zip(seqs[user], user_items, strict=True)
                ]
        d = self.publisher.publish(deliveries)
        d.addErrback(self._publish_failed)
        return d.addCallback(self._published, sender, items, deliveries, elsewhere)

    def _published(
        self,
        reached: set[str],
        sender: str,
        items: list[Outgoing],
        deliveries: dict[str, list[Delivery]],
        elsewhere: set[str],
    ) -> None:
        if elsewhere:
            reached |= elsewhere
        offline = self.offline
        if offline is not None:
            for user, stored in deliveries.items():
                if user not in reached:
                    offline(user, [m for _, m, _ in stored])
        self._settle(sender, items, reached)
        archive = self.archive
        if archive is not None:
            kept = [item.message for item in items if item.error is None]
            if kept:
                archive(kept).addErrback(
                    lambda f: self.log.failure("archiving messages of {sender}", f, sender=sender)
                )

    def _publish_failed(self, failure: Failure) -> set[str]:
        # stored is stored: each device gets these at its next resume
        self.log.failure("publishing stored messages", failure)
        return set()

    def _failed(self, failure: Failure, sender: str, items: list[Outgoing]) -> None:
        """A backend or policy call of this batch failed: every item it carried
        that is not settled otherwise gets a 503; the client retries."""
        self.log.warn(
            "routing {n} sends of {sender} failed: {error}",
            n=len(items),
            sender=sender,
            error=failure.getErrorMessage(),
        )
        for item in items:
            item.refuse(*UNAVAILABLE)
        self._settle(sender, items, set())

    def _settle(self, sender: str, items: list[Outgoing], reached: set[str]) -> None:
        statuses: dict[str, str] = {}
        errors: dict[str, tuple[int, str]] = {}
        for item in items:
            error = item.error
            if error is not None:
                errors[item.id] = error
            elif item.room is not None:
                statuses[item.id] = "accepted"
            elif item.to in reached:
                statuses[item.id] = "delivered"
            else:
                statuses[item.id] = "stored"
        self.publisher.settle(sender, Settlement(statuses, errors))


def _nowhere_else(seqs: dict[str, list[int]]) -> tuple[dict[str, list[int]], set[str]]:
    return seqs, set()
