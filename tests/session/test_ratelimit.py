"""Per-connection rate limits: 429, the frame dropped, closed when it goes on."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from o2obroker.session.ratelimit import ALLOWED, PERSISTENT, REFUSED, RateLimiter
from tests.harness import Harness


class RateLimiterTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        r = RateLimiter(rate=2, burst=3, now=0)
        self.assertEqual([r.take(0) for _ in range(4)], [ALLOWED] * 3 + [REFUSED])
        self.assertEqual(r.take(0.5), ALLOWED)  # one token back after half a second
        self.assertEqual(r.take(0.5), REFUSED)
        self.assertEqual([r.take(10) for _ in range(4)], [ALLOWED] * 3 + [REFUSED])

    def test_persistent_after_ten_seconds_of_refusals(self) -> None:
        r = RateLimiter(rate=1, burst=1, now=0)
        verdicts = []
        t = 0.0
        while t <= 11:
            verdicts.append(r.take(t))
            verdicts.append(r.take(t))  # twice the rate
            t += 0.5
        self.assertEqual(verdicts[-1], PERSISTENT)
        self.assertNotIn(PERSISTENT, verdicts[:30])

    def test_a_pause_starts_over(self) -> None:
        r = RateLimiter(rate=1, burst=1, now=0)
        for t in range(9):
            r.take(t)
            r.take(t)
        # a second free of refusals: the next run starts afresh
        r.take(10.5)
        self.assertEqual(r.take(10.6), REFUSED)
        self.assertEqual(r.take(19.0), ALLOWED)


class SessionRateTests(SynchronousTestCase):
    def test_over_the_limit_is_429_and_dropped(self) -> None:
        h = Harness(auth="none", rate_limit=5, rate_burst=5)
        alice, bob = h.login("alice"), h.login("bob")
        alice.read()
        bob.read()
        for i in range(8):
            alice.write({"t": "send", "id": f"c-{i}", "to": "bob", "body": i})
        frames = alice.read()
        receipts = [f["id"] for f in frames if f["t"] == "receipt"]
        errors = [f for f in frames if f["t"] == "error"]
        self.assertEqual(len(receipts), 5)
        self.assertEqual(
            [(e["code"], e["ref"]) for e in errors], [(429, f"c-{i}") for i in (5, 6, 7)]
        )
        self.assertEqual([m["body"] for m in bob.read()], [0, 1, 2, 3, 4])
        self.assertFalse(alice.closed)
        # a second later there is room again
        h.clock.advance(1)
        alice.write({"t": "send", "id": "c-5", "to": "bob", "body": 5})
        self.assertEqual(alice.read()[0]["t"], "receipt")

    def test_a_client_that_keeps_on_is_closed(self) -> None:
        h = Harness(auth="none", rate_limit=1, rate_burst=1)
        alice = h.login("alice")
        alice.read()
        for _ in range(24):
            alice.write({"t": "ping"})
            alice.write({"t": "ping"})
            h.clock.advance(0.5)
        self.assertTrue(alice.closed)
        self.assertEqual(alice.read()[-1]["reason"], "rate limit exceeded for 10 s")

    def test_off_by_default(self) -> None:
        h = Harness(auth="none")
        alice = h.login("alice")
        alice.read()
        for _ in range(500):
            alice.write({"t": "ping"})
        self.assertEqual(set(alice.read_types()), {"pong"})
