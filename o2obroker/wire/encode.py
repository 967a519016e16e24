"""Server frames, encoded once however many connections they go to.

A frame fanned out to a room, a presence change sent to every watcher, a
message delivered to several devices: each is encoded at most once per
encoding. A ``msg`` frame differs per recipient only in ``seq``, so
:class:`MessageTemplate` encodes everything else once and splices the seq in.
"""

from __future__ import annotations

from struct import Struct
from typing import Any

from .codec import encode_cbor, encode_json

__all__ = ["MessageTemplate", "OutFrame", "cbor_array", "json_array"]

_U8 = Struct(">BB").pack
_U16 = Struct(">BH").pack
_U32 = Struct(">BI").pack
_U64 = Struct(">BQ").pack
_TINY_UINTS = tuple(bytes((n,)) for n in range(24))


def _head(major: int, n: int) -> bytes:
    """CBOR head of major type ``major`` with argument ``n``, shortest form."""
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    if n < 0x100:
        return _U8(mt | 24, n)
    if n < 0x10000:
        return _U16(mt | 25, n)
    if n < 0x100000000:
        return _U32(mt | 26, n)
    return _U64(mt | 27, n)


# map heads for up to 31 entries, the ones a template needs on every first encoding
_MAP_HEADS = tuple(_head(5, n) for n in range(32))


def _map_head(n: int) -> bytes:
    return _MAP_HEADS[n] if n < 32 else _head(5, n)


def _map_size(data: bytes) -> tuple[int, int]:
    """(entries, length of the head) of the CBOR map ``data`` starts with."""
    if not data or data[0] >> 5 != 5:
        raise ValueError("not a CBOR map")
    info = data[0] & 0x1F
    if info < 24:
        return info, 1
    if info > 27:
        raise ValueError("not a CBOR map of known size")
    width = 1 << (info - 24)
    if len(data) < 1 + width:
        raise ValueError("a truncated CBOR map head")
    return int.from_bytes(data[1 : 1 + width], "big"), 1 + width


def _cbor_uint(n: int) -> bytes:
    """The CBOR encoding of a seq, as cbor2 writes it."""
    if n < 24:
        return _TINY_UINTS[n] if n >= 0 else encode_cbor(n)
    if n < 0x100:
        return _U8(24, n)
    if n < 0x10000:
        return _U16(25, n)
    if n < 0x100000000:
        return _U32(26, n)
    if n < 0x10000000000000000:
        return _U64(27, n)
    return encode_cbor(n)


class OutFrame:
    """A server frame whose CBOR and JSON encodings are each made at most once."""

    __slots__ = ("_cbor", "_json", "frame")

    def __init__(self, frame: dict[str, Any]) -> None:
        self.frame = frame
        self._cbor: bytes | None = None
        self._json: str | None = None

    def cbor(self) -> bytes:
        """The frame as CBOR, encoded on first use."""
        data = self._cbor
        if data is None:
            data = self._cbor = encode_cbor(self.frame)
        return data

    def json(self) -> str:
        """The frame as JSON text, encoded on first use."""
        data = self._json
        if data is None:
            data = self._json = encode_json(self.frame)
        return data

    def __repr__(self) -> str:
        return f"OutFrame({self.frame!r})"


_CBOR_T_MSG_SEQ = encode_cbor("t") + encode_cbor("msg") + encode_cbor("seq")


class MessageTemplate:
    """A ``msg`` frame without its ``seq``, ready to be stamped per recipient.

    ``cbor(seq)`` and ``json(seq)`` equal the plain encodings of
    ``{"t": "msg", "seq": seq, **fields}`` byte for byte, but the fields (the
    body above all) are encoded only once per encoding, on first use.
    """

    __slots__ = ("_cbor_head", "_cbor_rest", "_json_rest", "_rest", "fields")

    def __init__(self, fields: dict[str, Any]) -> None:
        t = fields.get("t", "msg")
        if t != "msg":
            raise ValueError(f"a message template is for msg frames, not {t!r}")
        if "seq" in fields:
            raise ValueError("a message template must not hold a seq")
        self.fields = fields
        # callers on the hot path pass the fields without "t": no copy then
        self._rest = {k: v for k, v in fields.items() if k != "t"} if "t" in fields else fields
        self._cbor_head: bytes | None = None
        self._cbor_rest = b""
        self._json_rest: str | None = None

    def frame(self, seq: int) -> dict[str, Any]:
        """The frame as a map, for whoever needs the value rather than its bytes."""
        return {"t": "msg", "seq": seq, **self._rest}

    def cbor(self, seq: int) -> bytes:
        """The CBOR ``msg`` frame for one recipient's ``seq``."""
        head = self._cbor_head
        if head is None:
            head = self._cut()
        if seq.__class__ is not int:
            raise TypeError("seq must be an int")
        return b"".join((head, _cbor_uint(seq), self._cbor_rest))

    def _cut(self) -> bytes:
        """Make the head frames start with, and keep the map's entries after
        it. Until then ``_cbor_rest`` holds the whole map (encoded for a store,
        or adopted), if anything: a template only stored is never cut."""
        encoded = self._cbor_rest
        if encoded:
            n, at = _map_size(encoded)
        else:  # the common case: encoded here, for frames only
            rest = self._rest
            encoded = encode_cbor(rest)
            n = len(rest)
            at = len(_map_head(n))
        self._cbor_rest = encoded[at:]
        # the map head cbor2 wrote counts the fields; a frame has 2 more
        head = self._cbor_head = _map_head(n + 2) + _CBOR_T_MSG_SEQ
        return head

    def cbor_map(self) -> bytes:
        """The fields (without ``t``) as one CBOR map, from the encoding the
        frames are spliced from: what a store keeps and another node gets, so
        a message is encoded once for its store, its channel and its devices."""
        head = self._cbor_head
        if head is None:
            encoded = self._cbor_rest
            if not encoded:
                encoded = self._cbor_rest = encode_cbor(self._rest)
            return encoded
        n, _ = _map_size(head)
        return _map_head(n - 2) + self._cbor_rest

    def adopt_cbor_map(self, blob: bytes) -> None:
        """Take ``blob``, what ``cbor_map()`` gave, as this template's CBOR
        encoding: its frames are then spliced from these bytes, never encoded
        again. ValueError when ``blob`` does not start with a map head."""
        _map_size(blob)
        self._cbor_rest = blob
        self._cbor_head = None

    def json(self, seq: int) -> str:
        """The JSON ``msg`` frame for one recipient's ``seq``."""
        rest = self._json_rest
        if rest is None:
            rest = self._json_rest = "," + encode_json(self._rest)[1:] if self._rest else "}"
        if seq.__class__ is not int:
            raise TypeError("seq must be an int")
        return f'{{"t":"msg","seq":{seq}{rest}'

    def __repr__(self) -> str:
        return f"MessageTemplate({self.fields!r})"


def cbor_array(items: list[bytes]) -> bytes:
    """Join already-encoded CBOR frames into one CBOR array (a batch message)."""
    return b"".join((_head(4, len(items)), *items))


def json_array(items: list[str]) -> str:
    """Join already-encoded JSON frames into one JSON array (a batch message)."""
    return f"[{','.join(items)}]"
