"""Real browsers against a real broker: Debian's chromium, driven by playwright-core.

A broker listens on loopback (port 0) for HTTP and binary TCP; a binary TCP
client ("mobile") echoes every message it gets back to its sender, with a few
raw bytes; tests/browser/chat.mjs opens pages of the demo and chats over
WebSocket, over long-poll, and through a WebSocket that fails mid-way.
The screenshot of the demo page is kept in var/browser/demo.png.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from o2obroker.client.binary import BinaryClient
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.service.site import build_site
from o2obroker.transports.tcp import BinaryFactory

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "tests" / "browser" / "chat.mjs"
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "var" / "browser" / "demo.png"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed (make test installs it)"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (make test runs npm ci)"
    return None


class BrowserChatTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        missing = _missing()
        if missing is not None:
            if os.environ.get("CI"):
                self.fail(missing)  # CI must run it: make test installs what it needs
            raise SkipTest(missing)
        self.node = Node(Config(hb=5, lp_timeout=5), reactor)
        self.node.start()
        self.addCleanup(self.node.stop)
        site = build_site(self.node, reactor)
        self.http = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.http.stopListening)
        self.tcp = reactor.listenTCP(0, BinaryFactory(self.node.gateway), interface="127.0.0.1")
        self.addCleanup(self.tcp.stopListening)
        self.addCleanup(self._settle)

    async def _settle(self) -> None:
        """Wait (a few seconds at most) until the browser's sockets are seen closed."""
        for _ in range(100):
            if not (self.node.gateway.connections["ws"] or self.node.gateway.connections["tcp"]):
                return
            await deferLater(reactor, 0.1)

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

    async def test_chat_over_websocket_long_poll_and_a_failing_websocket(self) -> None:
        bot, got = await self._bot()
        self.addCleanup(bot.transport.loseConnection)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        if SCREENSHOT.exists():
            SCREENSHOT.unlink()
        profile = tempfile.mkdtemp(prefix="o2o-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        base = f"http://127.0.0.1:{self.http.getHost().port}"
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
