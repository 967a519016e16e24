"""TimeoutBackend: no backend call stays unanswered, and callers see one kind of failure."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from o2obroker.backend import BackendUnavailable, IBackend, MemoryBackend, TimeoutBackend
from o2obroker.backend.interface import StoredMessage, StoreFull
from tests.doubles import METHODS, FlakyBackend


def msg(size: int) -> StoredMessage:
    return StoredMessage("m", 0, {"mid": "m", "body": 1}, size)


class TimeoutBackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.memory = MemoryBackend(self.clock, max_user_bytes=10)
        self.flaky = FlakyBackend(self.memory)
        self.b = TimeoutBackend(self.flaky, self.clock, 5.0)

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IBackend, self.b))
        self.assertTrue(verifyObject(IBackend, self.flaky))

    def test_answers_pass_through_without_a_timer(self) -> None:
        self.assertEqual(self.successResultOf(self.b.append("bob", [msg(1)])), [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # counters of the wrapped backend are read through
        self.assertEqual(TimeoutBackend(self.memory, self.clock, 5.0).stored, 1)

    def test_a_call_that_never_answers_fails_after_the_timeout(self) -> None:
        self.flaky.break_("hang")
        d = self.b.claim("alice", 1, [("c-1", "m1")])
        self.assertNoResult(d)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        f = self.failureResultOf(d, BackendUnavailable)
        self.assertEqual(str(f.value), "claim: no answer in time")
        # the call itself was cancelled (it is the same Deferred), not left to fire later
        self.assertIs(self.flaky.hung[0], d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_cluster_store_that_never_answers_fails_after_the_timeout(self) -> None:
        # the append that also publishes (RedisBackend's) is held to the same limit
        hanging: Deferred[None] = Deferred()

        class Store:
            node_id = "n1"
            boot = "b1"

            def append_publish(self, inboxes: object, skips: object, head: bytes) -> Deferred[None]:
                return hanging

        d = TimeoutBackend(Store(), self.clock, 5.0).append_publish({}, {}, b"M")
        self.assertNoResult(d)
        self.clock.advance(5.0)
        self.failureResultOf(d, BackendUnavailable)

    def test_a_late_answer_cancels_the_timer(self) -> None:
        self.flaky.break_("hold", "inbox_state")
        d = self.b.inbox_state("bob")
        self.flaky.release()
        self.assertEqual(self.successResultOf(d).last, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_every_call_fails_as_backend_unavailable(self) -> None:
        self.flaky.break_("fail")
        args = {
            "append_many": ({"bob": []},),
            "append": ("bob", []),
            "read": ("bob", 0, 1),
            "inbox_state": ("bob",),
            "cursor": ("bob", "phone"),
            "ack": ("bob", "phone", 1),
            "set_cursor": ("bob", "phone", 1),
            "claim": ("bob", 1, []),
            "settle": ("bob", {}),
            "join": ("r", "bob"),
            "leave": ("r", "bob"),
            "members": ("r",),
            "set_presence": ("bob", None),
            "merge_presence": ("bob", None),
            "sweep_presence": (10,),
            "locate": ("bob", "phone"),
            "relocate": ("bob", ["phone"]),
            "resync": ("bob", None, ["phone"]),
            "unlocate": ("bob", "phone"),
            "locations": (["bob"],),
            "presence": (["bob"],),
            "watch": ("bob", ["eve"], 10),
            "unwatch": ("bob", ["eve"]),
            "watching": ("bob",),
            "watchers": (["bob"],),
            "heartbeat": ({"id": "n1"}, 1.0),
            "nodes": (),
            "depart": (),
        }
        self.assertEqual(sorted(args), METHODS)
        for name, a in args.items():
            f = self.failureResultOf(getattr(self.b, name)(*a), BackendUnavailable)
            self.assertIn(name, str(f.value))

    def test_store_full_is_not_hidden(self) -> None:
        self.failureResultOf(self.b.append("bob", [msg(11)]), StoreFull)

    def test_a_backend_that_raises_fails_the_call(self) -> None:
        class Raising(MemoryBackend):
            def members(self, room: str) -> None:  # type: ignore[override]
                raise RuntimeError("bug")

        b = TimeoutBackend(Raising(self.clock), self.clock, 5.0)
        self.failureResultOf(b.members("r"), BackendUnavailable)
