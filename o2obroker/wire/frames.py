"""Typed frames a client sends, and the validation that builds them.

:func:`parse_frame` turns one decoded map into one frozen frame object, or
raises :class:`BadFrame` naming the frame's ``id`` when it has one. Keys a
frame does not know are ignored, so newer clients can talk to older brokers.
An optional field that is ``null`` counts as absent.

Checks here are about shape and size only; whether the peer may do what the
frame asks (auth, membership, ``v`` being a supported version) is for the
session to decide.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._common import frame_ref, utf8_fits
from .codec import encode_cbor, encode_json
from .errors import BadFrame
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "PRESENCE_STATES",
    "Ack",
    "Bye",
    "Frame",
    "Hello",
    "History",
    "Join",
    "Leave",
    "Ping",
    "Pong",
    "PresenceReport",
    "Probe",
    "Send",
    "Unwatch",
    "Watch",
    "parse_frame",
    "valid_device",
    "valid_room",
    "valid_user",
]

PRESENCE_STATES = frozenset({"online", "away", "busy", "offline"})


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of a session. ``resume_last`` is ``resume.last`` when given."""

    v: int = 1
    token: str | None = None
    user: str | None = None
    device: str | None = None
    resume_last: int | None = None
    batch: bool = False
    state: str = "online"
    status: str = ""
    app: str | None = None  #: the client's business id (doc/protocol.md section 3)


@dataclass(frozen=True, slots=True)
class Send:
    """A message to one user (``to``) or one room (``room``); exactly one is set."""

    id: str
    to: str | None
    room: str | None
    body: Any
    #: the body's encoded size, known without encoding it again: the size of the
    #: frame it came in when the transport measured one, else the body's as
    #: measured for the max_body check. What a stored message counts against the
    #: store's byte caps.
    size: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Ack:
    """Every inbox message up to ``seq`` is processed."""

    seq: int


@dataclass(frozen=True, slots=True)
class Join:
    """Join ``room``. ``id`` (optional) comes back as ``ref`` on an error that
    answers this frame, so a client can tell which of its joins was refused."""

    room: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave ``room``; ``id`` as for :class:`Join`."""

    room: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Bye:
    pass


@dataclass(frozen=True, slots=True)
class PresenceReport:
    """A device's own presence; ``status`` is None when the frame has none."""

    state: str
    status: str | None = None


@dataclass(frozen=True, slots=True)
class Watch:
    """Add ``users`` to the watch list. ``since`` (ms, the largest presence ``ts``
    the client has seen) asks only for the users that changed since then."""

    users: tuple[str, ...]
    since: int | None = None


@dataclass(frozen=True, slots=True)
class Unwatch:
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Probe:
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class History:
    """A page of the archive: the conversation ``with`` a user, or a ``room``."""

    id: str
    peer: str | None
    room: str | None
    before: str | None = None
    limit: int = 50


#: most messages one history page may ask for, and the page size without ``limit``
HISTORY_MAX = 100
HISTORY_DEFAULT = 50
#: longest ``before`` (a mid) accepted
MAX_MID = 256

Frame = (
    Hello
    | Send
    | Ack
    | Join
    | Leave
    | Ping
    | Pong
    | Bye
    | PresenceReport
    | Watch
    | Unwatch
    | Probe
    | History
)

_PING = Ping()
_PONG = Pong()
_BYE = Bye()


# The generated __init__ of a frozen dataclass calls object.__setattr__ once
# per field; setting the slots directly builds the same object in 60% of the
# time. Sends and acks are built for every message, so they get this path.
_new = object.__new__
_set_send_id = Send.id.__set__  # type: ignore[attr-defined]
_set_send_to = Send.to.__set__  # type: ignore[attr-defined]
_set_send_room = Send.room.__set__  # type: ignore[attr-defined]
_set_send_body = Send.body.__set__  # type: ignore[attr-defined]
_set_send_size = Send.size.__set__  # type: ignore[attr-defined]
_set_ack_seq = Ack.seq.__set__  # type: ignore[attr-defined]


def _new_send(id_: str, to: str | None, room: str | None, body: Any, size: int) -> Send:
    frame = _new(Send)
    _set_send_id(frame, id_)
    _set_send_to(frame, to)
    _set_send_room(frame, room)
    _set_send_body(frame, body)
    _set_send_size(frame, size)
    return frame


def _new_ack(seq: int) -> Ack:
    frame = _new(Ack)
    _set_ack_seq(frame, seq)
    return frame


# Cc control characters, and lone surrogates (they cannot be encoded as UTF-8).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _valid_name(s: Any, limit: int) -> bool:
    """Non-empty, within ``limit`` UTF-8 bytes, no control character."""
    if type(s) is not str or not s:
        return False
    if len(s) * 4 > limit and not utf8_fits(s, limit):
        return False
    if s.isascii():
        return s.isprintable()  # for ASCII: no control character
    return _CONTROL.search(s) is None


def valid_user(s: Any, limits: Limits = DEFAULT_LIMITS) -> bool:
    """A user id: non-empty, at most ``max_user`` bytes, no control character, no '/'.

    '/' is kept out so that user ids can be joined with device names in keys and paths.
    """
    return _valid_name(s, limits.max_user) and "/" not in s


def valid_device(s: Any, limits: Limits = DEFAULT_LIMITS) -> bool:
    """A device name: the rules of a user id, within ``max_device`` bytes."""
    return _valid_name(s, limits.max_device) and "/" not in s


def valid_room(s: Any, limits: Limits = DEFAULT_LIMITS) -> bool:
    """A room name: non-empty, at most ``max_room`` bytes, no control character."""
    return _valid_name(s, limits.max_room)


def _nonneg_int(v: Any) -> bool:
    return type(v) is int and v >= 0  # bool is not an int here


def _bad(obj: dict, limits: Limits, reason: str, code: int = 400) -> BadFrame:
    return BadFrame(reason, frame_ref(obj, limits), code)


def _hello(obj: dict, limits: Limits, size: int | None, text: bool) -> Hello:
    v = obj.get("v", 1)
    if v is None:
        v = 1
    elif type(v) is not int:
        raise _bad(obj, limits, "hello: v must be an integer")
    token = obj.get("token")
    if token is not None and type(token) is not str:
        raise _bad(obj, limits, "hello: token must be a string")
    user = obj.get("user")
    if user is not None and not valid_user(user, limits):
        raise _bad(obj, limits, "hello: invalid user id")
    device = obj.get("device")
    if device is not None and not valid_device(device, limits):
        raise _bad(obj, limits, "hello: invalid device name")
    resume = obj.get("resume")
    last = None
    if resume is not None:
        last = resume.get("last") if type(resume) is dict else None
        if not _nonneg_int(last):
            raise _bad(obj, limits, "hello: resume must be a map with a non-negative integer last")
    batch = obj.get("batch", False)
    if batch is None:
        batch = False
    elif type(batch) is not bool:
        raise _bad(obj, limits, "hello: batch must be true or false")
    state = obj.get("state")
    if state is None:
        state = "online"
    elif type(state) is not str or state not in PRESENCE_STATES:
        raise _bad(obj, limits, "hello: state must be online, away, busy or offline")
    status = obj.get("status")
    if status is None:
        status = ""
    elif type(status) is not str or not utf8_fits(status, limits.max_status):
        raise _bad(obj, limits, f"hello: status must be a string within {limits.max_status} bytes")
    app = obj.get("app")
    if app is not None and not _valid_name(app, limits.max_user):
        raise _bad(obj, limits, f"hello: app must be a name within {limits.max_user} bytes")
    return Hello(v, token, user, device, last, batch, state, status, app)


def _body_size(body: Any, text: bool) -> int:
    if text:
        return len(encode_json(body).encode("utf-8"))
    return len(encode_cbor(body))


def _send(obj: dict, limits: Limits, size: int | None, text: bool) -> Send:
    id_ = obj.get("id")
    if type(id_) is not str or not id_ or not utf8_fits(id_, limits.max_id):
        raise _bad(obj, limits, f"send: id must be a string of 1 to {limits.max_id} bytes")
    to = obj.get("to")
    room = obj.get("room")
    if to is not None:
        if room is not None:
            raise BadFrame("send: give exactly one of to and room", id_)
        if not valid_user(to, limits):
            raise BadFrame("send: invalid user id in to", id_)
    elif room is None:
        raise BadFrame("send: give exactly one of to and room", id_)
    elif not valid_room(room, limits):
        raise BadFrame("send: invalid room name", id_)
    try:
        body = obj["body"]
    except KeyError:
        raise BadFrame("send: missing body", id_) from None
    # The frame's own size bounds its body's; only a larger frame is measured.
    if size is None or size > limits.max_body:
        size = _body_size(body, text)
        if size > limits.max_body:
            raise BadFrame(f"send: body larger than {limits.max_body} bytes", id_, 413)
    return _new_send(id_, to, room, body, size)


def _ack(obj: dict, limits: Limits, size: int | None, text: bool) -> Ack:
    seq = obj.get("seq")
    if not _nonneg_int(seq):
        raise _bad(obj, limits, "ack: seq must be a non-negative integer")
    return _new_ack(seq)


def _room_of(obj: dict, limits: Limits, kind: str) -> str:
    room = obj.get("room")
    if not valid_room(room, limits):
        raise _bad(obj, limits, f"{kind}: invalid room name")
    return room


def _optional_id(obj: dict, limits: Limits, kind: str) -> str | None:
    id_ = obj.get("id")
    if id_ is not None and (type(id_) is not str or not id_ or not utf8_fits(id_, limits.max_id)):
        raise _bad(obj, limits, f"{kind}: id must be a string of 1 to {limits.max_id} bytes")
    return id_


def _join(obj: dict, limits: Limits, size: int | None, text: bool) -> Join:
    return Join(_room_of(obj, limits, "join"), _optional_id(obj, limits, "join"))


def _leave(obj: dict, limits: Limits, size: int | None, text: bool) -> Leave:
    return Leave(_room_of(obj, limits, "leave"), _optional_id(obj, limits, "leave"))


def _ping(obj: dict, limits: Limits, size: int | None, text: bool) -> Ping:
    return _PING


def _pong(obj: dict, limits: Limits, size: int | None, text: bool) -> Pong:
    return _PONG


def _bye(obj: dict, limits: Limits, size: int | None, text: bool) -> Bye:
    return _BYE


def _presence(obj: dict, limits: Limits, size: int | None, text: bool) -> PresenceReport:
    state = obj.get("state")
    if type(state) is not str or state not in PRESENCE_STATES:
        raise _bad(obj, limits, "presence: state must be online, away, busy or offline")
    status = obj.get("status")
    if status is not None and (type(status) is not str or not utf8_fits(status, limits.max_status)):
        raise _bad(
            obj, limits, f"presence: status must be a string within {limits.max_status} bytes"
        )
    return PresenceReport(state, status)


def _users_of(obj: dict, limits: Limits, kind: str) -> tuple[str, ...]:
    users = obj.get("users")
    if type(users) is not list:
        raise _bad(obj, limits, f"{kind}: users must be a list of user ids")
    if len(users) > limits.max_watch:
        raise _bad(obj, limits, f"{kind}: more than {limits.max_watch} users")
    for user in users:
        if not valid_user(user, limits):
            raise _bad(obj, limits, f"{kind}: invalid user id in users")
    return tuple(users)


def _watch(obj: dict, limits: Limits, size: int | None, text: bool) -> Watch:
    users = _users_of(obj, limits, "watch")
    since = obj.get("since")
    if since is not None and not _nonneg_int(since):
        raise _bad(obj, limits, "watch: since must be a non-negative integer (ms)")
    return Watch(users, since)


def _unwatch(obj: dict, limits: Limits, size: int | None, text: bool) -> Unwatch:
    return Unwatch(_users_of(obj, limits, "unwatch"))


def _probe(obj: dict, limits: Limits, size: int | None, text: bool) -> Probe:
    return Probe(_users_of(obj, limits, "probe"))


def _history(obj: dict, limits: Limits, size: int | None, text: bool) -> History:
    id_ = obj.get("id")
    if type(id_) is not str or not id_ or not utf8_fits(id_, limits.max_id):
        raise _bad(obj, limits, f"history: id must be a string of 1 to {limits.max_id} bytes")
    peer = obj.get("with")
    room = obj.get("room")
    if (peer is None) == (room is None):
        raise BadFrame("history: give exactly one of with and room", id_)
    if peer is not None and not valid_user(peer, limits):
        raise BadFrame("history: invalid user id in with", id_)
    if room is not None and not valid_room(room, limits):
        raise BadFrame("history: invalid room name", id_)
    before = obj.get("before")
    if before is not None and (type(before) is not str or not before or len(before) > MAX_MID):
        raise BadFrame(f"history: before must be a mid of 1 to {MAX_MID} characters", id_)
    limit = obj.get("limit")
    if limit is None:
        limit = HISTORY_DEFAULT
    elif type(limit) is not int or not 1 <= limit <= HISTORY_MAX:
        raise BadFrame(f"history: limit must be an integer from 1 to {HISTORY_MAX}", id_)
    return History(id_, peer, room, before, limit)


_PARSERS: dict[str, Callable[[dict, Limits, int | None, bool], Frame]] = {
    "hello": _hello,
    "send": _send,
    "ack": _ack,
    "join": _join,
    "leave": _leave,
    "ping": _ping,
    "pong": _pong,
    "bye": _bye,
    "presence": _presence,
    "watch": _watch,
    "unwatch": _unwatch,
    "probe": _probe,
    "history": _history,
}


def parse_frame(obj: Any, limits: Limits, size: int | None = None, text: bool = False) -> Frame:
    """Validate one decoded frame map into a typed frame.

    ``size`` is the encoded size of the message the frame came in and ``text``
    says it came as JSON. A send's body must fit ``max_body`` bytes encoded the
    way it arrived; a message of at most ``max_body`` bytes proves that for
    free, so only bodies of larger messages (or when ``size`` is not given)
    are encoded again to be measured.
    """
    if type(obj) is not dict:
        raise BadFrame("frame is not a map")
    t = obj.get("t")
    try:
        parser = _PARSERS[t]
    except (KeyError, TypeError):  # TypeError: an unhashable t
        if t is None:
            raise _bad(obj, limits, "missing frame type t") from None
        if type(t) is not str:
            raise _bad(obj, limits, "frame type t must be a string") from None
        raise _bad(obj, limits, f"unknown frame type {t[:32]!r}") from None
    return parser(obj, limits, size, text)
