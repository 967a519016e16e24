"""A message on its way from one sender to its recipients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from o2obroker.backend.interface import StoredMessage

# Called once with the final status of a send: delivered, stored or accepted.
ReplyTo = Callable[[str, str], None]


class Envelope:
    """One accepted send: the stored form, shared by every recipient, and who to tell.

    For a room message ``pending`` counts the members whose inbox has not yet
    stored it; the sender is told ``accepted`` when it reaches zero.
    """

    __slots__ = ("exclude_device", "id", "message", "pending", "reply", "sender", "status")

    def __init__(
        self,
        message: StoredMessage,
        sender: str,
        send_id: str,
        reply: ReplyTo | None,
        exclude_device: str | None = None,
    ) -> None:
        self.message = message
        self.sender = sender
        self.id = send_id
        self.reply = reply
        self.exclude_device = exclude_device
        self.pending = 1
        self.status = "stored"

    @property
    def fields(self) -> dict[str, Any]:
        return self.message.fields

    def done(self, status: str) -> None:
        """One recipient has stored (and maybe written) the message."""
        if status == "delivered":
            self.status = "delivered"
        self.pending -= 1
        if self.pending == 0 and self.reply is not None:
            room = "room" in self.message.fields
            self.reply(self.id, "accepted" if room else self.status)
