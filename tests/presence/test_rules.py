"""The user-level presence rule of doc/protocol.md section 5, and where it is stored."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.actors.presence import DeviceEntry, aggregate
from o2obroker.backend.interface import OFFLINE, BackendUnavailable, Presence
from o2obroker.backend.memory import MemoryBackend


def entries(*reports: tuple[str, str]) -> list[DeviceEntry]:
    return [DeviceEntry(state, status, order) for order, (state, status) in enumerate(reports)]


class AggregateTests(SynchronousTestCase):
    def test_no_device_is_offline(self) -> None:
        self.assertEqual(aggregate([]), ("offline", "", 0))

    def test_every_device_invisible_is_offline_and_counts_none(self) -> None:
        self.assertEqual(
            aggregate(entries(("offline", "hiding"), ("offline", ""))), ("offline", "", 0)
        )

    def test_most_available_state_wins(self) -> None:
        found = aggregate(entries(("away", "lunch"), ("busy", "call"), ("offline", "")))
        self.assertEqual(found, ("busy", "call", 2))
        found = aggregate(entries(("away", "lunch"), ("online", "here"), ("busy", "call")))
        self.assertEqual(found, ("online", "here", 3))

    def test_status_of_the_last_report_of_that_state(self) -> None:
        found = aggregate(entries(("busy", "first"), ("busy", "second"), ("away", "later")))
        self.assertEqual(found, ("busy", "second", 3))
        # order, not position, says which report is the latest
        first, second = DeviceEntry("busy", "new", 9), DeviceEntry("busy", "old", 2)
        self.assertEqual(aggregate([first, second]), ("busy", "new", 2))


class BackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = MemoryBackend(Clock())

    def result(self, d):  # type: ignore[no-untyped-def]
        return self.successResultOf(d)

    def test_unknown_user_is_offline(self) -> None:
        self.assertEqual(self.result(self.backend.presence(["bob"])), {"bob": OFFLINE})

    def test_set_and_forget(self) -> None:
        busy = Presence("busy", "call", 2, 1000)
        self.result(self.backend.set_presence("bob", busy))
        self.assertEqual(
            self.result(self.backend.presence(["bob", "eve"])), {"bob": busy, "eve": OFFLINE}
        )
        self.result(self.backend.set_presence("bob", OFFLINE))
        self.assertEqual(self.backend._presence, {})

    def test_watch_index_both_ways(self) -> None:
        self.assertTrue(self.result(self.backend.watch("alice", ["bob", "carol"], 10)))
        self.assertTrue(self.result(self.backend.watch("dave", ["bob"], 10)))
        self.assertEqual(self.result(self.backend.watching("alice")), {"bob", "carol"})
        self.assertEqual(
            self.result(self.backend.watchers(["bob", "carol", "eve"])),
            {"bob": {"alice", "dave"}, "carol": {"alice"}},
        )
        self.result(self.backend.unwatch("alice", ["bob", "nobody"]))
        self.assertEqual(self.result(self.backend.watchers(["bob"])), {"bob": {"dave"}})
        self.result(self.backend.unwatch("alice", ["carol"]))
        self.assertEqual(self.result(self.backend.watching("alice")), frozenset())
        self.assertEqual(self.result(self.backend.watchers(["carol"])), {})

    def test_watch_cap_refuses_whole_request(self) -> None:
        self.assertTrue(self.result(self.backend.watch("alice", ["a", "b", "c"], 4)))
        # repeats do not count twice
        self.assertTrue(self.result(self.backend.watch("alice", ["a", "b", "d"], 4)))
        self.assertFalse(self.result(self.backend.watch("alice", ["e", "f"], 5)))
        self.assertEqual(self.result(self.backend.watching("alice")), {"a", "b", "c", "d"})
        self.assertEqual(self.result(self.backend.watchers(["e", "f"])), {})

    def test_watchers_is_a_snapshot(self) -> None:
        self.result(self.backend.watch("alice", ["bob"], 10))
        found = self.result(self.backend.watchers(["bob"]))
        self.result(self.backend.watch("carol", ["bob"], 10))
        self.assertEqual(found, {"bob": {"alice"}})


class BackendFailureLogTests(SynchronousTestCase):
    """A store that cannot be reached is a warning; anything else keeps its traceback."""

    def hub(self, error: Exception) -> tuple[Any, list[dict[str, Any]]]:
        from twisted.internet.defer import fail
        from twisted.logger import globalLogPublisher

        from o2obroker.actors.presence import PresenceHub
        from o2obroker.routing import Router

        backend = MemoryBackend(Clock())
        backend.set_presence = lambda user, p: fail(error)  # type: ignore[method-assign]
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return PresenceHub(backend, Router(backend), Clock()), events

    def test_unreachable_store_is_a_warning(self) -> None:
        hub, events = self.hub(BackendUnavailable("redis: not connected"))
        hub.record("bob", OFFLINE, Presence("online", "", 1, 5), True)
        self.assertEqual(self.flushLoggedErrors(), [])
        warnings = [e for e in events if e.get("log_level") is LogLevel.warn]
        self.assertEqual([e.get("error") for e in warnings], ["redis: not connected"])

    def test_a_bug_keeps_its_traceback(self) -> None:
        hub, _ = self.hub(ValueError("a bug"))
        hub.record("bob", OFFLINE, Presence("online", "", 1, 5), True)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
