"""The shared app registry on a real Redis: edited on one node (console) or from the
command line, obeyed by another node's hellos and route look-ups within ``app_refresh``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from o2obroker.client import ClientClosed, ClientError
from o2obroker.config import AppSettings
from o2obroker.service.facade import Broker
from o2obroker.service.site import build_site
from tests.redis_nodes import RedisNodesCase
from tests.redis_server import shared

REFRESH = 0.3


class SharedAppsTests(RedisNodesCase):
    async def hello(self, endpoint: str, app: str | None) -> int:
        """0 for a welcome, else the error code the hello got."""
        extra = {} if app is None else {"app": app}
        try:
            c = await self.client(endpoint, "alice", **extra)
        except (ClientError, ClientClosed) as e:
            return int(e.code)  # type: ignore[union-attr]
        await c.bye()
        return 0

    async def within_refresh(self, endpoint: str, app: str | None, code: int) -> float:
        """Seconds until a hello naming ``app`` gets ``code``; fails past two refreshes."""
        waited = 0.0
        while (got := await self.hello(endpoint, app)) != code:
            self.assertLess(waited, 2 * REFRESH + 0.5, f"{app}: still {got}, not {code}")
            await deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
        return waited

    def admin(self, *argv: str) -> Deferred[tuple[bytes, bytes, int]]:
        args = ["-m", "o2obroker.admin", "--redis", shared().url, "--prefix", self.prefix]
        return getProcessOutputAndValue(
            sys.executable, [*args, *argv], env=dict(os.environ), reactor=reactor
        )

    async def test_added_on_one_node_admitted_on_another_removed_by_the_command_line(self) -> None:
        await self.node("a", app_refresh=REFRESH)
        b = await self.node("b", app_refresh=REFRESH, apps={"pos": AppSettings(cluster="c9")})
        console = Broker(self.nodes["a"])
        # b's own [app:pos] is a registry: an app b does not know is refused
        self.assertEqual(await self.hello(b, "shop"), 403)
        self.assertEqual(await self.hello(b, "pos"), 0)

        self.assertEqual(await console.add_app("shop", "c1", tier="gold"), "shop added")
        await self.within_refresh(b, "shop", 0)
        self.assertEqual(self.nodes["b"].apps.cluster_of("shop"), "c1")
        self.assertEqual(
            console.apps()["shop"], {"cluster": "c1", "tier": "gold", "source": "shared"}
        )

        out, err, code = await self.admin("apps", "list")
        self.assertEqual(
            (code, json.loads(out)), (0, {"shop": {"cluster": "c1", "tier": "gold"}}), err
        )

        out, err, code = await self.admin("apps", "remove", "shop")
        self.assertEqual((code, out), (0, b"shop removed\n"), err)
        await self.within_refresh(b, "shop", 403)
        self.assertEqual(await self.hello(b, "pos"), 0)  # the config's app stays

    async def test_the_command_line_adds_and_the_route_look_up_follows(self) -> None:
        a = await self.node("a", app_refresh=REFRESH)
        site = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            build_site(self.nodes["a"], reactor)
        )
        self.addCleanup(site.stopListening)
        url = f"http://127.0.0.1:{site.getHost().port}/api/v1/route?app=kiosk&key=k1"

        async def route() -> tuple[int, Any]:
            r = await treq.get(url, persistent=False)
            return r.code, await r.json()

        # no app anywhere: no registry, anything goes
        self.assertEqual(await self.hello(a, "kiosk"), 0)
        out, err, code = await self.admin(
            "apps", "add", "kiosk", "--cluster", "default", "--set", "limit=5"
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"kiosk added", out)
        await self.within_refresh(a, None, 403)  # a registry now: an app must be named
        self.assertEqual(await self.hello(a, "kiosk"), 0)
        code, answer = await route()
        self.assertEqual((code, answer["cluster"], answer["node"]["id"]), (200, "default", "a"))

        # another app keeps the registry on; kiosk goes
        await Broker(self.nodes["a"]).add_app("pos", "default")
        out, err, code = await self.admin("apps", "remove", "kiosk")
        self.assertEqual(code, 0, err)
        waited = 0.0
        while (await route())[0] != 403:
            self.assertLess(waited, 2 * REFRESH + 0.5)
            await deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
        self.assertEqual(await self.hello(a, "kiosk"), 403)

    async def test_the_command_line_refuses_bad_input_in_one_line(self) -> None:
        for argv, says in [
            (["apps", "add", "a/b", "--cluster", "c"], b"not a valid business id"),
            (["apps", "add", "shop", "--cluster", "c d"], b"not a valid cluster name"),
            (["apps", "add", "shop", "--cluster", "c", "--set", "x"], b"NAME=VALUE"),
            (["apps", "remove", "nope"], b"no such app"),
        ]:
            _, err, code = await self.admin(*argv)
            self.assertEqual((code, err.count(b"\n")), (1, 1), err)
            self.assertIn(says, err)
        dead = ["-m", "o2obroker.admin", "--redis", "redis://127.0.0.1:1", "--timeout", "0.5"]
        dead += ["apps", "list"]
        _, err, code = await getProcessOutputAndValue(
            sys.executable, dead, env=dict(os.environ), reactor=reactor
        )
        self.assertEqual((code, err.count(b"\n")), (1, 1), err)
        self.assertIn(b"cannot reach redis", err)
