"""``twistd o2obroker``: options and the service tree (after twisted.conch.manhole_tap)."""

from __future__ import annotations

import gc
import signal
from typing import Any

from twisted.application import service
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from o2obroker.config import ConfigError, load
from o2obroker.logs import twistd_observer
from o2obroker.policy.build import check_business
from o2obroker.service.console import check_console_files, console_service, namespace
from o2obroker.service.listen import Listener, NodeTree, check_endpoint, exit_with
from o2obroker.service.node import Node
from o2obroker.service.site import build_site
from o2obroker.service.stop import DrainOnStop, kill_time
from o2obroker.service.workers import Workers, add_worker_ports, worker_argv, worker_config
from o2obroker.transports.tcp import BinaryFactory


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an o2obroker node. Every option overrides the same key of the config "
        "file; endpoints are Twisted endpoint descriptions. See doc/configuration.md."
    )
    optParameters = [
        ["config", "c", None, "Path of an ini config file (see etc/o2obroker.ini)."],
        ["tcp", None, None, "Binary TCP endpoint [default: tcp:9100:interface=127.0.0.1]."],
        [
            "http",
            None,
            None,
            "HTTP endpoint for WebSocket, long-poll and the API "
            "[default: tcp:8080:interface=127.0.0.1].",
        ],
        ["auth", None, None, "token|none [default: token when a secret is set, else none]."],
        ["secret", None, None, "HS256 secret that signs client tokens."],
        ["api-key", None, None, "Bearer key of the server-side HTTP API."],
        ["node", None, None, "This node's id [default: n1]."],
        ["cluster", None, None, "The cluster this node serves in [default: default]."],
        ["max-frame", None, None, "Largest frame in bytes [default: 1048576]."],
        ["hb", None, None, "Heartbeat interval in seconds [default: 30]."],
        [
            "manhole",
            None,
            None,
            "Admin console over SSH on this endpoint, loopback only "
            "(e.g. tcp:2222:interface=127.0.0.1); needs --manhole-keys. Off by default.",
        ],
        ["manhole-keys", None, None, "authorized_keys file of the admin console."],
        ["log-format", None, None, "text|json: json writes one object a line [default: text]."],
        [
            "redis",
            None,
            None,
            "Redis backend: redis:// or rediss:// URL, several comma-separated to shard "
            "(redis://[user:password@]host[:port][/db]). Default: the in-memory backend.",
        ],
        [
            "workers",
            None,
            None,
            "Worker processes sharing the node's ports; more than 1 needs --redis [default: 1].",
        ],
        ["worker", None, None, "Run as worker I of the node (the node's parent process sets it)."],
    ]

    def postOptions(self) -> None:
        overrides = {
            "tcp": self["tcp"],
            "http": self["http"],
            "auth": self["auth"],
            "secret": self["secret"],
            "api_key": self["api-key"],
            "node": self["node"],
            "cluster": self["cluster"],
            "max_frame": self["max-frame"],
            "hb": self["hb"],
            "manhole": self["manhole"],
            "manhole_keys": self["manhole-keys"],
            "log_format": self["log-format"],
            "redis": self["redis"],
            "workers": self["workers"],
        }
        try:
            self["settings"] = config = load(self["config"], overrides)
            if self["worker"] is not None:
                check_worker(self["worker"], config.workers)
            for key in ("tcp", "http", "manhole", "manhole_telnet"):
                if getattr(config, key):
                    check_endpoint(key, getattr(config, key), global_reactor)
            check_console_files(config)
            check_business(config)
        except ConfigError as e:
            if self.parent is not None:
                # run by twistd, which would print its whole usage before the one line
                # that matters, on stdout: say only that line, on stderr
                exit_with(str(e))
            raise usage.UsageError(str(e)) from None


class NodeService(service.Service):
    """Starts and stops a node's timers; says loudly when it runs without auth."""

    log = Logger()

    def __init__(self, node: Node, reactor: Any = None) -> None:
        self.node = node
        self.reactor = reactor
        self._old_hup: Any = None

    def startService(self) -> None:
        super().startService()
        config = self.node.config
        if config.auth_mode == "none":
            self.log.warn(
                "DEVELOPMENT MODE: auth is 'none', any client may claim any user. "
                "Set a secret (--secret) before real clients connect."
            )
        tune_gc()
        if self.reactor is not None and hasattr(signal, "SIGHUP"):
            self._old_hup = signal.signal(signal.SIGHUP, self.hangup)
        self.node.start()
        self.log.info("node {node} started", node=config.node)

    def hangup(self, signum: int, frame: Any) -> None:
        """SIGHUP: read the keyword lists again, on the reactor thread."""
        self.reactor.callFromThread(self.reload)

    def reload(self) -> Any:
        d = self.node.reload_filters()

        def done(result: str) -> str:
            self.log.info("SIGHUP: {result}", result=result)
            return result

        d.addCallback(done)
        d.addErrback(lambda f: self.log.error("SIGHUP: {why}", why=f.getErrorMessage()))
        return d

    def stopService(self) -> Deferred[object] | None:
        if self._old_hup is not None:
            signal.signal(signal.SIGHUP, self._old_hup)
            self._old_hup = None
        super().stopService()
        # the Redis backend closes once its calls in flight are answered
        return self.node.stop()


# Young objects a collection waits for; CPython's default is 700.
GC_YOUNG = 20_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the per-message path.

    A broker makes a few short-lived containers per message, so with the
    default threshold generation 0 is collected every couple of hundred
    messages, and each pass walks everything young. What exists at start-up
    (modules, classes, the node's objects) lives as long as the process:
    ``gc.freeze`` moves it out of the collector's sight. Measured in
    doc/performance.md.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def check_worker(raw: str, workers: int) -> None:
    if not raw.isdigit() or int(raw) >= workers:
        raise ConfigError(f"worker: must be 0 to {workers - 1} (workers = {workers}), not {raw!r}")


def makeService(options: dict[str, Any], reactor: Any = None) -> service.MultiService:
    """The service tree of one node: the node itself and one service per listener;
    with ``workers`` above 1, the parent of that many worker processes instead."""
    reactor = reactor or global_reactor
    config = options["settings"]
    twistd = getattr(options, "parent", None)  # twistd's own options, when run by it
    top = NodeTree(twistd)
    if twistd is not None:
        # twistd opens its log after this returns, and takes the application's observer
        top.log_observer = twistd_observer(twistd, config.log_format)
    index = options.get("worker")
    if index is None and config.workers > 1:
        names = [p[0] for p in Options.optParameters]
        workers = Workers(
            config.node,
            config.workers,
            lambda i: worker_argv(options, names, i),
            {"tcp": config.tcp, "http": config.http},
            reactor,
        )
        # each worker drains on the SIGTERM passed on: no SIGKILL before its bound
        workers.killTime = kill_time(config.stop_drain)
        workers.stop_drain = config.stop_drain
        workers.setServiceParent(top)
        return top
    if index is not None:
        node_id, config = config.node, worker_config(config, int(index))
    node = Node(config, reactor)
    if index is not None:
        # in the registry record: what the node's totals are summed by
        node.worker = {"node": node_id, "index": int(index), "count": config.workers}
    top.node = node  # for the console and tests
    NodeService(node, reactor).setServiceParent(top)
    binary, site = BinaryFactory(node.gateway), build_site(node, reactor)
    if index is None:
        Listener("tcp", config.tcp, binary, reactor).setServiceParent(top)
        Listener("http", config.http, site, reactor).setServiceParent(top)
    else:
        add_worker_ports(top, node, binary, site, reactor)
    if config.stop_drain > 0:
        top.before_stop = DrainOnStop(node, config.stop_drain, reactor, reactor.callFromThread)
    console = console_service(config, namespace(node, top), reactor)
    if console is not None:
        console.setServiceParent(top)
    return top
