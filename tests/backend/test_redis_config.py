"""The redis settings: URLs parsed and refused in one line, the backend chosen by them."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.backend import MemoryBackend
from o2obroker.backend.redis import RedisBackend, RedisTarget, parse_url, parse_urls
from o2obroker.backend.redis import scripts as S
from o2obroker.backend.redis.shard import Shard
from o2obroker.config import ConfigError, load
from o2obroker.service.tap import Options, makeService


class UrlTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(parse_url("redis://localhost"), RedisTarget("localhost"))

    def test_everything(self) -> None:
        t = parse_url("rediss://ann:p%40ss%3Aword@redis.example:6380/4")
        self.assertEqual(t, RedisTarget("redis.example", 6380, True, "ann", "p@ss:word", 4))
        # logs name the server, never the password
        self.assertEqual(t.name, "rediss://redis.example:6380/4")
        self.assertNotIn("word", repr(t.name))

    def test_password_without_user_and_ipv6(self) -> None:
        t = parse_url("redis://:secret@[::1]:7000")
        self.assertEqual((t.host, t.port, t.username, t.password), ("::1", 7000, None, "secret"))
        self.assertEqual(t.name, "redis://[::1]:7000/0")

    def test_bad_urls(self) -> None:
        for url, words in [
            ("http://localhost", "scheme"),
            ("localhost:6379", "scheme"),
            ("redis://", "no host"),
            ("redis://h:port", "not a valid URL"),
            ("redis://h:99999", "not a valid URL"),
            ("redis://h/zero", "database number"),
            ("redis://h/0?timeout=1", "query"),
            ("redis://ann@h", "needs a password"),
        ]:
            with self.assertRaises(ValueError) as e:
                parse_url(url)
            self.assertIn(words, str(e.exception), url)

    def test_list(self) -> None:
        self.assertEqual(len(parse_urls("redis://a, redis://b:7000,")), 2)
        with self.assertRaises(ValueError):
            parse_urls(" , ")
        with self.assertRaises(ValueError) as e:
            parse_urls("redis://a,redis://a:6379/0")
        self.assertIn("twice", str(e.exception))


class ConfigTests(SynchronousTestCase):
    def test_bad_url_is_one_line(self) -> None:
        with self.assertRaises(ConfigError) as e:
            load(overrides={"redis": "redis://a,htp://b"})
        message = str(e.exception)
        self.assertTrue(message.startswith("redis: 'htp://b'"), message)
        self.assertNotIn("\n", message)

    def test_ca_needs_tls_and_a_readable_pem(self) -> None:
        with self.assertRaises(ConfigError) as e:
            load(overrides={"redis": "redis://a", "redis_ca": "/etc/hostname"})
        self.assertIn("rediss://", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            load(overrides={"redis": "rediss://a", "redis_ca": "/nonexistent/ca.pem"})
        self.assertIn("cannot read", str(e.exception))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(ConfigError) as e:
            load(overrides={"redis": "rediss://a", "redis_ca": path})
        self.assertIn("no PEM certificate", str(e.exception))

    def test_timeout_must_be_positive(self) -> None:
        with self.assertRaises(ConfigError):
            load(overrides={"redis": "redis://a", "redis_timeout": 0})

    def test_registry_settings_are_checked(self) -> None:
        for bad in (0, 0.05, 4000):
            with self.assertRaises(ConfigError) as e:
                load(overrides={"node_heartbeat": bad})
            self.assertIn("node_heartbeat", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            load(overrides={"public_host": " "})
        self.assertIn("public_host", str(e.exception))
        config = load(overrides={"node_heartbeat": 0.5, "public_host": "10.0.0.7"})
        self.assertEqual((config.node_heartbeat, config.public_host), (0.5, "10.0.0.7"))

    def test_option_and_backend_choice(self) -> None:
        options = Options()
        options.parseOptions(["--redis", "redis://127.0.0.1:1/2,redis://127.0.0.1:2"])
        top = makeService(options, reactor=MemoryReactorClock())
        backend = top.node.store
        self.assertIsInstance(backend, RedisBackend)
        self.assertEqual([s.target.db for s in backend.shards], [2, 0])
        options = Options()
        options.parseOptions([])
        self.assertIsInstance(
            makeService(options, reactor=MemoryReactorClock()).node.store, MemoryBackend
        )

    def test_bad_option_is_a_usage_error(self) -> None:
        with self.assertRaises(UsageError) as e:
            Options().parseOptions(["--redis", "redis://h/x"])
        self.assertIn("redis:", str(e.exception))


class BackoffTests(SynchronousTestCase):
    def test_backoff_grows_over_connections_that_are_refused(self) -> None:
        # Twisted counts attempts from 1 again after every TCP connection, and a
        # refused login follows a TCP connection: the shard's own count goes on
        shard = Shard(RedisTarget("127.0.0.1", 1), MemoryReactorClock(), S.ALL)
        delays = []
        for refused in range(1, 8):
            shard._rejected = refused  # as each connection's _prepare counts it
            delays.append(shard._retry_delay(1))
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0])
        # and a connection that became usable starts it over
        shard._rejected = 0
        self.assertEqual([shard._retry_delay(n) for n in (1, 2, 3)], [0.5, 1.0, 2.0])
