"""The HTTP port: one twisted.web site for WebSocket, long-poll, the API and static files.

twisted.web resets a connection's idle timeout on every byte, so a client that
sends its request one byte at a time (slowloris) would hold the connection
forever. :class:`GuardedChannel` gives every request an absolute deadline to
arrive whole, and :class:`GuardedRequest` refuses a body over the limit with
413 from its Content-Length (or as soon as a chunked body passes it), before
reading it, and never spools a body to a temporary file on the reactor thread.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import Data

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def _response(code: int, reason: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (code, reason, len(body), body)
    )


class GuardedChannel(HTTPChannel):
    """An HTTPChannel whose requests must arrive whole within ``site.request_deadline``.

    The deadline runs from the moment the channel is ready for a request (the
    connection is made, or the previous response is done) until the request's
    last body byte; it is off while the broker answers (a held poll) and for
    good once a WebSocket takes the connection over.
    """

    log = Logger()
    _deadline: IDelayedCall | None = None
    _abort: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.callLater(self.site.request_deadline, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        persistent = self.persistent
        if persistent and self.transport is not None:
            self._arm()  # before the buffered next request is parsed, which may disarm it
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._disarm()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is None:  # taken over by a WebSocket
            return
        self.site.slow_requests += 1
        self.log.info("request not received within {s}s: closing", s=self.site.request_deadline)
        self.transport.write(_response(408, b"Request Timeout", b'{"error":"request too slow"}'))
        self.transport.loseConnection()
        self._abort = self.callLater(5, self.transport.abortConnection)


class GuardedRequest(Request):
    """A Request that refuses bodies over ``site.max_body`` with 413 before reading them."""

    _refused = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.channel.site.max_body:
            self._refuse()
            return
        # bodies are bounded by max_body: keep them in memory, never in a temp file
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body:
            self._refuse()
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        self.content = BytesIO()
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" for it
        self.channel.site.refused_bodies += 1
        transport = self.channel.transport
        transport.write(_response(413, b"Payload Too Large", b'{"error":"request body too large"}'))
        transport.loseConnection()


class WebSite(Site):
    """The site of the HTTP port, with the slowloris guards and a small idle timeout."""

    protocol = GuardedChannel
    requestFactory = GuardedRequest
    noisy = False
    displayTracebacks = False

    def __init__(
        self,
        root: Resource,
        reactor: IReactorTime,
        *,
        request_deadline: float = 30.0,
        max_body: int = 1 << 20,
        idle_timeout: float = 60.0,
    ) -> None:
        super().__init__(root, reactor=reactor, timeout=idle_timeout)
        self.request_deadline = request_deadline
        self.max_body = max_body
        self.slow_requests = 0  # closed by the request deadline
        self.refused_bodies = 0  # refused with 413
        self.longpoll: Any = None
        self.requests = 0  # answered, for the metrics

    def log(self, request: Any) -> None:
        """No access log: a line per poll would cost more than the poll (metrics count them)."""
        self.requests += 1

    def stopFactory(self) -> None:
        # the port is closed: long-poll sessions have no way left to be polled
        if self.longpoll is not None:
            self.longpoll.stop()
        super().stopFactory()


class OriginPolicy:
    """Which browser pages may use the WebSocket and long-poll endpoints (PROTOCOL.md 6).

    ``allowed`` is a comma-separated list of origins (``https://shop.example``)
    or ``*``. Empty means the protocol's default: any origin when clients need
    a token, loopback pages only when they do not (``auth = none``), where any
    page in the browser could otherwise act as any user. A request without an
    ``Origin`` (not a browser page) and a page served by the broker itself are
    always allowed.
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


def origin_of(request: Any) -> tuple[str | None, str | None]:
    """The Origin and Host headers of a twisted.web request, as text."""
    origin = request.getHeader(b"origin")
    host = request.getHeader(b"host")
    return (
        origin.decode("latin-1") if origin is not None else None,
        host.decode("latin-1") if host is not None else None,
    )


_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class _Static(Data):
    """A small packaged file, read once when the site is built: no disk I/O per request."""

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return super().render_GET(request)


def static_file(name: str) -> Resource:
    """One file of the packaged static directory (there is no directory listing)."""
    path = STATIC / name
    return _Static(path.read_bytes(), _TYPES[path.suffix])


def build_site(node: Any, reactor: IReactorTime) -> WebSite:
    """The whole HTTP port of a node: ``/``, ``/ws``, ``/lp/*``, the API and static files."""
    from o2obroker.transports.api import add_api
    from o2obroker.transports.longpoll import LongPollResource
    from o2obroker.transports.websocket import websocket_resource

    config = node.config
    origins = OriginPolicy(config.allowed_origins, config.auth_mode)
    root = Resource()
    root.putChild(b"", static_file("index.html"))
    for name in ("o2obroker.js", "demo.js", "demo.css", "favicon.svg"):
        root.putChild(name.encode(), static_file(name))
    ws = websocket_resource(node.gateway, config, origins, reactor)
    root.putChild(b"ws", ws)
    lp = LongPollResource(node.gateway, origins, reactor, timeout=config.lp_timeout)
    root.putChild(b"lp", lp)
    add_api(root, node, reactor, origins)
    site = WebSite(
        root,
        reactor,
        request_deadline=config.request_deadline,
        max_body=config.limits.max_frame,
    )
    site.longpoll = lp
    site.websockets = ws.factory
    return site
