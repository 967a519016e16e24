"""The cluster publisher without Redis: payloads, receiver counts, what it ignores."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from o2obroker.backend import BackendUnavailable, EncodedMessage, StoredMessage
from o2obroker.backend.redis.backend import pack_messages
from o2obroker.routing import IMailbox, IPublisher
from o2obroker.routing.cluster import (
    RESYNC_SLICE,
    ClusterPublisher,
    decode,
    encode_messages,
    encode_presence,
    encode_replace,
    messages_head,
)


class FakeBus:
    def __init__(self) -> None:
        self.subscribed: set[str] = set()
        self.away: set[str] = set()  # users whose subscriber is down
        self.on_message: Any = None
        self.on_ready: Any = None

    def subscribe(self, user: str) -> Deferred[None]:
        self.subscribed.add(user)
        return succeed(None)

    def unsubscribe(self, user: str) -> None:
        self.subscribed.discard(user)

    def has(self, user: str) -> bool:
        return user in self.subscribed

    def ready_for(self, user: str) -> bool:
        return user not in self.away


class FakeBackend:
    def __init__(self) -> None:
        self.bus = FakeBus()
        self.counts: dict[str, int] = {}
        self.published: list[dict[str, bytes]] = []
        self.stored: list[Any] = []
        self.broken = False

    def publish_many(self, payloads: dict[str, bytes]) -> Deferred[dict[str, int]]:
        if self.broken:
            return fail(BackendUnavailable("down"))
        self.published.append(payloads)
        return succeed({u: self.counts.get(u, 0) for u in payloads})

    def append_publish(
        self, inboxes: dict[str, list[StoredMessage]], skips: dict[str, Any], head: bytes
    ) -> Deferred[Any]:
        if self.broken:
            return fail(BackendUnavailable("down"))
        self.stored.append((inboxes, skips, head))
        seqs = {u: list(range(1, len(ms) + 1)) for u, ms in inboxes.items()}
        return succeed((seqs, {u: self.counts.get(u, 0) for u in inboxes}))


@implementer(IMailbox)
class FakeActor:
    def __init__(self, reachable: bool = True) -> None:
        self.delivered: list[Any] = []
        self.displaced_devices: list[str] = []
        self.resynced = 0
        self.told: list[Any] = []
        self._reachable = reachable

    def tell(self, message: Any) -> None:
        self.told.append(message)

    def deliver(self, items: Any) -> None:
        self.delivered.append(items)

    def reachable(self) -> bool:
        return self._reachable

    def displaced(self, device: str) -> None:
        self.displaced_devices.append(device)

    def resync(self) -> None:
        self.resynced += 1

    def settled(self, settlement: Any) -> None:
        pass


def message(mid: str) -> StoredMessage:
    return StoredMessage(mid, 5, {"mid": mid, "from": "a", "to": "b", "body": [1], "ts": 5})


class ClusterPublisherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.actors: dict[str, Any] = {}
        self.backend = FakeBackend()
        self.clock = Clock()
        self.pub = ClusterPublisher(self.actors, self.backend, "n1", self.clock)

    def test_provides_the_publisher_interface(self) -> None:
        self.assertTrue(verifyObject(IPublisher, self.pub))
        self.assertTrue(verifyObject(IMailbox, FakeActor()))

    def test_payload_round_trip_without_decoding(self) -> None:
        m1, m2 = message("m1"), message("m2")
        payload = encode_messages(b"n1", 7, [m1, m2])
        kind, origin, items = decode(payload)
        self.assertEqual((kind, origin), (b"M", b"n1"))
        self.assertEqual(
            [(seq, got, skip) for seq, got, skip in items], [(7, m1, None), (8, m2, None)]
        )
        got = items[0][1]
        self.assertIsInstance(got, EncodedMessage)
        # a binary device's frame is spliced from the bytes as they came, and
        # equals the one the sender's node writes
        self.assertEqual(got.cbor(7), m1.cbor(7))
        self.assertEqual(got.json(7), m1.json(7))
        self.assertEqual((got.mid, got.ts, got.size), ("m1", 5, len(m1.cbor_map())))
        self.assertEqual(decode(encode_replace(b"n2", "tab")), (b"r", b"n2", "tab"))

    def test_a_skipped_device_travels_with_its_message(self) -> None:
        m = message("m1")
        payload = (
            messages_head(b"n1") + struct.pack(">d", 3) + pack_messages([m, m], ["phone", None])
        )
        [(s1, _, k1), (s2, _, k2)] = decode(payload)[2]
        self.assertEqual([(s1, k1), (s2, k2)], [(3, "phone"), (4, None)])

    def test_stored_and_published_in_one_call(self) -> None:
        self.actors["local"] = FakeActor(reachable=True)
        self.actors["attaching"] = FakeActor(reachable=False)
        self.backend.bus.subscribed |= {"local", "attaching"}
        self.backend.counts = {"local": 1, "attaching": 1, "remote": 1, "nobody": 0}
        inboxes = {u: [message("m")] for u in ("local", "attaching", "remote", "nobody")}
        skips = {"local": ["phone"]}
        seqs, elsewhere = self.successResultOf(self.pub.store(inboxes, skips))
        self.assertEqual(self.backend.stored, [(inboxes, skips, b"M\x02n1")])
        self.assertEqual(self.backend.published, [])  # no publish of its own
        self.assertEqual(seqs["remote"], [1])
        # counted only this node's own subscription: that is no other node
        self.assertEqual(elsewhere, {"remote"})
        # then this node's actors get theirs; those with a live device count
        deliveries = {u: [(1, message("m"), None)] for u in inboxes}
        reached = self.successResultOf(self.pub.publish(deliveries))
        self.assertEqual(reached, {"local"})
        self.assertEqual(len(self.actors["local"].delivered), 1)
        self.assertEqual(len(self.actors["attaching"].delivered), 1)

    def test_a_failed_store_fails(self) -> None:
        self.backend.broken = True
        self.failureResultOf(self.pub.store({"bob": [message("m")]}, {}), BackendUnavailable)

    def test_received_from_others_only(self) -> None:
        bob = self.actors["bob"] = FakeActor()
        m = message("m1")
        self.backend.bus.on_message("bob", encode_messages(b"n1", 1, [m]))
        self.assertEqual(bob.delivered, [])  # its own publish: delivered when stored
        self.backend.bus.on_message("bob", encode_messages(b"n2", 1, [m]))
        self.assertEqual(bob.delivered, [[(1, m, None)]])
        self.backend.bus.on_message("bob", encode_replace(b"n2", "phone"))
        self.assertEqual(bob.displaced_devices, ["phone"])
        # for a user with no actor here, and a payload that is not one: nothing
        self.backend.bus.on_message("carol", encode_replace(b"n2", "phone"))
        for bad in (
            b"M\x09garbage",
            b"x\x00",
            b"",
            b"M\x02n2\x00",
            encode_messages(b"n2", 2, [m])[:-3],
            encode_messages(b"n2", 2, [m])[:16],
        ):
            self.backend.bus.on_message("bob", bad)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 6)
        self.assertEqual(len(bob.delivered), 1)

    def test_presence_goes_on_the_watchers_channels_and_is_decoded_once(self) -> None:
        frame = {"t": "presence", "user": "bob", "state": "busy", "status": "", "ts": 5}
        self.pub.presence(frame, frozenset({"alice", "carol"}))
        payload = encode_presence(b"n1", frame)
        self.assertEqual(self.backend.published[-1], {"alice": payload, "carol": payload})
        # the other node: each watcher's actor gets the frame, decoded once
        alice = self.actors["alice"] = FakeActor()
        carol = self.actors["carol"] = FakeActor()
        theirs = encode_presence(b"n2", frame)
        self.backend.bus.on_message("alice", theirs)
        self.backend.bus.on_message("carol", theirs)
        self.backend.bus.on_message("dave", theirs)  # no actor here: nothing
        (kind, a), (_, c) = alice.told[0], carol.told[0]
        self.assertEqual((kind, a.frame), ("presence_out", frame))
        self.assertIs(a, c)
        # its own publish: its hub handed it to this node's watchers already
        self.backend.bus.on_message("alice", payload)
        self.assertEqual(len(alice.told), 1)

    def test_resubscribed_users_read_their_inboxes_again_a_slice_a_turn(self) -> None:
        turns = Turns()
        self.pub._clock = turns
        users = [f"u{i}" for i in range(RESYNC_SLICE * 2 + 1)]
        for u in users:
            self.actors[u] = FakeActor()
        self.backend.bus.on_ready([*users, "gone"])
        told = lambda: sum(a.resynced for a in self.actors.values())  # noqa: E731
        self.assertEqual(told(), 0)
        turns.run()
        self.assertEqual(told(), RESYNC_SLICE)
        turns.run()
        turns.run()
        self.assertEqual(told(), len(users))
        turns.run()
        self.assertEqual(turns.calls, [])

    def test_a_rejoin_while_a_resync_waits_adds_no_second_pass(self) -> None:
        turns = Turns()
        self.pub._clock = turns
        users = [f"u{i}" for i in range(RESYNC_SLICE + 1)]
        for u in users:
            self.actors[u] = FakeActor()
        self.backend.bus.on_ready(users)
        self.pub.rejoined([*users, "u-new"])
        self.actors["u-new"] = FakeActor()
        self.backend.bus.on_ready(users[:3])  # and a subscriber of some again
        while turns.calls:
            turns.run()
        self.assertEqual(
            {u: a.resynced for u, a in self.actors.items()}, dict.fromkeys(self.actors, 1)
        )
        # a later trigger is a new pass
        self.pub.rejoined(users[:2])
        turns.run()
        self.assertEqual([self.actors[u].resynced for u in users[:3]], [2, 2, 1])

    def test_a_pass_waits_for_its_gate_and_what_comes_meanwhile_joins_it(self) -> None:
        gate: Deferred[object] = Deferred()
        opened = []

        def before() -> Deferred[object]:
            opened.append(True)
            return gate

        self.pub.before_resync = before
        self.actors["bob"] = FakeActor()
        self.actors["carol"] = FakeActor()
        self.backend.bus.on_ready(["bob"])
        self.clock.advance(0)
        self.assertEqual(self.actors["bob"].resynced, 0)  # the gate is closed
        # the beat behind the gate finds the record lapsed: the rejoin joins this pass
        self.pub.rejoined(["bob", "carol"])
        self.assertEqual(len(opened), 1)
        gate.callback(None)
        self.clock.advance(0)
        self.assertEqual([self.actors[u].resynced for u in ("bob", "carol")], [1, 1])

    def test_a_failed_gate_still_lets_the_pass_run(self) -> None:
        self.pub.before_resync = lambda: fail(BackendUnavailable("down"))
        self.actors["bob"] = FakeActor()
        self.pub.rejoined(["bob"])
        self.clock.advance(0)
        self.assertEqual(self.actors["bob"].resynced, 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_a_user_whose_subscriber_is_away_waits_for_its_resubscribe(self) -> None:
        self.actors["bob"] = FakeActor()
        self.actors["carol"] = FakeActor()
        self.backend.bus.away.add("bob")
        self.pub.rejoined(["bob", "carol"])
        self.clock.advance(0)
        self.assertEqual([self.actors[u].resynced for u in ("bob", "carol")], [0, 1])
        self.backend.bus.away.clear()
        self.backend.bus.on_ready(["bob"])  # bob's subscriber is back: now
        self.clock.advance(0)
        self.assertEqual([self.actors[u].resynced for u in ("bob", "carol")], [1, 1])


class Turns:
    """A reactor whose turns the test runs one at a time (Clock runs every
    call made for now in one ``advance``)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        self.calls.append((f, args))
        return None

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)
