"""Behind a front proxy: the client named by X-Forwarded-For, believed from trusted proxies only."""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import ConfigError, load
from o2obroker.transports.common import TrustedProxies
from tests.web.helpers import WebHarness


class TrustedProxiesTests(SynchronousTestCase):
    def test_the_client_is_the_last_hop_that_is_not_a_trusted_proxy(self) -> None:
        trusted = TrustedProxies("10.0.0.0/8, 127.0.0.1")
        self.assertEqual(trusted.client("127.0.0.1", "198.51.100.7"), "198.51.100.7")
        # a client that sends the header itself: what it wrote is left of the real hop
        self.assertEqual(trusted.client("127.0.0.1", "6.6.6.6, 198.51.100.7"), "198.51.100.7")
        # proxies behind proxies are skipped
        self.assertEqual(trusted.client("10.1.2.3", "198.51.100.7, 10.0.0.9"), "198.51.100.7")
        self.assertEqual(trusted.client("127.0.0.1", "2001:db8::1"), "2001:db8::1")

    def test_nobody_else_is_believed(self) -> None:
        trusted = TrustedProxies("10.0.0.0/8")
        self.assertIsNone(trusted.client("198.51.100.7", "1.2.3.4"))  # not a proxy
        self.assertIsNone(trusted.client("10.0.0.1", None))  # names nobody
        self.assertIsNone(trusted.client("10.0.0.1", "198.51.100.7, junk"))  # not an address
        self.assertIsNone(TrustedProxies("").client("127.0.0.1", "1.2.3.4"))
        self.assertFalse(TrustedProxies(""))

    def test_a_bad_entry_stops_the_start_naming_the_key(self) -> None:
        self.assertEqual(
            load(None, {"trusted_proxies": "10.0.0.0/8 ::1"}).trusted_proxies, "10.0.0.0/8 ::1"
        )
        with self.assertRaises(ConfigError) as e:
            load(None, {"trusted_proxies": "10.0.0.0/8, proxy.internal"})
        self.assertIn("trusted_proxies: 'proxy.internal'", str(e.exception))


def opened(events: list[dict[str, Any]]) -> list[str]:
    return [e["peer"] for e in events if e.get("event") == "open"]


class LoggedPeerTests(SynchronousTestCase):
    """The harness's connections come from 127.0.0.1:5001."""

    def ws(self, h: WebHarness, forwarded: str | None) -> None:
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
        }
        if forwarded is not None:
            headers["X-Forwarded-For"] = forwarded
        http = h.http()
        http.request("GET", "/ws?cluster=c&key=k", headers=headers)
        self.assertIn(b"101", http.transport.value().split(b"\r\n")[0])

    def test_websocket(self) -> None:
        with capturedLogs() as events:
            self.ws(WebHarness(trusted_proxies="127.0.0.1"), "6.6.6.6, 198.51.100.7")
            self.ws(WebHarness(), "198.51.100.7")  # no proxy trusted: the header is ignored
            self.ws(WebHarness(trusted_proxies="127.0.0.1"), None)
        self.assertEqual(
            opened(events),
            ["198.51.100.7 via 127.0.0.1:5001", "127.0.0.1:5001", "127.0.0.1:5001"],
        )

    def test_long_poll(self) -> None:
        hello = {"t": "hello", "user": "bob"}
        with capturedLogs() as events:
            for h, forwarded in [
                (WebHarness(trusted_proxies="127.0.0.0/8"), "198.51.100.7"),
                (WebHarness(), "198.51.100.7"),
            ]:
                code, _ = h.call("POST", "/lp/open", hello, {"X-Forwarded-For": forwarded}).json()
                self.assertEqual(code, 200)
        self.assertEqual(opened(events), ["198.51.100.7 via 127.0.0.1:5001", "127.0.0.1:5001"])
