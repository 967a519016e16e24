"""UserActor: its user's devices, sends through the router, resume, and a failing backend.

Unit tests on a fake clock with the memory backend behind a FlakyBackend (whose
calls can be made to fail or hang) and TimeoutBackend, and fake devices.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from o2obroker.actors import ActorSystem
from o2obroker.actors.presence import PresenceHub
from o2obroker.actors.user import IDevice, SendOnlyDevice
from o2obroker.backend import (
    BackendUnavailable,
    Location,
    MemoryBackend,
    StoredMessage,
    TimeoutBackend,
)
from o2obroker.routing import IMailbox, Router
from o2obroker.session.service import _Answer
from o2obroker.wire import OutFrame, ProtocolError
from o2obroker.wire.frames import Send
from tests.doubles import FlakyBackend
from tests.harness import Harness

TIMEOUT = 5.0
UNAVAILABLE = {"t": "error", "code": 503, "reason": "backend unavailable"}


@implementer(IDevice)
class FakeDevice:
    """A connection as the actor sees it, recording what it is given."""

    kind = "mobile"
    service = False

    def __init__(self, user: str, device: str) -> None:
        self.user = user
        self.device = device
        self.cursor = 0
        self.live = True
        self.welcomed: list[tuple[int, bool]] = []
        self.msgs: list[tuple[int, str]] = []
        self.frames: list[dict[str, Any]] = []
        self.answers: list[tuple[str, str, int, str]] = []
        self.presence: list[dict[str, Any]] = []

    def welcome(self, last: int, resumed: bool) -> None:
        self.welcomed.append((last, resumed))

    def send_msgs(self, items: list[tuple[int, Any]]) -> None:
        self.msgs.extend((seq, m.mid) for seq, m in items)

    def send_frame(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    def send_presence(self, out: OutFrame) -> None:
        self.presence.append(out.frame)

    def receipts(self, items: list[tuple[str, str, int, str]]) -> None:
        self.answers.extend(items)

    def replaced(self) -> None:
        self.live = False

    def fail(self, error: ProtocolError) -> None:
        self.frames.append(error.frame())
        if error.fatal:
            self.live = False

    def when_drained(self) -> Deferred[None] | None:
        return None

    def may_join(self, room: str) -> bool:
        return True

    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.msgs]


class Service(SendOnlyDevice):
    device = "api"

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def answered(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


def send(n: int | str, to: str | None = None, room: str | None = None, size: int = 10) -> Send:
    return Send(f"c-{n}", to, room, {"n": n}, size)


class ActorCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.memory = MemoryBackend(self.clock)
        self.flaky = FlakyBackend(self.memory)
        self.backend = TimeoutBackend(self.flaky, self.clock, TIMEOUT)
        self.router = Router(self.backend)
        self.hub = PresenceHub(self.backend, self.router, self.clock)
        self.system = ActorSystem(self.router, self.clock, self.hub)
        self.stored = 0

    def tearDown(self) -> None:
        self.hub.stop()

    def flush(self) -> None:
        for _ in range(20):
            if not [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]:
                return
            self.clock.advance(0)

    def connect(self, user: str, device: str = "phone", resume: int | None = None) -> FakeDevice:
        d = FakeDevice(user, device)
        self.system.user(user).attach(d, resume)
        self.flush()
        return d

    def submit(self, user: str, device: Any, *sends: Send) -> None:
        actor = self.system.user(user)
        for s in sends:
            actor.submit(device, s)
        self.flush()

    def store(self, user: str, n: int) -> None:
        """``n`` messages from a service into the inbox of ``user``."""
        for _ in range(n):
            self.stored += 1
            self.submit("svc", Service(), send(f"s{self.stored}", user))

    def inbox(self, user: str) -> list[int]:
        return [s for s, _ in self.successResultOf(self.memory.read(user, 0, 100))]


class DeviceTests(ActorCase):
    def test_devices_provide_the_interface(self) -> None:
        self.assertTrue(verifyObject(IDevice, Service()))
        self.assertTrue(verifyObject(IDevice, FakeDevice("a", "b")))
        h = Harness(auth="none")
        h.login("alice", "phone").read()
        session = h.node.router.actors["alice"].devices["phone"]
        self.assertTrue(verifyObject(IDevice, session))

    def test_a_service_sender_provides_the_interface(self) -> None:
        h = Harness(auth="none")
        self.assertTrue(verifyObject(IDevice, _Answer(h.node.gateway, "api")))

    def test_the_actor_is_the_routers_mailbox(self) -> None:
        h = Harness(auth="none")
        h.login("alice", "phone").read()
        self.assertTrue(verifyObject(IMailbox, h.node.router.actors["alice"]))


class DeliveryTests(ActorCase):
    def test_send_to_a_live_user_is_delivered(self) -> None:
        alice, bob = self.connect("alice"), self.connect("bob")
        self.submit("alice", alice, send(1, "bob"))
        [(send_id, mid, _, status)] = alice.answers
        self.assertEqual((send_id, status), ("c-1", "delivered"))
        self.assertEqual(bob.msgs, [(1, mid)])

    def test_send_to_an_offline_user_is_stored_and_makes_no_actor(self) -> None:
        alice = self.connect("alice")
        self.submit("alice", alice, send(1, "bob"))
        self.assertEqual(alice.answers[0][3], "stored")
        self.assertNotIn("bob", self.router.actors)
        self.assertEqual(self.inbox("bob"), [1])

    def test_every_live_device_gets_it_each_once(self) -> None:
        alice = self.connect("alice")
        phone, web = self.connect("bob", "phone"), self.connect("bob", "web")
        self.submit("alice", alice, send(1, "bob"), send(2, "bob"))
        self.assertEqual(phone.seqs(), [1, 2])
        self.assertEqual(web.seqs(), [1, 2])

    def test_room_message_skips_the_sending_device_only(self) -> None:
        phone, web, bob = (
            self.connect("alice", "phone"),
            self.connect("alice", "web"),
            self.connect("bob"),
        )
        for user, device in (("alice", phone), ("bob", bob)):
            self.system.user(user).join(device, "r")
        self.flush()
        self.submit("alice", phone, send(1, room="r"))
        self.assertEqual(phone.answers[0][3], "accepted")
        self.assertEqual((phone.msgs, web.seqs(), bob.seqs()), ([], [1], [1]))

    def test_repeated_id_gets_the_first_receipt_and_no_second_delivery(self) -> None:
        alice, bob = self.connect("alice"), self.connect("bob")
        self.submit("alice", alice, send(1, "bob"))
        self.submit("alice", alice, send(1, "bob"))
        self.assertEqual(bob.seqs(), [1])
        self.assertEqual(len(alice.answers), 2)
        self.assertEqual(alice.answers[0], alice.answers[1])

    def test_a_delivery_queued_behind_the_backlog_is_not_written_twice(self) -> None:
        # bob's resume reads the inbox after a message was stored whose
        # delivery waits in bob's mailbox behind the attach
        self.store("bob", 1)
        self.flaky.break_("hold", "read")
        bob = FakeDevice("bob", "phone")
        self.system.user("bob").attach(bob, None)
        self.flush()
        self.flaky.heal()
        self.store("bob", 1)  # stored as seq 2; bob's actor is told, but busy
        self.flaky.release()
        self.flush()
        self.assertEqual(bob.seqs(), [1, 2])
        self.store("bob", 1)
        self.assertEqual(bob.seqs(), [1, 2, 3])

    def test_a_delivery_at_or_below_the_resume_point_is_not_written(self) -> None:
        self.flaky.break_("hold", "inbox_state")
        bob = FakeDevice("bob", "phone")
        self.system.user("bob").attach(bob, 1)
        self.flush()
        self.flaky.heal()
        self.store("bob", 1)  # seq 1, which the device says it has processed
        self.flaky.release()
        self.flush()
        self.assertEqual((bob.welcomed, bob.msgs), ([(1, True)], []))
        self.store("bob", 1)
        self.assertEqual(bob.seqs(), [2])

    def test_idle_actors_leave_memory(self) -> None:
        alice = self.connect("alice")
        self.submit("alice", alice, send(1, "bob"))
        self.system.user("alice").detach(alice)
        self.flush()
        self.assertEqual(self.router.actors, {})


class SlowLink(FakeDevice):
    """A device behind a link that takes what is written only when told."""

    def __init__(self, user: str, device: str, behind: bool = True) -> None:
        super().__init__(user, device)
        self.behind = behind
        self.waiting: list[Deferred[None]] = []

    def when_drained(self) -> Deferred[None] | None:
        if not self.behind:
            return None
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d

    def drain(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


class TurnWriter(SlowLink):
    """A device that writes what it is given once a turn, as one message, and is
    behind once that message is written."""

    def __init__(self, user: str, device: str, clock: Clock) -> None:
        super().__init__(user, device, behind=False)
        self.clock = clock
        self.pending: list[tuple[int, Any]] = []
        self.written: list[int] = []

    def send_msgs(self, items: list[tuple[int, Any]]) -> None:
        if not self.pending:
            self.clock.callLater(0, self.flush)
        self.pending.extend(items)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        super().send_msgs(pending)
        self.written.append(len(pending))
        self.behind = True

    def drain(self) -> None:
        self.behind = False
        super().drain()


class BacklogTests(ActorCase):
    """A resume backlog larger than max_queue reaches a device that reads it.

    Written all at once, 9 MB of backlog passed max_queue (4 MiB) in one turn:
    the device was closed as a slow consumer before it could ack, at every resume.
    """

    def store_big(self, user: str, n: int, size: int = 60_000) -> None:
        for _ in range(n):
            self.stored += 1
            self.submit("svc", Service(), send(f"s{self.stored}", user, size=size))

    def test_a_large_backlog_waits_for_the_device_slice_by_slice(self) -> None:
        self.store_big("bob", 20)  # 1.2 MB: five messages pass BACKLOG_BYTES
        bob = SlowLink("bob", "phone")
        self.system.user("bob").attach(bob, None)
        self.flush()
        self.assertEqual(bob.seqs(), [1, 2, 3, 4, 5])
        bob.drain()
        self.flush()
        self.assertEqual(bob.seqs(), list(range(1, 11)))
        for _ in range(3):
            bob.drain()
            self.flush()
        self.assertEqual(bob.seqs(), list(range(1, 21)))
        # the mailbox was held: a message stored meanwhile comes after, once
        self.store_big("bob", 1)
        self.assertEqual(bob.seqs(), list(range(1, 22)))

    def test_a_device_that_writes_once_a_turn_gets_a_turn_between_slices(self) -> None:
        # a batching WebSocket writes its turn's frames in one message at the end
        # of the turn, and only then shows it is behind: the next slice waits a
        # turn to ask
        self.store_big("bob", 10)
        bob = TurnWriter("bob", "phone", self.clock)
        self.system.user("bob").attach(bob, None)
        self.flush()
        self.assertEqual((bob.seqs(), bob.written), ([1, 2, 3, 4, 5], [5]))
        bob.drain()
        self.flush()
        self.assertEqual((bob.seqs(), bob.written), (list(range(1, 11)), [5, 5]))

    def test_small_messages_go_in_one_slice(self) -> None:
        self.store("bob", 30)
        bob = SlowLink("bob", "phone")
        self.system.user("bob").attach(bob, None)
        self.flush()
        self.assertEqual(bob.seqs(), list(range(1, 31)))


class ResumeTests(ActorCase):
    def test_resume_below_the_kept_cursor_sends_again_what_is_kept(self) -> None:
        # PROTOCOL section 3: resume.last sets the cursor, backwards too
        self.connect("bob", "web")  # another device that acknowledges nothing
        self.system.user("bob").detach(self.system.user("bob").devices["web"])
        phone = self.connect("bob", "phone")
        self.store("bob", 3)
        self.assertEqual(phone.seqs(), [1, 2, 3])
        self.system.user("bob").ack(phone, 3)
        self.system.user("bob").detach(phone)
        self.flush()
        # restored from a backup: it has processed 1 only
        restored = self.connect("bob", "phone", resume=1)
        self.assertEqual(restored.welcomed, [(3, True)])
        self.assertEqual(restored.seqs(), [2, 3])
        self.assertEqual(self.successResultOf(self.memory.cursor("bob", "phone")), 1)

    def test_resume_above_the_last_seq_loses_nothing(self) -> None:
        self.store("bob", 3)
        phone = self.connect("bob", "phone", resume=100)
        # the store was reset for this client: unresumed, and it gets what is kept
        self.assertEqual(phone.welcomed, [(3, False)])
        self.assertEqual(phone.seqs(), [1, 2, 3])
        self.system.user("bob").detach(phone)
        self.flush()
        self.assertEqual(self.inbox("bob"), [1, 2, 3])
        again = self.connect("bob", "phone", resume=100)
        self.assertEqual(again.seqs(), [1, 2, 3])

    def test_resume_past_a_trimmed_inbox_is_not_resumed(self) -> None:
        self.store("bob", 3)
        web = self.connect("bob", "web")
        self.system.user("bob").ack(web, 3)
        self.flush()
        phone = self.connect("bob", "phone", resume=1)
        self.assertEqual((phone.welcomed, phone.msgs), ([(3, False)], []))

    def test_a_new_device_starts_at_the_highest_cursor_of_the_others(self) -> None:
        self.store("bob", 2)
        web = self.connect("bob", "web")
        self.system.user("bob").ack(web, 1)
        self.flush()
        tablet = self.connect("bob", "tablet")
        self.assertEqual((tablet.welcomed, tablet.seqs()), ([(2, True)], [2]))


class LocationTests(ActorCase):
    """Where each device is live, kept in the backend from welcome to close."""

    def here(self) -> Location:
        return Location(self.memory.node_id, self.memory.boot)

    def located(self, user: str) -> dict[str, Location]:
        return self.successResultOf(self.memory.locations([user])).get(user, {})

    def test_a_device_is_located_from_welcome_to_close(self) -> None:
        bob = self.connect("bob")
        laptop = self.connect("bob", "laptop")
        self.assertEqual(self.located("bob"), {"phone": self.here(), "laptop": self.here()})
        self.system.user("bob").detach(bob)
        self.flush()
        self.assertEqual(self.located("bob"), {"laptop": self.here()})
        self.system.user("bob").detach(laptop, True)  # lost, in its grace period: gone too
        self.flush()
        self.assertEqual(self.located("bob"), {})

    def test_only_a_device_located_elsewhere_is_replaced_there(self) -> None:
        told: list[tuple[str, str]] = []
        self.router.publisher.replace = lambda user, device: told.append((user, device))
        self.connect("bob")
        self.connect("bob")  # again on this node: replaced here, nobody else to tell
        self.assertEqual(told, [])
        self.memory._locations["bob"]["phone"] = Location("n9", "b0")
        self.connect("bob")
        self.assertEqual(told, [("bob", "phone")])
        self.assertEqual(self.located("bob"), {"phone": self.here()})

    def test_a_resync_replaces_a_device_that_moved_and_locates_a_forgotten_one(self) -> None:
        phone = self.connect("bob")
        laptop = self.connect("bob", "laptop")
        tablet = self.connect("bob", "tablet")
        self.memory._nodes["n9"] = (self.clock.seconds() + 10, {"id": "n9", "boot": "b0"})
        # meanwhile (the channel's word lost): the phone said hello on n9, which
        # is alive; the laptop's location was swept; the tablet's was taken by
        # n8, which is dead
        self.memory._locations["bob"] = {
            "phone": Location("n9", "b0"),
            "tablet": Location("n8", "b"),
        }
        self.system.user("bob").resync()
        self.flush()
        self.assertFalse(phone.live)
        self.assertTrue(laptop.live and tablet.live)
        self.assertEqual(sorted(self.system.user("bob").devices), ["laptop", "tablet"])
        self.assertEqual(
            self.located("bob"),
            {"phone": Location("n9", "b0"), "laptop": self.here(), "tablet": self.here()},
        )
        # the phone's close does not take n9's location away
        self.system.user("bob").detach(phone)
        self.flush()
        self.assertEqual(self.located("bob")["phone"], Location("n9", "b0"))

    def test_a_resync_reads_the_inbox_only_for_a_device_behind_it(self) -> None:
        phone = self.connect("bob")
        laptop = self.connect("bob", "laptop")
        self.store("bob", 2)
        self.assertEqual(phone.seqs(), [1, 2])
        self.flaky.calls.clear()
        self.system.user("bob").resync()
        self.flush()
        # one backend call, and no read: every device has the inbox's top
        self.assertEqual(self.flaky.calls, ["resync"])
        # a message whose delivery was lost: the inbox is read for the devices
        self.successResultOf(self.memory.append("bob", [self.memory_message("lost")]))
        self.flaky.calls.clear()
        self.system.user("bob").resync()
        self.flush()
        self.assertEqual(self.flaky.calls, ["resync", "read", "read"])
        self.assertEqual((phone.seqs(), laptop.seqs()), ([1, 2, 3], [1, 2, 3]))

    def test_a_failed_resync_still_reads_every_device_its_inbox(self) -> None:
        phone = self.connect("bob")
        self.successResultOf(self.memory.append("bob", [self.memory_message("lost")]))
        self.flaky.break_("fail", "resync")
        self.system.user("bob").resync()
        self.flush()
        self.assertEqual(phone.seqs(), [1])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def memory_message(self, mid: str) -> StoredMessage:
        ts = int(self.clock.seconds() * 1000)
        return StoredMessage(mid, ts, {"mid": mid, "from": "x", "to": "bob", "body": 1, "ts": ts})


class FailingBackendCase(ActorCase):
    """Each test breaks some backend calls with ``mode``; the hang subclass lets them time out."""

    mode = "fail"

    def broken(self, *names: str) -> None:
        self.flaky.break_(self.mode, *names)

    def wait(self) -> None:
        """Let a broken call be answered: at once when it fails, after the timeout when it hangs."""
        self.flush()
        if self.mode == "hang":
            # one call after the other: each holds its actor's mailbox
            for _ in range(5):
                self.clock.advance(TIMEOUT)
                self.flush()

    def retry_delivers(self, sender: FakeDevice | Service, s: Send, bob: FakeDevice) -> None:
        self.flaky.heal()
        self.submit(sender.user or "svc", sender, s)
        self.assertEqual(len(bob.msgs), 1)
        receipts = sender.answers if isinstance(sender, FakeDevice) else sender.frames[-1:]
        self.assertEqual(len(receipts), 1)

    def test_send_when_the_claim_fails(self) -> None:
        alice, bob = self.connect("alice"), self.connect("bob")
        self.broken("claim")
        self.system.user("alice").submit(alice, send(1, "bob"))
        self.wait()
        self.assertEqual(alice.frames, [{**UNAVAILABLE, "ref": "c-1"}])
        self.assertEqual((alice.answers, bob.msgs), ([], []))
        self.retry_delivers(alice, send(1, "bob"), bob)
        self.assertEqual(alice.answers[0][3], "delivered")

    def test_send_when_the_store_fails(self) -> None:
        alice, bob = self.connect("alice"), self.connect("bob")
        self.broken("append_many")
        self.system.user("alice").submit(alice, send(1, "bob"))
        self.wait()
        self.assertEqual(alice.frames, [{**UNAVAILABLE, "ref": "c-1"}])
        self.assertEqual(self.system.user("alice")._inflight, {})
        # the retry with the same id is delivered, not swallowed by the first claim
        self.retry_delivers(alice, send(1, "bob"), bob)
        self.assertEqual(alice.answers[0][1], bob.msgs[0][1])

    def test_a_retry_while_the_first_try_hangs_gets_its_answer(self) -> None:
        alice, bob = self.connect("alice"), self.connect("bob")
        self.broken("append_many")
        self.system.user("alice").submit(alice, send(1, "bob"))
        self.flush()
        self.system.user("alice").submit(alice, send(1, "bob"))
        self.wait()
        self.flush()
        self.assertEqual([f["code"] for f in alice.frames], [503, 503])
        self.retry_delivers(alice, send(1, "bob"), bob)

    def test_a_service_sender_goes_idle_after_a_failure(self) -> None:
        bob = self.connect("bob")
        self.broken("append_many")
        service = Service()
        self.system.user("svc").submit(service, send(1, "bob"))
        self.wait()
        self.assertEqual(service.frames, [{**UNAVAILABLE, "ref": "c-1"}])
        self.assertNotIn("svc", self.router.actors)  # nothing parked
        self.retry_delivers(service, send(1, "bob"), bob)
        self.assertEqual(service.frames[-1]["status"], "delivered")
        self.assertNotIn("svc", self.router.actors)

    def test_room_send_when_the_member_look_up_fails(self) -> None:
        alice, bob = self.connect("alice"), self.connect("bob")
        for user, device in (("alice", alice), ("bob", bob)):
            self.system.user(user).join(device, "r")
        self.flush()
        bob.frames.clear()
        self.broken("members")
        self.system.user("alice").submit(alice, send(1, room="r"))
        self.wait()
        self.assertEqual(alice.frames[-1], {**UNAVAILABLE, "ref": "c-1"})
        self.retry_delivers(alice, send(1, room="r"), bob)
        self.assertEqual(alice.answers[0][3], "accepted")

    def test_room_send_when_the_store_fails(self) -> None:
        alice, bob = self.connect("alice"), self.connect("bob")
        for user, device in (("alice", alice), ("bob", bob)):
            self.system.user(user).join(device, "r")
        self.flush()
        self.broken("append_many")
        self.system.user("alice").submit(alice, send(1, room="r"))
        self.wait()
        self.assertEqual(alice.frames[-1], {**UNAVAILABLE, "ref": "c-1"})
        self.retry_delivers(alice, send(1, room="r"), bob)

    def test_a_failed_settle_costs_no_receipt(self) -> None:
        alice = self.connect("alice")
        self.connect("bob")
        self.broken("settle")
        self.submit("alice", alice, send(1, "bob"))
        self.wait()
        self.assertEqual(alice.answers[0][3], "delivered")
        self.flushLoggedErrors()

    def test_ack_that_fails_can_be_sent_again(self) -> None:
        bob = self.connect("bob")
        self.store("bob", 2)
        self.broken("ack")
        self.system.user("bob").ack(bob, 2)
        self.wait()
        self.assertEqual(bob.cursor, 0)
        self.flaky.heal()
        self.system.user("bob").ack(bob, 2)
        self.flush()
        self.assertEqual((bob.cursor, self.inbox("bob")), (2, []))

    def test_attach_when_the_backend_fails(self) -> None:
        self.store("bob", 2)
        for call in ("locate", "inbox_state", "cursor", "set_cursor", "read"):
            self.flaky.heal()
            self.broken(call)
            bob = FakeDevice("bob", "phone")
            self.system.user("bob").attach(bob, None)
            self.wait()
            self.assertEqual(bob.frames, [UNAVAILABLE], call)
            self.assertFalse(bob.live)
            self.assertNotIn("bob", self.router.actors)
        self.flaky.heal()
        bob = self.connect("bob")
        self.assertEqual((bob.welcomed, bob.seqs()), ([(2, True)], [1, 2]))

    def test_a_hello_this_node_cannot_subscribe_for_is_sent_to_a_peer(self) -> None:
        from twisted.internet.defer import fail

        self.router.elsewhere = lambda: {"tcp": "tcp:n2:9100"}
        track = self.router.publisher.track
        self.router.publisher.track = lambda user: fail(BackendUnavailable("subscriber: down"))
        bob = FakeDevice("bob", "phone")
        self.system.user("bob").attach(bob, None)
        self.wait()
        self.assertEqual(bob.frames, [{**UNAVAILABLE, "redirect": {"tcp": "tcp:n2:9100"}}])
        self.assertFalse(bob.live)
        self.assertEqual(self.successResultOf(self.memory.locations(["bob"])), {})
        # any other failure of the hello is the store's: no peer would do better
        self.router.publisher.track = track
        self.broken("inbox_state")
        bob = FakeDevice("bob", "phone")
        self.system.user("bob").attach(bob, None)
        self.wait()
        self.assertEqual(bob.frames, [UNAVAILABLE])

    def test_resume_when_the_backend_fails(self) -> None:
        self.store("bob", 2)
        self.broken("set_cursor")
        bob = FakeDevice("bob", "phone")
        self.system.user("bob").attach(bob, 1)
        self.wait()
        self.assertEqual((bob.frames, bob.msgs), ([UNAVAILABLE], []))
        self.flaky.heal()
        bob = self.connect("bob", resume=1)
        self.assertEqual(bob.seqs(), [2])

    def test_join_and_leave_when_the_backend_fails(self) -> None:
        alice = self.connect("alice")
        self.broken("join", "leave")
        self.system.user("alice").join(alice, "r")
        self.system.user("alice").leave(alice, "r")
        self.wait()
        self.assertEqual(alice.frames, [UNAVAILABLE, UNAVAILABLE])
        # with the frames' ids, the errors name them
        self.system.user("alice").join(alice, "r", "j-1")
        self.system.user("alice").leave(alice, "r", "l-1")
        self.wait()
        self.assertEqual(
            alice.frames[2:], [{**UNAVAILABLE, "ref": "j-1"}, {**UNAVAILABLE, "ref": "l-1"}]
        )
        self.flaky.heal()
        self.system.user("alice").join(alice, "r")
        self.flush()
        self.assertEqual(alice.frames[-1], {"t": "joined", "room": "r", "members": 1})

    def test_watch_unwatch_and_probe_when_the_backend_fails(self) -> None:
        alice = self.connect("alice")
        self.broken("watch", "unwatch", "presence")
        actor = self.system.user("alice")
        actor.watch(alice, ["bob"])
        actor.unwatch(alice, ["bob"])
        actor.probe(alice, ["bob"])
        self.wait()
        self.assertEqual(alice.frames, [UNAVAILABLE] * 3)
        self.flaky.heal()
        actor.watch(alice, ["bob"])
        self.flush()
        self.assertEqual([p["user"] for p in alice.presence], ["bob"])

    def test_the_actor_carries_on_after_failures(self) -> None:
        alice, bob = self.connect("alice"), self.connect("bob")
        self.broken()  # every call
        self.system.user("alice").submit(alice, send(1, "bob"))
        self.system.user("alice").ack(alice, 1)
        self.wait()
        self.flaky.heal()
        self.submit("alice", alice, send(2, "bob"))
        self.assertEqual([a[0] for a in alice.answers], ["c-2"])
        self.assertEqual(bob.seqs(), [1])
        self.flushLoggedErrors(BackendUnavailable)  # the presence hub logs its own


class HangingBackendTests(FailingBackendCase):
    mode = "hang"


class FailingBackendTests(FailingBackendCase):
    pass


del FailingBackendCase
