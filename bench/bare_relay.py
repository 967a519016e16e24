"""The baseline: a Twisted TCP relay that does the least possible per message.

The first connection to say anything is a sender, the next a receiver; every
length-prefixed frame from a sender is split out and written to its receiver.
Nothing is decoded. ``python bench/bare_relay.py PORT``
"""

from __future__ import annotations

import struct
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

_len = struct.Struct(">I")


class Relay(Protocol):
    def __init__(self, factory: RelayFactory) -> None:
        self.f = factory
        self.buf = b""
        self.peer: Relay | None = None

    def connectionMade(self) -> None:
        self.f.waiting.append(self)
        if len(self.f.waiting) == 2:
            a, b = self.f.waiting
            a.peer, b.peer = b, a
            self.f.waiting = []

    def dataReceived(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end, out = 0, len(buf), []
        while end - pos >= 4:
            (n,) = _len.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            out.append(buf[pos : pos + 4 + n])  # one frame, forwarded as it came
            pos += 4 + n
        self.buf = buf[pos:]
        if out and self.peer is not None:
            self.peer.transport.write(b"".join(out))


class RelayFactory(Factory):
    def __init__(self) -> None:
        self.waiting: list[Relay] = []

    def buildProtocol(self, addr: object) -> Relay:
        return Relay(self)


if __name__ == "__main__":
    reactor.listenTCP(int(sys.argv[1]), RelayFactory(), interface="127.0.0.1")
    reactor.run()
