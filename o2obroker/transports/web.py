"""The HTTP port's site: one twisted.web site for WebSocket, long-poll, the API and static files.

(The site is put together from the transports in ``o2obroker.service.site``.)

twisted.web resets a connection's idle timeout on every byte, so a client that
sends its request one byte at a time (slowloris) would hold the connection
forever. :class:`GuardedChannel` gives every request an absolute deadline to
arrive whole, and :class:`GuardedRequest` refuses a body over the limit with
413 from its Content-Length (or as soon as a chunked body passes it), before
reading it, and never spools a body to a temporary file on the reactor thread.
Every answer of the port is JSON, twisted.web's own 404, 405 and 500 pages too.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.error import UnsupportedMethod
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import Data

from o2obroker.transports.common import json_answer, json_body, raw_response

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"

# one body for both kinds of client of the port: the API reads "error", long-poll "frames"
_TOO_LARGE = json_body(
    {
        "error": "request body too large",
        "frames": [{"t": "error", "code": 413, "reason": "request body too large"}],
    }
)

# a resource failed: the body says so, the log says why
_FAILED = json_body({"error": "internal error"})


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
        self.transport.write(raw_response(408, b"Request Timeout", b'{"error":"request too slow"}'))
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

    def render(self, resrc: Any) -> None:
        super().render(_JsonErrors(resrc))

    def processingFailed(self, reason: Any) -> Any:
        """A resource raised: log it and answer 500 as JSON, not twisted.web's HTML page."""
        self._log.failure("request {method} {uri} failed", reason, method=self.method, uri=self.uri)
        if self.startedWriting:  # part of an answer went out: it cannot be replaced
            self.channel.transport.loseConnection()
            return reason
        self.responseHeaders.removeHeader(b"content-length")
        body = json_answer(self, 500, _FAILED)
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()
        return reason

    def _refuse(self) -> None:
        self._refused = True
        self.content = BytesIO()
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" for it
        self.channel.site.refused_bodies += 1
        transport = self.channel.transport
        transport.write(raw_response(413, b"Payload Too Large", _TOO_LARGE))
        transport.loseConnection()


class _JsonErrors:
    """Wraps the resource a request found, so that twisted.web's HTML error pages
    (no such resource, method not allowed) are answered as JSON instead."""

    __slots__ = ("resource",)

    def __init__(self, resource: Any) -> None:
        self.resource = resource

    def render(self, request: Any) -> Any:
        try:
            body = self.resource.render(request)
        except UnsupportedMethod as e:
            allowed = e.allowedMethods
            if request.method == b"HEAD" and b"GET" in allowed:
                raise  # twisted.web answers HEAD with GET's headers
            method = request.method.decode("latin-1")
            request.setHeader(b"allow", b", ".join(allowed))
            return json_answer(request, 405, json_body({"error": f"method {method} not allowed"}))
        if request.code >= 400 and request.responseHeaders.getRawHeaders(b"content-type") == [
            b"text/html; charset=utf-8"
        ]:
            # one of twisted.web's own error pages (no such resource, ...)
            reason = request.code_message.decode("latin-1").lower()
            return json_answer(request, request.code, json_body({"error": reason}))
        return body


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
