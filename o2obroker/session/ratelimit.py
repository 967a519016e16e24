"""Per-connection rate limits (doc/protocol.md section 7, code 429): a token bucket."""

from __future__ import annotations

ALLOWED, REFUSED, PERSISTENT = 0, 1, 2
#: a connection refused without a pause of a second for this long is closed
PERSIST_FOR = 10.0


class RateLimiter:
    """``rate`` frames a second on average, ``burst`` at once.

    A refused frame is dropped (a send gets no receipt, the client retries it
    with the same id). Refusals that go on, with no second free of them, for
    ``PERSIST_FOR`` seconds mean a client that does not slow down: the caller
    closes it. Made only when a limit is configured, so it costs nothing
    otherwise.
    """

    __slots__ = ("_last_refused", "_refused_since", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now
        self._refused_since: float | None = None
        self._last_refused = 0.0

    def take(self, now: float) -> int:
        """One frame arrived at ``now``: ALLOWED, REFUSED or PERSISTENT."""
        tokens = self._tokens + (now - self._stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return ALLOWED
        self._tokens = tokens
        if self._refused_since is None or now - self._last_refused >= 1.0:
            self._refused_since = now
        self._last_refused = now
        return PERSISTENT if now - self._refused_since >= PERSIST_FOR else REFUSED
