"""Offline and presence events: batched, retried with backoff, bounded, with ids."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from o2obroker.policy.events import EventQueue


class FakeClient:
    """Stands in for a HookClient: each call waits until the test answers it."""

    def __init__(self, auto: bool = False) -> None:
        self.auto = auto  # answer every call at once
        self.calls: list[tuple[str, dict[str, Any], Deferred[dict[str, Any]]]] = []

    def call(self, kind: str, payload: dict[str, Any]) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = succeed({}) if self.auto else Deferred()
        self.calls.append((kind, payload, d))
        return d

    def ids(self, n: int) -> list[str]:
        return [e["id"] for e in self.calls[n][1]["events"]]


class EventQueueTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeClient()
        self.queue = EventQueue(
            "offline", self.client, self.clock, batch=3, window=0.5, cap=5, backoff=1, max_backoff=4
        )

    def test_events_gather_for_a_window_then_go_in_batches(self) -> None:
        for i in range(4):
            self.queue.add({"n": i})
        self.assertEqual(self.client.calls, [])
        self.clock.advance(0.5)
        [(kind, payload, d)] = self.client.calls
        self.assertEqual(kind, "offline")
        self.assertEqual([e["n"] for e in payload["events"]], [0, 1, 2])
        d.callback({})
        self.clock.advance(0)  # the rest goes at once
        self.assertEqual([e["n"] for e in self.client.calls[1][1]["events"]], [3])
        self.assertEqual(self.queue.counts["sent"], 3)

    def test_one_call_in_flight_keeps_order(self) -> None:
        self.queue.add({"n": 0})
        self.clock.advance(0.5)
        self.queue.add({"n": 1})
        self.clock.advance(10)
        self.assertEqual(len(self.client.calls), 1)

    def test_failures_retry_the_same_events_with_doubling_backoff(self) -> None:
        self.queue.add({"n": 0})
        self.clock.advance(0.5)
        first = self.client.ids(0)
        delays = []
        for _ in range(4):
            self.client.calls[-1][2].errback(ConnectionError("down"))
            calls = len(self.client.calls)
            waited = 0.0
            while len(self.client.calls) == calls:
                self.clock.advance(0.5)
                waited += 0.5
            delays.append(waited)
            self.assertEqual(self.client.ids(-1), first)  # the same ids: receivers drop repeats
        self.assertEqual(delays, [1, 2, 4, 4])
        self.client.calls[-1][2].callback({})
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.queue.counts["retried"], 4)

    def test_ids_are_unique(self) -> None:
        for i in range(3):
            self.queue.add({"n": i})
        self.clock.advance(0.5)
        ids = self.client.ids(0)
        self.assertEqual(len(set(ids)), 3)
        other = EventQueue("offline", self.client, self.clock, window=0.5)
        other.add({})
        self.clock.advance(0.5)
        self.assertNotIn(self.client.ids(-1)[0], ids)  # another process, another prefix

    def test_past_the_cap_the_oldest_are_dropped_and_counted(self) -> None:
        self.queue.add({"n": 0})
        self.clock.advance(0.5)  # in flight: [0]
        for i in range(1, 8):
            self.queue.add({"n": i})
        self.assertEqual(len(self.queue), 5)
        self.assertEqual(self.queue.counts["dropped"], 3)
        self.client.calls[0][2].errback(ConnectionError("down"))
        # the batch in flight counted against the cap: back in front, nothing more dropped
        self.assertEqual(len(self.queue), 5)
        self.assertEqual(self.queue.counts["dropped"], 3)
        self.clock.advance(1)
        self.assertEqual([e["n"] for e in self.client.calls[1][1]["events"]], [0, 4, 5])

    def test_stop_cancels_the_timer(self) -> None:
        self.queue.add({"n": 0})
        self.queue.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
