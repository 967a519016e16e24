"""WebSocket on ``/ws``: JSON text messages, or CBOR with subprotocol ``o2o.cbor.v1``.

A thin Autobahn protocol around a :class:`~o2obroker.session.Session`, exactly
like the binary TCP transport: it decodes messages into frame maps for the
session and encodes what the session writes. Messages are encoded once per
encoding (``MessageTemplate.json(seq)`` / ``.cbor(seq)``), never per
recipient. A client whose hello says ``"batch": true`` gets everything that is
ready for it in one reactor turn as one array message: Autobahn's cost is per
WebSocket message, so batching is what makes a busy browser cheap.
"""

from __future__ import annotations

import struct
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from o2obroker.metrics import traffic_of
from o2obroker.session import Gateway, IConnection, Session
from o2obroker.transports.common import (
    Backpressure,
    Flusher,
    OriginPolicy,
    SocketOutput,
    TrustedProxies,
    socket_under,
)
from o2obroker.wire import (
    OutFrame,
    ProtocolError,
    cbor_array,
    decode_cbor_batch,
    decode_json,
    encode_cbor,
    encode_json,
    json_array,
)

CBOR_SUBPROTOCOL = "o2o.cbor.v1"
_head7 = struct.Struct(">BB").pack
_head16 = struct.Struct(">BBH").pack
_head64 = struct.Struct(">BBQ").pack


@implementer(IConnection)
class WebSocketConnection(SocketOutput, WebSocketServerProtocol):
    """One WebSocket client; the IConnection of its session."""

    kind = "web"
    transport_name = "ws"
    url_app: str | None = None  # the app named in the URL (section 3)
    # Autobahn's own ``log`` stays: it drops debug events before formatting them
    log = WebSocketServerProtocol.log

    session: Session | None = None
    cbor = False
    batch = False
    _hello_seen = False
    _queued = False

    def onConnect(self, request: Any) -> str | None:
        factory = self.factory
        if not factory.origins.allows(request.origin or None, request.headers.get("host")):
            factory.refused_origins += 1
            factory.gateway.stats.refused["origin"] += 1
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        app = request.params.get("app")
        if app:
            self.url_app = app[0]
        if factory.trusted:
            # Autobahn's peer is "tcp:host:port"; the log shows the client behind a proxy
            where = str(request.peer).partition(":")[2]
            via = factory.trusted.via(
                where.rpartition(":")[0], where, request.headers.get("x-forwarded-for")
            )
            if via is not None:
                self.peer = via
        if CBOR_SUBPROTOCOL in request.protocols:
            self.cbor = True
            return CBOR_SUBPROTOCOL
        return None

    def onOpen(self) -> None:
        self._out: list[Any] = []
        # the opening handshake is over: its request need not live as long as the socket
        self.http_headers = self.http_request_data = self.http_request_params = None
        self.http_status_line = self.http_request_uri = self.websocket_protocols = None
        # one node-wide tally instead of an object per socket
        self.trafficStats = self.factory.traffic
        transport = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()  # the HTTP channel's, done with this socket
        self._pressure = Backpressure()
        self._max_queue = self.factory.gateway.limits.max_queue
        transport.registerProducer(self._pressure, True)
        self._socket = socket_under(transport)
        self._traffic = traffic_of(self.factory.gateway.stats, self.transport_name)
        self.session = self.factory.gateway.connect(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None or self._closing:
            return
        session.touch()
        traffic = self._traffic
        traffic.bytes_in += len(payload)
        limits = self.factory.gateway.limits
        try:
            obj = decode_cbor_batch(payload, limits) if isBinary else decode_json(payload, limits)
        except ProtocolError as e:
            session.fail(e)
            return
        traffic.frames_in += 1 if type(obj) is dict else len(obj)
        if type(obj) is dict:
            if not self._hello_seen:
                self._hello(obj)
            session.receive(obj)
            return
        for frame in obj:
            if not self._hello_seen:
                self._hello(frame)
            session.receive(frame)
            if self._closing:
                return

    def _hello(self, frame: dict[str, Any]) -> None:
        self._hello_seen = True
        self.batch = frame.get("t") == "hello" and frame.get("batch") is True

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._closing = True
        self._out = []
        # Autobahn leaves this timer running once the socket is gone, and with it
        # the whole connection for closeHandshakeTimeout
        timer = self.closeHandshakeTimeoutCall
        if timer is not None:
            self.closeHandshakeTimeoutCall = None
            if timer.active():
                timer.cancel()
        if self._pressure is not None:
            self._pressure.release()
        if self.session is not None:
            self.session.lost()

    # -- IConnection ----------------------------------------------------------

    def send(self, frame: dict[str, Any] | OutFrame) -> None:
        if self._closing:
            return
        if type(frame) is OutFrame:  # encoded once for all its recipients
            self._emit([frame.cbor() if self.cbor else frame.json()])
        elif self.cbor:
            self._emit([encode_cbor(frame)])
        else:
            self._emit([encode_json(frame)])

    def send_msgs(self, items: list[tuple[int, Any]]) -> None:
        if self._closing:
            return
        if self.cbor:
            self._emit([template.cbor(seq) for seq, template in items])
        else:
            self._emit([template.json(seq) for seq, template in items])

    def _emit(self, payloads: list[Any]) -> None:
        """Write encoded frames: CBOR bytes, or JSON text (encoded to UTF-8 per message)."""
        self._traffic.frames_out += len(payloads)
        if self.batch:
            self._out.extend(payloads)
            if not self._queued:
                self._queued = True
                self.factory.flusher.add(self)
            return
        if not self.cbor:
            payloads = [p.encode() for p in payloads]
        self._write_messages(payloads, self.cbor)

    def flush(self) -> None:
        """Write the frames of this turn as one array message (``batch`` clients)."""
        self._queued = False
        if self._out and not self._closing:
            self._write_out()

    def _write_out(self) -> None:
        out, self._out = self._out, []
        limit = self.maxMessagePayloadSize
        if self.cbor:
            data = cbor_array(out)
            if 0 < limit < len(data):
                self._write_messages([cbor_array(p) for p in _slices(out, limit, len)], True)
            else:
                self._write_messages([data], True)
        else:
            data = json_array(out).encode()
            if 0 < limit < len(data):
                parts = _slices(out, limit, _utf8_len)
                self._write_messages([json_array(p).encode() for p in parts], False)
            else:
                self._write_messages([data], False)

    def _write_messages(self, payloads: list[bytes], binary: bool) -> None:
        """Write each payload as one unfragmented, unmasked WebSocket message.

        A server message is a 2-10 byte header and the payload, so on an open
        connection without compression the frames are made here and written
        in one call; Autobahn's sendMessage costs tens of microseconds per
        message in checks and logging arguments. Otherwise (compression,
        closing) Autobahn frames them.
        """
        if self.state != self.STATE_OPEN or self._perMessageCompress is not None:
            for payload in payloads:
                self._traffic.bytes_out += len(payload)  # before compression and framing
                self.sendMessage(payload, binary)
        else:
            opcode = 0x82 if binary else 0x81
            parts = []
            for payload in payloads:
                n = len(payload)
                if n < 126:
                    parts.append(_head7(opcode, n))
                elif n < 0x10000:
                    parts.append(_head16(opcode, 126, n))
                else:
                    parts.append(_head64(opcode, 127, n))
                parts.append(payload)
            data = b"".join(parts)
            self._traffic.bytes_out += len(data)
            self.transport.write(data)
            if self._pressure.paused:
                self._wrote(len(data))
            return
        if self._pressure.paused:
            self._wrote(sum(map(len, payloads)))

    def send_many(self, frames: list[dict[str, Any]]) -> None:
        if self._closing:
            return
        if self.cbor:
            self._emit([encode_cbor(f) for f in frames])
        else:
            self._emit([encode_json(f) for f in frames])

    def send_out(self, out: OutFrame) -> int:
        if self._closing:
            return 0
        payload = out.cbor() if self.cbor else out.json()
        self._emit([payload])
        return len(payload)

    def _write_last(self, frame: dict[str, Any]) -> None:
        """The frame that explains the close, after what is pending (``batch``)."""
        last = encode_cbor(frame) if self.cbor else encode_json(frame)
        self._traffic.frames_out += 1
        if self.batch:
            self._out.append(last)
            self._write_out()
        else:
            self._write_messages([last if self.cbor else last.encode()], self.cbor)

    def _shut(self) -> None:
        self._out = []
        self.sendClose(code=1000)


def _utf8_len(text: str) -> int:
    return len(text.encode())


def _slices(items: list[Any], limit: int, size: Any) -> list[list[Any]]:
    """Cut a batch into arrays that each fit ``limit`` bytes (a lone frame always goes)."""
    parts: list[list[Any]] = []
    part: list[Any] = []
    used = 2  # the array's brackets, or a CBOR head of up to 9 bytes minus the commas' slack
    for item in items:
        n = size(item) + 1
        if part and used + n > limit - 8:
            parts.append(part)
            part, used = [], 2
        part.append(item)
        used += n
    if part:
        parts.append(part)
    return parts


class _ClockTimer:
    """Autobahn's timer interface on an injected clock (tests drive it with task.Clock)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> IDelayedCall:
        return self._clock.callLater(delay, func, *args, **kwargs)


class WebSocketFactory(WebSocketServerFactory):
    """Shared by every WebSocket connection of a node."""

    protocol = WebSocketConnection

    def __init__(
        self,
        gateway: Gateway,
        origins: OriginPolicy,
        reactor: IReactorTime,
        *,
        max_frame: int,
        max_message: int,
        auto_ping: float = 0.0,
        auto_ping_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        compression: bool = False,
        trusted: TrustedProxies | None = None,
    ) -> None:
        super().__init__(reactor=reactor, protocols=[CBOR_SUBPROTOCOL])
        self.gateway = gateway
        self.origins = origins
        self.trusted = trusted or TrustedProxies()
        self.flusher = Flusher(reactor)
        self._batched_timer = _ClockTimer(reactor)
        self.refused_origins = 0
        self.traffic = TrafficStats()  # octets and messages of every open WebSocket
        options: dict[str, Any] = {
            "maxFramePayloadSize": max_frame,
            "maxMessagePayloadSize": max_message,
            "openHandshakeTimeout": handshake_timeout,
            "autoPingInterval": auto_ping,
            "autoPingTimeout": auto_ping_timeout,
            # the session's error frame says why; the socket then goes quickly
            "closeHandshakeTimeout": 2,
            "failByDrop": False,
            # Autobahn would refuse ``Origin: null`` itself with 400: the policy decides (403)
            "allowNullOrigin": True,
            # the codec checks UTF-8 while decoding, and answers 400 with an error
            # frame before closing (Autobahn would close with 1007 and no frame)
            "utf8validateIncoming": False,
        }
        if compression:
            options["perMessageCompressionAccept"] = _accept_deflate
        self.setProtocolOptions(**options)


def _accept_deflate(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class WebSocketPath(WebSocketResource):
    """``/ws`` in the web site: hands the socket to Autobahn, off the HTTP timers."""

    def __init__(self, factory: WebSocketFactory) -> None:
        super().__init__(factory)
        self.factory = factory

    def render(self, request: Any) -> Any:
        channel = request.channel
        result = super().render(request)
        channel.setTimeout(None)  # the HTTP idle timer must not fire on a channel with no socket
        return result


def websocket_resource(
    gateway: Gateway, config: Any, origins: OriginPolicy, reactor: IReactorTime
) -> WebSocketPath:
    """The ``/ws`` resource of a node, with the limits and timers of its config."""
    max_frame = config.limits.max_frame
    factory = WebSocketFactory(
        gateway,
        origins,
        reactor,
        max_frame=config.ws_max_frame or max_frame,
        max_message=config.ws_max_message or max_frame,
        auto_ping=config.ws_auto_ping,
        auto_ping_timeout=config.ws_auto_ping_timeout,
        handshake_timeout=config.ws_handshake_timeout,
        compression=config.ws_compression,
        trusted=TrustedProxies(config.trusted_proxies),
    )
    return WebSocketPath(factory)
