"""The HTTP port's configuration keys, and its place in the service tree."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import ConfigError, load
from o2obroker.service.tap import Options, makeService


class WebConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        c = load()
        self.assertEqual(c.http, "tcp:8080:interface=127.0.0.1")
        self.assertEqual((c.lp_timeout, c.request_deadline), (25, 30.0))
        self.assertEqual((c.ws_max_frame, c.ws_max_message, c.ws_auto_ping), (0, 0, 0.0))
        self.assertIs(c.ws_compression, False)

    def test_ini_keys(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[broker]\nallowed_origins = https://a.example\nws_max_message = 4096\n"
                "ws_compression = true\nlp_timeout = 10\nrequest_deadline = 5\n"
            )
        c = load(path)
        self.assertEqual(c.allowed_origins, "https://a.example")
        self.assertEqual((c.ws_max_message, c.lp_timeout, c.request_deadline), (4096, 10, 5.0))
        self.assertIs(c.ws_compression, True)

    def test_bad_values_name_their_key(self) -> None:
        for key, value in [
            ("lp_timeout", "0"),
            ("request_deadline", "0"),
            ("ws_handshake_timeout", "-1"),
            ("ws_max_message", "-5"),
            ("ws_auto_ping", "-1"),
            ("lp_timeout", "soon"),
            # every listed origin must be one a browser can send: a typo would
            # refuse every page without a word
            ("allowed_origins", "https://shop.example shop.example"),
            ("allowed_origins", "https://shop.example/app"),
        ]:
            with self.assertRaises(ConfigError) as e:
                load(None, {key: value})
            self.assertIn(key, str(e.exception))

    def test_allowed_origins_forms(self) -> None:
        for value in (
            "*",
            "null",
            "https://a.example, http://localhost:3000/",
            "http://[::1]:8080",
        ):
            self.assertEqual(load(None, {"allowed_origins": value}).allowed_origins, value)

    def test_http_listener_in_the_service_tree(self) -> None:
        options = Options()
        options.parseOptions(["--http", "tcp:8181:interface=127.0.0.1"])
        top = makeService(options, MemoryReactorClock())
        http = top.getServiceNamed("http")
        self.assertEqual(http.endpoint._port, 8181)
        self.assertEqual(http.endpoint._interface, "127.0.0.1")
        root = http.factory.resource
        for name in (b"ws", b"lp", b"api", b"healthz", b"metrics", b"getFreeHostAddress", b""):
            self.assertIn(name, root.children)
