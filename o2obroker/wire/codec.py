"""One value model, two encodings (doc/protocol.md, section 1).

Values are the JSON data model plus byte strings. CBOR carries bytes natively;
JSON carries them as ``{"$bytes": "<standard base64>"}``. Decoding enforces the
protocol's value rules so that whatever gets past this module can be
re-encoded in either encoding and relayed to any client:

* no CBOR tag (not even the ones cbor2 would turn into datetimes, bignums,
  shared references, regexes...), no CBOR simple value but true/false/null,
* string map keys only, no duplicate key, no map whose only key is ``$bytes``
  (in JSON that is a byte string and must hold valid base64),
* no NaN or infinity, integers within CBOR's 64-bit range, valid Unicode,
* at most ``max_depth`` levels of nesting (the frame map is level 1).

Breaking a value rule raises :class:`BadFrame` (400, connection kept). Bytes
that are not a well-formed item (empty, truncated, trailing data, indefinite
lengths, invalid UTF-8, too deep) raise :class:`DecodeError` (fatal). When a
frame breaks both kinds of rule, the structural problem wins, with one
exception: cbor2 stops at a non-string map key (it refuses to hash such keys,
which could be crafted to collide), so bytes after one are not examined; the
transport's framing is intact either way, so keeping that connection is safe.

Speed: the work per frame is cbor2's (or the json module's) C decoder plus
one short Python pass over the decoded CBOR value; the JSON checks ride on the
C scanner's hooks, and depth and range checks on JSON are skipped whenever a
count of characters in the text proves them unnecessary.
"""

from __future__ import annotations

import json
import re
import threading
from base64 import b64decode, b64encode
from collections.abc import Callable
from io import BytesIO
from typing import Any

from cbor2 import CBORDecodeError, CBORDecoder, CBORTag, dumps

from ._common import frame_ref
from .errors import BadFrame, DecodeError, FrameTooLarge, ProtocolError
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "decode_cbor",
    "decode_cbor_batch",
    "decode_json",
    "encode_cbor",
    "encode_json",
]


class _Reject(Exception):
    """A value rule broken inside a decoder hook; surfaces as :class:`BadFrame`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------
# CBOR


def _tag_refuser(tag: int) -> Callable[[Any, bool], Any]:
    def refuse(value: Any, immutable: bool) -> Any:
        raise _Reject(f"CBOR tag {tag} is not allowed")

    return refuse


class _RefuseEveryTag(dict):
    """``semantic_decoders`` mapping that answers every tag number.

    cbor2 consults this mapping before its own decoders (datetime, bignum,
    shared references, sets, regexes, MIME...), so no tag is ever honoured,
    including tags a later cbor2 may learn.
    """

    __slots__ = ()

    def __missing__(self, tag: int) -> Callable[[Any, bool], Any]:
        return _tag_refuser(tag)


def _refuse_tag(tag: CBORTag, immutable: bool) -> Any:
    # Backstop only: _RefuseEveryTag already answers every tag number.
    raise _Reject(f"CBOR tag {tag.tag} is not allowed")


class _IgnoreEveryTag(dict):
    """For the second, diagnostic decode: tags decode to None."""

    __slots__ = ()

    def __missing__(self, tag: int) -> Callable[[Any, bool], Any]:
        return _ignore_tag


def _ignore_tag(value: Any, immutable: bool) -> None:
    return None


_REFUSE_EVERY_TAG = _RefuseEveryTag()
_IGNORE_EVERY_TAG = _IgnoreEveryTag()
# Larger than any frame: the decoder then reads a payload in one call.
_READ_SIZE = 1 << 30
# Strict decoders by max_depth, per thread, each with its own BytesIO: building
# a decoder costs more than decoding a frame, pointing it at a new file object
# costs a third of a decode, and one decoder must not be shared by two threads.
_local = threading.local()


def _new_decoder(depth: int) -> tuple[CBORDecoder, BytesIO]:
    try:
        cache = _local.decoders
    except AttributeError:
        cache = _local.decoders = {}
    fp = BytesIO()
    decoder = CBORDecoder(
        fp,
        tag_hook=_refuse_tag,
        semantic_decoders=_REFUSE_EVERY_TAG,
        max_depth=depth,
        read_size=_READ_SIZE,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        # Only str and bytes keys get hashed: other keys (tuples, ints) can be
        # crafted to collide and make building one map quadratic.
        strict_hashable_types=True,
    )
    cache[depth] = decoder, fp
    return decoder, fp


# The rest of cbor2's errors only come as messages; these two are value rules.
_KEY_TYPE_ERROR = re.compile(r"error decoding map: map key must be ")
_DUPLICATE_KEY_ERROR = re.compile(r"error decoding map: Duplicate map key")

_SCALARS = frozenset({str, int, bool, type(None), bytes})


class _TooDeep(Exception):
    """An empty container one level too deep; see :func:`_check_tree`."""


def _check_tree(value: dict | list, room: int) -> None:
    """Raise _Reject if a decoded CBOR container breaks a value rule.

    ``room`` is how many levels may still open below ``value``. cbor2's
    ``max_depth`` only counts containers that hold items, so an empty array or
    map one level too deep gets past it; that raises _TooDeep here. Recursion
    is bounded by the same depth (at most MAX_DEPTH_CEILING + 1 levels).
    """
    if type(value) is dict:
        if len(value) == 1 and "$bytes" in value:
            raise _Reject("a map whose only key is $bytes is reserved")
        for k, v in value.items():
            if type(k) is not str:
                raise _Reject("map keys must be strings")
            t = type(v)
            if t in _SCALARS:
                continue
            if t is dict or t is list:
                if not room:
                    raise _TooDeep
                _check_tree(v, room - 1)
            elif t is float:
                if v - v != 0.0:
                    raise _Reject("NaN and infinity are not allowed")
            else:
                raise _Reject("CBOR simple values other than true, false and null are not allowed")
    else:
        for v in value:
            t = type(v)
            if t in _SCALARS:
                continue
            if t is dict or t is list:
                if not room:
                    raise _TooDeep
                _check_tree(v, room - 1)
            elif t is float:
                if v - v != 0.0:
                    raise _Reject("NaN and infinity are not allowed")
            else:
                raise _Reject("CBOR simple values other than true, false and null are not allowed")


def _rejection(error: BaseException) -> _Reject | None:
    seen = 0
    cause: BaseException | None = error
    while cause is not None and seen < 8:
        if isinstance(cause, _Reject):
            return cause
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return None


def _structural(message: str, limits: Limits) -> DecodeError:
    if "nesting depth" in message:
        return DecodeError(f"nested deeper than {limits.max_depth} levels")
    if "indefinite length" in message:
        return DecodeError("indefinite-length CBOR items are not allowed")
    if "premature end" in message:
        return DecodeError("truncated CBOR item")
    return DecodeError(f"not valid CBOR: {message[:120]}")


def _cbor_failure(
    error: CBORDecodeError, payload: bytes, depth: int, limits: Limits
) -> ProtocolError:
    """Classify a failed strict decode: a value rule (BadFrame) or bad bytes (DecodeError)."""
    message = str(error)
    if _KEY_TYPE_ERROR.match(message):
        return BadFrame("map keys must be strings")
    rejected = _rejection(error)
    if rejected is not None:
        reason = rejected.reason
    elif _DUPLICATE_KEY_ERROR.match(message):
        reason = "duplicate map key"
    else:
        return _structural(message, limits)
    # The strict decode stopped at a value rule: decode again without the value
    # rules to learn whether the rest of the bytes is well formed.
    fp = BytesIO(payload)
    try:
        value = CBORDecoder(
            fp,
            tag_hook=_ignore_tag,
            semantic_decoders=_IGNORE_EVERY_TAG,
            max_depth=depth,
            read_size=_READ_SIZE,
            allow_indefinite=False,
            strict_hashable_types=True,
        ).decode()
    except CBORDecodeError as again:
        again_message = str(again)
        if _KEY_TYPE_ERROR.match(again_message):
            return BadFrame(reason)
        return _structural(again_message, limits)
    except (ValueError, TypeError, OverflowError) as again:
        return DecodeError(f"not valid CBOR: {again}")
    if fp.tell() != len(payload):
        return DecodeError("trailing bytes after the CBOR item")
    if (type(value) is dict or type(value) is list) and _deeper(value, depth):
        return DecodeError(f"nested deeper than {limits.max_depth} levels")
    return BadFrame(reason, frame_ref(value, limits))


def _decode_cbor(payload: bytes, limits: Limits, depth: int) -> Any:
    n = len(payload)
    if n == 0:
        raise DecodeError("empty frame")
    if n > limits.max_frame:
        raise FrameTooLarge(f"frame of {n} bytes exceeds {limits.max_frame}")
    if type(payload) is not bytes:
        payload = bytes(payload)
    try:
        decoder, fp = _local.decoders[depth]
    except (AttributeError, KeyError):
        decoder, fp = _new_decoder(depth)
    # Refill the decoder's own BytesIO (the pickle protocol's way to replace
    # its contents in one call); a clean decode leaves nothing buffered.
    fp.__setstate__((payload, 0, None))
    try:
        value = decoder.decode()
    except Exception as e:
        decoder.fp = fp  # a failed decode may leave bytes buffered: drop them
        if isinstance(e, CBORDecodeError):
            raise _cbor_failure(e, payload, depth, limits) from None
        raise DecodeError(f"not valid CBOR: {e}") from None
    if fp.tell() != n:
        raise DecodeError("trailing bytes after the CBOR item")
    t = type(value)
    if t is dict or t is list:
        try:
            _check_tree(value, depth - 1)
        except _Reject as r:
            if _deeper(value, depth):  # the structural problem wins
                raise DecodeError(f"nested deeper than {limits.max_depth} levels") from None
            raise BadFrame(r.reason, frame_ref(value, limits)) from None
        except _TooDeep:
            raise DecodeError(f"nested deeper than {limits.max_depth} levels") from None
    elif t is float and value - value != 0.0:
        raise BadFrame("NaN and infinity are not allowed")
    elif t not in _SCALARS and t is not float:
        raise BadFrame("CBOR simple values other than true, false and null are not allowed")
    return value


def decode_cbor(payload: bytes, limits: Limits) -> dict:
    """Decode one CBOR frame (a map) from a binary TCP payload."""
    value = _decode_cbor(payload, limits, limits.max_depth)
    if type(value) is not dict:
        raise BadFrame("frame is not a map")
    return value


def decode_cbor_batch(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> dict | list[dict]:
    """Decode a binary WebSocket message: one CBOR map, or an array of maps.

    In an array each frame map is still level 1 of its own nesting, so the
    array gets one extra level.
    """
    depth = limits.max_depth
    if payload and payload[0] >> 5 == 4:
        depth += 1
    value = _decode_cbor(payload, limits, depth)
    return _batch_shape(value)


def _batch_shape(value: Any) -> dict | list[dict]:
    if type(value) is dict:
        return value
    if type(value) is list:
        for item in value:
            if type(item) is not dict:
                raise BadFrame("a batch must hold only maps")
        return value
    raise BadFrame("frame is not a map")


def encode_cbor(obj: Any) -> bytes:
    """Encode a value of the value model as CBOR."""
    return dumps(obj)


# ---------------------------------------------------------------------------
# JSON


def _object_pairs(pairs: list[tuple[str, Any]]) -> Any:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Reject("duplicate map key")
    if len(obj) == 1 and "$bytes" in obj:
        encoded = obj["$bytes"]
        if type(encoded) is not str:
            raise _Reject("$bytes must hold a base64 string")
        try:
            return b64decode(encoded, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            raise _Reject("$bytes is not valid base64") from None
    return obj


def _refuse_constant(name: str) -> Any:
    raise _Reject("NaN and infinity are not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # 1e400 parses as inf
        raise _Reject("NaN and infinity are not allowed")
    return value


_INT_LOW = -(1 << 64)
_INT_HIGH = (1 << 64) - 1


def _cbor_range_int(text: str) -> int:
    # Look at the length before int() does: Python refuses over 4,300 digits.
    if len(text) > 21:
        raise _Reject("integer out of range")
    value = int(text)
    if not _INT_LOW <= value <= _INT_HIGH:
        raise _Reject("integer out of range")
    return value


_scan_fast = json.JSONDecoder(
    object_pairs_hook=_object_pairs, parse_float=_finite_float, parse_constant=_refuse_constant
).scan_once
# For texts with a run of 20+ digits somewhere: integers must fit CBOR's 64 bits.
_scan_ranged = json.JSONDecoder(
    object_pairs_hook=_object_pairs,
    parse_float=_finite_float,
    parse_constant=_refuse_constant,
    parse_int=_cbor_range_int,
).scan_once


def _syntax_pairs(pairs: list[tuple[str, Any]]) -> Any:
    # Nesting is counted in the value model, where a $bytes map is a scalar.
    if len(pairs) == 1 and pairs[0][0] == "$bytes":
        return b""
    return dict(pairs)


# Syntax only, to tell a bad value in good JSON from bad JSON.
_scan_syntax = json.JSONDecoder(
    object_pairs_hook=_syntax_pairs, parse_float=str, parse_int=str, parse_constant=str
).scan_once

_WS = " \t\n\r"


def _marks_table() -> bytes:
    table = bytearray(b" " * 256)
    table[ord("0") : ord("9") + 1] = b"0" * 10
    table[ord("[")] = table[ord("{")] = ord("[")
    return bytes(table)


# One bytes.translate pass (C, about a nanosecond a byte) answers two questions
# about a JSON text: is there a run of 20+ digits (below 10**19 every integer
# fits CBOR's 64 bits, so int() is range-checked only then), and how many
# '[' and '{' are there (no more than max_depth: it cannot be too deep, and the
# decoded value need not be walked).
_MARKS = _marks_table()
_LONG_RUN = b"0" * 20
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _scan(scan: Callable[[str, int], tuple[Any, int]], text: str) -> Any:
    try:
        try:
            value, end = scan(text, 0)
        except StopIteration:
            start = len(text) - len(text.lstrip(_WS))
            if start == 0:
                raise
            value, end = scan(text, start)
    except StopIteration:
        raise DecodeError("not valid JSON") from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None
    except ValueError as e:
        raise DecodeError(f"not valid JSON: {e}") from None
    if end != len(text) and text[end:].strip(_WS):
        raise DecodeError("trailing data after the JSON value")
    return value


def _deeper(container: dict | list, levels: int) -> bool:
    """Does ``container`` nest more than ``levels`` levels (itself included)?

    Depth is counted in the value model, where a ``$bytes`` map is a byte
    string. The recursion stops at ``levels`` (at most MAX_DEPTH_CEILING + 1).
    """
    if levels <= 0:
        return True
    for v in container.values() if type(container) is dict else container:
        t = type(v)
        if (t is dict or t is list) and _deeper(v, levels - 1):
            return True
    return False


def decode_json(text: str | bytes, limits: Limits) -> dict | list[dict]:
    """Decode a JSON WebSocket message or long-poll body: a map, or an array of maps.

    ``max_frame`` applies to the whole message, batch or not.
    """
    if type(text) is str:
        if len(text) > limits.max_frame:
            raise FrameTooLarge(f"frame of over {limits.max_frame} bytes")
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError("not valid Unicode text") from None
    else:
        raw = text if type(text) is bytes else bytes(text)
    n = len(raw)
    if n == 0:
        raise DecodeError("empty frame")
    if n > limits.max_frame:
        raise FrameTooLarge(f"frame of {n} bytes exceeds {limits.max_frame}")
    if type(text) is not str:
        try:
            text = str(raw, "utf-8")
        except UnicodeDecodeError:
            raise DecodeError("not valid UTF-8") from None
    marks = raw.translate(_MARKS)
    first = text[0]
    if first in _WS:
        first = text.lstrip(_WS)[:1]
    # In a batch each frame map is level 1 of its own nesting.
    limit = limits.max_depth + 1 if first == "[" else limits.max_depth
    scan = _scan_ranged if _LONG_RUN in marks else _scan_fast
    try:
        value = _scan(scan, text)
    except _Reject as r:
        raise _json_failure(text, r.reason, limit, marks, limits) from None
    # No more '[' and '{' in all than allowed levels: it cannot be too deep.
    if marks.count(b"[") > limit and _deeper(value, limit):
        raise DecodeError(f"nested deeper than {limits.max_depth} levels")
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(text):
        try:
            encode_json(value).encode("utf-8")
        except UnicodeEncodeError:
            raise BadFrame("text holds a lone surrogate", frame_ref(value, limits)) from None
    return _batch_shape(value)


def _json_failure(
    text: str, reason: str, limit: int, marks: bytes, limits: Limits
) -> ProtocolError:
    """A hook refused a value; the text is still undecodable if its syntax or depth is bad."""
    try:
        value = _scan(_scan_syntax, text)
    except DecodeError as e:
        return e
    if marks.count(b"[") > limit and _deeper(value, limit):
        return DecodeError(f"nested deeper than {limits.max_depth} levels")
    return BadFrame(reason, frame_ref(value, limits))


def _json_default(obj: Any) -> Any:
    if type(obj) is bytes:
        return {"$bytes": b64encode(obj).decode("ascii")}
    raise TypeError(f"{type(obj).__name__} is not in the value model")


def _make_json_encoder() -> Callable[[Any], str]:
    try:
        from json.encoder import c_make_encoder, encode_basestring
    except ImportError:  # pragma: no cover - CPython always has both
        c_make_encoder = None
    if c_make_encoder is None:  # pragma: no cover
        return json.JSONEncoder(
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
            check_circular=False,
            default=_json_default,
        ).encode
    # JSONEncoder.encode builds this C encoder on every call; build it once.
    c_encode = c_make_encoder(
        None, _json_default, encode_basestring, None, ":", ",", False, False, False
    )

    def encode(obj: Any) -> str:
        return "".join(c_encode(obj, 0))

    return encode


_encode_json = _make_json_encoder()


def encode_json(obj: Any) -> str:
    """Encode a value as compact JSON text; bytes become ``{"$bytes": base64}``."""
    return _encode_json(obj)
