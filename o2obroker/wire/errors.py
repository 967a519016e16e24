"""Protocol errors: each one knows the error frame it becomes (doc/protocol.md, section 7)."""

from __future__ import annotations

from typing import Any

__all__ = ["BadFrame", "DecodeError", "FrameTooLarge", "ProtocolError"]


class ProtocolError(Exception):
    """A peer broke the protocol.

    ``fatal`` tells the transport to close the connection once the error frame
    is written; otherwise the connection carries on with the next frame.
    """

    code: int
    reason: str
    ref: str | None
    fatal: bool

    def __init__(self, code: int, reason: str, ref: str | None = None, fatal: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.ref = ref
        self.fatal = fatal

    def frame(self) -> dict[str, Any]:
        """The ``error`` frame that answers this error."""
        out: dict[str, Any] = {"t": "error", "code": self.code, "reason": self.reason}
        if self.ref is not None:
            out["ref"] = self.ref
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, reason={self.reason!r}, "
            f"ref={self.ref!r}, fatal={self.fatal!r})"
        )


class DecodeError(ProtocolError):
    """The bytes cannot be decoded at all: empty, not CBOR/JSON/UTF-8, or too deep.

    Always fatal (400): nothing in such bytes can be trusted, not even an id to refer to.
    """

    def __init__(self, reason: str, ref: str | None = None) -> None:
        super().__init__(400, reason, ref, fatal=True)


class BadFrame(ProtocolError):
    """The frame decoded but breaks a rule; the connection is kept.

    400 for an invalid field or value, 413 for a body over ``max_body``, 403 where
    a layer above refuses it.
    """

    def __init__(self, reason: str, ref: str | None = None, code: int = 400) -> None:
        super().__init__(code, reason, ref, fatal=False)


class FrameTooLarge(ProtocolError):
    """A frame over ``max_frame`` (413). Fatal: its bytes are never read."""

    def __init__(self, reason: str = "frame too large", ref: str | None = None) -> None:
        super().__init__(413, reason, ref, fatal=True)
