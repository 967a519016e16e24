"""Hooks to the application: a POST of JSON per call, guarded and bounded.

Every hook (doc/protocol.md section 8) goes through a :class:`HookClient`: a
timeout per call, at most ``concurrency`` calls at once (and a bounded number
waiting), and a circuit breaker that stops calling an application that is down.
The publish hook is a pipeline stage (one call per actor batch); the connect
hook answers a hello; offline and presence events go through an
:class:`EventQueue` (events.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from o2obroker.httpbody import BytesBody
from o2obroker.policy.breaker import CircuitBreaker
from o2obroker.policy.pipeline import REJECTED, UNAVAILABLE, Candidate, IMessageFilter, Rejected
from o2obroker.wire import ProtocolError, decode_json, encode_json, valid_room, valid_user
from o2obroker.wire.limits import Limits

ALLOW, REFUSE = "allow", "refuse"
#: the largest answer read from the application: generous, but not unbounded
MAX_ANSWER = 4 << 20
_ANSWER_LIMITS = Limits(max_frame=MAX_ANSWER, max_body=MAX_ANSWER)


class HookError(Exception):
    """A hook call failed: refused by the breaker, timed out, or a bad answer."""


class _Reader(Protocol):
    """Collects a response body up to ``limit`` bytes; past it, drops the connection."""

    def __init__(self, limit: int, done: Deferred[bytes], size: int = 0) -> None:
        self.limit = limit
        self.done = done
        self.parts: list[bytes] = []
        self.size = size  # a known length past the limit: stop at the first bytes

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(HookError(f"answer larger than {self.limit} bytes"))
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def read_limited(response: Any, limit: int = MAX_ANSWER) -> Deferred[bytes]:
    """The body of ``response``, failing with HookError past ``limit`` bytes."""
    done: Deferred[bytes] = Deferred()
    known = response.length if response.length is not UNKNOWN_LENGTH else 0
    response.deliverBody(_Reader(limit, done, known if known > limit else 0))
    return done


class HookClient:
    """POSTs JSON to one URL through an injected ``agent`` (an IAgent).

    ``call(kind, payload)`` sends ``{"hook": kind, **payload}`` and fires with
    the answer's JSON object; it fails with HookError at once while the
    breaker is open or ``max_waiting`` calls already wait for a slot.
    ``counts`` feeds the metrics: calls by outcome.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        url: str,
        agent: Any,
        clock: IReactorTime,
        *,
        timeout: float = 5.0,
        concurrency: int = 16,
        max_waiting: int = 1000,
        breaker: CircuitBreaker | None = None,
        secret: str | None = None,
    ) -> None:
        self.name = name
        self.url = url.encode("ascii")
        self.agent = agent
        self.clock = clock
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.breaker = breaker or CircuitBreaker(clock)
        self._slots = DeferredSemaphore(concurrency)
        headers = {b"content-type": [b"application/json"], b"user-agent": [b"o2obroker"]}
        if secret:
            headers[b"authorization"] = [b"Bearer " + secret.encode()]
        self._headers = headers
        self.counts: Counter[str] = Counter()

    def call(self, kind: str, payload: dict[str, Any]) -> Deferred[dict[str, Any]]:
        if not self.breaker.allow():
            self.counts["refused"] += 1
            return fail(HookError(f"hook {self.name}: circuit open"))
        if len(self._slots.waiting) >= self.max_waiting:
            self.counts["refused"] += 1
            self.breaker.probing = False
            return fail(HookError(f"hook {self.name}: too many calls waiting"))
        body = encode_json({"hook": kind, **payload}).encode("utf-8")
        d = self._slots.run(self._post, body)
        d.addTimeout(self.timeout, self.clock)
        d.addCallbacks(self._ok, self._failed, errbackArgs=(kind,))
        return d

    def _post(self, body: bytes) -> Deferred[dict[str, Any]]:
        d = self.agent.request(b"POST", self.url, Headers(self._headers), BytesBody(body))

        def answered(response: Any) -> Deferred[dict[str, Any]]:
            return read_limited(response).addCallback(self._decode, response.code)

        return d.addCallback(answered)

    def _decode(self, data: bytes, code: int) -> dict[str, Any]:
        if not 200 <= code < 300:
            raise HookError(f"hook {self.name}: the application answered {code}")
        if not data.strip():
            return {}
        try:
            value = decode_json(data, _ANSWER_LIMITS)
        except ProtocolError as e:
            raise HookError(f"hook {self.name}: answer is not JSON: {e.reason}") from None
        if type(value) is not dict:
            raise HookError(f"hook {self.name}: answer is not a JSON object")
        return value

    def _ok(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.counts["ok"] += 1
        self.breaker.success()
        return answer

    def _failed(self, failure: Failure, kind: str) -> Failure:
        self.counts["failed"] += 1
        self.breaker.failure()
        self.log.warn(
            "{kind} hook {name} failed: {why}",
            kind=kind,
            name=self.name,
            why=failure.getErrorMessage() or failure.type.__name__,
        )
        return failure


@implementer(IMessageFilter)
class PublishHook:
    """The application's check of every message, one call per actor batch.

    Sends ``{"hook": "publish", "messages": [{id, from, device, to|room, body}]}``
    and expects ``{"verdicts": [{"action": "accept" | "reject" | "rewrite",
    "body": ..., "reason": ...}]}``, one per message in order. When the
    application cannot answer (timeout, error, breaker open, bad answer, a
    rewritten body over ``max_body``),
    ``on_failure`` says what happens: ``allow`` passes the batch, ``refuse``
    answers each send with 403 and leaves its id open for a retry.
    """

    name = "publish-hook"
    log = Logger()

    def __init__(
        self, client: HookClient, on_failure: str = ALLOW, limits: Limits | None = None
    ) -> None:
        self.client = client
        self.on_failure = on_failure
        self.max_body = (limits or Limits()).max_body

    def check(self, messages: list[Candidate]) -> Deferred[list[Any]]:
        items = []
        for m in messages:
            item: dict[str, Any] = {"id": m.id, "from": m.sender, "device": m.device}
            if m.room is None:
                item["to"] = m.to
            else:
                item["room"] = m.room
            item["body"] = m.body
            items.append(item)
        d = self.client.call("publish", {"messages": items})
        return d.addCallback(self._verdicts, messages).addErrback(self._down, messages)

    def _verdicts(self, answer: dict[str, Any], messages: list[Candidate]) -> list[Any]:
        verdicts = answer.get("verdicts")
        if type(verdicts) is not list or len(verdicts) != len(messages):
            raise HookError("publish hook: verdicts must be a list, one per message")
        out: list[Any] = []
        for m, v in zip(messages, verdicts, strict=True):
            action = v.get("action", "accept") if type(v) is dict else v
            if action == "accept":
                out.append(m.body)
            elif action == "reject":
                reason = v.get("reason") if type(v) is dict else None
                out.append(
                    Rejected(f"rejected by policy: {reason}"[:256])
                    if type(reason) is str and reason
                    else REJECTED
                )
            elif action == "rewrite" and type(v) is dict and "body" in v:
                body = v["body"]
                # a rewrite obeys the limit a client's body does
                if len(encode_json(body).encode("utf-8")) > self.max_body:
                    raise HookError(f"publish hook: rewritten body over {self.max_body} bytes")
                out.append(body)
            else:
                raise HookError(f"publish hook: unknown verdict {v!r:.80}")
        return out

    def _down(self, failure: Failure, messages: list[Candidate]) -> list[Any]:
        if self.on_failure == ALLOW:
            return [m.body for m in messages]
        return [UNAVAILABLE] * len(messages)


class ConnectAnswer:
    """What the connect hook said of a hello: let it in (maybe as another user,
    with its rooms limited) or refuse it with ``code`` and ``reason``."""

    __slots__ = ("code", "reason", "rooms", "user")

    def __init__(
        self,
        code: int = 0,
        reason: str = "",
        user: str | None = None,
        rooms: frozenset[str] | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.user = user
        self.rooms = rooms

    @property
    def allowed(self) -> bool:
        return self.code == 0


class ConnectHook:
    """Asks the application about each hello.

    Sends ``{"hook": "connect", "user", "device", "transport"}``; the answer
    ``{"allow": true, "user": "...", "rooms": [...]}`` lets the device in, as
    ``user`` when given, limited to ``rooms`` when given; ``{"allow": false,
    "code": 401|403, "reason": "..."}`` refuses it with the application's
    reason. Down: ``allow`` lets everyone in; ``refuse`` answers 503.
    """

    def __init__(self, client: HookClient, on_failure: str = ALLOW, limits: Limits | None = None):
        self.client = client
        self.on_failure = on_failure
        self.limits = limits or Limits()

    def check(self, user: str, device: str, transport: str) -> Deferred[ConnectAnswer]:
        d = self.client.call("connect", {"user": user, "device": device, "transport": transport})
        return d.addCallback(self._answer).addErrback(self._down)

    def _answer(self, answer: dict[str, Any]) -> ConnectAnswer:
        if answer.get("allow") is False:
            code = answer.get("code")
            reason = answer.get("reason")
            return ConnectAnswer(
                code if code in (401, 403) else 403,
                reason[:256] if type(reason) is str and reason else "refused by the application",
            )
        if answer.get("allow") is not True:
            raise HookError("connect hook: allow must be true or false")
        user = answer.get("user")
        if user is not None and not valid_user(user, self.limits):
            raise HookError("connect hook: user is not a valid user id")
        rooms = answer.get("rooms")
        if rooms is not None:
            if type(rooms) is not list or not all(valid_room(r, self.limits) for r in rooms):
                raise HookError("connect hook: rooms must be a list of room names")
            rooms = frozenset(rooms)
        return ConnectAnswer(user=user, rooms=rooms)

    def _down(self, failure: Failure) -> ConnectAnswer:
        if self.on_failure == ALLOW:
            return ConnectAnswer()
        return ConnectAnswer(503, "application unavailable")
