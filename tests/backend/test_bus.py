"""The subscriber's state machine, on a StringTransport: resubscribe, batches, liveness."""

from __future__ import annotations

import hiredis
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.backend.interface import BackendUnavailable
from o2obroker.backend.redis.bus import BATCH, Subscriber, _SubscriberProtocol, command
from o2obroker.backend.redis.url import RedisTarget


def commands(transport: StringTransport) -> list[list[bytes]]:
    reader = hiredis.Reader()
    reader.feed(transport.value())
    transport.clear()
    out = []
    while (c := reader.gets()) is not False:
        out.append(c)
    return out


def push(*parts: bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b":%d\r\n" % p if isinstance(p, int) else b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class SubscriberTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.messages: list[tuple[bytes, bytes]] = []
        self.readied: list[list[bytes]] = []
        self.sub = Subscriber(
            RedisTarget("127.0.0.1", 1),
            self.clock,
            lambda c, p: self.messages.append((c, p)),
            self.readied.append,
            ping_interval=10.0,
        )

    def connect(self, password: str | None = None) -> tuple[_SubscriberProtocol, StringTransport]:
        if password is not None:
            self.sub.target = RedisTarget("127.0.0.1", 1, password=password)
        self.sub._enter("connecting")  # as start() does, without its ClientService
        p = _SubscriberProtocol(self.sub)
        t = StringTransport()
        p.makeConnection(t)
        return p, t

    def confirm(self, p: _SubscriberProtocol, *channels: bytes) -> None:
        p.dataReceived(b"".join(push(b"subscribe", c, 1) for c in channels))

    def test_subscribe_before_ready_fails_at_once(self) -> None:
        self.failureResultOf(self.sub.subscribe(b"u1"), BackendUnavailable)
        self.assertEqual(self.sub.wanted, set())

    def test_subscribe_fires_on_its_own_confirmation(self) -> None:
        p, t = self.connect()
        self.assertEqual(self.sub.state, "ready")
        d1, d2 = self.sub.subscribe(b"u1"), self.sub.subscribe(b"u2")
        self.clock.advance(0)
        self.assertEqual(commands(t), [[b"SUBSCRIBE", b"u1", b"u2"]])  # one command a turn
        self.confirm(p, b"u2")
        self.successResultOf(d2)
        self.assertNoResult(d1)  # not mixed up with another channel's confirmation
        self.assertFalse(self.sub.has(b"u1"))
        self.confirm(p, b"u1")
        self.successResultOf(d1)
        self.assertTrue(self.sub.has(b"u1"))
        self.successResultOf(self.sub.subscribe(b"u1"))  # already: at once, no command
        self.clock.advance(0)
        self.assertEqual(commands(t), [])

    def test_messages_are_handed_on(self) -> None:
        p, _ = self.connect()
        p.dataReceived(push(b"message", b"u1", b"\x00payload"))
        self.assertEqual(self.messages, [(b"u1", b"\x00payload")])

    def test_after_a_reconnect_everything_is_resubscribed_in_batches_before_ready(self) -> None:
        p, t = self.connect()
        channels = [b"u%d" % i for i in range(BATCH + 100)]
        for c in channels:
            self.sub.subscribe(c)
        self.clock.advance(0)
        self.assertEqual([len(c) - 1 for c in commands(t)], [BATCH, 100])
        self.confirm(p, *channels)
        p.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.sub.state, "down")
        self.failureResultOf(self.sub.subscribe(b"new"), BackendUnavailable)
        self.sub.unsubscribe(b"u0")  # gone while down: not subscribed again
        p2, t2 = self.connect()
        self.assertEqual(self.sub.state, "resubscribing")
        sent = commands(t2)
        self.assertEqual([len(c) - 1 for c in sent], [BATCH, 99])
        self.assertEqual({c for cmd in sent for c in cmd[1:]}, set(channels[1:]))
        self.confirm(p2, *channels[1:-1])
        self.assertEqual(self.sub.state, "resubscribing")
        self.assertEqual(self.readied, [])
        self.confirm(p2, channels[-1])
        self.assertEqual(self.sub.state, "ready")
        # the users whose publishes may have been lost: their inboxes are read again
        self.assertEqual(self.readied, [sorted(channels[1:])])

    def test_pending_subscriptions_fail_when_the_connection_drops(self) -> None:
        p, _ = self.connect()
        d = self.sub.subscribe(b"u1")
        self.clock.advance(0)
        p.connectionLost(Failure(ConnectionError("gone")))
        self.failureResultOf(d, BackendUnavailable)

    def test_unsubscribe_before_the_flush_sends_no_subscribe(self) -> None:
        _, t = self.connect()
        d = self.sub.subscribe(b"u1")
        self.sub.unsubscribe(b"u1")
        self.successResultOf(d)
        self.clock.advance(0)
        self.assertEqual(commands(t), [[b"UNSUBSCRIBE", b"u1"]])
        self.assertFalse(self.sub.has(b"u1"))

    def test_login_comes_first(self) -> None:
        p, t = self.connect(password="s3cret")
        self.assertEqual(commands(t), [[b"AUTH", b"s3cret"]])
        p.dataReceived(b"-WRONGPASS invalid\r\n")
        self.assertTrue(t.disconnecting)

    def test_an_unanswered_ping_replaces_the_connection(self) -> None:
        self.sub._pinger.start(10.0, now=False)
        self.addCleanup(self.sub._pinger.stop)
        p, t = self.connect()
        self.clock.advance(10)
        self.assertEqual(commands(t), [[b"PING"]])
        p.dataReceived(push(b"pong", b""))
        self.clock.advance(10)
        self.assertEqual(commands(t), [[b"PING"]])
        self.assertFalse(t.disconnecting)
        self.clock.advance(10)  # no pong for the last one
        self.assertTrue(t.disconnecting)

    def test_a_ping_answered_outside_subscribe_mode_keeps_the_connection(self) -> None:
        # with no channel subscribed Redis answers a plain +PONG, not a pong push
        self.sub._pinger.start(10.0, now=False)
        self.addCleanup(self.sub._pinger.stop)
        p, t = self.connect()
        for _ in range(3):
            self.clock.advance(10)
            self.assertEqual(commands(t), [[b"PING"]])
            p.dataReceived(b"+PONG\r\n")
        self.clock.advance(10)
        self.assertFalse(t.disconnecting)

    def test_command_encoding(self) -> None:
        self.assertEqual(command(b"PING"), b"*1\r\n$4\r\nPING\r\n")
