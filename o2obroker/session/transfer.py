"""The transfer hold: no heartbeat probe for a device busy with a large frame.

A device that is sending a large frame over a slow link may stay silent
between chunks for longer than the heartbeat allows, and a device that is
being sent one cannot answer a ping that waits behind it in the send buffer.
Probing either is wasted traffic, and closing it would lose a transfer that
is going well. So while a large frame (doc/protocol.md section 5: above 64 KiB)
is on its way, the device's liveness and presence are held.

The hold is bounded: each connection measures its own transfer rate ``v``
(bytes per second, a moving average over its finished transfers), estimates
``t0 = size / v`` when a transfer starts, and holds until the transfer
completes, fails, or passes ``t0`` plus a margin; then normal probing resumes.
"""

from __future__ import annotations

#: frames above this size start a hold (doc/protocol.md section 5)
LARGE = 64 << 10


class Transfer:
    """One connection's rate estimate and the hold of its transfer under way.

    ``rate`` starts at ``initial_rate``, a deliberately modest guess for a
    mobile link, so that the first large transfer is held long enough; each
    finished transfer moves it halfway to what was measured.
    """

    __slots__ = ("direction", "margin_min", "margin_ratio", "rate", "size", "started", "until")

    def __init__(
        self,
        initial_rate: float = 32 << 10,
        *,
        margin_ratio: float = 0.5,
        margin_min: float = 5.0,
    ) -> None:
        self.rate = float(initial_rate)
        self.margin_ratio = margin_ratio
        self.margin_min = margin_min
        self.direction: str | None = None  # "in" or "out" while a hold is on
        self.size = 0
        self.started = 0.0
        self.until = 0.0

    @property
    def active(self) -> bool:
        return self.direction is not None

    def estimate(self, size: int) -> float:
        """Seconds ``size`` bytes should take at the measured rate (``t0``)."""
        return size / self.rate

    def start(self, direction: str, size: int, now: float, already: int = 0) -> None:
        """A large transfer began: hold until ``t0`` plus the margin has passed.

        ``already`` is what is not part of the wait: bytes of an inbound frame
        already received. For outbound, ``size`` is everything queued, the new
        frame included, since the frame only leaves after what is ahead of it.
        """
        remaining = max(0, size - already)
        t0 = self.estimate(remaining)
        self.direction = direction
        self.size = remaining
        self.started = now
        self.until = now + t0 + max(self.margin_min, t0 * self.margin_ratio)

    def extend(self, size: int, now: float) -> None:
        """More large output queued behind an outbound transfer under way."""
        self.size += size
        t0 = self.estimate(self.size) - (now - self.started)
        self.until = max(self.until, now + t0 + max(self.margin_min, t0 * self.margin_ratio))

    def finish(self, now: float) -> None:
        """The transfer completed: learn the rate it achieved, lift the hold."""
        elapsed = now - self.started
        if elapsed > 0 and self.size > 0:
            self.rate = (self.rate + self.size / elapsed) / 2
        self.direction = None

    def lapse(self) -> None:
        """Failed or overdue: lift the hold without learning from it."""
        self.direction = None
