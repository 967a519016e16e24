"""A message on its way from one sender to its recipients."""

from __future__ import annotations

from typing import Any

from o2obroker.backend.interface import StoredMessage


class Envelope:
    """One accepted send: the stored form, shared by every recipient, and who to tell.

    ``reply`` is the sender's actor (anything with ``settled(envelopes)``), told
    once every recipient has stored the message; recipients collect finished
    envelopes and tell each sender once per batch, not once per message.
    ``pending`` counts the recipients that have not stored it yet.
    """

    __slots__ = ("exclude_device", "id", "message", "pending", "reply", "room", "sender", "status")

    def __init__(
        self,
        message: StoredMessage,
        sender: str,
        send_id: str,
        reply: Any,
        exclude_device: str | None = None,
        room: str | None = None,
    ) -> None:
        self.message = message
        self.sender = sender
        self.id = send_id
        self.reply = reply
        self.exclude_device = exclude_device
        self.room = room
        self.pending = 1
        self.status = "stored"

    def done(self, written: bool) -> bool:
        """One recipient has stored the message (and ``written`` it to a live
        device). True when that was the last recipient."""
        if written:
            self.status = "delivered"
        self.pending -= 1
        return self.pending == 0

    @property
    def final_status(self) -> str:
        """The receipt's status once every recipient has it (PROTOCOL.md section 4)."""
        return "accepted" if self.room is not None else self.status


def settle_all(finished: list[Envelope]) -> None:
    """Tell each sender about its finished envelopes, in one message per sender."""
    if not finished:
        return
    first = finished[0].reply
    if all(e.reply is first for e in finished):
        if first is not None:
            first.settled(finished)
        return
    by_sender: dict[int, tuple[Any, list[Envelope]]] = {}
    for e in finished:
        if e.reply is not None:
            by_sender.setdefault(id(e.reply), (e.reply, []))[1].append(e)
    for reply, group in by_sender.values():
        reply.settled(group)
