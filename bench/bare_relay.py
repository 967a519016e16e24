"""The baseline: a Twisted relay that speaks the protocol doing the least possible.

Per message it does what any relay of this protocol must: split the frame off
the stream, decode it to read its recipient, encode a msg frame (with a seq)
for the recipient and a receipt for the sender, and write each. No validation,
no limits, no dedupe, no inbox, no actors, no heartbeats: everything the
broker adds is what the comparison measures. ``python bench/bare_relay.py PORT``
"""

from __future__ import annotations

import itertools
import struct
import sys

import cbor2
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

_len = struct.Struct(">I")
_loads, _dumps, _pack = cbor2.loads, cbor2.dumps, _len.pack


class Relay(Protocol):
    def __init__(self, factory: RelayFactory) -> None:
        self.f = factory
        self.buf = b""
        self.user: str | None = None
        self.seq = 0

    def connectionLost(self, reason: object = None) -> None:
        if self.user is not None and self.f.users.get(self.user) is self:
            del self.f.users[self.user]

    def dataReceived(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        users = self.f.users
        while end - pos >= 4:
            (n,) = _len.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            f = _loads(buf[pos + 4 : pos + 4 + n])
            pos += 4 + n
            t = f["t"]
            if t == "send":
                peer = users[f["to"]]
                peer.seq += 1
                mid = next(self.f.mids)
                msg = _dumps(
                    {
                        "t": "msg",
                        "seq": peer.seq,
                        "mid": mid,
                        "from": self.user,
                        "to": f["to"],
                        "body": f["body"],
                    }
                )
                peer.transport.write(_pack(len(msg)) + msg)
                receipt = _dumps({"t": "receipt", "id": f["id"], "mid": mid, "status": "delivered"})
                self.transport.write(_pack(len(receipt)) + receipt)
            elif t == "hello":
                self.user = f["user"]
                users[self.user] = self
                welcome = _dumps({"t": "welcome", "user": self.user})
                self.transport.write(_pack(len(welcome)) + welcome)
            # ack and everything else: read and dropped
        self.buf = buf[pos:]


class RelayFactory(Factory):
    def __init__(self) -> None:
        self.users: dict[str, Relay] = {}
        self.mids = (str(i) for i in itertools.count(1))

    def buildProtocol(self, addr: object) -> Relay:
        return Relay(self)


if __name__ == "__main__":
    reactor.listenTCP(int(sys.argv[1]), RelayFactory(), interface="127.0.0.1")
    reactor.run()
