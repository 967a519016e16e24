"""The Redis backend when Redis fails: real servers stopped, frozen, full, or refusing a login."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from o2obroker.backend import BackendUnavailable, StoreFull
from o2obroker.backend.interface import Receipt
from o2obroker.backend.redis import RedisBackend
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.transports.api import Health
from tests.backend.certs import make_ca, make_server_cert
from tests.backend.contract import msg
from tests.backend.test_redis import RedisCase
from tests.redis_server import RedisServer, free_port


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for something another process makes true (a server gone, a reconnect)."""
    waited = 0.0
    while not check():
        if waited > within:
            raise AssertionError(f"still not true after {within} s")
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


class ShardLog:
    """The shard's log lines, as operators see them."""

    def __init__(self, case: Any) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").endswith("shard.Shard"):
            fmt = event.get("log_format") or ""
            self.lines.append(fmt.format(**{k: event.get(k) for k in ("name", "why", "again")}))

    def count(self, words: str) -> int:
        return sum(words in line for line in self.lines)


class OutageTests(RedisCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = RedisServer()
        self.server.start()
        self.addCleanup(self.server.destroy)

    def health(self, backend: RedisBackend) -> int:
        node = Node(Config(), self.clock, backend=backend)
        node.apps.replace_shared({})  # never started: as if it had read the app registry
        request = DummyRequest([b""])
        Health(node, self.clock).render_GET(request)
        return int(request.responseCode or 200)

    def metrics(self, backend: RedisBackend) -> str:
        return Node(Config(), self.clock, backend=backend).metrics.render().decode()

    async def test_calls_fail_at_once_while_nothing_listens(self) -> None:
        log = ShardLog(self)
        b = self.redisBackend(f"redis://127.0.0.1:{free_port()}", timeout=30)
        # no connection: the call fails in the same turn instead of waiting for one
        self.failureResultOf(b.append("bob", [msg(1)]), BackendUnavailable)
        self.failureResultOf(b.presence(["a", "b"]), BackendUnavailable)
        self.failureResultOf(b.watchers(["a", "b"]), BackendUnavailable)
        self.assertFalse(b.available)
        self.assertEqual(self.health(b), 503)
        await eventually(lambda: log.count("cannot connect") == 1)

    async def test_redis_stopped_and_started_again(self) -> None:
        log = ShardLog(self)
        b = self.redisBackend(self.server.url, timeout=5)
        await b.when_ready()
        self.assertEqual(self.health(b), 200)
        self.assertEqual(await b.append("bob", [msg(1)]), [1])

        up = f'o2o_redis_up{{server="redis://127.0.0.1:{self.server.port}/0"}}'
        self.assertIn(f"{up} 1.0", self.metrics(b))
        self.server.stop()
        await eventually(lambda: not b.available)
        self.assertEqual(self.health(b), 503)
        self.assertIn(f"{up} 0.0", self.metrics(b))
        self.assertIn("o2o_redis_commands_total{", self.metrics(b))
        self.failureResultOf(b.append("bob", [msg(2)]), BackendUnavailable)

        self.server.start()
        await b.when_ready()
        self.assertEqual(self.health(b), 200)
        # this server keeps nothing across a restart: the inbox starts again
        self.assertEqual(await b.append("bob", [msg(3)]), [1])
        self.assertEqual(log.count("connection lost"), 1)
        self.assertEqual(log.count("connected again"), 1)

    async def test_a_frozen_server_times_out_and_is_replaced(self) -> None:
        b = self.redisBackend(self.server.url, timeout=0.3)
        await b.when_ready()
        assert self.server.process is not None
        pid = self.server.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            d = b.append("bob", [msg(1)])
            self.assertNoResult(d)
            with self.assertRaises(BackendUnavailable) as e:
                await d
            self.assertIn("no answer in 0.3 s", str(e.exception))
            # the connection was dropped, so later calls fail at once, not after the timeout
            self.assertFalse(b.available)
            self.failureResultOf(b.read("bob", 0, 1), BackendUnavailable)
        finally:
            os.kill(pid, signal.SIGCONT)
        await b.when_ready()
        # the frozen call may or may not have run: the inbox says which
        state = await b.inbox_state("bob")
        self.assertIn(await b.append("bob", [msg(2)]), ([1], [2]))
        self.assertIn(state.last, (0, 1))

    async def test_stop_lets_calls_in_flight_finish(self) -> None:
        b = self.redisBackend(self.server.url)
        await b.when_ready()
        d = b.append_many({f"u{i}": [msg(1)] for i in range(200)})
        stopped = b.stop()
        self.failureResultOf(b.read("u1", 0, 1), BackendUnavailable)
        got = await d
        self.assertEqual(got["u199"], [1])
        await stopped
        self.assertFalse(b.available)

    async def test_scripts_flushed_on_the_server_are_loaded_again(self) -> None:
        b = self.redisBackend(self.server.url)
        await b.when_ready()
        await b.append("bob", [msg(1)])
        await b.shards[0].call("SCRIPT", "FLUSH")
        self.assertEqual(await b.append("bob", [msg(2)]), [2])
        self.assertEqual(await b.read("bob", 0, 10), [(1, msg(1)), (2, msg(2))])

    async def test_out_of_memory_is_store_full(self) -> None:
        b = self.redisBackend(self.server.url)
        await b.when_ready()
        shard = b.shards[0]
        await shard.call("CONFIG", "SET", "maxmemory", "1")
        with self.assertRaises(StoreFull):
            await b.append("bob", [msg(1)])
        await shard.call("CONFIG", "SET", "maxmemory", "0")
        # nothing of the refused write was applied
        self.assertEqual(await b.append("bob", [msg(2)]), [1])

    async def test_a_refused_login_is_retried(self) -> None:
        # txredisapi's own factory gives up for good after one failed AUTH
        log = ShardLog(self)
        admin = self.redisBackend(self.server.url)
        await admin.when_ready()
        await admin.shards[0].call("CONFIG", "SET", "requirepass", "right")
        port = self.server.port
        b = self.redisBackend(f"redis://:late@127.0.0.1:{port}", timeout=5)
        await eventually(lambda: log.count("WRONGPASS") + log.count("invalid") >= 1)
        self.assertFalse(b.available)
        await admin.shards[0].call("CONFIG", "SET", "requirepass", "late")
        await b.when_ready()
        self.assertEqual(await b.append("bob", [msg(1)]), [1])
        self.assertEqual(log.count("cannot connect"), 1)
        self.assertEqual(log.count("connected again"), 0)

    async def test_an_idle_frozen_server_is_noticed(self) -> None:
        # no call is made: the periodic PING finds that the server stopped answering
        b = self.redisBackend(self.server.url, timeout=0.3, ping_interval=0.2)
        await b.when_ready()
        assert self.server.process is not None
        pid = self.server.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await eventually(lambda: not b.available, within=5)
            self.assertEqual(self.health(b), 503)
        finally:
            os.kill(pid, signal.SIGCONT)
        await b.when_ready()


class DurabilityTests(RedisCase):
    """What doc/cluster.md promises of appendfsync always, with kill -9."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = RedisServer("--appendonly", "yes", "--appendfsync", "always")
        self.server.start()
        self.addCleanup(self.server.destroy)

    async def test_nothing_answered_is_lost_to_kill_9(self) -> None:
        b = self.redisBackend(self.server.url)
        await b.when_ready()
        got = await b.append_many({f"u{i}": [msg(i)] for i in range(50)})
        await b.claim("u1", 7, [("c-1", "m1")])
        await b.ack("u2", "web", 0)  # holds the message back from the trim
        await b.ack("u2", "phone", 1)
        self.server.kill()
        await eventually(lambda: not b.available)
        self.server.start()
        await b.when_ready()
        for i in range(50):
            self.assertEqual(await b.read(f"u{i}", 0, 10), [(got[f"u{i}"][0], msg(i))])
        self.assertEqual(await b.claim("u1", 8, [("c-1", "m2")]), [Receipt("m1", 7, None)])
        self.assertEqual(await b.cursor("u2", "phone"), 1)


class SilentLoginTests(RedisCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = RedisServer(conf="requirepass pw\n")
        self.server.start()
        self.addCleanup(self.server.destroy)

    async def test_a_login_without_answer_times_out(self) -> None:
        # a stopped process still has its port: the kernel accepts, nobody answers AUTH
        log = ShardLog(self)
        assert self.server.process is not None
        pid = self.server.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            b = self.redisBackend(f"redis://:pw@127.0.0.1:{self.server.port}", timeout=0.3)
            await eventually(lambda: log.count("no answer to the login") == 1)
            self.assertFalse(b.available)
        finally:
            os.kill(pid, signal.SIGCONT)
        await b.when_ready()


class LoginTests(RedisCase):
    """An ACL user with a password, and a database other than 0.

    The default user is off, so nothing gets in but ann; and ann has only the
    command categories doc/cluster.md asks for.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        acl = "user ann on >pw ~o2o:* +@read +@write +@scripting +@connection"
        self.server = RedisServer(conf=f"user default off\n{acl}\n")
        self.server.start()
        self.addCleanup(self.server.destroy)

    async def test_user_password_and_db(self) -> None:
        port = self.server.port
        b3 = self.redisBackend(f"redis://ann:pw@127.0.0.1:{port}/3", prefix="o2o")
        b0 = self.redisBackend(f"redis://ann:pw@127.0.0.1:{port}/0", prefix="o2o")
        await b3.when_ready()
        await b0.when_ready()
        self.assertEqual(await b3.append("bob", [msg(1)]), [1])
        # same keys, another database
        self.assertEqual(await b0.read("bob", 0, 10), [])
        self.assertEqual(await b3.read("bob", 0, 10), [(1, msg(1))])

    async def test_wrong_password_never_becomes_ready(self) -> None:
        log = ShardLog(self)
        b = self.redisBackend(f"redis://ann:nope@127.0.0.1:{self.server.port}")
        await eventually(lambda: log.count("WRONGPASS") >= 1)
        self.assertFalse(b.available)
        self.failureResultOf(b.read("bob", 0, 1), BackendUnavailable)


class TlsTests(RedisCase):
    """rediss:// against redis-server's own TLS port, with certificates made here."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ca, ca_key, ca_cert = make_ca(self.dir, "test-ca")
        self.other_ca, _, _ = make_ca(self.dir, "other-ca")
        cert, key = make_server_cert(self.dir, ca_key, ca_cert, "localhost")
        conf = f"tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {self.ca}\n"
        self.server = RedisServer(conf=conf + "tls-auth-clients no\n", tls=True)
        self.server.start()
        self.addCleanup(self.server.destroy)

    async def test_verified_against_the_configured_ca(self) -> None:
        b = self.redisBackend(f"rediss://localhost:{self.server.port}", ca=self.ca)
        await b.when_ready()
        self.assertEqual(await b.append("bob", [msg(1)]), [1])

    async def test_a_bundle_of_cas(self) -> None:
        bundle = os.path.join(self.dir, "bundle.pem")
        with open(bundle, "wb") as out:
            for path in (self.other_ca, self.ca):
                with open(path, "rb") as f:
                    out.write(f.read())
        b = self.redisBackend(f"rediss://localhost:{self.server.port}", ca=bundle)
        await b.when_ready()
        self.assertEqual(await b.append("bob", [msg(1)]), [1])

    async def refused(self, url: str, ca: str | None) -> None:
        log = ShardLog(self)
        b = self.redisBackend(url, ca=ca)
        await eventually(lambda: log.count("cannot connect") == 1)
        self.assertIn("certificate verify failed", log.lines[-1])
        self.assertFalse(b.available)
        self.failureResultOf(b.read("bob", 0, 1), BackendUnavailable)

    async def test_a_certificate_from_another_ca_is_refused(self) -> None:
        await self.refused(f"rediss://localhost:{self.server.port}", self.other_ca)

    async def test_a_self_signed_server_is_refused_by_the_system_store(self) -> None:
        await self.refused(f"rediss://localhost:{self.server.port}", None)

    async def test_a_certificate_for_another_host_is_refused(self) -> None:
        log = ShardLog(self)
        # the certificate names localhost, not 127.0.0.1
        b = self.redisBackend(f"rediss://127.0.0.1:{self.server.port}", ca=self.ca)
        await eventually(lambda: log.count("cannot connect") == 1)
        self.assertFalse(b.available)
        self.failureResultOf(b.read("bob", 0, 1), BackendUnavailable)
