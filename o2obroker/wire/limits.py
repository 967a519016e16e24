"""Size and shape limits of the wire protocol (doc/protocol.md, section 1).

One immutable object, built once from the configuration and passed to every
decoder, so a limit cannot drift between transports.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["DEFAULT_LIMITS", "MAX_DEPTH_CEILING", "Limits"]

#: Highest accepted ``max_depth``. Python's own recursion limit stops JSON
#: nesting near 1,000 levels anyway; a ceiling well below it keeps every
#: depth check in this package exact and cheap.
MAX_DEPTH_CEILING = 256


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits on what a peer may send; sizes are in bytes (UTF-8 for strings)."""

    max_frame: int = 1 << 20  #: one encoded frame (or one WebSocket message)
    max_body: int = 64 << 10  #: encoded size of a send's body
    max_user: int = 128  #: a user id
    max_room: int = 128  #: a room name
    max_id: int = 64  #: a send's id
    max_device: int = 64  #: a device name
    max_status: int = 256  #: a presence status text
    max_queue: int = 4 << 20  #: unsent output per connection
    max_depth: int = 32  #: nesting levels; the frame map itself is level 1
    max_watch: int = 1000  #: users in one watch/unwatch/probe frame

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # bool is an int subclass, but "max_frame = true" is a config mistake.
            if type(value) is not int:
                raise TypeError(f"{f.name} must be an integer, not {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{f.name} must be positive, not {value}")
        if self.max_depth > MAX_DEPTH_CEILING:
            raise ValueError(f"max_depth must be at most {MAX_DEPTH_CEILING}, not {self.max_depth}")
        if self.max_frame > 0xFFFFFFFF:
            raise ValueError("max_frame must fit the 4-byte length prefix")


DEFAULT_LIMITS = Limits()
