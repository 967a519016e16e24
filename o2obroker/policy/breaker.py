"""A circuit breaker for calls to the application: stop calling what is down.

Closed, it lets every call through and counts failures in a row; at
``failures`` it opens and refuses calls at once for ``reset`` seconds; then it
is half-open and lets one probe through: a success closes it, a failure opens
it again. The states and events are declared in one table.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

#: (state, event) -> next state. "trip" is a failure that reaches the threshold;
#: "cooled" is the first call asked for after ``reset`` seconds open.
TRANSITIONS: dict[tuple[str, str], str] = {
    (CLOSED, "success"): CLOSED,
    (CLOSED, "failure"): CLOSED,
    (CLOSED, "trip"): OPEN,
    (OPEN, "cooled"): HALF_OPEN,
    # answers of calls made before the breaker opened change nothing
    (OPEN, "success"): OPEN,
    (OPEN, "failure"): OPEN,
    (HALF_OPEN, "success"): CLOSED,
    (HALF_OPEN, "failure"): OPEN,
}


class CircuitBreaker:
    """One breaker per hook. Ask :meth:`allow` before a call and report its
    outcome with :meth:`success` or :meth:`failure`."""

    def __init__(self, clock: IReactorTime, failures: int = 5, reset: float = 30.0) -> None:
        if failures < 1 or reset <= 0:
            raise ValueError("a breaker needs failures >= 1 and reset > 0")
        self.clock = clock
        self.threshold = failures
        self.reset = reset
        self.state = CLOSED
        self.failures = 0  # in a row, while closed
        self.opened_at = 0.0
        self.probing = False  # the one half-open call is under way
        self.opened = 0  # times it opened, for metrics

    def _fire(self, event: str) -> None:
        self.state = TRANSITIONS[(self.state, event)]

    def allow(self) -> bool:
        """Whether a call may go out now."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            if self.clock.seconds() - self.opened_at < self.reset:
                return False
            self._fire("cooled")
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.probing = False
        self.failures = 0
        self._fire("success")

    def failure(self) -> None:
        was = self.state
        self.probing = False
        if was == CLOSED:
            self.failures += 1
            self._fire("trip" if self.failures >= self.threshold else "failure")
        else:
            self._fire("failure")
        if self.state == OPEN and (was != OPEN):
            self.failures = 0
            self.opened_at = self.clock.seconds()
            self.opened += 1
