"""Sends from back-end services (the HTTP API's publish, the console's ``broker.send``).

Both take this one path into the session layer: the frame is checked like a
client's ``send``, counted like one, and handed to the sending user's actor
like one, so dedupe, routing, inbox, receipts and the node's counters are
the same whoever sends.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from o2obroker.actors.user import SendOnlyDevice
from o2obroker.wire import ProtocolError, parse_frame, valid_user
from o2obroker.wire.frames import Send

if TYPE_CHECKING:
    from o2obroker.session.gateway import Gateway


class _Answer(SendOnlyDevice):
    """The sender side of one service send: fires ``result`` with the receipt or error
    frame that answers it, and counts it as a device's answer is counted."""

    def __init__(self, gateway: Gateway, device: str) -> None:
        self.device = device
        self.stats = gateway.stats
        self.result: Deferred[dict[str, Any]] = Deferred()

    def receipts(self, items: list[tuple[str, str, int, str]]) -> None:
        self.stats.receipts.update(item[3] for item in items)
        super().receipts(items)

    def send_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("t") == "error":
            self.stats.errors[frame.get("code", 0)] += 1
        super().send_frame(frame)

    def answered(self, frame: dict[str, Any]) -> None:
        if not self.result.called:  # a caller may have given up (cancelled) already
            self.result.callback(frame)


class ServiceSender:
    """The session layer's entry for sends that come from no connection."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def send(
        self,
        sender: str,
        body: Any,
        *,
        to: str | None = None,
        room: str | None = None,
        id: str | None = None,
        device: str = "service",
    ) -> Deferred[dict[str, Any]]:
        """Send ``body`` from ``sender`` to a user or a room.

        Raises ProtocolError (400, 413...) for what a client's send would be
        refused for, before anything is sent. Fires with the receipt frame, or
        with the error frame that answers the send. ``id`` dedupes like a
        send's; without one, a fresh id is made (no dedupe). A service may
        publish to any room.
        """
        gw = self._gateway
        limits = gw.limits
        if not valid_user(sender, limits):
            raise ProtocolError(400, "from is not a valid user id")
        if (to is None) == (room is None):
            raise ProtocolError(400, "give exactly one of to and room")
        frame: dict[str, Any] = {
            "t": "send",
            "id": id if id is not None else f"{device}-{os.urandom(8).hex()}",
            "body": body,
        }
        if to is not None:
            frame["to"] = to
        else:
            frame["room"] = room
        send = parse_frame(frame, limits)
        assert isinstance(send, Send)
        answer = _Answer(gw, device)
        gw.stats.msgs_in += 1
        gw.actors.user(sender).submit(answer, send)
        return answer.result
