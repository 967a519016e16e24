"""The binary TCP framing: a 4-byte big-endian length, then that many bytes.

``FrameSplitter`` turns whatever chunks TCP delivers into whole payloads. It
checks a length prefix the moment its 4 bytes are in, before buffering any of
the body, so a hostile prefix costs nothing; many small frames in one chunk are
cut out by offset (no re-slicing of the remaining buffer), and one large frame
arriving in many chunks is joined once.
"""

from __future__ import annotations

from collections.abc import Iterable
from struct import Struct

from .errors import DecodeError, FrameTooLarge, ProtocolError

__all__ = ["FrameSplitter", "frame", "frame_many"]

_PREFIX = Struct(">I")
_pack = _PREFIX.pack
_unpack_from = _PREFIX.unpack_from
_MAX_PAYLOAD = 0xFFFFFFFF


class FrameSplitter:
    """Incremental splitter for one connection's byte stream.

    After it raises, the splitter is dead: the stream has lost its framing, so
    every later ``feed`` raises the same error again.
    """

    __slots__ = ("_chunks", "_dead", "_need", "_size", "max_frame")

    def __init__(self, max_frame: int) -> None:
        if max_frame <= 0:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._chunks: list[bytes] = []  # pieces of one incomplete frame, prefix first
        self._size = 0  # bytes in _chunks
        self._need = 4  # bytes (prefix included) that complete the held frame
        self._dead: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete frame, prefix included (0 when idle).

        For a stall deadline: a frame that stops half-way holds these bytes.
        """
        return self._size

    @property
    def expected(self) -> int:
        """Declared payload size of the frame being received, 0 until its prefix is in.

        Lets a transport see a large frame coming before it is whole.
        """
        return self._need - 4 if self._chunks and self._need > 4 else 0

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next chunk of the stream; return the payloads it completes."""
        if self._dead is not None:
            raise self._dead.with_traceback(None)
        if type(data) is not bytes:
            data = bytes(data)
        if self._chunks:
            self._chunks.append(data)
            self._size += len(data)
            if self._size < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
            self._size = 0
        return self._split(data)

    def _split(self, data: bytes) -> list[bytes]:
        """Cut complete frames out of ``data``, which starts at a frame boundary."""
        out: list[bytes] = []
        end = len(data)
        pos = 0
        max_frame = self.max_frame
        while end - pos >= 4:
            (length,) = _unpack_from(data, pos)
            if length > max_frame:
                self._die(FrameTooLarge(f"frame of {length} bytes exceeds {max_frame}"))
            if length == 0:
                self._die(DecodeError("empty frame"))
            stop = pos + 4 + length
            if stop > end:
                self._need = 4 + length
                break
            out.append(data[pos + 4 : stop])
            pos = stop
        else:
            self._need = 4
        if pos < end:
            rest = data[pos:] if pos else data
            self._chunks.append(rest)
            self._size = len(rest)
        return out

    def _die(self, error: ProtocolError) -> None:
        self._dead = error
        self._chunks = []
        self._size = 0
        raise error


def frame(payload: bytes) -> bytes:
    """Prefix one payload with its length."""
    n = len(payload)
    if not 0 < n <= _MAX_PAYLOAD:
        raise ValueError(f"cannot frame a payload of {n} bytes")
    return _pack(n) + payload


def frame_many(payloads: Iterable[bytes]) -> bytes:
    """Frame a batch into one bytes object, for one ``write`` call."""
    parts: list[bytes] = []
    add = parts.append
    for payload in payloads:
        n = len(payload)
        if not 0 < n <= _MAX_PAYLOAD:
            raise ValueError(f"cannot frame a payload of {n} bytes")
        add(_pack(n))
        add(payload)
    return b"".join(parts)
