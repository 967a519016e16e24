"""The app registry: business ids, each mapped to the cluster that serves it.

With a registry every hello must name a known app and ``/api/v1/route``
refuses unknown ones (doc/protocol.md sections 3 and 8); without one (no
``[app:...]`` section) apps are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping


class AppRegistry:
    """Business id → cluster. Empty: there is no registry, and nothing is checked."""

    __slots__ = ("_clusters",)

    def __init__(self, clusters: Mapping[str, str] | None = None) -> None:
        self._clusters = dict(clusters or {})

    def __bool__(self) -> bool:
        return bool(self._clusters)

    def __contains__(self, app: object) -> bool:
        return app in self._clusters

    def __len__(self) -> int:
        return len(self._clusters)

    def cluster_of(self, app: str) -> str | None:
        """The cluster serving ``app``, or None for an unknown app."""
        return self._clusters.get(app)

    def admits(self, app: str | None) -> bool:
        """Whether a hello naming ``app`` (None: none named) may go on."""
        return not self._clusters or app in self._clusters
