"""The WebSocket baseline: a bare Autobahn relay that forwards each message as it came.

The first connection is the sender, the next the receiver; every message from
a sender is sent to its receiver as one WebSocket message (one frame). Nothing
is decoded. ``python bench/bare_ws_relay.py PORT``
"""

from __future__ import annotations

import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class Relay(WebSocketServerProtocol):
    peer: Relay | None = None

    def onOpen(self) -> None:
        waiting = self.factory.waiting
        waiting.append(self)
        if len(waiting) == 2:
            a, b = waiting
            a.peer, b.peer = b, a
            waiting.clear()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.peer is not None:
            self.peer.sendMessage(payload, isBinary)


if __name__ == "__main__":
    factory = WebSocketServerFactory()
    factory.protocol = Relay
    factory.waiting = []
    factory.setProtocolOptions(maxFramePayloadSize=1 << 20, maxMessagePayloadSize=1 << 20)
    reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
    reactor.run()
