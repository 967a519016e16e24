"""Pages of the archive for a reader: who may read what (doc/protocol.md section 4, History)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail

from o2obroker.backend.archive import conversation, room_thread
from o2obroker.backend.interface import IBackend
from o2obroker.wire import ProtocolError


def read_history(
    archive: Any,
    backend: IBackend,
    reader: str | None,
    *,
    peer: str | None = None,
    room: str | None = None,
    before: str | None = None,
    limit: int = 50,
) -> Deferred[dict[str, Any]]:
    """Fire with ``{"messages": [...], "more": bool}``, the msg frames without
    seq, newest first; or fail with ProtocolError: 404 "no archive", 403 when
    ``reader`` is not a member of ``room``. A conversation is always one the
    reader takes part in (``reader`` and ``peer``); ``reader`` None is a
    back-end service, which reads any room."""
    if archive is None:
        return fail(ProtocolError(404, "no archive"))
    if room is None:
        assert reader is not None and peer is not None
        return archive.page(conversation(reader, peer), before, limit).addCallback(_answer)
    if reader is None:
        return archive.page(room_thread(room), before, limit).addCallback(_answer)

    def checked(members: frozenset[str]) -> Deferred[dict[str, Any]]:
        if reader not in members:
            raise ProtocolError(403, "not a member of this room")
        return archive.page(room_thread(room), before, limit).addCallback(_answer)

    return backend.members(room).addCallback(checked)


def _answer(page: tuple[list[Any], bool]) -> dict[str, Any]:
    messages, more = page
    return {"messages": [{"t": "msg", **m.fields} for m in messages], "more": more}
