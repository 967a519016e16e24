"""The front proxy: an nginx configuration rendered from the live node registry.

    python -m o2obroker.service.proxy render --redis URL [--out FILE] [--standalone]
    python -m o2obroker.service.proxy watch --redis URL --out FILE --nginx 'nginx -p DIR'

nginx's own ``hash ... consistent`` is a ketama ring, which would send a key
elsewhere than ``/api/v1/route`` does. So the rendered configuration lists
the routable nodes of every cluster, and ``proxy.js`` (nginx's njs module)
ranks them for the request's ``key`` with the score of
``routing.directory._score``: ``/ws?cluster=c&key=k`` reaches the node the
route names. Each ordered pair of a cluster's nodes is an upstream, the
second as ``backup``, so a node that refuses or times out passes its
requests to the key's standby at once, and is skipped for ``fail_timeout``.

``watch`` reads the registry every few seconds (on the reactor) and, when
what it renders changes, writes the file, checks it with ``nginx -t`` and
reloads nginx; a configuration nginx refuses is put back as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError as Timeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from o2obroker.backend.redis import RedisBackend
from o2obroker.backend.redis.url import RedisTarget, parse_urls
from o2obroker.config import ConfigError, load
from o2obroker.routing import NodeInfo

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proxy.js")
NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"
PREFIX = "o2o"  # the backend's key prefix

log = Logger()


@dataclass(frozen=True, slots=True)
class ProxyNode:
    """A node as the proxy reaches it: its id and the ``host:port`` of its HTTP port."""

    id: str
    address: str


@dataclass(frozen=True)
class ProxySettings:
    """What the rendered configuration needs besides the nodes."""

    listen: Sequence[str] = ("8080",)
    #: the cluster of a request that names none
    default_cluster: str = "default"
    #: seconds a node that failed is skipped (nginx's ``fail_timeout``)
    fail_timeout: int = 10
    connect_timeout: int = 3
    #: a WebSocket idle this long is closed (far above the protocol's heartbeat)
    ws_timeout: int = 3600
    #: a held long-poll is answered within lp_timeout (25 s by default)
    lp_timeout: int = 120
    max_body: str = "16m"
    script: str = SCRIPT
    #: a whole nginx.conf (nginx -p DIR -c FILE), not a part to include in ``http {}``
    standalone: bool = False
    njs_module: str = NJS_MODULE
    #: the app registry (business id -> cluster): the URL's ``app`` picks the cluster
    apps: Mapping[str, str] = field(default_factory=dict)


def http_address(record: Mapping[str, Any]) -> str | None:
    """``host:port`` of a record's HTTP port (its ``http`` address, else its long-poll one)."""
    where = record.get("addresses") or {}
    for name in ("http", "lp"):
        url = where.get(name)
        if isinstance(url, str) and url:
            netloc = urlsplit(url).netloc
            if netloc:
                return netloc
    return None


def proxied(records: Iterable[Mapping[str, Any]]) -> dict[str, list[ProxyNode]]:
    """The routable nodes of each cluster (those ``pick`` hashes keys over), by id.

    A record that cannot be read, or names no HTTP address, is left out.
    """
    clusters: dict[str, list[ProxyNode]] = {}
    for record in records:
        try:
            info = NodeInfo.from_record(record)
        except (KeyError, TypeError, ValueError) as e:
            log.warn("node record left out: {error!r}", error=e)
            continue
        address = http_address(record)
        if not info.routable or address is None:
            continue
        clusters.setdefault(info.cluster, []).append(ProxyNode(info.id, address))
    return {c: sorted(nodes, key=lambda n: n.id) for c, nodes in sorted(clusters.items())}


def _quoted(text: str) -> str:
    """``text`` as a single-quoted nginx string (which unescapes ``\\\\`` and ``\\'``)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _comment(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def render(clusters: Mapping[str, Sequence[ProxyNode]], settings: ProxySettings) -> str:
    """The configuration: a part for nginx's ``http {}``, or a whole file when standalone."""
    s = settings
    names = list(clusters)
    table = {
        "default": s.default_cluster,
        "clusters": {c: [n.id for n in clusters[c]] for c in names},
        "apps": dict(sorted(s.apps.items())),
    }
    # nginx would read "$..." as a variable: JSON's own escape of "$" it leaves alone
    registry = json.dumps(table, separators=(",", ":")).replace("$", "\\u0024")
    out = [
        "# o2obroker front proxy, rendered from the node registry by",
        "# `python -m o2obroker.service.proxy`: render it again rather than edit it.",
    ]
    for c, cluster in enumerate(names):
        nodes = ", ".join(f"{_comment(n.id)} {n.address}" for n in clusters[cluster])
        out.append(f"# cluster {c} {_comment(cluster)!r}: {nodes}")
    if not names:
        out.append("# no routable node: every request is answered 503")
    out += [
        "",
        f"js_import o2o_proxy from {s.script};",
        "js_set $o2o_upstream o2o_proxy.upstream;",
        "js_var $o2o_chosen;",
        f"js_var $o2o_registry {_quoted(registry)};",
        "",
        "map $http_upgrade $o2o_connection {",
        "    default upgrade;",
        "    ''      '';",
        "}",
    ]
    mark = f"max_fails=1 fail_timeout={s.fail_timeout}s"
    for c, cluster in enumerate(names):
        nodes = clusters[cluster]
        out += ["", f"upstream o2o_{c} {{  # {_comment(cluster)!r}: any node, in turn"]
        out += [f"    server {n.address} {mark};" for n in nodes]
        out.append("}")
        if len(nodes) < 2:
            continue
        for i, first in enumerate(nodes):
            for j, standby in enumerate(nodes):
                if i == j:
                    continue
                out += [
                    f"upstream o2o_{c}_{i}_{j} {{  # {_comment(first.id)}, standby"
                    f" {_comment(standby.id)}",
                    f"    server {first.address} {mark};",
                    f"    server {standby.address} backup;",
                    "}",
                ]
    out += ["", "server {"]
    out += [f"    listen {listen};" for listen in s.listen]
    out += [
        "    default_type application/json;",
        f"    client_max_body_size {s.max_body};",
        "    proxy_http_version 1.1;",
        "    proxy_set_header Host $http_host;",
        "    proxy_set_header X-Real-IP $remote_addr;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_set_header Upgrade $http_upgrade;",
        "    proxy_set_header Connection $o2o_connection;",
        f"    proxy_connect_timeout {s.connect_timeout}s;",
        "    proxy_next_upstream error timeout http_502;",
        "",
        "    location / {",
        *_pass(),
        "    }",
        "    location /ws {",
        *_pass(),
        f"        proxy_read_timeout {s.ws_timeout}s;",
        f"        proxy_send_timeout {s.ws_timeout}s;",
        "    }",
        "    location /lp/ {",
        *_pass(),
        "        proxy_buffering off;",
        f"        proxy_read_timeout {s.lp_timeout}s;",
        "    }",
        "}",
    ]
    text = "\n".join(out) + "\n"
    return _standalone(text, s) if s.standalone else text


def _pass() -> list[str]:
    # proxy.js answers "-" when the cluster has no routable node, "!" for an unknown app
    return [
        '        if ($o2o_upstream = "-") {',
        "            add_header Retry-After 5 always;",
        '            return 503 \'{"error": "no healthy node in this cluster"}\';',
        "        }",
        '        if ($o2o_upstream = "!") {',
        '            return 403 \'{"error": "unknown app"}\';',
        "        }",
        "        proxy_pass http://$o2o_upstream;",
    ]


def _standalone(http: str, s: ProxySettings) -> str:
    """A whole nginx.conf around ``http``, every file under nginx's prefix (``-p``)."""
    head = [f"load_module {s.njs_module};"] if s.njs_module else []
    head += [
        "worker_processes 1;",
        "pid nginx.pid;",
        "error_log error.log notice;",
        "events { worker_connections 10240; }",
        "",
        "http {",
        "    access_log access.log;",
    ]
    head += [f"    {kind}_temp_path {kind}_temp;" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")]
    head.append("    client_body_temp_path body_temp;")
    body = ["    " + line if line else "" for line in http.splitlines()]
    return "\n".join([*head, *body, "}"]) + "\n"


class RegistryReader:
    """The node registry and the shared app registry on the first Redis
    server, read by the nodes' own calls (same keys, same scripts) over one
    connection of its own."""

    def __init__(
        self, target: RedisTarget, reactor: Any, *, timeout: float = 5.0, prefix: str = PREFIX
    ) -> None:
        self.backend = RedisBackend(
            [target], reactor, reactor, "proxy", prefix=prefix, timeout=timeout
        )
        self.shard = self.backend.shards[0]
        self.clock: IReactorTime = reactor

    def start(self, timeout: float) -> Deferred[None]:
        """Connect; fails with TimeoutError when Redis cannot be reached in ``timeout`` s."""
        self.shard.start()
        ready: Deferred[None] = Deferred()
        # the shard's own Deferred is left alone: it fires late, once connected, or never
        self.shard.when_ready().addCallback(
            lambda _: None if ready.called else ready.callback(None)
        )
        return ready.addTimeout(timeout, self.clock)

    def stop(self) -> Deferred[None]:
        return self.shard.stop()

    def records(self) -> Deferred[list[dict[str, Any]]]:
        return self.backend.nodes()

    def apps(self) -> Deferred[dict[str, str]]:
        """The shared app registry as the nodes read it: business id -> cluster."""

        def clusters(answer: tuple[str, dict[str, Any] | None]) -> dict[str, str]:
            return {app: record["cluster"] for app, record in (answer[1] or {}).items()}

        return self.backend.apps().addCallback(clusters)


def with_shared_apps(settings: ProxySettings, shared: Mapping[str, str]) -> ProxySettings:
    """The settings with the shared registry's apps merged in, as a node merges
    them: the config file's apps, and the shared ones winning on the same id."""
    return replace(settings, apps={**settings.apps, **shared}) if shared else settings


def write_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole: nginx never reads half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Watcher:
    """Render every ``interval`` seconds; write, check and reload when it changed.

    ``run(args)`` runs ``nginx`` (the command with its ``-p``/``-c``/``-e``
    options) with ``args`` appended and fires with its exit code and output;
    it is ``spawnProcess`` underneath, so the reactor never waits on nginx.
    A registry that cannot be read leaves the configuration as it is.
    """

    def __init__(
        self,
        records: Callable[[], Deferred[list[dict[str, Any]]]],
        settings: ProxySettings,
        path: str,
        run: Callable[[Sequence[str]], Deferred[tuple[int, str]]],
        clock: IReactorTime,
        *,
        interval: float = 2.0,
        apps: Callable[[], Deferred[dict[str, str]]] | None = None,
    ) -> None:
        self.records = records
        #: the shared app registry, read with the records every round (None: config only)
        self.apps = apps
        self.settings = settings
        self.path = path
        self.run = run
        self.interval = interval
        self.rendered: str | None = None
        #: how many reloads nginx took, and how many it refused (the file was put back)
        self.reloads = 0
        self.refused = 0
        self._failing = False
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        if os.path.exists(path):
            with open(path) as f:
                self.rendered = f.read()

    def start(self) -> Deferred[Any]:
        return self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> Deferred[None]:
        """One round: read, render, and apply what changed (no round overlaps the next).

        A round that fails (the file cannot be written, nginx cannot be run)
        is logged and tried again at the next: the loop never stops by itself.
        """
        d = self.records()
        apps = self.apps
        if apps is not None:
            d.addCallback(lambda records: apps().addCallback(lambda shared: (records, shared)))
        d.addCallbacks(self._render, self._unread)
        d.addErrback(lambda f: log.failure("front proxy: configuration not applied", f))
        return d

    def _unread(self, failure: Any) -> None:
        if not self._failing:
            self._failing = True
            log.warn(
                "node registry unreadable ({why}): nginx keeps its configuration",
                why=failure.getErrorMessage(),
            )

    def _render(self, found: Any) -> Deferred[None] | None:
        if self._failing:
            self._failing = False
            log.info("node registry readable again")
        records, shared = found if isinstance(found, tuple) else (found, {})
        text = render(proxied(records), with_shared_apps(self.settings, shared))
        if text == self.rendered:
            return None
        return self.apply(text)

    def apply(self, text: str) -> Deferred[None]:
        """Write ``text``, have nginx check it, then reload; put the old file back if refused."""
        old = self.rendered
        write_file(self.path, text)

        def checked(result: tuple[int, str]) -> Deferred[None] | None:
            code, output = result
            if code != 0:
                self.refused += 1
                log.error(
                    "nginx refused the new configuration, kept the old one: {out}",
                    out=output.strip(),
                )
                if old is not None:
                    write_file(self.path, old)
                else:
                    os.remove(self.path)
                return None
            self.rendered = text
            return self.run(["-s", "reload"]).addCallback(reloaded)

        def reloaded(result: tuple[int, str]) -> None:
            code, output = result
            if code != 0:
                log.error("nginx -s reload failed: {out}", out=output.strip())
                return
            self.reloads += 1
            log.info("nginx reloaded: {summary}", summary=_summary(text))

        return self.run(["-t"]).addCallback(checked)


def _summary(text: str) -> str:
    """The clusters and nodes of a rendered configuration, from its head comments."""
    lines = (line.strip() for line in text.splitlines())
    return "; ".join(line[2:] for line in lines if line.startswith(("# cluster", "# no ")))


def process_runner(
    reactor: Any, command: Sequence[str]
) -> Callable[[Sequence[str]], Deferred[tuple[int, str]]]:
    """``command`` plus arguments, run on the reactor: fires with (exit code, output)."""

    def run(args: Sequence[str]) -> Deferred[tuple[int, str]]:
        d = getProcessOutputAndValue(
            command[0], [*command[1:], *args], env=os.environ, reactor=reactor
        )
        return d.addCallback(lambda r: (r[2], (r[0] + r[1]).decode("utf-8", "replace")))

    return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m o2obroker.service.proxy",
        description="Render an nginx front proxy from the node registry (doc/operations.md).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    render_ = sub.add_parser("render", help="render the configuration once")
    watch = sub.add_parser(
        "watch", help="render again whenever the registry changes, and reload nginx"
    )
    for cmd in (render_, watch):
        cmd.add_argument(
            "--redis", required=True, help="the nodes' redis URL(s); the first is read"
        )
        cmd.add_argument("--listen", action="append", help="nginx listen address (default 8080)")
        cmd.add_argument("--default-cluster", default="default", help="for requests naming none")
        cmd.add_argument(
            "--config",
            help="the nodes' config file: its [app:ID] sections join the shared app registry"
            " read from Redis (the URL's app then picks the cluster)",
        )
        cmd.add_argument("--standalone", action="store_true", help="a whole nginx.conf")
        cmd.add_argument("--njs-module", default=NJS_MODULE, help="load_module path (standalone)")
        cmd.add_argument("--script", default=SCRIPT, help="where nginx finds proxy.js")
        cmd.add_argument(
            "--fail-timeout", type=int, default=10, help="seconds a failed node is skipped"
        )
        cmd.add_argument("--connect-timeout", type=int, default=3, help="seconds to reach a node")
        cmd.add_argument("--timeout", type=float, default=5.0, help="seconds Redis may take")
    render_.add_argument("--out", help="file to write (default: standard output)")
    watch.add_argument("--out", required=True, help="the file nginx includes or runs with")
    watch.add_argument(
        "--nginx",
        default="nginx",
        help="the nginx command, with the options that find its configuration"
        " (e.g. 'nginx -p /srv/proxy -c nginx.conf'); -t and -s reload are appended",
    )
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between reads")
    return p


def _settings(args: argparse.Namespace) -> ProxySettings:
    for name in ("fail_timeout", "connect_timeout"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1 second")
    if args.timeout <= 0 or getattr(args, "interval", 1) <= 0:
        raise ValueError("--timeout and --interval must be above 0 seconds")
    apps = load(args.config).app_clusters() if args.config else {}
    return ProxySettings(
        apps=apps,
        listen=tuple(args.listen or ["8080"]),
        default_cluster=args.default_cluster,
        standalone=args.standalone,
        njs_module=args.njs_module,
        script=os.path.abspath(args.script),
        fail_timeout=args.fail_timeout,
        connect_timeout=args.connect_timeout,
    )


async def _main(reactor: Any, args: argparse.Namespace) -> None:
    settings = _settings(args)
    reader = RegistryReader(parse_urls(args.redis)[0], reactor, timeout=args.timeout)
    try:
        await reader.start(args.timeout)
        if args.command == "render":
            settings = with_shared_apps(settings, await reader.apps())
            text = render(proxied(await reader.records()), settings)
            if args.out:
                write_file(args.out, text)
            else:
                sys.stdout.write(text)
            return
        runner = process_runner(reactor, shlex.split(args.nginx))
        watcher = Watcher(
            reader.records,
            settings,
            args.out,
            runner,
            reactor,
            interval=args.interval,
            apps=reader.apps,
        )
        stopped: Deferred[None] = Deferred()
        reactor.addSystemEventTrigger("before", "shutdown", watcher.stop)
        watcher.start().addBoth(lambda _: stopped.callback(None))
        await stopped
    finally:
        await reader.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; a bad option or an unreachable Redis is one line and exit 1."""
    args = _parser().parse_args(argv)
    try:
        _settings(args)
        parse_urls(args.redis)
    except (ConfigError, ValueError) as e:
        sys.exit(f"o2obroker proxy: {e}")
    if args.command == "watch":
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])

    def run(reactor: Any) -> Deferred[None]:
        d = defer.ensureDeferred(_main(reactor, args))

        def failed(f: Any) -> None:
            unreachable = f.check(defer.TimeoutError, Timeout, defer.CancelledError)
            why = f"cannot reach {parse_urls(args.redis)[0].name}" if unreachable else ""
            sys.stderr.write(f"o2obroker proxy: {why or f.getErrorMessage()}\n")
            raise SystemExit(1)

        return d.addErrback(failed)

    task.react(run)


if __name__ == "__main__":
    main()
