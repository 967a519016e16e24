"""A node: the backend, router, actors and gateway of one broker process, wired once."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from o2obroker.actors import ActorSystem
from o2obroker.actors.presence import PresenceHub
from o2obroker.actors.supervisor import (
    SUPERVISOR_GAUGES,
    PsutilSampler,
    Supervisor,
    SupervisorSettings,
    make_hook,
    occupancy_of,
)
from o2obroker.backend import IBackend, MemoryBackend
from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.backend.redis.archive import RedisArchive
from o2obroker.backend.timeouts import TimeoutBackend
from o2obroker.config import Config
from o2obroker.metrics import Metrics
from o2obroker.policy.build import build_business
from o2obroker.routing import AppRegistry, INodeDirectory, LocalDirectory, Router
from o2obroker.routing.apps import SharedApps
from o2obroker.routing.cluster import ClusterPublisher
from o2obroker.routing.directory import RegistryDirectory
from o2obroker.service.registry import Registry
from o2obroker.session import Authenticator, Gateway
from o2obroker.transports.api import node_info, public_addresses


class Node:
    """The live objects of a broker process; transports and the console use these."""

    def __init__(
        self,
        config: Config,
        clock: IReactorTime,
        backend: IBackend | None = None,
        *,
        agent: Any = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self._stopped = False
        self.metrics = Metrics()
        #: the backend itself (memory or Redis); the rest of the node uses ``backend``
        self.store = store = backend or make_backend(config, clock)
        # every call gets a time limit: a backend that never answers fails its sends
        self.backend = TimeoutBackend(store, clock, config.backend_timeout)
        self.router = Router(self.backend, stats=self.metrics.stats)
        self.cluster_publisher: ClusterPublisher | None = None
        if isinstance(store, RedisBackend):
            # many nodes: what is stored goes to the other nodes by publish too,
            # in the same time-limited call
            self.cluster_publisher = ClusterPublisher(
                self.router.actors, self.backend, config.node, clock
            )
            self.router.publisher = self.cluster_publisher
        self.presence = PresenceHub(
            self.backend,
            self.router,
            clock,
            window=config.presence_window,
            grace=config.presence_grace,
            skew=config.presence_skew,
            watch_cap=config.watch_cap,
            naive=config.presence_naive,
            # many nodes: each records its part, the backend merges them
            merged=isinstance(store, RedisBackend),
            stats=self.metrics.stats,
        )
        # the business layer (doc/business.md): pipeline, archive, hooks; ``agent``
        # is the HTTP client of the hooks (default: one on ``clock``, the reactor)
        archive = None
        if config.archive.enabled and isinstance(store, RedisBackend):
            # on the backend's servers: every node of the cluster reads the same history
            archive = RedisArchive(
                store,
                clock,
                max_messages=config.archive.max_messages,
                max_age=config.archive.max_age,
            )
        #: the app registry (doc/configuration.md): the config's apps, and on Redis
        #: the shared ones, read every ``app_refresh`` seconds (never per hello)
        self.apps = AppRegistry(config.app_clusters(), shared=isinstance(store, RedisBackend))
        self.shared_apps: SharedApps | None = None
        if isinstance(store, RedisBackend):
            self.shared_apps = SharedApps(self.apps, store.apps, clock, config.app_refresh)
        self.business = build_business(config, clock, agent=agent, archive=archive)
        if self.business.presence is not None:
            self.presence.on_edge = self.business.presence_changed
        self.actors = ActorSystem(self.router, clock, self.presence, self.business)
        if self.business.offline is not None:
            self.router.offline = self.business.stored_offline
        if self.business.archive is not None:
            self.router.archive = self.business.archive.add
        self.gateway = Gateway(
            self.actors,
            Authenticator(config.auth_mode, config.secret, config.limits, clock),
            config.limits,
            clock,
            node_id=config.node,
            hb=config.hb,
            hello_timeout=config.hello_timeout,
            stall_timeout=config.stall_timeout,
            stats=self.metrics.stats,
            transfer_rate=config.transfer_rate,
            rate_limit=config.rate_limit,
            rate_burst=config.rate_burst,
            naive_presence=config.presence_naive,
            apps=self.apps,
        )
        self.gateway.connect_hook = self.business.connect
        gauges = self.metrics.collector
        gauges.add_gauge(
            "o2o_connections",
            "Open connections by transport.",
            lambda: dict(self.gateway.connections),
            "transport",
        )
        gauges.add_gauge("o2o_actors", "User actors in memory.", lambda: len(self.actors))
        if hasattr(store, "stored"):
            gauges.add_gauge(
                "o2o_inbox_messages",
                "Messages held in the inboxes of the backend.",
                lambda: store.stored,
            )
        if hasattr(store, "stored_bytes"):
            gauges.add_gauge(
                "o2o_stored_bytes",
                "Bytes held in the inboxes of the backend, as the store caps count them.",
                lambda: store.stored_bytes,
            )
        if isinstance(store, RedisBackend):
            shards = store.shards
            gauges.add_gauge(
                "o2o_redis_up",
                "Whether each Redis server of the backend is connected (1) or not (0).",
                lambda: {s.name: int(s.ready) for s in shards},
                "server",
            )
            gauges.add_counter(
                "o2o_redis_commands",
                "Commands sent to each Redis server (a batch of messages is one).",
                lambda: {s.name: s.calls for s in shards},
                "server",
            )
        self.supervisor = Supervisor(
            self.actors.scheduler,
            clock,
            SupervisorSettings.from_config(config),
            self.gateway,
            sampler=PsutilSampler(),
            node_id=config.node,
            scale_out=make_hook(
                clock, config.scale_out_command, config.scale_out_url, config.hook_timeout
            ),
            scale_in=make_hook(
                clock, config.scale_in_command, config.scale_in_url, config.hook_timeout
            ),
        )
        self.gateway.admission = self.supervisor.admission.refusal  # one call per hello
        # the node registry: heartbeats out, live peers in, the latter feeding redirects
        self.registry = Registry(
            self.backend,
            clock,
            lambda: node_info(self, public_addresses(self), clock),
            interval=config.node_heartbeat,
            cluster=config.cluster,  # redirects go to peers of this node's cluster only
        )
        self.supervisor.peers = self.registry.peers
        # a hello this node cannot serve now (its subscriber is away) goes to a peer
        self.router.elsewhere = self.supervisor.admission.redirect_now
        if self.presence.merged:
            # every beat, the devices of nodes whose records lapsed go offline
            self.registry.on_beat = self.presence.sweep
            # peers took this node for dead: its devices' state and places again
            self.registry.on_rejoin = self._rejoined
        if self.cluster_publisher is not None:
            self.cluster_publisher.before_resync = self._before_resync
        gauges.add_counter(
            "o2o_business_events",
            "Business layer: sends rejected and rewritten, hook calls by outcome, events.",
            self.business.counts,
            "event",
        )
        if hasattr(self.business.archive, "stored"):  # the memory archive's count
            gauges.add_gauge(
                "o2o_archive_messages",
                "Messages held in the history archive.",
                lambda: self.business.archive.stored,
            )
        for name, doc in SUPERVISOR_GAUGES.items():
            gauges.add_gauge(f"o2o_{name}", doc, lambda n=name: self.supervisor.gauges()[n])
        gauges.add_counter(
            "o2o_supervisor_events",
            "Alerts, hook runs and failures, sessions sent away by a drain.",
            lambda: {**self.supervisor.counts, "drained": self.gateway.drainer.sent},
            "event",
        )

        #: where clients are routed to (doc/protocol.md section 8): on the embedded
        #: backend this node alone; on Redis every live node of the registry
        self.directory: INodeDirectory = (
            RegistryDirectory(self._registry_records)
            if isinstance(store, RedisBackend)
            else LocalDirectory(config.node, config.cluster, self.figures)
        )

    def _rejoined(self) -> None:
        """Each local user's presence part and device locations are recorded
        again (and its devices sent what they may have missed), a slice of
        users a reactor turn, in the same pass as after a resubscribe."""
        if self.cluster_publisher is not None:
            self.cluster_publisher.rejoined(list(self.router.actors))

    def _before_resync(self) -> Deferred[object]:
        """Before a pass of resyncs: once the store is back, a beat of its own.
        An outage that cost the subscriber its channels (a Redis restart) may
        have cost this node its record too; the beat finds that now, and the
        rejoin joins the pass about to start instead of making a second one.
        Recorded again first, the node is not swept while its users are."""
        registry = self.registry
        if not registry.running:
            return succeed(None)
        d = self.store.when_ready()
        d.addTimeout(registry.ttl, self.clock)
        d.addCallback(lambda _: registry.beat_anew())
        return d

    def _registry_records(self) -> Deferred[list[dict[str, Any]]]:
        """The registry's live records, this node's own made now rather than
        as of its last heartbeat (it may not have beaten yet)."""
        own = node_info(self, public_addresses(self), self.clock)

        def merged(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [own, *(r for r in records if r.get("id") != own["id"])]

        return self.backend.nodes().addCallback(merged)

    def figures(self) -> dict[str, Any]:
        """This node's load and state, as a node registry record carries them."""
        connections = dict(self.gateway.connections)
        supervisor = self.supervisor
        accepting = self.gateway.accepting
        return {
            "connections": connections,
            "occupancy": occupancy_of(connections),
            "advice": supervisor.transport,
            "draining": not accepting,
            "healthy": supervisor.state != "alerting",
            "full": accepting and not supervisor.takes_clients(),
        }

    def start(self) -> None:
        if isinstance(self.store, RedisBackend):
            self.store.start()
        self.gateway.start()
        self.supervisor.start()
        if isinstance(self.store, RedisBackend):
            # the first heartbeat once Redis is there, not a failure logged before it
            self.store.when_ready().addCallback(lambda _: self._stopped or self._ready())
        else:
            self.registry.start()

    def _ready(self) -> None:
        self.registry.start()
        if self.shared_apps is not None:
            self.shared_apps.start()

    def reload_filters(self) -> Deferred[Any]:
        """Read the keyword lists again without a restart (SIGHUP, the console)."""
        d = self.business.reload_filters()
        if d is None:
            return succeed("no keyword filter configured")
        return d.addCallback(lambda n: f"keyword filter reloaded: {n} keywords")

    def stop(self) -> Deferred[object] | None:
        self._stopped = True
        self.business.stop()
        self.gateway.stop()
        self.presence.stop()
        self.supervisor.stop()
        if self.shared_apps is not None:
            self.shared_apps.stop()
        left = self.registry.stop()  # before the backend closes: peers forget us now
        if isinstance(self.store, RedisBackend):
            store = self.store
            return left.addCallback(lambda _: store.stop())
        return None


def make_backend(config: Config, clock: IReactorTime, reactor: object = None) -> IBackend:
    """The embedded backend, or Redis when ``redis`` names servers."""
    if not config.redis:
        return MemoryBackend(
            clock,
            config.node,
            inbox_cap=config.inbox_cap,
            inbox_ttl=config.inbox_ttl,
            dedupe_ttl=config.dedupe_ttl,
            max_bytes=config.max_stored_bytes,
            max_user_bytes=config.max_stored_bytes_per_user,
        )
    return RedisBackend(
        parse_urls(config.redis),
        clock,
        reactor or clock,
        config.node,
        ca=config.redis_ca,
        timeout=config.redis_timeout,
        inbox_cap=config.inbox_cap,
        inbox_ttl=config.inbox_ttl,
        dedupe_ttl=config.dedupe_ttl,
    )
