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
        self.clients: dict[str, Any] = {}  # hook name -> HookClient, for metrics
        self.pools: list[Any] = []  # HTTP connection pools this layer made

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

    def reload_filters(self) -> Any:
        """Read the keyword lists again (SIGHUP, the console); a Deferred of the
        number of keywords, or None when no keyword filter is configured."""
        return self.keywords.reload() if self.keywords is not None else None

    def counts(self) -> dict[str, int]:
        """Every counter of the business layer, flat, for the metrics."""
        out: dict[str, int] = {}
        if self.pipeline is not None:
            out.update({f"pipeline_{k}": v for k, v in self.pipeline.counts.items()})
        if self.keywords is not None:
            out.update({f"keywords_{k}": v for k, v in self.keywords.counts.items()})
        for name, client in self.clients.items():
            out.update({f"hook_{name}_{k}": v for k, v in client.counts.items()})
            out[f"hook_{name}_breaker_opened"] = client.breaker.opened
        for queue in (self.offline, self.presence):
            if queue is not None:
                out.update({f"{queue.kind}_events_{k}": v for k, v in queue.counts.items()})
        return out

    def stop(self) -> None:
        """Stop the event queues and close the hooks' idle connections."""
        for queue in (self.offline, self.presence):
            if queue is not None:
                queue.stop()
        for pool in self.pools:
            pool.closeCachedConnections()
