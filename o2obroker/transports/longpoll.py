"""HTTP long-poll on ``/lp/...`` (doc/protocol.md section 6), for browsers without WebSockets.

A long-poll session is an IConnection like a socket, for the same
:class:`~o2obroker.session.Session`: what the session writes goes into an
outbound stream of numbered frames, encoded to JSON once; a poll takes every
frame after the position it confirms, so a response lost in transit is sent
again by the next poll. A poll with nothing to take is held (``NOT_DONE_YET``)
until frames arrive or ``timeout`` passes, and released on ``notifyFinish()``
when its client goes away. Held polls with new frames are answered together
once per reactor turn, each with every frame that is ready for it.

Session ids are 192 random bits made at the open of an authenticated session,
then the id of the node that holds it: a sid names exactly one session of one
user and device, is never reused, and dies with the session. A request for a
sid another node holds is forwarded to that node while the registry lists it
(:class:`Forwarder`), so a load balancer needs no sticky sessions.
"""

from __future__ import annotations

import secrets
from base64 import b64decode, urlsafe_b64encode
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from o2obroker.metrics import traffic_of
from o2obroker.session import Gateway, IConnection, Liveness, Session
from o2obroker.transports.common import (
    Flusher,
    OriginPolicy,
    TrustedProxies,
    error_frames,
    finish,
    json_answer,
    json_body,
    origin_of,
)
from o2obroker.wire import (
    FrameTooLarge,
    OutFrame,
    ProtocolError,
    decode_json,
    encode_json,
    json_array,
)


def _frames(frames: list[dict[str, Any]]) -> bytes:
    return json_body({"frames": frames})


#: set on a forwarded request: its receiver answers it itself, never forwards it again
FORWARDED = b"x-o2o-forwarded"
#: idle connections to one peer kept open for the next forward
POOL_PER_PEER = 8
#: seconds an idle pooled connection is kept: well under the peers' own
#: ``request_deadline`` (30 s by default), after which they close an idle one
POOL_IDLE = 10.0


def make_sid(node: str) -> str:
    """A new sid: 192 random bits, a dot, and the owner node's id (base64url)."""
    owner = urlsafe_b64encode(node.encode()).rstrip(b"=").decode()
    return f"{secrets.token_urlsafe(24)}.{owner}"


def owner_of(sid: str) -> str | None:
    """The id of the node that made ``sid``, or None if it names none."""
    _, dot, tail = sid.rpartition(".")
    if not dot or not tail:
        return None
    try:
        return b64decode(tail + "=" * (-len(tail) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


class Forwarder:
    """Hands a long-poll request for another node's session to that node.

    The owner's base URL comes only from ``address_of`` (the node registry), the
    path is the ``/lp/`` child that took the request and the query is rebuilt
    from the parsed arguments: a client picks at most which live node, never
    which URL. The answer is the owner's, code and body; an owner that does
    not answer within ``timeout`` gets the client a 404 ``unknown session``,
    on which it opens a new session with ``resume`` and loses nothing.

    Requests go over one pool of persistent connections for the node: a
    forward reuses an idle connection to its owner when there is one, and at
    most ``per_peer`` idle ones are kept per peer, each for ``idle`` seconds
    (each held poll takes a connection of its own while it is held).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,  # IReactorTCP and IReactorTime
        address_of: Callable[[str], str | None],
        *,
        timeout: float,
        connect_timeout: float = 5.0,
        counts: Counter[str] | None = None,
        per_peer: int = POOL_PER_PEER,
        idle: float = POOL_IDLE,
    ) -> None:
        self.clock = reactor
        self.address_of = address_of
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = per_peer
        self.pool.cachedConnectionTimeout = idle
        self.http = HTTPClient(Agent(reactor, connectTimeout=connect_timeout, pool=self.pool))
        #: requests handed to their owner node, by outcome: answered, failed
        self.counts: Counter[str] = Counter() if counts is None else counts

    def forward(self, request: Any, child: bytes, owner: str) -> bool:
        """Forward ``request`` to ``owner`` if the registry lists it; False if not."""
        base = self.address_of(owner)
        if not base or not base.startswith(("http://", "https://")):
            return False
        query = urlencode([(k, v) for k, vs in request.args.items() for v in vs])
        url = f"{base.rstrip('/')}/lp/{child.decode()}?{query}"
        # no Origin: this node checked it, against its own Host (a page of this
        # site); the owner would see its own Host instead and refuse that page
        headers = {FORWARDED: [b"1"], b"content-type": [b"application/json"]}
        body = request.content.read() if request.method == b"POST" else None
        d: Deferred[Any] = self.http.request(
            request.method.decode("ascii"), url, headers=headers, data=body
        )
        d.addCallback(lambda r: r.content().addCallback(lambda b: (r.code, b)))
        d.addTimeout(self.timeout, self.clock)
        d.addCallbacks(
            lambda answer: self._answered(request, *answer),
            lambda f: self._failed(f, request, owner),
        )
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return True

    def stop(self) -> Deferred[None]:
        """Close the idle connections (forwards under way end by themselves)."""
        return self.pool.closeCachedConnections()

    def _answered(self, request: Any, code: int, body: bytes) -> None:
        self.counts["answered"] += 1
        finish(request, code, body)

    def _failed(self, f: Any, request: Any, owner: str) -> None:
        self.counts["failed"] += 1
        if not (request.finished or request._disconnected):
            self.log.info(
                "long-poll owner {owner} did not answer: {why}",
                owner=owner,
                why=f.getErrorMessage(),
            )
        finish(request, 404, error_frames(404, "unknown session"))


class _SendAnswer:
    """The response of one ``/lp/send``: the receipts and errors for its frames."""

    __slots__ = ("done", "frames", "request", "timer", "waiting")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.frames: list[str] = []
        self.waiting = 0
        self.timer: IDelayedCall | None = None
        self.done = False


@implementer(IConnection)
class LongPollConnection:
    """One long-poll session: the session's IConnection, and its outbound stream."""

    kind = "web"
    transport_name = "lp"
    url_app: str | None = None  # the app named in the URL (section 3)
    log = Logger()

    def __init__(self, resource: LongPollResource, sid: str) -> None:
        self.sid = sid
        self._res = resource
        self.session: Session | None = None
        # the outbound stream: (number, JSON text), oldest first, until a poll confirms it
        self._frames: deque[tuple[int, str]] = deque()
        self._last = 0  # number of the last frame queued
        self._carried = 0  # number of the last frame a response carried
        self._size = 0  # characters held in _frames, against max_queue
        self._poll: Any = None  # the held poll request
        self._poll_pos = 0
        self._poll_timer: IDelayedCall | None = None
        self._opening: Any = None  # the /lp/open request, until the welcome
        self._collect: list[dict[str, Any]] | None = None  # errors answering a request
        self._waiting: dict[str, list[_SendAnswer]] = {}  # send id -> answers waiting
        self._queued = False
        self._overflow = False
        self.closed = False
        self.last_seen = resource.clock.seconds()
        self._bucket: set[Any] | None = None

    def __repr__(self) -> str:
        return f"<LongPollConnection {self.sid[:6]}… {self.session!r}>"

    # -- IConnection ------------------------------------------------------------

    def send(self, frame: dict[str, Any] | OutFrame) -> None:
        if type(frame) is OutFrame:
            self._push(frame.json())
            return
        t = frame.get("t")
        if t == "receipt" or t == "error":
            key = frame.get("id") if t == "receipt" else frame.get("ref")
            answers = self._waiting.get(key) if key is not None else None
            if answers:
                answer = answers.pop(0)
                if not answers:
                    del self._waiting[key]
                text = encode_json(frame)
                answer.frames.append(text)
                traffic = self._res.traffic
                traffic.frames_out += 1
                traffic.bytes_out += len(text)
                answer.waiting -= 1
                if answer.waiting == 0:
                    self._res.finish_send(answer)
                return
            if t == "error" and self._collect is not None:
                self._collect.append(frame)
                return
        self._push(encode_json(frame))

    def send_many(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            self.send(frame)

    def send_msgs(self, items: list[tuple[int, Any]]) -> None:
        for seq, template in items:
            self._push(template.json(seq))

    def send_out(self, out: OutFrame) -> int:
        text = out.json()
        self._push(text)
        return len(text)

    def unsent(self) -> int:
        """Characters queued that no poll has confirmed (the whole stream is in memory)."""
        return self._size

    def when_drained(self) -> None:
        """Always None: a poll takes all that is queued, so nothing waits for the client."""
        return None

    def close(self, last: dict[str, Any] | None = None) -> None:
        """The session is over: the next poll gets what is left (``last`` at the
        end), then the sid is gone."""
        if self.closed:
            return
        if last is not None:
            self.send(last)
        self.closed = True
        self._answer_sends()
        self._wake()

    def _answer_sends(self) -> None:
        """No receipt can come through an ended session: sends still waiting for
        theirs are answered now with what they have (the client sends them again,
        with the same ids, on its next session)."""
        waiting, self._waiting = self._waiting, {}
        for answers in waiting.values():
            for answer in answers:
                self._res.finish_send(answer)

    def _push(self, text: str) -> None:
        if self.closed:
            return
        self._last += 1
        self._frames.append((self._last, text))
        self._size += len(text)
        traffic = self._res.traffic
        traffic.frames_out += 1
        traffic.bytes_out += len(text)  # characters: bytes for all but non-ASCII text
        if self._size > self._res.gateway.limits.max_queue and not self._overflow and self._slow():
            # a client that stopped polling; its messages stay in the inbox for its resume
            self._overflow = True
            self.log.info("{conn!r}: slow consumer, closing", conn=self)
            self.session.fail(ProtocolError(503, "slow consumer", fatal=True))
            return
        self._wake()

    def _slow(self) -> bool:
        """Past max_queue: is this client not taking its frames?

        A client that polls is draining the stream, however large a backlog it
        resumes with; one that has not polled for ``timeout`` seconds is not,
        and neither is one that lets four times max_queue pile up.
        """
        if self._size > 4 * self._res.gateway.limits.max_queue:
            return True
        return (
            self._poll is None and self._res.clock.seconds() - self.last_seen >= self._res.timeout
        )

    def _wake(self) -> None:
        if (self._poll is not None or self._opening is not None) and not self._queued:
            self._queued = True
            self._res.flusher.add(self)

    # -- the stream ------------------------------------------------------------

    def confirm(self, pos: int) -> None:
        """Everything up to ``pos`` arrived: forget it."""
        frames = self._frames
        while frames and frames[0][0] <= pos:
            self._size -= len(frames.popleft()[1])

    def take(self) -> tuple[int, str]:
        """The position and JSON array of every frame not confirmed yet."""
        frames = self._frames
        if not frames:
            return self._last, "[]"
        last = frames[-1][0]
        self._carried = max(self._carried, last)
        return last, json_array([text for _, text in frames])

    def flush(self) -> None:
        """Answer the open or held poll with every frame that is ready (once per turn)."""
        self._queued = False
        if self._opening is not None:
            request, self._opening = self._opening, None
            pos, frames = self.take()
            self._res.respond(
                request,
                200,
                f'{{"sid":"{self.sid}","timeout":{self._res.timeout},"pos":{pos},'
                f'"frames":{frames}}}'.encode(),
            )
            if self.closed:
                self._res.forget(self)
            return
        if self._poll is not None and (self._frames or self.closed):
            self.answer_poll()

    def answer_poll(self) -> None:
        request = self._end_poll()
        if request is None:
            return
        pos, frames = self.take()
        self._res.respond(request, 200, f'{{"pos":{pos},"frames":{frames}}}'.encode())
        if self.closed:
            self._res.forget(self)

    def _end_poll(self) -> Any:
        request, self._poll = self._poll, None
        if self._poll_timer is not None:
            if self._poll_timer.active():
                self._poll_timer.cancel()
            self._poll_timer = None
        self.last_seen = self._res.clock.seconds()
        return request

    def poll(self, request: Any, pos: int | None) -> None:
        """A poll confirming ``pos`` (None: all that was carried): answer or hold it."""
        if self._poll is not None:
            # a newer poll ends the held one, empty
            old, old_pos = self._end_poll(), self._poll_pos
            self._res.respond(old, 200, f'{{"pos":{old_pos},"frames":[]}}'.encode())
        pos = self._carried if pos is None else min(pos, self._last)
        self.confirm(pos)
        self.last_seen = self._res.clock.seconds()
        if self._frames or self.closed:
            self._poll = request
            self.answer_poll()
            return
        self._poll = request
        self._poll_pos = pos
        self._poll_timer = self._res.clock.callLater(self._res.timeout, self._poll_timeout, request)
        request.notifyFinish().addBoth(self._poll_gone, request)

    def _poll_timeout(self, request: Any) -> None:
        self._poll_timer = None
        if self._poll is request:
            self.answer_poll()

    def _poll_gone(self, _: Any, request: Any) -> None:
        if self._poll is request:  # the client went away while its poll was held
            self._end_poll()

    # -- expiry (called by the resource's Liveness every few seconds) ------------

    def check(self, now: float) -> None:
        if self._poll is None and now - self.last_seen >= 2 * self._res.timeout:
            self.log.info("{conn!r}: no poll for {s}s, expired", conn=self, s=2 * self._res.timeout)
            self.expire()

    def expire(self) -> None:
        """End the session now; the device goes offline."""
        self.closed = True
        self._answer_sends()
        if self.session is not None:
            self.session.lost()
        self._res.forget(self)


class LongPollResource(Resource):
    """``/lp``: the children ``open``, ``poll``, ``send`` and ``close``."""

    log = Logger()

    def __init__(
        self,
        gateway: Gateway,
        origins: OriginPolicy,
        clock: IReactorTime,
        *,
        timeout: int = 25,
        node: str = "",
        forwarder: Forwarder | None = None,
        trusted: TrustedProxies | None = None,
    ) -> None:
        super().__init__()
        self.gateway = gateway
        #: the front proxies whose X-Forwarded-For names the client in the log
        self.trusted = trusted or TrustedProxies()
        self.node = node  # this node's id, in every sid it makes
        self.forwarder = forwarder
        self.traffic = traffic_of(gateway.stats, "lp")
        self.origins = origins
        self.clock = clock
        self.timeout = timeout
        self.flusher = Flusher(clock)
        self.sessions: dict[str, LongPollConnection] = {}
        # expiry is checked in buckets, a slice of the sessions each second
        self._expiry = Liveness(clock, max(1, timeout // 5))
        self.putChild(b"open", _Open(self))
        self.putChild(b"poll", _Poll(self))
        self.putChild(b"send", _Send(self))
        self.putChild(b"close", _Close(self))

    def stop(self) -> Deferred[None] | None:
        """The site stops: answer held polls and end every session; fires once
        the forwarder's idle connections are closed."""
        for conn in list(self.sessions.values()):
            conn.closed = True
            if conn._poll is not None:
                conn.answer_poll()
            conn.expire()
        self._expiry.stop()
        return self.forwarder.stop() if self.forwarder is not None else None

    # -- sessions ------------------------------------------------------------

    def forget(self, conn: LongPollConnection) -> None:
        if self.sessions.get(conn.sid) is conn:
            del self.sessions[conn.sid]
        if conn._bucket is not None:
            conn._bucket.discard(conn)
            conn._bucket = None
        if not self.sessions:
            self._expiry.stop()

    def _register(self, conn: LongPollConnection) -> None:
        self.sessions[conn.sid] = conn
        conn._bucket = self._expiry.add(conn)
        if len(self.sessions) == 1:
            self._expiry.stop()
            self._expiry.start()

    def find(self, request: Any) -> LongPollConnection | None:
        sid = request.args.get(b"sid", [b""])[0].decode("latin-1")
        conn = self.sessions.get(sid)
        if conn is None or (conn.closed and not conn._frames):
            return None
        return conn

    # -- HTTP ------------------------------------------------------------------

    def respond(self, request: Any, code: int, body: bytes) -> None:
        finish(request, code, body)

    def finish_send(self, answer: _SendAnswer) -> None:
        if answer.done:
            return
        answer.done = True
        if answer.timer is not None and answer.timer.active():
            answer.timer.cancel()
        self.respond(answer.request, 200, f'{{"frames":{json_array(answer.frames)}}}'.encode())

    def guard(self, request: Any) -> bytes | None:
        """CORS and the origin check; the body of a refusal, or None to go on."""
        origin, host = origin_of(request)
        if not self.origins.allows(origin, host):
            return json_answer(request, 403, error_frames(403, "origin not allowed"))
        if origin is not None:
            request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
            request.setHeader(b"vary", b"Origin")
        return None

    def preflight(self, request: Any) -> bytes:
        refused = self.guard(request)
        if refused is not None:
            return refused
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"content-type")
        request.setHeader(b"access-control-max-age", b"600")
        return b""

    def frames_of(self, request: Any) -> list[dict[str, Any]] | bytes:
        """The body's frames, or the 400 body that refuses it."""
        body = request.content.read()
        self.traffic.bytes_in += len(body)
        try:
            value = decode_json(body, self.gateway.limits)
        except ProtocolError as e:
            return json_answer(
                request, 413 if isinstance(e, FrameTooLarge) else 400, _frames([e.frame()])
            )
        frames = [value] if type(value) is dict else value
        self.traffic.frames_in += len(frames)
        return frames


class _Child(Resource):
    isLeaf = True

    def __init__(self, lp: LongPollResource) -> None:
        super().__init__()
        self.lp = lp

    def render_OPTIONS(self, request: Any) -> bytes:
        return self.lp.preflight(request)

    child = b""  # the name under /lp/

    def _guarded_session(self, request: Any) -> LongPollConnection | bytes | int:
        """The request's session, the body that refuses the request (a refused
        origin, an unknown sid), or NOT_DONE_YET: forwarded to the owner node."""
        lp = self.lp
        refused = lp.guard(request)
        if refused is not None:
            return refused
        conn = lp.find(request)
        if conn is not None:
            return conn
        forwarder = lp.forwarder
        if forwarder is not None and request.getHeader(FORWARDED) is None:
            owner = owner_of(request.args.get(b"sid", [b""])[0].decode("latin-1"))
            if (
                owner is not None
                and owner != lp.node
                and forwarder.forward(request, self.child, owner)
            ):
                return NOT_DONE_YET
        return json_answer(request, 404, error_frames(404, "unknown session"))


def _nonneg(request: Any, name: bytes) -> int | None:
    raw = request.args.get(name)
    if not raw:
        return None
    text = raw[0]
    if not text.isdigit() or len(text) > 19:
        raise ValueError(name.decode())
    return int(text)


class _Open(_Child):
    def render_POST(self, request: Any) -> Any:
        lp = self.lp
        refused = lp.guard(request)
        if refused is not None:
            lp.gateway.stats.refused["origin"] += 1
            return refused
        frames = lp.frames_of(request)
        if type(frames) is bytes:
            return frames
        if len(frames) != 1:
            return json_answer(
                request, 400, error_frames(400, "the body of /lp/open is one hello frame")
            )
        conn = LongPollConnection(lp, make_sid(lp.node))
        address = request.getClientAddress()
        # for the log: the client, behind a trusted proxy the one it names
        conn.peer = f"{getattr(address, 'host', '-')}:{getattr(address, 'port', '-')}"
        if lp.trusted:
            forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
            conn.peer = (
                lp.trusted.via(
                    str(getattr(address, "host", "")),
                    conn.peer,
                    b",".join(forwarded).decode("latin-1") if forwarded else None,
                )
                or conn.peer
            )
        app = request.args.get(b"app")
        if app:
            conn.url_app = app[0].decode("utf-8", "replace")
        conn._collect = errors = []
        session = conn.session = lp.gateway.connect(conn)
        session.touch()
        session.receive(frames[0])
        conn._collect = None
        if conn.closed or errors:
            # the hello failed at once: the error frame says why
            session.lost()
            code = errors[0].get("code", 400) if errors else 400
            return json_answer(request, code if code in (401, 403, 503) else 400, _frames(errors))
        lp._register(conn)
        conn._opening = request
        return NOT_DONE_YET


class _Poll(_Child):
    child = b"poll"

    def render_GET(self, request: Any) -> Any:
        conn = self._guarded_session(request)
        if type(conn) is not LongPollConnection:
            return conn
        try:
            pos = _nonneg(request, b"pos")
            ack = _nonneg(request, b"ack")
        except ValueError as e:
            return json_answer(
                request, 400, error_frames(400, f"{e} must be a non-negative integer")
            )
        conn.session.touch()
        if ack is not None and not conn.closed:
            conn.session.receive({"t": "ack", "seq": ack})
        conn.poll(request, pos)
        return NOT_DONE_YET


class _Send(_Child):
    child = b"send"

    def render_POST(self, request: Any) -> Any:
        lp = self.lp
        conn = self._guarded_session(request)
        if type(conn) is not LongPollConnection:
            return conn
        frames = lp.frames_of(request)
        if type(frames) is bytes:
            return frames
        session = conn.session
        session.touch()
        conn.last_seen = lp.clock.seconds()
        answer = _SendAnswer(request)
        conn._collect = errors = []
        try:
            for frame in frames:
                before = len(errors)
                session.receive(frame)
                send_id = frame.get("id")
                if (
                    frame.get("t") == "send"
                    and type(send_id) is str
                    and len(errors) == before
                    and not conn.closed
                ):
                    answer.waiting += 1
                    conn._waiting.setdefault(send_id, []).append(answer)
                if conn.closed:
                    break
        finally:
            conn._collect = None
        answer.frames.extend(encode_json(f) for f in errors)
        if answer.waiting == 0:
            answer.done = True
            return json_answer(request, 200, f'{{"frames":{json_array(answer.frames)}}}'.encode())
        answer.timer = lp.clock.callLater(lp.timeout, self._late, conn, answer)
        request.notifyFinish().addErrback(lambda _: self._late(conn, answer))
        return NOT_DONE_YET

    def _late(self, conn: LongPollConnection, answer: _SendAnswer) -> None:
        """Receipts still missing go to the poll stream; answer with what is here."""
        for key, answers in list(conn._waiting.items()):
            if answer in answers:
                answers[:] = [a for a in answers if a is not answer]
                if not answers:
                    del conn._waiting[key]
        answer.timer = None
        self.lp.finish_send(answer)


class _Close(_Child):
    child = b"close"

    def render_POST(self, request: Any) -> Any:
        lp = self.lp
        conn = self._guarded_session(request)
        if type(conn) is not LongPollConnection:
            return conn
        conn.closed = True
        if conn._poll is not None:
            conn.answer_poll()
        conn.session.lost(linger=False)  # a clean close, like bye: offline at once
        lp.forget(conn)
        return json_answer(request, 200, b'{"frames":[{"t":"bye"}]}')
