"""Real nginx, rendered from the live registry, in front of three real nodes in two clusters.

What must hold: ``/ws?cluster=c&key=k`` (and ``/lp/open``, and any HTTP
request) through nginx reaches the node ``/api/v1/route`` names for c and k;
once that node is killed with SIGKILL, its keys reach their standby, before
the registry or the configuration knows it is dead. ``watch`` then renders
the configuration without it and reloads nginx.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any
from urllib.parse import quote

import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from o2obroker.session.auth import make_token
from tests.backend.test_redis_outage import eventually
from tests.cluster.nodes import SECRET, BrokerProcess
from tests.redis_server import RedisServer, free_port
from tests.web.test_loopback import _Ws

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NJS = "/usr/lib/nginx/modules/ngx_http_js_module.so"
KEYS = [f"shop-{i}" for i in range(12)] + ["ké-1", "a b&c=d", "$x;'\""]


class _Nginx(ProcessProtocol):
    """A child process (nginx, or the proxy's watch): its output, and when it ended."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class _FrontProxy(TestCase):
    """Three nodes (n1, n2 in cluster east, n3 in west) and nginx rendered in front.

    Subclasses say how a client names a cluster; this base runs no test itself.
    """

    timeout = 120
    #: the app registry of the nodes and the proxy: business id -> cluster
    apps: dict[str, str] = {}

    def where(self, cluster: str) -> str:
        """The query naming ``cluster``, as a client of these nodes writes it."""
        return f"cluster={cluster}"

    async def setUp(self) -> None:
        if not (os.access(NGINX, os.X_OK) and os.path.exists(NJS)):
            raise SkipTest("nginx and its njs module are not installed (make test installs them)")
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.destroy)
        self.nodes = {}
        for name, cluster in (("n1", "east"), ("n2", "east"), ("n3", "west")):
            node = BrokerProcess(name, self.redis.url)
            node.args += ["--cluster", cluster]
            with open(node.config, "a") as f:
                f.write("trusted_proxies = 127.0.0.1\n" + self.app_sections())
            self.addCleanup(node.destroy)
            self.nodes[name] = node
        await gatherResults([n.start() for n in self.nodes.values()])
        await self.until_listed({"n1", "n2", "n3"})
        self.dir = tempfile.mkdtemp(prefix="o2o-nginx-")
        os.chmod(self.dir, 0o755)  # nginx's workers run as another user when started by root
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.port = free_port()
        self.nginx_cmd = [NGINX, "-e", "stderr", "-p", self.dir, "-c", self.conf]
        await self.proxy("render", "--out", self.conf)
        self.nginx = _Nginx()
        transport = reactor.spawnProcess(
            self.nginx, NGINX, [*self.nginx_cmd, "-g", "daemon off;"], env=os.environ
        )
        self.addCleanup(_stop, self.nginx, transport)
        pid = os.path.join(self.dir, "nginx.pid")
        await eventually(lambda: os.path.exists(pid) or self.nginx.ended.called, 10)
        self.assertFalse(self.nginx.ended.called, self.nginx.output.decode())
        self.base = f"http://127.0.0.1:{self.port}"

    def app_sections(self) -> str:
        return "".join(f"[app:{app}]\ncluster = {c}\n" for app, c in self.apps.items())

    def proxy_args(self, command: str, *extra: str) -> list[str]:
        config = os.path.join(self.dir, "apps.ini")
        with open(config, "w") as f:
            f.write(self.app_sections())
        return [
            "-m",
            "o2obroker.service.proxy",
            command,
            "--redis",
            self.redis.url,
            "--standalone",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--default-cluster",
            "east",
            "--fail-timeout",
            "30",
            "--config",
            config,
            *extra,
        ]

    async def proxy(self, command: str, *extra: str) -> str:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, self.proxy_args(command, *extra), env=os.environ, reactor=reactor
        )
        self.assertEqual(code, 0, err)
        return out.decode()

    async def get(self, url: str) -> tuple[int, Any]:
        r = await treq.get(url, headers={"Authorization": "Bearer k"}, persistent=False)
        return r.code, json.loads(await r.content())

    async def listed(self) -> set[str]:
        for node in self.nodes.values():
            if node.running:
                _, body = await self.get(f"{node.http}/api/v1/nodes")
                return {n["id"] for n in body["nodes"]}
        return set()

    async def until_listed(self, ids: set[str]) -> None:
        seen: set[str] = set()
        for _ in range(100):
            seen = await self.listed()
            if seen == ids:
                return
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(seen, ids)

    async def route(self, cluster: str, key: str) -> tuple[str, str | None]:
        """What /api/v1/route on a live node says: the key's node and standby."""
        node = next(n for n in self.nodes.values() if n.running)
        code, body = await self.get(
            f"{node.http}/api/v1/route?{self.where(cluster)}&key={quote(key)}"
        )
        self.assertEqual(code, 200, body)
        standby = body["standby"]
        return body["node"]["id"], None if standby is None else standby["id"]

    async def served_by(self, cluster: str, key: str) -> str:
        """The node that answered a plain HTTP request through nginx."""
        code, body = await self.get(f"{self.base}/healthz?{self.where(cluster)}&key={quote(key)}")
        self.assertEqual(code, 200, body)
        return str(body["node"])

    async def ws_node(self, cluster: str, key: str, user: str, **headers: str) -> str:
        """The node a WebSocket through nginx was welcomed by."""
        url = f"ws://127.0.0.1:{self.port}/ws?{self.where(cluster)}&key={quote(key)}"
        factory = WebSocketClientFactory(url, headers=headers)
        factory.protocol = _Ws
        factory.cbor = False
        factory.opened, factory.closed, factory.frames = Deferred(), Deferred(), DeferredQueue()
        reactor.connectTCP("127.0.0.1", self.port, factory)
        proto = await factory.opened
        self.addCleanup(lambda: proto.dropConnection(abort=True) if proto.transport else None)
        proto.write({"t": "hello", "token": make_token(SECRET, user), "device": "d"})
        welcome = await factory.frames.get()
        self.assertEqual(welcome["t"], "welcome", welcome)
        proto.dropConnection(abort=True)
        return str(welcome["node"])

    async def lp_node(self, cluster: str, key: str, user: str) -> str:
        """The node a long-poll session opened through nginx lives on; a poll
        of its sid through nginx reaches the same node."""
        hello = {"t": "hello", "token": make_token(SECRET, user), "device": "lp"}
        r = await treq.post(
            f"{self.base}/lp/open?{self.where(cluster)}&key={quote(key)}",
            data=json.dumps(hello).encode(),
            headers={"Content-Type": "application/json"},
            persistent=False,
        )
        opened = json.loads(await r.content())
        self.assertEqual(r.code, 200, opened)
        welcome = opened["frames"][0]
        self.assertEqual(welcome["t"], "welcome", opened)
        # the sid names its node: the close goes there (a dead one's goes to any other)
        r = await treq.post(
            f"{self.base}/lp/close?sid={opened['sid']}&{self.where(cluster)}",
            data=b"",
            persistent=False,
        )
        await r.content()
        return str(welcome["node"])

    async def keys_reach_the_routed_node_then_its_standby(self) -> None:
        routes = {}
        for cluster in ("east", "west"):
            for key in KEYS:
                routes[cluster, key] = await self.route(cluster, key)
                self.assertEqual(
                    await self.served_by(cluster, key), routes[cluster, key][0], (cluster, key)
                )
        self.assertEqual({routes["west", k][0] for k in KEYS}, {"n3"})
        # both east nodes hold keys, so the kill below moves some and not others
        self.assertEqual({routes["east", k][0] for k in KEYS}, {"n1", "n2"})

        for i, key in enumerate(KEYS[:6]):
            for cluster in ("east", "west"):
                node = routes[cluster, key][0]
                self.assertEqual(await self.ws_node(cluster, key, f"u{i}"), node, key)
                self.assertEqual(await self.lp_node(cluster, key, f"l{i}"), node, key)

        # the node logs the client nginx names (here a client that came through another proxy)
        await self.ws_node("west", KEYS[0], "x", **{"X-Forwarded-For": "198.51.100.7"})
        await eventually(lambda: b"ws 198.51.100.7 via 127.0.0.1:" in self.nodes["n3"].output, 5)

        await self.check_unnamed(routes["east", KEYS[0]][0])

        # kill -9: the registry and the rendered file still list n1, nginx finds out alone
        await self.nodes["n1"].kill()
        moved = [k for k in KEYS if routes["east", k][0] == "n1"]
        for i, key in enumerate(moved):
            self.assertEqual(await self.served_by("east", key), "n2", key)
            self.assertEqual(await self.ws_node("east", key, f"m{i}"), "n2", key)
            self.assertEqual(await self.lp_node("east", key, f"p{i}"), "n2", key)
        for key in KEYS:
            self.assertEqual(await self.served_by("west", key), "n3")

        # once the registry drops n1, the route and a fresh rendering agree with nginx
        await self.until_listed({"n2", "n3"})
        for key in moved:
            self.assertEqual(await self.route("east", key), ("n2", None))
        rendered = await self.proxy("render")
        self.assertNotIn(self.nodes["n1"].http.removeprefix("http://"), rendered)
        self.assertIn(self.nodes["n2"].http.removeprefix("http://"), rendered)

    async def check_unnamed(self, default_node: str) -> None:
        """A request naming no cluster is the default cluster's; an unknown cluster is 503."""
        code, body = await self.get(f"{self.base}/healthz?key={quote(KEYS[0])}")
        self.assertEqual((code, body["node"]), (200, default_node))
        code, body = await self.get(f"{self.base}/healthz?cluster=nowhere&key=k")
        self.assertEqual((code, body), (503, {"error": "no healthy node in this cluster"}))


class FrontProxyTests(_FrontProxy):
    """The URL's ``cluster`` picks the cluster (no app registry)."""

    async def test_keys_reach_the_routed_node_then_its_standby(self) -> None:
        await self.keys_reach_the_routed_node_then_its_standby()

    async def test_watch_reloads_nginx_when_a_node_joins(self) -> None:
        watch = _Nginx()  # its output, for the failure message
        transport = reactor.spawnProcess(
            watch,
            sys.executable,
            [
                sys.executable,
                *self.proxy_args("watch", "--out", self.conf, "--interval", "0.3"),
                "--nginx",
                " ".join(self.nginx_cmd),
            ],
            env=os.environ,
        )
        self.addCleanup(_stop, watch, transport)
        n4 = BrokerProcess("n4", self.redis.url)
        n4.args += ["--cluster", "east"]
        self.addCleanup(n4.destroy)
        self.nodes["n4"] = n4
        await n4.start()
        await self.until_listed({"n1", "n2", "n3", "n4"})
        keys = [f"order-{i}" for i in range(40)]
        routes = {k: await self.route("east", k) for k in keys}
        taken = [k for k in keys if routes[k][0] == "n4"]
        self.assertTrue(taken)  # n4 takes some keys over from n1 and n2
        n4_address = n4.http.removeprefix("http://")
        await eventually(lambda: n4_address in _read(self.conf), 20)
        for key in taken:
            # the reload is under way: nginx's old workers may answer a last request or two
            served = ""
            for _ in range(50):
                served = await self.served_by("east", key)
                if served == "n4":
                    break
                await deferLater(reactor, 0.1, lambda: None)
            self.assertEqual(served, "n4", watch.output.decode())
        for key in taken[:3]:
            self.assertEqual(await self.ws_node("east", key, "w"), "n4")
        self.assertIn(b"nginx reloaded", watch.output)

        # three nodes in east: a killed node's keys go each to its own standby, n1 or n2,
        # the second node of that key's order in nginx as in the route
        await n4.kill()
        for key in taken:
            self.assertEqual(await self.served_by("east", key), routes[key][1], key)
        self.assertEqual({routes[k][1] for k in taken}, {"n1", "n2"})
        others = [k for k in keys if routes[k][0] != "n4"]
        for key in others:
            self.assertEqual(await self.served_by("east", key), routes[key][0], key)


class AppRoutedProxyTests(_FrontProxy):
    """With an app registry, the URL's ``app`` picks the cluster, as for ``/api/v1/route``."""

    apps = {"shop": "east", "kiosk": "west"}

    def where(self, cluster: str) -> str:
        return "app=" + next(app for app, c in self.apps.items() if c == cluster)

    async def check_unnamed(self, default_node: str) -> None:
        for query in ("key=k", "app=nowhere&key=k", "cluster=east&key=k"):
            code, body = await self.get(f"{self.base}/healthz?{query}")
            self.assertEqual((code, body), (403, {"error": "unknown app"}), query)
            route = await self.get(f"{self.nodes['n3'].http}/api/v1/route?{query}")
            self.assertEqual(route, (403, {"error": "unknown app"}), query)

    async def test_keys_reach_the_routed_node_then_its_standby(self) -> None:
        await self.keys_reach_the_routed_node_then_its_standby()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


async def _stop(proto: _Nginx, transport: Any) -> None:
    if not proto.ended.called:
        transport.signalProcess("TERM")
    await proto.ended
