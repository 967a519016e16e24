"""What every transport shares: the output side of a connection, origins, JSON answers.

A leaf: it imports no other transport module, so that tcp, websocket,
longpoll, web and api each depend on it and never on one another.

The output side (:class:`Backpressure`, :class:`SocketOutput`) holds the one
rule that keeps a slow reader from taking the node down with it: a
connection that is being closed sends nothing more and checks nothing more.
It measures what a peer has not taken on the socket under any wrapper, so a
TLS connection is measured like a plain one.
The frame that explains the close is written by ``close`` itself, after the
connection is marked closing, so closing can never re-enter the check that
started it.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from o2obroker.wire import ProtocolError, encode_json

JSON = b"application/json"
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
_log = Logger()


# -- the output side of a socket connection ------------------------------------


def socket_under(transport: Any) -> FileDescriptor | None:
    """The socket under a transport and its wrappers (TLS, a WebSocket over TLS):
    the object that holds what Twisted has not handed to the kernel yet."""
    for _ in range(8):
        if transport is None or isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def buffered(socket: FileDescriptor) -> int:
    """Bytes a Twisted socket holds for its peer. (Twisted has no public count:
    ``dataBuffer`` is being written, ``_tempDataBuffer`` waits behind it.)"""
    return len(socket.dataBuffer) - socket.offset + socket._tempDataLen


@implementer(IPushProducer)
class Backpressure:
    """Registered as the producer of a socket: Twisted pauses it when the
    socket's buffer is over its size and resumes it once the buffer is empty.

    ``unsent`` counts up from what the socket held at the first write of a
    pause, by what is written while paused: an upper bound of what the peer
    has not taken (it may read some while the producer stays paused), cheap
    enough to keep on every write, so that the socket is measured again only
    when the count passes a limit. (Under a transport with no socket to
    measure, the count starts at 0: low by the socket's own buffer size.) ``when_drained`` lets a
    writer of many pages wait for the peer.
    """

    __slots__ = ("paused", "unsent", "waiters")

    def __init__(self) -> None:
        self.paused = False
        self.unsent = 0
        self.waiters: list[Deferred[None]] | None = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.unsent = 0
        self.release()

    def stopProducing(self) -> None:
        self.paused = False
        self.unsent = 0
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


class SocketOutput:
    """The closing and slow-consumer rules of a socket connection (TCP, WebSocket).

    A subclass sets ``_pressure`` (registered as its transport's producer) and
    ``_socket = socket_under(transport)``, and after every write calls
    ``self._wrote(n)`` when ``self._pressure.paused``: only then is the peer
    behind at all. When the count of :class:`Backpressure` passes
    ``max_queue``, the socket under the transport (under TLS too) is
    measured; if what it holds passes ``max_queue``, the session is failed with 503 "slow
    consumer" (its messages stay in the inbox for its resume). The subclass
    provides ``_write_last(frame)`` (write one frame, unchecked) and
    ``_shut()`` (close the socket).
    """

    _closing = False
    _max_queue = 0
    _pressure: Backpressure | None = None
    _socket: FileDescriptor | None = None
    session: Any = None
    log = _log

    def _wrote(self, n: int) -> None:
        pressure = self._pressure
        socket = self._socket
        if pressure.unsent == 0 and socket is not None:
            pressure.unsent = buffered(socket)  # the first write of a pause: what was there
        else:
            pressure.unsent += n
        if pressure.unsent > self._max_queue and not self._closing:
            if socket is not None:
                # the peer may have read part of it: count on from the truth
                pressure.unsent = buffered(socket)
                if pressure.unsent <= self._max_queue:
                    return
            self.log.info("{session!r}: slow consumer, closing", session=self.session)
            self.session.fail(ProtocolError(503, "slow consumer", fatal=True))

    def unsent(self) -> int:
        """Bytes written that the peer has not taken yet."""
        if self._socket is not None:
            return buffered(self._socket)
        pressure = self._pressure
        return pressure.unsent if pressure is not None and pressure.paused else 0

    def when_drained(self) -> Deferred[None] | None:
        """None while the peer takes what is written; else a Deferred that fires
        once it does again, or once the connection is gone."""
        if self._pressure is None or self._closing:
            return None
        return self._pressure.when_drained()

    def close(self, last: dict[str, Any] | None = None) -> None:
        """Write ``last`` (the frame that says why), then close; once only.

        The connection is marked closing first: nothing written from here on
        is measured against max_queue, and nothing more is sent.
        """
        if self._closing:
            return
        self._closing = True
        if last is not None:
            self._write_last(last)
        self._shut()

    def _write_last(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    def _shut(self) -> None:
        raise NotImplementedError


class Flusher:
    """Writes every batching connection's pending frames once per reactor turn.

    One delayed call serves all connections that have output in this turn, so
    batching costs no reactor call per connection or per message.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._dirty: list[Any] = []
        self._call: IDelayedCall | None = None
        self.runs = 0

    def add(self, conn: Any) -> None:
        self._dirty.append(conn)
        if self._call is None:
            self._call = self._clock.callLater(0, self.run)

    def run(self) -> None:
        self._call = None
        self.runs += 1
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()


# -- browsers ------------------------------------------------------------------


class OriginPolicy:
    """Which browser pages may use the WebSocket and long-poll endpoints.

    ``allowed`` is a comma-separated list of origins (``https://shop.example``)
    or ``*``. Empty means the protocol's default: any origin when clients need
    a token, loopback pages only when they do not (``auth = none``), where any
    page in the browser could otherwise act as any user. A request without an
    ``Origin`` (not a browser page) and a page served by the broker itself are
    always allowed. ``Origin: null`` (a sandboxed frame, a ``file:`` page) is
    an origin like any other: allowed only when any origin is.
    """

    def __init__(self, allowed: str, auth_mode: str) -> None:
        items = [o.strip().lower().rstrip("/") for o in allowed.replace(" ", ",").split(",")]
        self.origins = frozenset(o for o in items if o and o != "*")
        self.any = "*" in items or (not self.origins and auth_mode == "token")
        self.loopback_only = not self.origins and not self.any

    def allows(self, origin: str | None, host: str | None = None) -> bool:
        if origin is None or self.any:
            return True
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if host is not None and parts.netloc and parts.netloc == host.strip().lower():
            return True  # a page of this very site
        if self.loopback_only:
            return parts.scheme in ("http", "https") and parts.hostname in _LOOPBACK_HOSTS
        return False


class TrustedProxies:
    """The front proxies whose ``X-Forwarded-For`` names the client (``trusted_proxies``).

    ``spec`` is a comma-separated list of addresses and networks
    (``10.0.0.0/8, 127.0.0.1``). Only a connection from one of them is
    believed, and only as far back as the chain runs through them: the
    client is the rightmost address of ``X-Forwarded-For`` that is not a
    trusted proxy itself, so a client cannot pass itself off as another by
    sending the header. Empty: nobody is believed.
    """

    def __init__(self, spec: str = "") -> None:
        self.networks = [
            ipaddress.ip_network(item.strip(), strict=False)
            for item in spec.replace(" ", ",").split(",")
            if item.strip()
        ]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.strip().strip("[]"))
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client(self, peer: str, forwarded: str | None) -> str | None:
        """The client's address, when ``peer`` is a trusted proxy that names one; else None."""
        if not forwarded or not self.networks or not self.trusts(peer):
            return None
        hops = [h.strip() for h in forwarded.split(",")]
        for hop in reversed(hops):
            if not self.trusts(hop):
                try:
                    return str(ipaddress.ip_address(hop.strip("[]")))
                except ValueError:
                    return None  # not an address: the proxy's own peer is all we know
        return hops[0] if hops[0] else None

    def via(self, host: str, peer: str, forwarded: str | None) -> str | None:
        """``"CLIENT via PEER"`` for the log, when ``host`` (the address of
        ``peer``) is a trusted proxy that names the client; else None."""
        client = self.client(host, forwarded)
        return None if client is None else f"{client} via {peer}"


def origin_of(request: Any) -> tuple[str | None, str | None]:
    """The Origin and Host headers of a twisted.web request, as text."""
    origin = request.getHeader(b"origin")
    host = request.getHeader(b"host")
    return (
        origin.decode("latin-1") if origin is not None else None,
        host.decode("latin-1") if host is not None else None,
    )


# -- JSON answers ----------------------------------------------------------------


def json_body(obj: Any) -> bytes:
    return encode_json(obj).encode()


def error_frames(code: int, reason: str) -> bytes:
    """The body of a long-poll refusal: the error frame in ``frames``."""
    return json_body({"frames": [{"t": "error", "code": code, "reason": reason}]})


def raw_response(code: int, reason: bytes, body: bytes) -> bytes:
    """A whole JSON HTTP/1.1 response that closes the connection, for the
    guards that answer before twisted.web has a request to answer with."""
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (code, reason, len(body), body)
    )


def json_answer(request: Any, code: int, body: bytes) -> bytes:
    """Set a JSON answer's status and headers; returns ``body`` for ``render``."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"cache-control", b"no-store")
    return body


def finish(request: Any, code: int, body: bytes) -> None:
    """Answer a held (``NOT_DONE_YET``) request, unless its client is gone."""
    if request.finished or request._disconnected:
        return
    json_answer(request, code, body)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()
