"""The app registry: business ids, each mapped to the cluster that serves it.

With a registry every hello must name a known app and ``/api/v1/route``
refuses unknown ones (doc/protocol.md sections 3 and 8); without one (no app
at all) apps are not checked.

Apps come from two places, merged: the node's ``[app:ID]`` config sections,
fixed for its life, and (with the Redis backend) a hash every node shares,
which an operator edits from the console or the command line while the
cluster runs. ``SharedApps`` keeps a node's copy of that hash fresh: a hello
reads the copy in memory, never Redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

#: seconds between two looks at the shared registry: the longest an edit waits to be seen
REFRESH = 2.0


def valid_name(name: object) -> bool:
    """A business id or cluster name: 1 to 128 bytes, no space, control character or ``/``."""
    return (
        isinstance(name, str)
        and 0 < len(name.encode("utf-8", "surrogatepass")) <= 128
        and all(c.isprintable() and not c.isspace() and c != "/" for c in name)
    )


def app_settings(app: str, cluster: str, **settings: Any) -> dict[str, Any]:
    """One app's record for the shared registry; ValueError naming what is wrong.

    ``settings`` are kept beside the cluster for per-app features to come;
    they must be JSON.
    """
    if not valid_name(app):
        raise ValueError(f"{app!r} is not a valid business id")
    if not valid_name(cluster):
        raise ValueError(f"cluster {cluster!r} is not a valid cluster name")
    record = {**settings, "cluster": cluster}
    try:
        json.dumps(record)
    except (TypeError, ValueError) as e:
        raise ValueError(f"app settings must be JSON: {e}") from None
    return record


class AppRegistry:
    """Business id → cluster. Empty: there is no registry, and nothing is checked.

    ``configured`` are the config file's apps; ``shared``: there is also a
    shared registry (the Redis backend), and ``replace_shared`` puts in the
    shared registry's, which win over a configured app of the same id (its
    cluster is the one an operator set last).
    """

    __slots__ = ("_clusters", "_configured", "_shared", "_waiting", "loaded")

    def __init__(
        self, configured: Mapping[str, str] | None = None, *, shared: bool = False
    ) -> None:
        self._configured = dict(configured or {})
        self._shared: dict[str, dict[str, Any]] = {}
        self._clusters = dict(self._configured)
        #: False until the shared registry has been read once: until then nobody
        #: can tell a known app from an unknown one, and hellos wait for it
        self.loaded = not shared
        self._waiting: list[Deferred[None]] = []

    def __bool__(self) -> bool:
        return bool(self._clusters)

    def __contains__(self, app: object) -> bool:
        return app in self._clusters

    def __len__(self) -> int:
        return len(self._clusters)

    def __iter__(self) -> Iterator[str]:
        return iter(self._clusters)

    def cluster_of(self, app: str) -> str | None:
        """The cluster serving ``app``, or None for an unknown app."""
        return self._clusters.get(app)

    def admits(self, app: str | None) -> bool:
        """Whether a hello naming ``app`` (None: none named) may go on."""
        return not self._clusters or app in self._clusters

    def replace_shared(self, shared: Mapping[str, Mapping[str, Any]]) -> None:
        """The shared registry as last read: business id → its settings (``cluster``...)."""
        self._shared = {app: dict(s) for app, s in shared.items()}
        clusters = dict(self._configured)
        clusters.update((app, str(s["cluster"])) for app, s in self._shared.items())
        self._clusters = clusters
        self.loaded = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:  # not cancelled by an earlier one's callback
                d.callback(None)

    def when_loaded(self) -> Deferred[None]:
        """Fires once the shared registry has been read (at once when it has).
        Cancelled (a hello that timed out), it is forgotten: while Redis stays
        away, hellos that gave up must not pile up here."""
        if self.loaded:
            return succeed(None)
        d: Deferred[None] = Deferred(self._forget)
        self._waiting.append(d)
        return d

    def _forget(self, d: Deferred[None]) -> None:
        if d in self._waiting:
            self._waiting.remove(d)

    def listing(self) -> dict[str, dict[str, Any]]:
        """Every app, its settings and where it comes from (``config`` or ``shared``)."""
        out: dict[str, dict[str, Any]] = {
            app: {"cluster": cluster, "source": "config"}
            for app, cluster in self._configured.items()
        }
        for app, settings in self._shared.items():
            out[app] = {**settings, "source": "shared"}
        return dict(sorted(out.items()))


#: ``read(version)``: fires with (the registry's version, its records), the records
#: None when ``version`` is still the registry's
Reader = Callable[[str | None], Deferred[tuple[str, dict[str, dict[str, Any]] | None]]]


class SharedApps:
    """Keeps ``registry`` in step with the shared registry, one look every ``interval``.

    A look costs one small script that answers with the version alone when
    nothing changed, so an idle registry costs a round trip per interval and
    node, whatever its size. While the store cannot be read, the last copy
    stays in force: a Redis outage does not turn every app away.
    """

    log = Logger()

    def __init__(
        self,
        registry: AppRegistry,
        read: Reader,
        clock: IReactorTime,
        interval: float = REFRESH,
    ) -> None:
        self.registry = registry
        self._read = read
        self.interval = interval
        self.version: str | None = None
        self._busy = False
        self._waiters: list[Deferred[None]] = []
        self._failing = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        # never waited on: a slow Redis must not stall the loop's later ticks
        if not self._busy:
            self._look()

    def refresh(self) -> Deferred[None]:
        """Look once; fires when the copy is as current as the registry was at this call.

        While a look is under way, one more follows it (the edit being waited
        for may have come after that look read the registry).
        """
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if not self._busy:
            self._look()
        return waiter

    def _look(self) -> None:
        self._busy = True
        waiters, self._waiters = self._waiters, []
        d = self._read(self.version)
        d.addCallbacks(self._got, self._failed)
        d.addBoth(self._done, waiters)

    def _got(self, answer: tuple[str, dict[str, dict[str, Any]] | None]) -> None:
        version, records = answer
        if self._failing:
            self._failing = False
            self.log.info("app registry readable again")
        if records is None:
            return
        before = set(self.registry)
        self.registry.replace_shared(records)
        self.version = version
        after = set(self.registry)
        self.log.info(
            "app registry version {version}: {n} apps (added {added}, removed {removed})",
            version=version,
            n=len(after),
            added=sorted(after - before),
            removed=sorted(before - after),
        )

    def _failed(self, f: Failure) -> None:
        if not self._failing:
            self._failing = True
            self.log.warn(
                "app registry: cannot read the shared apps ({why}); the last copy stays",
                why=f.getErrorMessage(),
            )

    def _done(self, _: object, waiters: list[Deferred[None]]) -> None:
        self._busy = False
        for waiter in waiters:
            waiter.callback(None)
        if self._waiters:
            self._look()
