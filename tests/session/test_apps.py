"""Business ids at hello (doc/protocol.md section 3) on binary TCP, WebSocket and long-poll."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import AppSettings
from tests.harness import SECRET
from tests.web.helpers import WebHarness

APPS = {"shop": AppSettings(cluster="c1"), "pos": AppSettings()}


def registry(**settings: Any) -> WebHarness:
    return WebHarness(secret=SECRET, apps=dict(APPS), **settings)


class TcpAppTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = registry()

    def hello(self, **fields: Any) -> tuple[list[dict[str, Any]], bool]:
        device = self.h.login("alice", **fields)
        return device.read(), device.closed

    def assertRefused(self, frames: list[dict[str, Any]], closed: bool) -> None:
        self.assertEqual(
            [(f["t"], f.get("code"), f.get("reason")) for f in frames],
            [("error", 403, "unknown app")],
        )
        self.assertTrue(closed)

    def test_a_known_app_is_welcome(self) -> None:
        frames, closed = self.hello(app="shop")
        self.assertEqual(frames[0]["t"], "welcome")
        self.assertFalse(closed)

    def test_an_unknown_or_missing_app_is_refused_and_closed(self) -> None:
        self.assertRefused(*self.hello(app="nope"))
        self.assertRefused(*self.hello())
        self.assertEqual(self.h.node.gateway.connections["tcp"], 0)

    def test_a_hello_before_the_shared_registry_is_read_waits_for_it(self) -> None:
        apps = self.h.node.apps
        apps.loaded = False  # a node on Redis that has not read it yet
        device = self.h.login("alice", app="kiosk")
        device.write({"t": "ping"})  # held until the welcome, then answered
        self.h.clock.advance(1.0)
        self.assertEqual(device.read(), [])
        apps.replace_shared({"kiosk": {"cluster": "c1"}})
        self.h.flush()
        self.assertEqual(device.read_types()[:2], ["welcome", "pong"])

    def test_an_unknown_app_waits_for_the_registry_too_and_is_refused(self) -> None:
        self.h.node.apps.loaded = False
        device = self.h.login("alice", app="nope")
        self.h.node.apps.replace_shared({})
        self.assertRefused(device.read(), device.closed)

    def test_a_registry_that_cannot_be_read_in_time_is_a_503(self) -> None:
        self.h.node.apps.loaded = False
        device = self.h.login("alice", app="shop")
        self.h.clock.advance(4.9)
        self.assertFalse(device.closed)
        self.h.clock.advance(0.1)
        frames = device.read()
        self.assertEqual(
            [(f["code"], f["reason"]) for f in frames], [(503, "app registry not read yet")]
        )
        self.assertTrue(device.closed)
        self.h.node.apps.replace_shared({})  # comes too late for it: nothing happens

    def test_the_tokens_claim_wins_over_the_hello(self) -> None:
        frames, _ = self.hello(app="nope", claims={"app": "pos"})
        self.assertEqual(frames[0]["t"], "welcome")
        self.assertRefused(*self.hello(app="shop", claims={"app": "nope"}))

    def test_a_refused_hello_does_not_touch_another_client(self) -> None:
        good = self.h.login("bob", app="shop")
        good.read()
        self.hello(app="nope")
        good.write({"t": "ping"})
        self.assertEqual(good.read_types(), ["pong"])

    def test_a_claim_that_is_not_a_string_is_a_bad_token(self) -> None:
        frames, closed = self.hello(claims={"app": 7})
        self.assertEqual((frames[0]["code"], closed), (401, True))

    def test_an_app_that_is_not_a_name_is_400(self) -> None:
        for bad in (7, "", "a\x00b"):
            frames, closed = self.hello(app=bad)
            self.assertEqual((frames[0]["code"], closed), (400, True), bad)

    def test_without_a_registry_the_app_is_ignored(self) -> None:
        h = WebHarness(secret=SECRET)
        for fields in ({}, {"app": "anything"}):
            device = h.login("alice", **fields)
            self.assertEqual(device.read()[0]["t"], "welcome")


class WebSocketAppTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = registry()

    def test_a_known_app_is_welcome(self) -> None:
        ws = self.h.ws_login("alice", app="pos")
        self.assertEqual(ws.read()[0]["t"], "welcome")

    def test_an_unknown_app_is_refused_and_closed(self) -> None:
        ws = self.h.ws_login("alice", app="nope")
        [error] = ws.read()
        self.assertEqual((error["code"], error["reason"]), (403, "unknown app"))
        self.assertIsNotNone(ws.close_code)

    def test_the_urls_app_counts_when_the_hello_has_none(self) -> None:
        ws = self.h.ws_login("alice", path="/ws?app=shop&cluster=c1&key=store-1")
        self.assertEqual(ws.read()[0]["t"], "welcome")
        ws = self.h.ws_login("bob", path="/ws?app=nope")
        self.assertEqual(ws.read()[0]["code"], 403)

    def test_the_hellos_app_wins_over_the_urls(self) -> None:
        ws = self.h.ws_login("alice", app="nope", path="/ws?app=shop")
        self.assertEqual(ws.read()[0]["code"], 403)
        ws = self.h.ws_login("bob", app="shop", path="/ws?app=nope")
        self.assertEqual(ws.read()[0]["t"], "welcome")


class LongPollAppTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = registry()

    def open(self, path: str = "/lp/open", **fields: Any) -> tuple[int, Any]:
        hello = {"t": "hello", "token": self.h.token("alice"), **fields}
        return self.h.call("POST", path, hello).json()

    def test_a_known_app_is_welcome(self) -> None:
        code, answer = self.open(app="shop")
        self.assertEqual((code, answer["frames"][0]["t"]), (200, "welcome"))

    def test_an_unknown_app_is_403(self) -> None:
        code, answer = self.open(app="nope")
        self.assertEqual(code, 403)
        [error] = answer["frames"]
        self.assertEqual((error["code"], error["reason"]), (403, "unknown app"))
        code, _ = self.open()
        self.assertEqual(code, 403)
        self.assertEqual(self.h.node.gateway.connections["lp"], 0)

    def test_the_urls_app_counts_when_the_hello_has_none(self) -> None:
        code, _ = self.open("/lp/open?app=pos")
        self.assertEqual(code, 200)
        code, _ = self.open("/lp/open?app=pos", app="nope")
        self.assertEqual(code, 403)
