"""Small helpers shared by the codec and the frame parser."""

from __future__ import annotations

from typing import Any

from .limits import Limits


def utf8_fits(s: str, limit: int) -> bool:
    """True when ``s`` takes at most ``limit`` bytes in UTF-8, encoding only if unsure."""
    n = len(s)
    if n > limit:
        return False
    if n * 4 <= limit or s.isascii():
        return True
    return len(s.encode("utf-8", "surrogatepass")) <= limit


def frame_ref(obj: Any, limits: Limits) -> str | None:
    """The ``id`` an error about ``obj`` should name, if it has a usable one.

    Only a non-empty string within ``max_id`` is echoed: an error must not carry
    back an arbitrarily large value the peer chose.
    """
    if type(obj) is dict:
        ref = obj.get("id")
        if type(ref) is str and ref and utf8_fits(ref, limits.max_id):
            return ref
    return None
