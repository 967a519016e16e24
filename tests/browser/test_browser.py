"""Real browsers against a real broker: Debian's chromium, driven by playwright-core.

A broker listens on loopback (port 0) for HTTP and binary TCP; a binary TCP
client ("mobile") echoes every message it gets back to its sender, with a few
raw bytes; tests/browser/chat.mjs opens pages of the demo and chats over
WebSocket, over long-poll, and through a WebSocket that fails mid-way.
tests/browser/scenarios.mjs tries the client as an application uses it:
order, refusals, a stalled WebSocket (through a proxy here that can stall
its connections), reloads, a key routed to another node and then to its
standby; and on three real node processes sharing one Redis, a routed page
whose node is killed or drained mid-traffic. The screenshots of the demo page are kept in
var/browser/.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols import portforward
from twisted.python import log
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

from o2obroker import __version__
from o2obroker.client.binary import BinaryClient
from o2obroker.config import ArchiveSettings, Config
from o2obroker.routing import NodeInfo, StaticDirectory, pick
from o2obroker.service.node import Node
from o2obroker.service.site import build_site
from o2obroker.session.auth import make_token
from o2obroker.transports.tcp import BinaryFactory
from o2obroker.transports.web import static_file
from tests.cluster.nodes import SECRET
from tests.cluster.test_routed_failover import BEFORE, MESSAGES, Sender, key_on, three_nodes

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "tests" / "browser" / "chat.mjs"
SCENARIOS = ROOT / "tests" / "browser" / "scenarios.mjs"
HARNESS = ROOT / "tests" / "browser" / "harness.html"
PACKAGE = ROOT / "js"
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "var" / "browser" / "demo.png"
SCREENSHOTS = SCREENSHOT.parent


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed (make test installs it)"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (make test runs npm ci)"
    return None


class _Stallable(portforward.ProxyServer):
    """A loopback proxy connection that can stall: it stops carrying bytes
    either way, as a dead NAT entry or a stuck proxy does, without closing."""

    websocket = False

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if not self.websocket and b"upgrade: websocket" in data.lower():
            self.websocket = True
        super().dataReceived(data)

    def stall(self) -> None:
        self.transport.pauseProducing()
        if self.peer is not None:
            self.peer.transport.pauseProducing()


class _Proxy(portforward.ProxyFactory):
    protocol = _Stallable

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.connections: list[_Stallable] = []


class _Control(Resource):
    """``POST /stall``: every WebSocket through the proxy stalls from now on."""

    isLeaf = True

    def __init__(self, proxy: _Proxy) -> None:
        super().__init__()
        self.proxy = proxy

    def render_POST(self, request: Any) -> bytes:
        sockets = [c for c in self.proxy.connections if c.websocket and c.transport.connected]
        for conn in sockets:
            conn.stall()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"stalled": len(sockets)}).encode()


class _Broker:
    """A node with its HTTP port and binary TCP port on loopback."""

    def __init__(self, test: TestCase, config: Config) -> None:
        self.node = Node(config, reactor)
        self.node.start()
        test.addCleanup(self.node.stop)
        site = build_site(self.node, reactor)
        # the scenarios' page, served like a page of the application
        site.resource.putChild(
            b"harness.html", Data(HARNESS.read_bytes(), "text/html; charset=utf-8")
        )
        self.http = reactor.listenTCP(0, site, interface="127.0.0.1")
        test.addCleanup(self.http.stopListening)
        self.base = f"http://127.0.0.1:{self.http.getHost().port}"


class BrowserTestCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        missing = _missing()
        if missing is not None:
            if os.environ.get("CI"):
                self.fail(missing)  # CI must run it: make test installs what it needs
            raise SkipTest(missing)
        broker = _Broker(self, Config(hb=5, lp_timeout=5))
        self.node = broker.node
        self.http = broker.http
        self.base = broker.base
        self.tcp = reactor.listenTCP(0, BinaryFactory(self.node.gateway), interface="127.0.0.1")
        self.addCleanup(self.tcp.stopListening)
        self.addCleanup(self._settle)

    async def _settle(self) -> None:
        """Wait (a few seconds at most) until the browser's sockets are seen closed."""
        for _ in range(100):
            if not (self.node.gateway.connections["ws"] or self.node.gateway.connections["tcp"]):
                return
            await deferLater(reactor, 0.1)

    async def scenario(self, name: str, **config: Any) -> Any:
        """Run one scenario of scenarios.mjs in a fresh Chromium; its result."""
        profile = tempfile.mkdtemp(prefix="o2o-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        out, err, code = await getProcessOutputAndValue(
            shutil.which("node"),
            [str(SCENARIOS), name, profile, json.dumps({"base": self.base, **config})],
            env={**os.environ, "NODE_PATH": str(ROOT / "node_modules")},
            path=str(ROOT),
            reactor=reactor,
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-3000:])
        log.msg(f"scenario {name}: {out.decode().strip().splitlines()[-1]}")
        return json.loads(out.decode().strip().splitlines()[-1])

    async def _bot(self) -> tuple[BinaryClient, list[dict[str, Any]]]:
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp.getHost().port)
        bot = await connectProtocol(
            ep, BinaryClient({"t": "hello", "user": "mobile", "device": "phone"})
        )
        await bot.welcome
        got: list[dict[str, Any]] = []

        def echo(msg: dict[str, Any]) -> None:
            got.append(msg)
            bot.send(to=msg["from"], body={"echo": msg["body"], "raw": b"\x00\x01\xff"})

        bot.on_msg = echo
        return bot, got


class BrowserChatTests(BrowserTestCase):
    async def test_chat_over_websocket_long_poll_and_a_failing_websocket(self) -> None:
        bot, got = await self._bot()
        self.addCleanup(bot.transport.loseConnection)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        if SCREENSHOT.exists():
            SCREENSHOT.unlink()
        profile = tempfile.mkdtemp(prefix="o2o-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        base = self.base
        out, err, code = await getProcessOutputAndValue(
            shutil.which("node"),
            [str(SCRIPT), base, str(SCREENSHOT), profile],
            env={**os.environ, "NODE_PATH": str(ROOT / "node_modules")},
            path=str(ROOT),
            reactor=reactor,
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-3000:])
        result = json.loads(out.decode().strip().splitlines()[-1])

        # what the mobile client got from each browser, bytes as bytes
        texts = {m["body"].get("text") for m in got if isinstance(m["body"], dict)}
        self.assertTrue({"hello mobile from ws", "hello mobile from lp"} <= texts, texts)
        blobs = {m["body"]["tag"]: m["body"]["blob"] for m in got if "blob" in m["body"]}
        self.assertEqual(blobs, {"ws": b"\x00\x01\x02", "lp": b"\x00\x01\x02"})
        # what the browsers got from the mobile client: its bytes as $bytes
        for tag in ("ws", "lp"):
            echoes = [m for m in result[tag] if m["from"] == "mobile"]
            self.assertTrue(echoes, tag)
            self.assertEqual(echoes[0]["body"]["raw"], {"$bytes": "AAH/"})
        self.assertEqual(result["fallback"], {"received": 11, "transport": "lp"})
        self.assertTrue(SCREENSHOT.exists() and SCREENSHOT.stat().st_size > 10_000)


class ClientLibraryTests(BrowserTestCase):
    """The client as an application uses it, each behaviour crossed in Chromium."""

    async def test_calls_before_open_and_long_poll_sends_keep_order(self) -> None:
        result = await self.scenario("order")
        # 400 sends in order (checked in the page) went out in a handful of POSTs, not one each
        self.assertLess(result["posts"], 40, result)

    async def test_a_dropped_websocket_session_restores_watches_and_rooms(self) -> None:
        result = await self.scenario("restore")
        # one session after another on WebSocket, the room joined on each
        self.assertEqual(result, {"transports": ["ws"], "joins": ["restore-room"] * 3})

    async def test_history_pages_and_no_archive(self) -> None:
        result = await self.scenario("history")
        self.assertEqual(result, {"asked": 4, "shown": ["first", "second"]})

    async def test_history_and_the_demo_against_a_broker_with_an_archive(self) -> None:
        archived = _Broker(self, Config(hb=5, lp_timeout=5, archive=ArchiveSettings(enabled=True)))
        result = await self.scenario("archive", base=archived.base)
        # three pages of ten, ten and five; the room's three; the pages checked in Chromium
        self.assertEqual(result["pages"], 3, result)
        self.assertEqual(result["room"], 3, result)
        self.assertEqual(archived.node.business.archive.stored, 28)
        for user in ("alice-arc", "bob-arc"):
            # 20 of the conversation and 3 of the room, less what the inbox resumed
            self.assertGreater(result["shown"][user], 3, result)

    async def test_stalled_websocket_falls_back_and_upgrades_losing_nothing(self) -> None:
        proxy = _Proxy("127.0.0.1", self.http.getHost().port)
        port = reactor.listenTCP(0, proxy, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [c.transport.loseConnection() for c in proxy.connections])
        control = reactor.listenTCP(0, Site(_Control(proxy)), interface="127.0.0.1")
        self.addCleanup(control.stopListening)
        result = await self.scenario(
            "stall",
            proxy=f"http://127.0.0.1:{port.getHost().port}",
            control=f"http://127.0.0.1:{control.getHost().port}",
        )
        self.assertEqual(result["transports"], ["ws", "lp", "ws"])
        # hb (5 s) plus the margin (1 s) and the ping timeout (1 s): before the broker's 2 x hb
        self.assertLess(result["detectedMs"], 10_000, result)
        # messages kept coming through the upgrade (bob was still sending), without a pause
        # like the 5 s of a take-over that ends the long-poll session first
        upgrade = result["upgrade"]
        self.assertTrue(upgrade["count"] >= 30 and upgrade["sending"] > 2000, result)
        self.assertLess(upgrade["gapMs"], 2000, result)

    async def test_reloads_resume_the_same_device_and_closed_tabs_go_offline(self) -> None:
        result = await self.scenario("reload")
        # a long-poll session without its beacon would stay online for 2 x lp_timeout = 10 s
        self.assertLess(result["lp"]["offlineMs"], 3000, result)
        self.assertLess(result["ws"]["offlineMs"], 3000, result)

    async def test_connect_rejects_on_a_bad_token_and_an_unreachable_broker(self) -> None:
        secret = "s3cret-for-the-browser-test"
        secured = _Broker(self, Config(secret=secret))
        rooms = jwt.encode({"sub": "alice-rooms", "rooms": ["a"]}, secret, algorithm="HS256")
        dead = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        dead_port = dead.getHost().port
        await dead.stopListening()
        result = await self.scenario(
            "refuse",
            tokenBase=secured.base,
            deadBase=f"http://127.0.0.1:{dead_port}",
            roomsToken=rooms,
        )
        self.assertEqual(result["unreachable"]["code"], 408)


class _Kill(Resource):
    """``POST /kill``: the node of ``broker`` dies, its sockets and its HTTP port at once."""

    isLeaf = True

    def __init__(self, broker: _Broker) -> None:
        super().__init__()
        self.broker = broker

    def render_POST(self, request: Any) -> bytes:
        self.broker.http.stopListening()
        for group in self.broker.node.gateway.session_groups():
            for session in list(group):
                session.conn.transport.abortConnection()
        return b"{}"


class RoutedClientTests(BrowserTestCase):
    async def test_a_key_goes_to_its_node_then_to_the_standby_when_that_dies(self) -> None:
        other = _Broker(self, Config(node="b", hb=5, lp_timeout=5))

        def place(base: str) -> dict[str, str]:
            return {"ws": base.replace("http", "ws", 1) + "/ws", "lp": base + "/lp"}

        directory = StaticDirectory(
            [NodeInfo("n1", addresses=place(self.base)), NodeInfo("b", addresses=place(other.base))]
        )
        self.node.directory = directory
        nodes = self.successResultOf(directory.nodes())
        key = next(
            k for k in (f"shop-{i}" for i in range(100)) if pick(k, nodes, "default")[0].id == "b"
        )
        control = reactor.listenTCP(0, Site(_Kill(other)), interface="127.0.0.1")
        self.addCleanup(control.stopListening)
        result = await self.scenario(
            "route", key=key, control=f"http://127.0.0.1:{control.getHost().port}"
        )
        self.assertEqual((result["first"], result["standby"], result["then"]), ("b", "n1", "n1"))
        self.assertIn(f"key={key}", result["ws"])
        self.assertEqual(result["got"], [{"n": 1}])


class DemoTests(BrowserTestCase):
    async def test_demo_at_phone_and_desktop_width(self) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name in ("phone", "desktop"):
            (SCREENSHOTS / f"demo-{name}.png").unlink(missing_ok=True)
        result = await self.scenario("demo", screenshots=str(SCREENSHOTS))
        # no sideways scroll, every control on screen (checked in the page), and the pictures
        self.assertEqual(result["phone"], {"scrollWidth": 375, "viewport": 375})
        self.assertEqual(result["desktop"], {"scrollWidth": 1280, "viewport": 1280})
        for name in ("phone", "desktop"):
            self.assertGreater((SCREENSHOTS / f"demo-{name}.png").stat().st_size, 10_000)


class PackageTests(BrowserTestCase):
    """The npm package: declarations that compile, and a tarball that installs and works."""

    async def _exec(self, argv: list[str], cwd: Path) -> str:
        out, err, code = await getProcessOutputAndValue(
            argv[0], argv[1:], env=dict(os.environ), path=str(cwd), reactor=reactor
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace")[-3000:])
        return out.decode()

    async def test_declarations_compile(self) -> None:
        # js/test/types.ts uses the API and expects errors where the types must refuse
        await self._exec([str(ROOT / "node_modules" / ".bin" / "tsc"), "-p", str(PACKAGE)], ROOT)

    async def test_es_module_in_chromium(self) -> None:
        node = shutil.which("node") or "node"
        built = tempfile.mkdtemp(prefix="o2o-esm-")
        self.addCleanup(shutil.rmtree, built, True)
        await self._exec([node, str(PACKAGE / "build.mjs"), built], ROOT)
        result = await self.scenario("esm", module=os.path.join(built, "index.js"))
        self.assertEqual(
            result,
            {
                "transport": "ws",
                "status": "delivered",
                "text": "from a module",
                "error": True,
                "separate": True,
            },
        )

    async def test_pack_install_and_import(self) -> None:
        npm = shutil.which("npm")
        assert npm is not None
        work = Path(tempfile.mkdtemp(prefix="o2o-npm-"))
        self.addCleanup(shutil.rmtree, work, True)
        tarball = await self._exec(
            [npm, "pack", "--silent", "--pack-destination", str(work)], PACKAGE
        )
        tarball = tarball.strip().splitlines()[-1]
        app = work / "app"
        app.mkdir()
        (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
        await self._exec(
            [npm, "install", "--offline", "--no-audit", "--no-fund", str(work / tarball)], app
        )
        shutil.copy(ROOT / "tests" / "browser" / "package_check.mjs", app / "check.mjs")
        out = await self._exec([shutil.which("node") or "node", "check.mjs", self.base], app)
        result = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(
            result, {"transport": "lp", "status": "delivered", "text": "from node", "refused": 401}
        )
        installed = app / "node_modules" / "o2obroker"
        # one version for the broker and its client
        self.assertEqual(
            json.loads((installed / "package.json").read_text())["version"], __version__
        )
        files = sorted(p.name for p in installed.iterdir())
        self.assertEqual(
            files, ["README.md", "index.d.ts", "index.js", "o2obroker.cjs", "package.json"]
        )


class _Go(Resource):
    """``POST /go``: stream messages to the page's user from a node that stays up and,
    mid-way, kill or drain the key's node; answers with the receipted mids in order."""

    isLeaf = True

    def __init__(self, case: ClusterRouteTests, action: str, key_node: Any) -> None:
        super().__init__()
        self.case, self.action, self.key_node = case, action, key_node

    def render_POST(self, request: Any) -> Any:
        d = Deferred.fromCoroutine(self.go())
        d.addCallback(lambda answer: (request.write(json.dumps(answer).encode()), request.finish()))
        d.addErrback(lambda f: (log.err(f), request.setResponseCode(500), request.finish()))
        return NOT_DONE_YET

    async def go(self) -> dict[str, Any]:
        sender = Sender("alice")
        sending = Deferred.fromCoroutine(sender.run(self.case.nodes[0].tcp, MESSAGES))
        while len(sender.receipted) < BEFORE:
            await deferLater(reactor, 0.01)
        if self.action == "kill":
            await self.key_node.kill()
        else:
            r = await treq.post(
                f"{self.key_node.http}/api/v1/drain",
                headers={"Authorization": "Bearer k"},
                persistent=False,
            )
            await r.content()
        await sending
        return {"receipted": sender.receipted}


class ClusterRouteTests(BrowserTestCase):
    """The browser client on three real nodes sharing one Redis (not the in-process one)."""

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.nodes = await three_nodes(self)
        self.base = self.nodes[0].http  # the page's origin, and where it asks for the route

    async def run_route(self, transport: str, action: str) -> dict[str, Any]:
        key, answer = await key_on(self.base, "n3")
        # the application's page, on an origin of its own, and the test's control
        page = Resource()
        page.putChild(b"go", _Go(self, action, self.nodes[2]))
        page.putChild(b"harness.html", Data(HARNESS.read_bytes(), "text/html; charset=utf-8"))
        page.putChild(b"o2obroker.js", static_file("o2obroker.js"))
        control = reactor.listenTCP(0, Site(page), interface="127.0.0.1")
        self.addCleanup(control.stopListening)
        result = await self.scenario(
            "clusterRoute",
            key=key,
            token=make_token(SECRET, "alice"),
            transport=transport,
            action=action,
            control=f"http://127.0.0.1:{control.getHost().port}",
        )
        self.assertEqual((result["first"], result["standby"]), ("n3", answer["standby"]["id"]))
        self.assertEqual(result["got"], MESSAGES)
        self.assertEqual(result["bare"], [])  # every long-poll request named its route
        if transport == "lp":
            self.assertGreater(result["lp"], 3)
        return result

    async def test_websocket_kill_9_of_the_keys_node_mid_traffic(self) -> None:
        result = await self.run_route("ws", "kill")
        self.assertEqual(result["then"], result["standby"])
        self.assertEqual(result["nodes"], ["n3", result["standby"]])

    async def test_long_poll_kill_9_of_the_keys_node_mid_traffic(self) -> None:
        result = await self.run_route("lp", "kill")
        self.assertEqual(result["then"], result["standby"])

    async def test_websocket_drain_sends_the_page_where_the_503_says(self) -> None:
        result = await self.run_route("ws", "drain")
        self.assertNotEqual(result["then"], "n3")
        self.assertTrue(result["redirected"], result)

    async def test_long_poll_drain_sends_the_page_where_the_503_says(self) -> None:
        result = await self.run_route("lp", "drain")
        self.assertNotEqual(result["then"], "n3")
        self.assertTrue(result["redirected"], result)
