"""The front proxy's configuration: what is rendered from which records, and the watch loop."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.service.proxy import (
    NJS_MODULE,
    ProxyNode,
    ProxySettings,
    RegistryReader,
    Watcher,
    proxied,
    render,
)
from tests.redis_server import RedisServer, free_port, shared, unique_prefix


def record(id: str, cluster: str = "c1", port: int = 8081, **fields: Any) -> dict[str, Any]:
    return {
        "id": id,
        "cluster": cluster,
        "addresses": {
            "ws": f"ws://10.0.0.1:{port}/ws",
            "lp": f"http://10.0.0.1:{port}/lp",
            "http": f"http://10.0.0.1:{port}",
        },
        **fields,
    }


def registry_of(text: str) -> dict[str, Any]:
    """The table proxy.js reads, as nginx hands it over (its escapes undone)."""
    quoted = re.search(r"js_var \$o2o_registry '((?:[^'\\]|\\.)*)';", text)
    assert quoted is not None, text
    return json.loads(re.sub(r"\\(.)", r"\1", quoted.group(1)))  # type: ignore[no-any-return]


def upstreams(text: str) -> dict[str, list[str]]:
    found = re.findall(r"upstream (\S+) \{[^\n]*\n((?:    server [^\n]*\n)+)\}", text)
    return {name: [s.strip() for s in servers.splitlines()] for name, servers in found}


class ProxiedTests(SynchronousTestCase):
    def test_only_routable_nodes_by_cluster_and_id(self) -> None:
        clusters = proxied(
            [
                record("n2", port=8082),
                record("n1"),
                record("n3", "c2", 8083),
                record("sick", healthy=False),
                record("leaving", draining=True),
                record("full", full=True),
            ]
        )
        self.assertEqual(
            clusters,
            {
                "c1": [ProxyNode("n1", "10.0.0.1:8081"), ProxyNode("n2", "10.0.0.1:8082")],
                "c2": [ProxyNode("n3", "10.0.0.1:8083")],
            },
        )

    def test_a_record_without_an_address_or_unreadable_is_left_out(self) -> None:
        lp_only = record("lp")
        del lp_only["addresses"]["http"]
        with capturedLogs() as events:
            clusters = proxied(
                [
                    {"id": "bare"},
                    {"cluster": "c1"},
                    record("ok"),
                    lp_only,
                    record("bad", occupancy="x"),
                ]
            )
        self.assertEqual(
            clusters["c1"], [ProxyNode("lp", "10.0.0.1:8081"), ProxyNode("ok", "10.0.0.1:8081")]
        )
        self.assertEqual(len([e for e in events if "left out" in e.get("log_format", "")]), 2)


class RenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clusters = proxied(
            [record("n1"), record("n2", port=8082), record("n3", port=8083), record("w", "c2", 9)]
        )
        self.text = render(self.clusters, ProxySettings(listen=("127.0.0.1:80",)))

    def test_an_upstream_per_cluster_and_per_ordered_pair(self) -> None:
        found = upstreams(self.text)
        self.assertEqual(
            found["o2o_0"],
            [f"server 10.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in (8081, 8082, 8083)],
        )
        self.assertEqual(found["o2o_1"], ["server 10.0.0.1:9 max_fails=1 fail_timeout=10s;"])
        pairs = sorted(n for n in found if n.count("_") == 3)
        self.assertEqual(len(pairs), 6)  # 3 x 2 in c1, none in a one-node cluster
        self.assertEqual(
            found["o2o_0_2_0"],
            ["server 10.0.0.1:8083 max_fails=1 fail_timeout=10s;", "server 10.0.0.1:8081 backup;"],
        )

    def test_the_table_lists_the_nodes_in_the_order_of_the_upstreams(self) -> None:
        self.assertEqual(
            registry_of(self.text),
            {"default": "default", "clusters": {"c1": ["n1", "n2", "n3"], "c2": ["w"]}, "apps": {}},
        )

    def test_websocket_long_poll_and_the_client_address_pass_through(self) -> None:
        text = self.text
        self.assertIn("listen 127.0.0.1:80;", text)
        for line in (
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection $o2o_connection;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_set_header X-Real-IP $remote_addr;",
            "proxy_pass http://$o2o_upstream;",
        ):
            self.assertIn(line, text)
        ws = text[text.index("location /ws {") :]
        self.assertIn("proxy_read_timeout 3600s;", ws[: ws.index("}\n    location")])

    def test_names_nginx_would_read_as_variables_or_quotes_reach_the_script_intact(self) -> None:
        odd = "c$x'\\\"{;}"
        text = render({odd: [ProxyNode("n$1'", "h:1")]}, ProxySettings(default_cluster=odd))
        self.assertEqual(
            registry_of(text), {"default": odd, "clusters": {odd: ["n$1'"]}, "apps": {}}
        )
        line = next(ln for ln in text.splitlines() if ln.startswith("js_var $o2o_registry"))
        self.assertNotIn("$", line.removeprefix("js_var $o2o_registry"))

    def test_the_app_registry_goes_with_the_table(self) -> None:
        text = render(self.clusters, ProxySettings(apps={"shop": "c2", "kiosk": "c1"}))
        self.assertEqual(registry_of(text)["apps"], {"kiosk": "c1", "shop": "c2"})
        self.assertIn('return 403 \'{"error": "unknown app"}\';', text)

    def test_no_node_at_all_still_renders_a_server_answering_503(self) -> None:
        text = render({}, ProxySettings())
        self.assertEqual(upstreams(text), {})
        self.assertIn("return 503", text)

    def test_standalone_is_a_whole_file_under_the_prefix(self) -> None:
        text = render(self.clusters, ProxySettings(standalone=True))
        self.assertTrue(text.startswith("load_module /usr/lib/nginx/modules/ngx_http_js_module"))
        self.assertIn("pid nginx.pid;", text)
        self.assertIn("    upstream o2o_0 {", text)
        self.assertTrue(text.endswith("    }\n}\n"))


class FakeNginx:
    """Answers ``nginx -t`` and ``nginx -s reload`` as told, and records each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.test_code = 0
        self.seen: list[str] = []  # the file as it was at each -t

    def __call__(self, args: Sequence[str]) -> Deferred[tuple[int, str]]:
        self.calls.append(list(args))
        if args == ["-t"]:
            with open(self.path) as f:
                self.seen.append(f.read())
            return succeed((self.test_code, "" if self.test_code == 0 else "emerg: bad"))
        return succeed((0, ""))


class WatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.records: list[dict[str, Any]] | Exception = [record("n1"), record("n2", port=8082)]
        self.path = os.path.join(tempfile.mkdtemp(), "o2o.conf")
        self.nginx = FakeNginx()
        self.nginx.path = self.path  # type: ignore[attr-defined]
        self.watcher = Watcher(
            self.read, ProxySettings(), self.path, self.nginx, self.clock, interval=2
        )

    def read(self) -> Deferred[list[dict[str, Any]]]:
        if isinstance(self.records, Exception):
            return fail(self.records)
        return succeed(list(self.records))

    def file(self) -> str:
        with open(self.path) as f:
            return f.read()

    def test_renders_checks_and_reloads_then_only_on_a_change(self) -> None:
        self.watcher.start()
        self.assertEqual(self.nginx.calls, [["-t"], ["-s", "reload"]])
        self.assertIn("10.0.0.1:8082", self.file())
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(len(self.nginx.calls), 2)  # nothing changed: nginx left alone
        self.records = [record("n1")]  # n2 left the registry
        self.clock.advance(2)
        self.assertEqual(self.nginx.calls[2:], [["-t"], ["-s", "reload"]])
        self.assertNotIn("10.0.0.1:8082", self.file())
        self.assertEqual(self.watcher.reloads, 2)

    def test_an_app_added_to_or_removed_from_the_shared_registry_is_a_change(self) -> None:
        shared: dict[str, str] = {}
        watcher = Watcher(
            self.read,
            ProxySettings(apps={"shop": "c1"}),
            self.path,
            self.nginx,
            self.clock,
            interval=2,
            apps=lambda: succeed(dict(shared)),
        )
        watcher.start()
        self.assertEqual(registry_of(self.file())["apps"], {"shop": "c1"})
        shared.update(kiosk="c2", shop="c3")  # the shared record wins over the config's
        self.clock.advance(2)
        self.assertEqual(registry_of(self.file())["apps"], {"kiosk": "c2", "shop": "c3"})
        shared.clear()
        self.clock.advance(2)
        self.assertEqual(registry_of(self.file())["apps"], {"shop": "c1"})
        self.assertEqual(watcher.reloads, 3)

    def test_a_node_turning_unhealthy_is_a_change(self) -> None:
        self.watcher.start()
        self.records = [record("n1"), record("n2", port=8082, healthy=False)]
        self.clock.advance(2)
        self.assertEqual(self.watcher.reloads, 2)
        self.assertEqual(registry_of(self.file())["clusters"], {"c1": ["n1"]})

    def test_a_configuration_nginx_refuses_is_put_back(self) -> None:
        self.watcher.start()
        before = self.file()
        self.nginx.test_code = 1
        self.records = [record("n1")]
        with capturedLogs() as events:
            self.clock.advance(2)
        self.assertEqual(self.nginx.calls[-1], ["-t"])  # no reload
        self.assertNotEqual(self.nginx.seen[-1], before)  # nginx checked the new one...
        self.assertEqual(self.file(), before)  # ...and the old one is back
        self.assertEqual(self.watcher.refused, 1)
        self.assertTrue(any("refused" in e.get("log_format", "") for e in events))
        self.nginx.test_code = 0
        self.clock.advance(2)  # tried again at the next round
        self.assertEqual(self.nginx.calls[-1], ["-s", "reload"])
        self.assertNotIn("10.0.0.1:8082", self.file())

    def test_an_unreadable_registry_leaves_the_configuration_alone(self) -> None:
        self.watcher.start()
        before = self.file()
        self.records = ConnectionError("redis down")
        with capturedLogs() as events:
            self.clock.advance(2)
            self.clock.advance(2)
        self.assertEqual(self.file(), before)
        self.assertEqual(len(self.nginx.calls), 2)
        warned = [e for e in events if "unreadable" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)  # once, not every round
        self.assertTrue(self.watcher._loop.running)

    def test_nginx_that_cannot_be_run_is_logged_and_tried_again(self) -> None:
        calls: list[Sequence[str]] = []

        def missing(args: Sequence[str]) -> Deferred[tuple[int, str]]:
            calls.append(args)
            return fail(FileNotFoundError("nginx"))

        watcher = Watcher(self.read, ProxySettings(), self.path, missing, self.clock, interval=2)
        with capturedLogs() as events:
            watcher.start()
            self.clock.advance(2)
        self.assertEqual(calls, [["-t"], ["-t"]])
        self.assertTrue(watcher._loop.running)
        self.assertEqual(len([e for e in events if e.get("log_failure")]), 2)
        self.flushLoggedErrors(FileNotFoundError)

    def test_an_existing_file_that_is_current_is_not_reloaded(self) -> None:
        self.watcher.start()
        again = Watcher(self.read, ProxySettings(), self.path, self.nginx, self.clock)
        again.start()
        self.assertEqual(len(self.nginx.calls), 2)


class CommandLineTests(TestCase):
    async def run_proxy(self, *args: str) -> tuple[int, str, str]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "o2obroker.service.proxy", *args],
            env=os.environ,
            reactor=reactor,
        )
        return code, out.decode(), err.decode()

    async def test_a_bad_redis_url_is_one_line_and_exit_1(self) -> None:
        code, out, err = await self.run_proxy("render", "--redis", "http://x")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err.strip().splitlines(),
            ["o2obroker proxy: 'http://x': the scheme must be redis:// or rediss://"],
        )

    async def test_a_bad_interval_is_one_line_and_exit_1(self) -> None:
        code, out, err = await self.run_proxy(
            "watch", "--redis", "redis://x", "--out", "f", "--interval", "0"
        )
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err.strip().splitlines(),
            ["o2obroker proxy: --timeout and --interval must be above 0 seconds"],
        )

    async def test_an_unreachable_redis_is_one_line_and_exit_1(self) -> None:
        url = f"redis://127.0.0.1:{free_port()}"
        code, out, err = await self.run_proxy("render", "--redis", url, "--timeout", "0.5")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.strip().splitlines(), [f"o2obroker proxy: cannot reach {url}/0"])

    async def test_a_bad_config_file_is_one_line_and_exit_1(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[app:shop]\ncluster = two words\n")
        code, out, err = await self.run_proxy("render", "--redis", "redis://x", "--config", path)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("[app:shop] cluster", err)

    async def test_renders_the_registry_of_a_real_redis(self) -> None:
        redis = RedisServer()
        redis.start()
        self.addCleanup(redis.destroy)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[broker]\ncluster = east\n[app:shop]\ncluster = west\n[app:kiosk]\n")
        code, out, err = await self.run_proxy("render", "--redis", redis.url, "--config", path)
        self.assertEqual(code, 0, err)
        self.assertIn("# no routable node", out)
        self.assertEqual(registry_of(out)["apps"], {"kiosk": "east", "shop": "west"})

    async def test_renders_the_shared_app_registry_of_a_real_redis(self) -> None:
        redis = RedisServer()
        redis.start()
        self.addCleanup(redis.destroy)
        for app, cluster in (("pos", "east"), ("shop", "north")):
            add = ["apps", "add", app, "--cluster", cluster]
            _, err, code = await getProcessOutputAndValue(
                sys.executable,
                ["-m", "o2obroker.admin", "--redis", redis.url, *add],
                env=os.environ,
                reactor=reactor,
            )
            self.assertEqual(code, 0, err)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[broker]\ncluster = east\n[app:shop]\ncluster = west\n[app:kiosk]\n")
        code, out, err = await self.run_proxy("render", "--redis", redis.url, "--config", path)
        self.assertEqual(code, 0, err)
        self.assertEqual(
            registry_of(out)["apps"], {"kiosk": "east", "pos": "east", "shop": "north"}
        )


class RegistryReaderTests(TestCase):
    """The proxy reads the registries of a real Redis as a node does."""

    timeout = 30

    async def setUp(self) -> None:
        self.prefix = unique_prefix()
        self.clock = Clock()  # the node's: its record lapsed long ago in real time
        self.node = RedisBackend(parse_urls(shared().url), self.clock, reactor, prefix=self.prefix)
        self.node.start()
        self.addCleanup(self.node.stop)
        await self.node.when_ready()
        self.reader = RegistryReader(parse_urls(shared().url)[0], reactor, prefix=self.prefix)
        await self.reader.start(5.0)
        self.addCleanup(self.reader.stop)

    async def test_a_lapsed_record_is_swept_whole(self) -> None:
        self.clock.advance(1)
        await self.node.heartbeat(record("n1"), 2.0)
        boots = f"{self.prefix}:{{nodes}}:boots"
        self.assertEqual(await self.node.shards[0].call("HKEYS", boots), [b"n1"])
        self.assertEqual(await self.reader.records(), [])
        # the record, its expiry and its boot go together, as when a node sweeps it
        self.assertEqual(await self.node.shards[0].call("HKEYS", boots), [])

    async def test_a_record_that_is_not_json_is_left_out(self) -> None:
        self.clock.advance(time.time())
        await self.node.heartbeat(record("n1"), 60.0)
        head = f"{self.prefix}:{{nodes}}:"
        expires = int(time.time() * 1000) + 60_000
        await self.node.shards[0].call("HSET", head + "records", "n0", "{not json")
        await self.node.shards[0].call("ZADD", head + "expires", expires, "n0")
        with capturedLogs() as logs:
            found = await self.reader.records()
        self.assertEqual([r["id"] for r in found], ["n1"])
        # a node reads the same, and a record nobody can read costs it nothing else
        self.assertEqual(await self.node.nodes(), found)
        self.assertIn("node record of b'n0' left out: not JSON", [formatEvent(e) for e in logs])

    async def test_the_shared_apps_by_cluster(self) -> None:
        await self.node.put_app("shop", {"cluster": "east", "tier": "gold"})
        self.assertEqual(await self.reader.apps(), {"shop": "east"})


class NginxAcceptsTests(TestCase):
    """nginx itself reads what is rendered: as a part of Debian's ``http {}``, and whole."""

    async def nginx_test(self, main: str, part: str | None = None) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not (os.access(nginx, os.X_OK) and os.path.exists(NJS_MODULE)):
            raise SkipTest("nginx and its njs module are not installed (make test installs them)")
        prefix = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, prefix, True)
        if part is not None:
            with open(os.path.join(prefix, "o2obroker.conf"), "w") as f:
                f.write(part)
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write(main)
        _, err, code = await getProcessOutputAndValue(
            nginx,
            ["-t", "-e", "stderr", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf")],
            env=os.environ,
            reactor=reactor,
        )
        self.assertEqual(code, 0, err.decode())

    def clusters(self) -> dict[str, list[ProxyNode]]:
        odd = "c$x'\\\"{;}"
        return {
            "c1": [ProxyNode("n1", "127.0.0.1:8081"), ProxyNode("n2", "127.0.0.1:8082")],
            odd: [ProxyNode("n$'3", "127.0.0.1:8083")],
        }

    async def test_the_part_in_http(self) -> None:
        part = render(self.clusters(), ProxySettings(listen=(f"127.0.0.1:{free_port()}",)))
        main = (
            f"load_module {NJS_MODULE};\npid nginx.pid;\nevents {{}}\n"
            "http {\n    include o2obroker.conf;\n}\n"
        )
        await self.nginx_test(main, part)

    async def test_standalone_and_empty(self) -> None:
        await self.nginx_test(render(self.clusters(), ProxySettings(standalone=True)))
        await self.nginx_test(render({}, ProxySettings(standalone=True)))
