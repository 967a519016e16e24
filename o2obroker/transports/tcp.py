"""Binary TCP: 4-byte length prefix, one CBOR map per frame (doc/protocol.md section 1)."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from o2obroker.metrics import traffic_of
from o2obroker.session import Gateway, IConnection, Session
from o2obroker.session.transfer import LARGE
from o2obroker.transports.common import Backpressure, SocketOutput, socket_under
from o2obroker.wire import FrameSplitter, OutFrame, ProtocolError, decode_cbor, encode_cbor

_prefix = struct.Struct(">I").pack


@implementer(IConnection)
class BinaryProtocol(SocketOutput, Protocol):
    """One binary TCP connection: split, decode, hand to the session; encode and write.

    A Backpressure registered as the producer of the transport has Twisted
    say when the peer stops reading; only then is the unsent output counted,
    and past ``max_queue`` the connection is closed with 503 ("slow
    consumer"): its messages stay in the inbox for its resume.
    """

    kind = "mobile"
    transport_name = "tcp"
    log = Logger()

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._splitter = FrameSplitter(gateway.limits.max_frame)
        self._max_queue = gateway.limits.max_queue
        self._pressure = Backpressure()
        self._abort: IDelayedCall | None = None
        self.session: Session | None = None
        self._traffic = traffic_of(gateway.stats, self.transport_name)

    def connectionMade(self) -> None:
        self.transport.registerProducer(self._pressure, True)
        self._socket = socket_under(self.transport)
        self.session = self._gateway.connect(self)

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        session.touch()
        try:
            payloads = self._splitter.feed(data)
        except ProtocolError as e:
            session.fail(e)
            return
        traffic = self._traffic
        traffic.bytes_in += len(data)
        traffic.frames_in += len(payloads)
        limits = self._gateway.limits
        for payload in payloads:
            try:
                obj = decode_cbor(payload, limits)
            except ProtocolError as e:
                session.fail(e)
                if e.fatal:
                    return
                continue
            session.receive(obj, len(payload))
            if self._closing:
                return
        if payloads:
            session.received()  # ends a transfer hold, if one was on
        splitter = self._splitter
        if splitter.buffered:
            if session.partial_since is None:
                session.partial_since = self._gateway.liveness.now
            expected = splitter.expected
            if expected >= LARGE:
                session.receiving(expected, splitter.buffered - 4)
        else:
            session.partial_since = None

    def connectionLost(self, reason: Any = None) -> None:
        self._closing = True
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._pressure.release()
        if self.session is not None:
            self.session.lost()

    # -- IConnection --------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        if self._closing:
            return
        payload = encode_cbor(frame)
        self.transport.write(_prefix(len(payload)) + payload)
        self._count(1, len(payload) + 4)
        if self._pressure.paused:
            self._wrote(len(payload) + 4)

    def send_many(self, frames: list[dict[str, Any]]) -> None:
        if self._closing:
            return
        parts = []
        for f in frames:
            payload = encode_cbor(f)
            parts.append(_prefix(len(payload)))
            parts.append(payload)
        data = b"".join(parts)
        self.transport.write(data)
        self._count(len(frames), len(data))
        if self._pressure.paused:
            self._wrote(len(data))

    def send_msgs(self, items: list[tuple[int, Any]]) -> None:
        if self._closing:
            return
        parts = []
        for seq, template in items:
            payload = template.cbor(seq)
            parts.append(_prefix(len(payload)))
            parts.append(payload)
        data = b"".join(parts)
        self.transport.write(data)
        self._count(len(items), len(data))
        if self._pressure.paused:
            self._wrote(len(data))
        if len(data) >= LARGE and not self._closing:
            self.session.sending(len(data))

    def send_out(self, out: OutFrame) -> int:
        if self._closing:
            return 0
        payload = out.cbor()
        self.transport.write(_prefix(len(payload)) + payload)
        self._count(1, len(payload) + 4)
        if self._pressure.paused:
            self._wrote(len(payload) + 4)
        return len(payload) + 4

    def _write_last(self, frame: dict[str, Any]) -> None:
        payload = encode_cbor(frame)
        self.transport.write(_prefix(len(payload)) + payload)
        self._count(1, len(payload) + 4)

    def _count(self, frames: int, size: int) -> None:
        traffic = self._traffic
        traffic.frames_out += frames
        traffic.bytes_out += size

    def _shut(self) -> None:
        self.transport.loseConnection()
        # a peer that never reads would hold the socket open: cut it after a while
        clock: IReactorTime = self._gateway.clock
        self._abort = clock.callLater(10, self.transport.abortConnection)


class BinaryFactory(Factory):
    """Makes a BinaryProtocol per connection, all sharing the node's gateway."""

    noisy = False

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def buildProtocol(self, addr: Any) -> BinaryProtocol:
        proto = BinaryProtocol(self.gateway)
        proto.factory = self
        return proto
