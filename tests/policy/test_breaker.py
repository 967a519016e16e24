"""The circuit breaker's states, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from o2obroker.policy.breaker import CLOSED, HALF_OPEN, OPEN, TRANSITIONS, CircuitBreaker


class BreakerTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.breaker = CircuitBreaker(self.clock, failures=3, reset=10)

    def test_opens_after_failures_in_a_row(self) -> None:
        b = self.breaker
        b.failure()
        b.failure()
        b.success()  # a success in between starts the count again
        b.failure()
        b.failure()
        self.assertEqual(b.state, CLOSED)
        self.assertTrue(b.allow())
        b.failure()
        self.assertEqual(b.state, OPEN)
        self.assertFalse(b.allow())
        self.assertEqual(b.opened, 1)

    def _open(self) -> None:
        for _ in range(3):
            self.breaker.failure()

    def test_half_open_lets_one_probe_through(self) -> None:
        b = self.breaker
        self._open()
        self.clock.advance(9.9)
        self.assertFalse(b.allow())
        self.clock.advance(0.1)
        self.assertTrue(b.allow())
        self.assertEqual(b.state, HALF_OPEN)
        self.assertFalse(b.allow())  # only one probe at a time
        b.success()
        self.assertEqual(b.state, CLOSED)
        self.assertTrue(b.allow())

    def test_failed_probe_opens_again_for_a_full_period(self) -> None:
        b = self.breaker
        self._open()
        self.clock.advance(10)
        self.assertTrue(b.allow())
        b.failure()
        self.assertEqual(b.state, OPEN)
        self.assertEqual(b.opened, 2)
        self.clock.advance(5)
        self.assertFalse(b.allow())
        self.clock.advance(5)
        self.assertTrue(b.allow())

    def test_late_answers_while_open_change_nothing(self) -> None:
        b = self.breaker
        self._open()
        b.success()
        self.assertEqual(b.state, OPEN)
        self.assertFalse(b.allow())

    def test_every_state_has_its_events_declared(self) -> None:
        for state in (CLOSED, OPEN, HALF_OPEN):
            self.assertIn((state, "success"), TRANSITIONS)
            self.assertIn((state, "failure"), TRANSITIONS)
        with self.assertRaises(ValueError):
            CircuitBreaker(self.clock, failures=0)
