"""Mailboxes: order, batching, one reactor call per turn, held by Deferreds, failures contained."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.actors import Actor, Scheduler


class Recorder(Actor):
    batched: ClassVar[frozenset[str]] = frozenset({"many"})
    handlers: ClassVar[dict[str, str]] = {"many": "on_many", "one": "on_one", "boom": "on_boom"}

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__(scheduler)
        self.seen: list[Any] = []
        self.hold: Deferred[None] | None = None
        self.recovered = 0
        self.idles = 0

    def on_many(self, batch: list[tuple[Any, ...]]) -> None:
        self.seen.append(("many", [m[1] for m in batch]))

    def on_one(self, message: tuple[Any, ...]) -> Deferred[None] | None:
        self.seen.append(("one", message[1]))
        return self.hold

    def on_boom(self, message: tuple[Any, ...]) -> None:
        raise RuntimeError("boom")

    def _recover(self) -> None:
        self.recovered += 1

    def idle(self) -> None:
        self.idles += 1


class ActorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.scheduler = Scheduler(self.clock)
        self.actor = Recorder(self.scheduler)

    def test_one_reactor_call_per_turn(self) -> None:
        others = [Recorder(self.scheduler) for _ in range(10)]
        for i in range(100):
            self.actor.tell(("many", i))
            for o in others:
                o.tell(("many", i))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.scheduler.runs, 1)
        self.assertEqual(self.actor.seen, [("many", list(range(100)))])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_batches_split_by_kind_in_order(self) -> None:
        for m in [("many", 1), ("many", 2), ("one", 3), ("many", 4)]:
            self.actor.tell(m)
        self.clock.advance(0)
        self.assertEqual(self.actor.seen, [("many", [1, 2]), ("one", 3), ("many", [4])])

    def test_deferred_holds_the_mailbox(self) -> None:
        self.actor.hold = Deferred()
        self.actor.tell(("one", 1))
        self.actor.tell(("many", 2))
        self.clock.advance(0)
        self.assertEqual(self.actor.seen, [("one", 1)])
        hold, self.actor.hold = self.actor.hold, None
        self.actor.tell(("many", 3))
        self.clock.advance(0)
        self.assertEqual(self.actor.seen, [("one", 1)])
        hold.callback(None)
        self.clock.advance(0)
        self.assertEqual(self.actor.seen, [("one", 1), ("many", [2, 3])])

    def test_failure_is_contained(self) -> None:
        self.actor.tell(("boom",))
        self.actor.tell(("many", 1))
        self.clock.advance(0)
        self.assertEqual(self.actor.recovered, 1)
        self.assertEqual(self.actor.seen, [("many", [1])])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failed_deferred_is_contained(self) -> None:
        self.actor.hold = Deferred()
        self.actor.tell(("one", 1))
        self.clock.advance(0)
        self.actor.hold.errback(RuntimeError("late boom"))
        self.actor.hold = None
        self.actor.tell(("one", 2))
        self.clock.advance(0)
        self.assertEqual(self.actor.recovered, 1)
        self.assertEqual(self.actor.seen, [("one", 1), ("one", 2)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_budget_lets_others_run(self) -> None:
        scheduler = Scheduler(self.clock, budget=10)
        greedy, other = Recorder(scheduler), Recorder(scheduler)
        for i in range(25):
            greedy.tell(("one", i))
        other.tell(("one", "x"))
        # one run: each actor that was ready gets at most the budget
        scheduler.run()
        self.assertEqual(len(greedy.seen), 10)
        self.assertEqual(other.seen, [("one", "x")])
        # the rest follows on later turns (task.Clock runs them all in one advance)
        self.clock.advance(0)
        self.assertEqual(len(greedy.seen), 25)
        self.assertGreaterEqual(scheduler.runs, 3)

    def test_idle_when_empty(self) -> None:
        self.actor.tell(("one", 1))
        self.clock.advance(0)
        self.assertEqual(self.actor.idles, 1)
