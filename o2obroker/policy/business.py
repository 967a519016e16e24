"""The business layer of a node, as its actors see it: one object, or None when off."""

from __future__ import annotations

from typing import Any

from o2obroker.policy.events import EventQueue
from o2obroker.policy.pipeline import Pipeline


class Business:
    """The pipeline, the archive and the event hooks of a node (each None when
    not configured). Actors hold None instead of this object when nothing is
    configured, so a node without business rules pays one ``is None`` per batch."""

    def __init__(
        self,
        pipeline: Pipeline | None = None,
        archive: Any = None,
        offline: EventQueue | None = None,
        presence: EventQueue | None = None,
        keywords: Any = None,
        connect: Any = None,
    ) -> None:
        self.pipeline = pipeline
        self.archive = archive
        self.offline = offline
        self.presence = presence
        self.keywords = keywords  # the keyword filter stage, for reloads
        self.connect = connect  # the connect hook, for the sessions

    @property
    def active(self) -> bool:
        """Whether actors need this object at all."""
        return any(x is not None for x in (self.pipeline, self.archive, self.offline))

    def stored_offline(self, user: str, messages: list[Any]) -> None:
        """Messages were stored for ``user``, who has no live device: tell the
        application (for mobile push)."""
        add = self.offline.add  # type: ignore[union-attr]
        for m in messages:
            add({"user": user, "message": m.fields})

    def presence_changed(self, user: str, state: str, ts: int) -> None:
        """A user's first device came online (``state`` not offline) or its last went."""
        self.presence.add({"user": user, "state": state, "ts": ts})  # type: ignore[union-attr]

    def stop(self) -> None:
        for queue in (self.offline, self.presence):
            if queue is not None:
                queue.stop()
