"""The router: one store call per batch, rooms fanned out, settlements by user id, failures."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from o2obroker.backend import MemoryBackend, StoredMessage, TimeoutBackend
from o2obroker.metrics import Stats
from o2obroker.routing import (
    IMailbox,
    IPublisher,
    LocalPublisher,
    Outgoing,
    Router,
    Settlement,
)
from tests.doubles import FlakyBackend


@implementer(IMailbox)
class Mailbox:
    """A user's actor as the router sees it: what it was told, nothing else."""

    def __init__(self, live: bool = True) -> None:
        self.live = live
        self.delivered: list[tuple[int, str, str | None]] = []
        self.settlements: list[tuple[str, str | None, int, str]] = []
        self.raw: list[Settlement] = []

    def deliver(self, items: list[Any]) -> None:
        self.delivered.extend((seq, m.mid, skip) for seq, m, skip in items)

    def settled(self, settlement: Settlement) -> None:
        self.raw.append(settlement)
        self.settlements.extend(flat(settlement))

    def reachable(self) -> bool:
        return self.live

    def displaced(self, device: str) -> None:
        pass

    def resync(self) -> None:
        pass


def flat(settlement: Settlement) -> list[tuple[str, str | None, int, str]]:
    """A settlement as (send id, status, code, reason) tuples, in send id order."""
    out = [(i, status, 0, "") for i, status in settlement.statuses.items()]
    out.extend((i, None, code, reason) for i, (code, reason) in settlement.errors.items())
    return sorted(out)


def outgoing(
    sender: str, n: int, to: str | None = None, room: str | None = None, **kw: Any
) -> Outgoing:
    fields = {"mid": f"m{n}", "from": sender, "body": n}
    return Outgoing(
        sender, f"c-{n}", "phone", StoredMessage(f"m{n}", 0, fields, 10), to, room, **kw
    )


class RouterCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.memory = MemoryBackend(self.clock, max_user_bytes=100)
        self.flaky = FlakyBackend(self.memory)
        self.stats = Stats()
        self.router = Router(TimeoutBackend(self.flaky, self.clock, 5.0), stats=self.stats)
        self.alice = self.router.actors["alice"] = Mailbox()

    def route(self, items: list[Outgoing], sender: str = "alice") -> None:
        self.assertIsNone(self.successResultOf(self.router.route(sender, items)))

    def settled(self) -> list[tuple[str, str | None, int, str]]:
        out, self.alice.settlements = self.alice.settlements, []
        return sorted(out)

    def inbox(self, user: str) -> list[str]:
        return [m.mid for _, m in self.successResultOf(self.memory.read(user, 0, 100))]


class RoutingTests(RouterCase):
    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IPublisher, LocalPublisher({}, self.memory)))
        self.assertTrue(verifyObject(IMailbox, Mailbox()))

    def test_a_batch_is_stored_in_one_call_and_settled_by_user_id(self) -> None:
        bob = self.router.actors["bob"] = Mailbox()
        self.route(
            [outgoing("alice", 1, "bob"), outgoing("alice", 2, "eve"), outgoing("alice", 3, "bob")]
        )
        self.assertEqual(self.flaky.calls, ["append_many"])
        self.assertEqual(bob.delivered, [(1, "m1", None), (2, "m3", None)])
        # eve has no actor: none is made, her message waits in her inbox
        self.assertNotIn("eve", self.router.actors)
        self.assertEqual(self.inbox("eve"), ["m2"])
        settlements = self.settled()
        self.assertEqual(
            settlements,
            [
                ("c-1", "delivered", 0, ""),
                ("c-2", "stored", 0, ""),
                ("c-3", "delivered", 0, ""),
            ],
        )
        # one settlement for the batch, data only: it can cross to another node as it is
        [settlement] = self.alice.raw
        self.assertEqual(
            settlement, ({"c-1": "delivered", "c-2": "stored", "c-3": "delivered"}, {})
        )
        self.assertEqual(type(settlement.statuses), dict)

    def test_an_actor_with_no_live_device_still_gets_the_delivery(self) -> None:
        # it may be attaching: its backlog read may have come before the store
        bob = self.router.actors["bob"] = Mailbox(live=False)
        self.route([outgoing("alice", 1, "bob")])
        self.assertEqual(bob.delivered, [(1, "m1", None)])
        self.assertEqual(self.settled(), [("c-1", "stored", 0, "")])

    def test_room_fans_out_to_members_but_not_the_sending_device(self) -> None:
        for user in ("alice", "bob", "carol"):
            self.memory.join("r", user)
        bob = self.router.actors["bob"] = Mailbox()
        self.route([outgoing("alice", 1, room="r")])
        self.assertEqual(bob.delivered, [(1, "m1", None)])
        # alice's other devices get it, the phone that sent it does not
        self.assertEqual(self.alice.delivered, [(1, "m1", "phone")])
        self.assertEqual(self.inbox("carol"), ["m1"])
        self.assertEqual(self.settled(), [("c-1", "accepted", 0, "")])
        self.assertEqual(self.flaky.calls, ["members", "append_many"])

    def test_the_store_is_told_the_device_a_room_message_skips(self) -> None:
        # with the batch it stores, so that another node does not write a
        # room message to the device of the sender's that sent it
        stored = []
        local = self.router.publisher

        @implementer(IPublisher)
        class Spy:
            def store(self, inboxes: dict[str, Any], skips: dict[str, Any]) -> Deferred[Any]:
                stored.append(skips)
                return local.store(inboxes, skips)

            def __getattr__(self, name: str) -> Any:
                return getattr(local, name)

        self.router.publisher = Spy()
        self.memory.join("r", "alice")
        self.memory.join("r", "bob")
        self.route([outgoing("alice", 1, "carol"), outgoing("alice", 2, room="r")])
        self.route([outgoing("alice", 3, "bob")])
        self.assertEqual(stored, [{"alice": ["phone"]}, {}])
        self.assertEqual(self.alice.delivered, [(1, "m2", "phone")])

    def test_room_errors(self) -> None:
        self.memory.join("r", "bob")
        self.route(
            [
                outgoing("alice", 1, room="nowhere"),
                outgoing("alice", 2, room="r"),
                outgoing("alice", 3, room="r", service=True),
            ]
        )
        self.assertEqual(
            self.settled(),
            [
                ("c-1", None, 404, "no such room"),
                ("c-2", None, 403, "not a member of this room"),
                ("c-3", "accepted", 0, ""),
            ],
        )
        self.assertEqual(self.inbox("bob"), ["m3"])

    def test_a_batch_of_refusals_stores_nothing(self) -> None:
        self.route([outgoing("alice", 1, room="nowhere")])
        self.assertEqual(self.flaky.calls, ["members"])
        self.assertEqual(self.settled(), [("c-1", None, 404, "no such room")])

    def test_a_custom_publisher_gets_what_was_stored(self) -> None:
        @implementer(IPublisher)
        class Remote:
            def __init__(self) -> None:
                self.published: list[dict[str, Any]] = []
                self.settled: list[tuple[str, Any]] = []

            def store(self, inboxes: dict[str, Any], skips: dict[str, Any]) -> Deferred[Any]:
                # stored, and taken by a device of eve's on another node
                d = self.backend.append_many(inboxes)
                return d.addCallback(lambda seqs: (seqs, {"eve"}))

            def publish(self, deliveries: dict[str, Any]) -> Deferred[set[str]]:
                self.published.append({u: [s for s, _, _ in i] for u, i in deliveries.items()})
                return succeed({"bob"})

            def settle(self, user: str, settlement: Settlement) -> None:
                self.settled.append((user, flat(settlement)))

        remote = Remote()
        remote.backend = self.memory
        router = Router(self.memory, remote)
        self.successResultOf(
            router.route("alice", [outgoing("alice", 1, "bob"), outgoing("alice", 2, "eve")])
        )
        self.assertEqual(remote.published, [{"bob": [1], "eve": [1]}])
        self.assertEqual(
            remote.settled,
            [("alice", [("c-1", "delivered", 0, ""), ("c-2", "delivered", 0, "")])],
        )


class PolicySeamTests(RouterCase):
    def test_policy_sees_the_batch_and_may_refuse_or_rewrite(self) -> None:
        seen = []

        def policy(items: list[Outgoing]) -> Deferred[list[Outgoing]]:
            seen.append([i.id for i in items])
            items[0].refuse(403, "rejected by policy")
            items[1].message = StoredMessage("m2", 0, {"mid": "m2", "body": "***"}, 10)
            return succeed(items)

        self.router.policy = policy
        self.route([outgoing("alice", 1, "bob"), outgoing("alice", 2, "bob")])
        self.assertEqual(seen, [["c-1", "c-2"]])
        self.assertEqual(
            self.settled(),
            [("c-1", None, 403, "rejected by policy"), ("c-2", "stored", 0, "")],
        )
        [(_, stored)] = self.successResultOf(self.memory.read("bob", 0, 10))
        self.assertEqual(stored.fields["body"], "***")

    def test_a_policy_that_drops_an_item_still_gets_it_answered(self) -> None:
        self.router.policy = lambda items: succeed(items[1:])
        self.route([outgoing("alice", 1, "bob"), outgoing("alice", 2, "bob")])
        self.assertEqual(
            sorted(self.settled()),
            [("c-1", None, 503, "backend unavailable"), ("c-2", "stored", 0, "")],
        )
        self.flushLoggedErrors()

    def test_a_policy_that_fails_answers_503(self) -> None:
        def policy(items: list[Outgoing]) -> Deferred[list[Outgoing]]:
            raise RuntimeError("hook down")

        self.router.policy = policy
        self.route([outgoing("alice", 1, "bob")])
        self.assertEqual(self.settled(), [("c-1", None, 503, "backend unavailable")])
        self.assertEqual(self.inbox("bob"), [])
        self.flushLoggedErrors()


class FailureTests(RouterCase):
    def test_a_failed_store_answers_every_send_503(self) -> None:
        bob = self.router.actors["bob"] = Mailbox()
        self.flaky.break_("fail", "append_many")
        self.route([outgoing("alice", 1, "bob"), outgoing("alice", 2, "eve")])
        self.assertEqual(
            self.settled(),
            [
                ("c-1", None, 503, "backend unavailable"),
                ("c-2", None, 503, "backend unavailable"),
            ],
        )
        self.assertEqual(bob.delivered, [])

    def test_a_store_that_hangs_is_answered_after_the_timeout(self) -> None:
        self.flaky.break_("hang", "append_many")
        d = self.router.route("alice", [outgoing("alice", 1, "bob")])
        self.assertNoResult(d)
        self.assertEqual(self.settled(), [])
        self.clock.advance(5)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.settled(), [("c-1", None, 503, "backend unavailable")])

    def test_a_failed_room_look_up_answers_503(self) -> None:
        self.memory.join("r", "alice")
        self.flaky.break_("fail", "members")
        self.route([outgoing("alice", 1, room="r"), outgoing("alice", 2, "bob")])
        self.assertEqual(
            [code for _, _, code, _ in self.settled()],
            [503, 503],
        )
        self.assertEqual(self.inbox("bob"), [])

    def test_store_full_refuses_only_the_full_inboxes(self) -> None:
        bob = self.router.actors["bob"] = Mailbox()
        self.memory.append("eve", [StoredMessage("x", 0, {}, 95)])
        self.route(
            [outgoing("alice", 1, "bob"), outgoing("alice", 2, "eve"), outgoing("alice", 3, "bob")]
        )
        self.assertEqual(
            self.settled(),
            [
                ("c-1", "delivered", 0, ""),
                ("c-2", None, 503, "store full"),
                ("c-3", "delivered", 0, ""),
            ],
        )
        self.assertEqual(bob.delivered, [(1, "m1", None), (2, "m3", None)])
        self.assertEqual(self.stats.store_refused, 1)

    def test_a_room_send_refused_by_one_full_member(self) -> None:
        for user in ("alice", "bob", "eve"):
            self.memory.join("r", user)
        self.memory.append("eve", [StoredMessage("x", 0, {}, 95)])
        bob = self.router.actors["bob"] = Mailbox()
        self.route([outgoing("alice", 1, room="r")])
        # 503: the client retries, under the same mid; members that have it drop the repeat
        self.assertEqual(self.settled(), [("c-1", None, 503, "store full")])
        self.assertEqual(bob.delivered, [(1, "m1", None)])
        self.assertEqual(self.inbox("eve"), ["x"])
        self.assertEqual(self.stats.store_refused, 1)


class BusinessHookTests(RouterCase):
    """The offline push and the archive, as the router calls them after a store."""

    def setUp(self) -> None:
        super().setUp()
        self.offline: list[tuple[str, list[str]]] = []
        self.archived: list[list[str]] = []
        self.archive_result: Deferred[None] | None = None
        self.router.offline = lambda user, ms: self.offline.append((user, [m.mid for m in ms]))
        self.router.archive = self.archive

    def archive(self, messages: list[StoredMessage]) -> Deferred[None]:
        self.archived.append([m.mid for m in messages])
        return self.archive_result or succeed(None)

    def test_offline_only_for_users_without_a_live_device(self) -> None:
        for user in ("alice", "bob", "carol", "eve"):
            self.memory.join("r", user)
        self.router.actors["bob"] = Mailbox()
        self.router.actors["carol"] = Mailbox(live=False)  # an actor, no live device
        self.route(
            [
                outgoing("alice", 1, "bob"),
                outgoing("alice", 2, "carol"),
                outgoing("alice", 3, "dave"),  # no actor at all
                outgoing("alice", 4, room="r"),
                outgoing("alice", 5, "carol"),
            ]
        )
        # alice (the sender, live) and bob (live) get no push; the others one
        # call each, with their messages in order
        self.assertEqual(
            sorted(self.offline),
            [("carol", ["m2", "m4", "m5"]), ("dave", ["m3"]), ("eve", ["m4"])],
        )

    def test_offline_for_the_senders_own_user_when_it_has_no_live_device(self) -> None:
        # a back-end service publishing to a room the user is in: no device of hers is live
        self.alice.live = False
        self.memory.join("r", "alice")
        self.route([outgoing("alice", 1, room="r", service=True)])
        self.assertEqual(self.offline, [("alice", ["m1"])])

    def test_no_offline_for_what_was_not_stored(self) -> None:
        self.memory.join("r", "bob")
        self.memory.append("eve", [StoredMessage("x", 0, {}, 95)])
        self.router.policy = lambda items: succeed(
            [items[0].refuse(403, "rejected by policy") or items[0], *items[1:]]
        )
        self.route(
            [
                outgoing("alice", 1, "carol"),  # rejected by policy
                outgoing("alice", 2, "eve"),  # store full
                outgoing("alice", 3, room="nowhere"),  # 404
                outgoing("alice", 4, room="r"),  # 403: alice is not a member
            ]
        )
        self.assertEqual(self.offline, [])
        self.assertEqual(self.archived, [])

    def test_no_offline_and_no_archive_when_the_store_fails(self) -> None:
        self.flaky.break_("fail", "append_many")
        self.route([outgoing("alice", 1, "carol")])
        self.assertEqual(self.offline, [])
        self.assertEqual(self.archived, [])

    def test_every_stored_send_archived_once_in_order(self) -> None:
        for user in ("alice", "bob", "carol"):
            self.memory.join("r", user)
        self.router.actors["bob"] = Mailbox()
        self.route(
            [
                outgoing("alice", 1, "bob"),  # delivered
                outgoing("alice", 2, room="r"),  # three inboxes, one archive entry
                outgoing("alice", 3, "dave"),  # stored for later
            ]
        )
        self.assertEqual(self.archived, [["m1", "m2", "m3"]])

    def test_only_the_sends_that_were_stored_are_archived(self) -> None:
        self.memory.append("eve", [StoredMessage("x", 0, {}, 95)])
        self.router.policy = lambda items: succeed(
            [items[0].refuse(403, "rejected by policy") or items[0], *items[1:]]
        )
        self.route(
            [
                outgoing("alice", 1, "bob"),  # rejected by policy
                outgoing("alice", 2, "eve"),  # store full
                outgoing("alice", 3, "bob"),
            ]
        )
        self.assertEqual(self.archived, [["m3"]])

    def test_the_archive_comes_after_the_receipts_and_its_failure_is_only_logged(self) -> None:
        self.archive_result = Deferred()
        self.route([outgoing("alice", 1, "bob")])
        # the sender has its receipt while the archive write is still under way
        self.assertEqual(self.settled(), [("c-1", "stored", 0, "")])
        self.archive_result.errback(RuntimeError("archive down"))
        [logged] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(logged.value), "archive down")
