"""What passes between actors through the router: data, never another actor.

A send on its way is an ``Outgoing``; what reaches a recipient's actor is a
list of ``Delivery`` tuples (stored, with their seqs); what goes back to the
sender is a ``Settlement`` of the batch, addressed by the sender's user id.
None of them holds a Python object of an actor or a connection, so each can
cross to another node as it is.
"""

from __future__ import annotations

from typing import NamedTuple

from o2obroker.backend.interface import StoredMessage


class Outgoing:
    """One accepted send of ``sender``: the stored form and where it goes.

    Exactly one of ``to`` and ``room`` is set. ``device`` is the name of the
    sending device (a room message never reaches it); ``service`` marks a
    back-end service, which may publish to any room. A policy, or the router,
    refuses an item by setting ``error`` to (code, reason): it is then
    answered with that error and not delivered.
    """

    __slots__ = ("device", "error", "id", "message", "room", "sender", "service", "to")

    def __init__(
        self,
        sender: str,
        send_id: str,
        device: str,
        message: StoredMessage,
        to: str | None = None,
        room: str | None = None,
        service: bool = False,
    ) -> None:
        self.sender = sender
        self.id = send_id
        self.device = device
        self.message = message
        self.to = to
        self.room = room
        self.service = service
        self.error: tuple[int, str] | None = None

    def refuse(self, code: int, reason: str) -> None:
        """Answer this send with an error instead of delivering it (the first error stays)."""
        if self.error is None:
            self.error = (code, reason)

    def __repr__(self) -> str:
        where = f"to={self.to!r}" if self.room is None else f"room={self.room!r}"
        return f"<Outgoing {self.sender}/{self.id} {where} error={self.error}>"


#: A stored message for one recipient: (seq in the recipient's inbox, the
#: message, the recipient's device not to write it to or None). The sending
#: device of a room message is never sent it. A plain tuple: one is made per
#: recipient of every message.
Delivery = tuple[int, StoredMessage, str | None]


class Settlement(NamedTuple):
    """How a batch of one sender's sends ended, told to the sender by user id.

    ``statuses`` maps each send id that got a receipt to its status
    (``delivered``, ``stored``, ``accepted``): the very dict the sender records
    in the backend. ``errors`` maps each other send id to (code, reason). One
    per batch, not per send: dicts of strings cost no object per send.
    """

    statuses: dict[str, str]
    errors: dict[str, tuple[int, str]]
