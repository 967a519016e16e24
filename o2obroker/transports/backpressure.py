"""Twisted's word on whether a peer is reading, shared by the socket transports."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Backpressure:
    """Registered as the producer of a socket: Twisted pauses it when the
    socket's buffer is over its size and resumes it once the peer has read.

    ``paused`` tells a transport when to measure its unsent output (slow
    consumers); ``when_drained`` lets a writer of many pages wait for the peer.
    """

    __slots__ = ("paused", "waiters")

    def __init__(self) -> None:
        self.paused = False
        self.waiters: list[Deferred[None]] | None = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.release()

    def stopProducing(self) -> None:
        self.paused = False
        self.release()

    def when_drained(self) -> Deferred[None] | None:
        """None while the peer reads; else a Deferred fired once it does again,
        or once ``release`` is called because the connection is gone."""
        if not self.paused:
            return None
        d: Deferred[None] = Deferred()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(d)
        return d

    def release(self) -> None:
        waiters, self.waiters = self.waiters, None
        for d in waiters or ():
            d.callback(None)
