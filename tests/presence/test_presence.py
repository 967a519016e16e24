"""Presence end to end through the binary transport, on a fake clock (doc/protocol.md section 5)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.actors.presence import PresenceHub
from o2obroker.backend.interface import OFFLINE, Presence
from o2obroker.backend.memory import MemoryBackend
from o2obroker.routing import Router
from o2obroker.wire import encode_cbor, frame
from o2obroker.wire.limits import Limits
from tests.harness import Device, Harness


class PresenceCase(SynchronousTestCase):
    settings: dict[str, Any] = {}

    def setUp(self) -> None:
        self.h = Harness(auth="none", presence_window=0.5, presence_grace=20.0, **self.settings)
        self.stats = self.h.node.metrics.stats

    def tearDown(self) -> None:
        self.h.node.stop()

    def settle(self, seconds: float = 0.5) -> None:
        """Let the coalescing window pass and the fan-out run."""
        self.h.clock.advance(seconds)
        self.h.flush()

    def login(self, user: str, device: str = "phone", **hello: Any) -> Device:
        d = self.h.login(user, device, **hello)
        d.read()
        return d

    def watching(self, watcher: str, *users: str) -> Device:
        """Log in and watch; changes still in their window go out first, so the
        watcher starts from a quiet state."""
        self.settle()
        d = self.login(watcher)
        d.write({"t": "watch", "users": list(users)})
        d.read()
        return d

    @staticmethod
    def presence(d: Device) -> list[tuple[str, str, str, int]]:
        return [
            (f["user"], f["state"], f["status"], f["devices"])
            for f in d.read()
            if f["t"] == "presence"
        ]


class WatchTests(PresenceCase):
    def test_watch_is_answered_at_once_from_the_broker_state(self) -> None:
        bob = self.login("bob", state="busy", status="in a meeting")
        alice = self.login("alice")
        alice.write({"t": "watch", "users": ["bob", "carol"]})
        frames = alice.read()
        self.assertEqual(
            [(f["t"], f["user"], f["state"], f["status"], f["devices"]) for f in frames],
            [
                ("presence", "bob", "busy", "in a meeting", 1),
                ("presence", "carol", "offline", "", 0),
            ],
        )
        self.assertIsInstance(frames[0]["ts"], int)
        # nothing was asked of the watched client
        self.assertEqual(bob.read(), [])

    def test_changes_reach_every_device_of_the_watcher(self) -> None:
        phone = self.watching("alice", "bob")
        web = self.login("alice", "web")
        bob = self.login("bob")
        self.assertEqual(self.presence(phone), [])  # not before the window has passed
        self.settle()
        self.assertEqual(self.presence(phone), [("bob", "online", "", 1)])
        self.assertEqual(self.presence(web), [("bob", "online", "", 1)])
        bob.write({"t": "presence", "state": "away", "status": "lunch"})
        self.settle()
        self.assertEqual(self.presence(phone), [("bob", "away", "lunch", 1)])
        self.assertEqual(self.presence(web), [("bob", "away", "lunch", 1)])

    def test_second_device_sends_nothing_but_counts(self) -> None:
        self.login("bob")
        alice = self.watching("alice", "bob")
        self.login("bob", "web")
        self.settle()
        self.assertEqual(self.presence(alice), [])
        alice.write({"t": "probe", "users": ["bob"]})
        self.assertEqual(self.presence(alice), [("bob", "online", "", 2)])

    def test_status_of_the_device_that_last_reported_the_state(self) -> None:
        phone = self.login("bob", state="busy", status="driving")
        alice = self.watching("alice", "bob")
        web = self.login("bob", "web", state="busy", status="call")
        self.settle()
        self.assertEqual(self.presence(alice), [("bob", "busy", "call", 2)])
        phone.write({"t": "presence", "state": "busy", "status": "parking"})
        self.settle()
        self.assertEqual(self.presence(alice), [("bob", "busy", "parking", 2)])
        web.write({"t": "presence", "state": "online"})
        self.settle()
        # a report without status keeps the device's status text
        self.assertEqual(self.presence(alice), [("bob", "online", "call", 2)])

    def test_invisible_looks_offline(self) -> None:
        alice = self.watching("alice", "bob")
        bob = self.login("bob", state="offline")
        self.settle()
        self.assertEqual(self.presence(alice), [])
        alice.write({"t": "probe", "users": ["bob"]})
        self.assertEqual(self.presence(alice), [("bob", "offline", "", 0)])
        bob.write({"t": "presence", "state": "online"})
        self.settle()
        self.assertEqual(self.presence(alice), [("bob", "online", "", 1)])
        bob.write({"t": "presence", "state": "offline"})
        self.settle()
        self.assertEqual(self.presence(alice), [("bob", "offline", "", 0)])

    def test_unwatch(self) -> None:
        alice = self.watching("alice", "bob", "carol")
        alice.write({"t": "unwatch", "users": ["bob"]})
        self.login("bob")
        self.login("carol")
        self.settle()
        self.assertEqual(self.presence(alice), [("carol", "online", "", 1)])

    def test_probe_does_not_subscribe(self) -> None:
        alice = self.login("alice")
        alice.write({"t": "probe", "users": ["bob", "bob"]})
        self.assertEqual(self.presence(alice), [("bob", "offline", "", 0)])
        self.login("bob")
        self.settle()
        self.assertEqual(self.presence(alice), [])

    def test_bad_state_is_refused_and_the_connection_kept(self) -> None:
        bob = self.login("bob")
        alice = self.watching("alice", "bob")
        bob.write({"t": "presence", "state": "sleeping"})
        [error] = bob.read()
        self.assertEqual((error["t"], error["code"]), ("error", 400))
        self.assertFalse(bob.closed)
        self.settle()
        self.assertEqual(self.presence(alice), [])
        too_long = "x" * 257
        bob.write({"t": "presence", "state": "away", "status": too_long})
        self.assertEqual(bob.read()[0]["code"], 400)
        bob.write({"t": "presence", "state": "away", "status": "x" * 256})
        self.settle()
        self.assertEqual(self.presence(alice), [("bob", "away", "x" * 256, 1)])

    def test_watch_list_of_each_user_is_in_the_backend(self) -> None:
        self.watching("alice", "bob", "carol")
        watching = self.successResultOf(self.h.node.backend.watching("alice"))
        self.assertEqual(watching, {"bob", "carol"})


class WatchCapTests(PresenceCase):
    settings = {"watch_cap": 3, "limits": Limits(max_watch=4)}

    def test_cap_refuses_the_whole_request_and_keeps_the_list(self) -> None:
        alice = self.watching("alice", "a", "b")
        alice.write({"t": "watch", "users": ["b", "c"]})  # b again: still 3 users
        self.assertEqual(len(self.presence(alice)), 2)
        alice.write({"t": "watch", "users": ["d"]})
        [error] = alice.read()
        self.assertEqual((error["t"], error["code"]), ("error", 400))
        self.assertIn("at most 3", error["reason"])
        self.assertFalse(alice.closed)
        self.login("d")
        self.login("c")
        self.settle()
        self.assertEqual(self.presence(alice), [("c", "online", "", 1)])

    def test_users_in_one_frame_are_limited(self) -> None:
        alice = self.login("alice")
        alice.write({"t": "probe", "users": ["a", "b", "c", "d", "e"]})
        [error] = alice.read()
        self.assertEqual(error["code"], 400)
        alice.write({"t": "probe", "users": ["a", "b", "c", "d"]})
        self.assertEqual(len(self.presence(alice)), 4)


class GraceTests(PresenceCase):
    def test_reconnect_within_grace_sends_nothing(self) -> None:
        bob = self.login("bob")
        alice = self.watching("alice", "bob")
        bob.lose()
        self.settle(5)
        self.login("bob")
        self.settle(30)
        self.assertEqual(self.presence(alice), [])
        alice.write({"t": "probe", "users": ["bob"]})
        self.assertEqual(self.presence(alice), [("bob", "online", "", 1)])

    def test_lost_device_goes_offline_after_grace(self) -> None:
        bob = self.login("bob")
        alice = self.watching("alice", "bob")
        bob.lose()
        self.settle(19)
        self.assertEqual(self.presence(alice), [])
        self.settle(1)
        self.settle()
        self.assertEqual(self.presence(alice), [("bob", "offline", "", 0)])
        # with nothing left to wait for, the actor leaves memory
        self.assertNotIn("bob", self.h.node.router.actors)

    def test_grace_lasts_until_the_actor_has_handled_its_end(self) -> None:
        bob = self.login("bob")
        bob.lose()
        presence = self.h.node.router.actors["bob"].presence
        presence._call.cancel()
        presence._expired()  # what the timer does; the actor's turn has not come yet
        self.assertTrue(presence.lingering)  # changes for bob's watch list are still kept
        self.h.clock.advance(20)
        self.h.flush()
        self.assertFalse(presence.lingering)

    def test_bye_goes_offline_at_once(self) -> None:
        bob = self.login("bob")
        alice = self.watching("alice", "bob")
        bob.write({"t": "bye"})
        self.settle()
        self.assertEqual(self.presence(alice), [("bob", "offline", "", 0)])

    def test_replaced_connection_sends_nothing(self) -> None:
        old = self.login("bob")
        alice = self.watching("alice", "bob")
        self.login("bob")  # same device name
        self.assertTrue(old.closed)
        self.settle(30)
        self.assertEqual(self.presence(alice), [])

    def test_node_stop_cancels_grace_timers(self) -> None:
        bob = self.login("bob")
        bob.lose()
        self.assertTrue(self.h.clock.getDelayedCalls())
        self.h.node.stop()
        self.assertEqual(
            [c for c in self.h.clock.getDelayedCalls() if "Presence" in repr(c.func)], []
        )


class NaiveTests(PresenceCase):
    """The benchmark's baseline: what the protocol requires, and none of the savings."""

    settings = {"presence_naive": True}

    def test_every_change_goes_out_at_once(self) -> None:
        bob = self.login("bob")
        alice = self.watching("alice", "bob")
        bob.write({"t": "presence", "state": "away"})
        bob.write({"t": "presence", "state": "online"})
        self.h.flush()  # no window: not a moment of the clock passes
        self.assertEqual(self.presence(alice), [("bob", "away", "", 1), ("bob", "online", "", 1)])

    def test_a_second_device_sends_nothing(self) -> None:
        self.login("bob")
        alice = self.watching("alice", "bob")
        web = self.login("bob", "web")
        web.write({"t": "bye"})
        self.settle()
        self.assertEqual(self.presence(alice), [])

    def test_a_drop_is_offline_at_once(self) -> None:
        bob = self.login("bob")
        alice = self.watching("alice", "bob")
        bob.lose()
        self.assertEqual(self.presence(alice), [("bob", "offline", "", 0)])
        again = self.h.login("bob")
        self.h.flush()
        self.assertEqual(self.presence(alice), [("bob", "online", "", 1)])
        self.assertNotIn("presence_kept", again.read()[0])


class CoalescingTests(PresenceCase):
    def test_burst_sends_the_last_state_only(self) -> None:
        bob = self.login("bob")
        alice = self.watching("alice", "bob")
        for state, status in [
            ("away", ""),
            ("busy", "call"),
            ("away", "lunch"),
            ("online", "back"),
        ]:
            bob.write({"t": "presence", "state": state, "status": status})
        self.settle()
        self.assertEqual(self.presence(alice), [("bob", "online", "back", 1)])
        self.assertEqual(self.stats.presence_coalesced, 3)

    def test_burst_that_ends_where_it_began_sends_nothing(self) -> None:
        bob = self.login("bob")
        alice = self.watching("alice", "bob")
        bob.write({"t": "presence", "state": "away"})
        bob.write({"t": "presence", "state": "online"})
        self.settle()
        self.assertEqual(self.presence(alice), [])
        self.assertEqual(self.stats.presence_coalesced, 2)

    def test_a_watcher_that_saw_the_middle_of_a_burst_gets_its_end(self) -> None:
        bob = self.login("bob")
        alice = self.watching("alice", "bob")
        bob.write({"t": "presence", "state": "away"})
        carol = self.login("carol")
        carol.write({"t": "watch", "users": ["bob"]})
        self.assertEqual(self.presence(carol), [("bob", "away", "", 1)])
        bob.write({"t": "presence", "state": "online"})
        self.settle()
        self.assertEqual(self.presence(carol), [("bob", "online", "", 1)])
        # the others hear the state they knew already: harmless, and rare
        self.assertEqual(self.presence(alice), [("bob", "online", "", 1)])

    def test_counters_of_frames_and_bytes(self) -> None:
        alice = self.watching("alice", "bob", "carol")
        bob = self.login("bob")
        self.settle()
        bob.write({"t": "presence", "state": "away", "status": "lunch"})
        self.settle()
        alice.read()
        seen = [f for f in alice.received if f["t"] == "presence"]
        self.assertEqual(len(seen), 4)
        self.assertEqual(self.stats.presence_frames, 4)
        self.assertEqual(self.stats.presence_bytes, sum(len(frame(encode_cbor(f))) for f in seen))
        text = self.h.node.metrics.render().decode()
        self.assertIn("o2o_presence_frames_total 4.0", text)
        self.assertIn(f"o2o_presence_bytes_total {self.stats.presence_bytes}.0", text)
        self.assertIn("o2o_presence_coalesced_total 0.0", text)


class _Actor:
    devices = {"phone": object()}

    def __init__(self, told: list[Any]) -> None:
        self._told = told

    def tell(self, message: Any) -> None:
        self._told.append(message)


class FanOutTests(SynchronousTestCase):
    def test_watchers_are_served_in_slices_of_reactor_turns(self) -> None:
        clock = Clock()
        backend = MemoryBackend(clock)
        router = Router(backend)
        hub = PresenceHub(backend, router, clock, window=0.5, slice_size=10)
        told: list[Any] = []
        for i in range(25):
            watcher = f"w{i}"
            router.actors[watcher] = _Actor(told)
            backend.watch(watcher, ["bob"], 10)
        backend.watch("gone", ["bob"], 10)  # a watcher with no actor here costs no message
        turns: list[int] = []
        pump = hub._pump

        def counting_pump() -> None:
            turns.append(len(told))
            pump()

        hub._pump = counting_pump  # type: ignore[method-assign]
        hub.record("bob", Presence(), Presence("online", "", 1, 5), changed=True)
        self.assertEqual(told, [])
        clock.advance(0.5)
        # 26 watchers looked at, at most 10 a turn: three turns
        self.assertEqual(len(turns), 3)
        steps = [b - a for a, b in zip([*turns, len(told)], [*turns, len(told)][1:], strict=False)]
        self.assertTrue(all(step <= 10 for step in steps), steps)
        self.assertEqual(len(told), 25)
        # one frame object, encoded at most once per encoding, for every watcher
        self.assertEqual(len({id(m[1]) for m in told}), 1)
        self.assertEqual(told[0][1].frame["state"], "online")


class LookupTests(PresenceCase):
    def test_http_lookup_and_room_counts_use_the_same_state(self) -> None:
        bob = self.login("bob", state="away", status="lunch")
        self.login("carol")
        for d in (bob, self.login("carol", "web")):
            d.write({"t": "join", "room": "r"})
        self.successResultOf(self.h.node.backend.join("r", "dave"))
        found = self.successResultOf(self.h.node.presence.lookup(["bob", "dave"]))
        self.assertEqual(
            (found["bob"].state, found["bob"].status, found["bob"].devices), ("away", "lunch", 1)
        )
        self.assertEqual(found["dave"].state, "offline")
        counts = self.successResultOf(self.h.node.presence.room_presence("r"))
        self.assertEqual(counts, {"online": 1, "busy": 0, "away": 1, "offline": 1})


class KeptThroughDropTests(PresenceCase):
    def test_changes_missed_in_a_short_drop_arrive_on_return(self) -> None:
        alice = self.watching("alice", "bob", "carol")
        bob = self.login("bob")
        self.settle()
        self.presence(alice)
        alice.lose()
        bob.write({"t": "presence", "state": "away", "status": "1"})
        self.settle()
        bob.write({"t": "presence", "state": "busy", "status": "2"})
        self.login("carol")
        self.settle()
        back = self.h.login("alice")
        frames = back.read()
        self.assertIs(frames[0]["presence_kept"], True)
        # the latest of each watched user that changed, not the whole list
        self.assertEqual(
            sorted((f["user"], f["state"], f["status"]) for f in frames if f["t"] == "presence"),
            [("bob", "busy", "2"), ("carol", "online", "")],
        )

    def test_after_the_grace_period_nothing_is_kept(self) -> None:
        alice = self.watching("alice", "bob")
        alice.lose()
        self.login("bob")
        self.settle(25)
        back = self.h.login("alice")
        frames = back.read()
        self.assertNotIn("presence_kept", frames[0])
        self.assertEqual([f["t"] for f in frames], ["welcome"])
        self.assertEqual(self.h.node.router.actors["alice"]._missed, {})


class _Swept(MemoryBackend):
    """A backend whose sweeps the test answers, one Deferred a call."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.calls: list[Deferred[Any]] = []

    def sweep_presence(self, limit: int) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append(d)
        return d


class SweepTests(SynchronousTestCase):
    def test_a_sweep_goes_on_while_slices_are_full_and_tells_watchers(self) -> None:
        clock = Clock()
        backend = _Swept(clock)
        router = Router(backend)
        hub = PresenceHub(backend, router, clock, window=0.5, slice_size=2, merged=True)
        told: list[Any] = []
        router.actors["alice"] = _Actor(told)
        backend.watch("alice", ["bob", "carol", "dave"], 10)
        on, off = Presence("online", "", 1, 1), Presence("offline", "", 0, 9)
        hub.sweep()
        hub.sweep()  # one sweep at a time
        self.assertEqual(len(backend.calls), 1)
        backend.calls[0].callback({"bob": (on, off), "carol": (on, off)})
        # a full slice: another sweep on the next turn
        clock.advance(0)
        self.assertEqual(len(backend.calls), 2)
        backend.calls[1].callback({"dave": (on, on)})  # no user-level change
        clock.advance(0)
        self.assertEqual(len(backend.calls), 2)
        clock.advance(0.5)
        frames = sorted((m[1].frame["user"], m[1].frame["state"]) for m in told)
        self.assertEqual(frames, [("bob", "offline"), ("carol", "offline")])

    def test_a_sweeps_changes_go_out_at_once_with_what_was_pending(self) -> None:
        clock = Clock()
        backend = _Swept(clock)
        router = Router(backend)
        hub = PresenceHub(backend, router, clock, window=0.5, merged=True)
        told: list[Any] = []
        router.actors["alice"] = _Actor(told)
        backend.watch("alice", ["bob", "carol"], 10)
        on, off = Presence("online", "", 1, 1), Presence("offline", "", 0, 9)
        hub._merged((OFFLINE, on), "carol")  # held for the window
        hub.sweep()
        backend.calls[0].callback({"bob": (on, off)})
        # no window: the dead node's devices are late news already
        frames = sorted((m[1].frame["user"], m[1].frame["state"]) for m in told)
        self.assertEqual(frames, [("bob", "offline"), ("carol", "online")])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_node_never_sweeps(self) -> None:
        clock = Clock()
        backend = _Swept(clock)
        hub = PresenceHub(backend, Router(backend), clock)
        hub.sweep()
        self.assertEqual(backend.calls, [])
