"""The node's listening ports: the listen backlog a reconnect storm needs."""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.service.listen import LISTEN_BACKLOG, Listener, with_backlog


class BacklogTests(SynchronousTestCase):
    def test_a_port_that_names_no_backlog_gets_the_nodes(self) -> None:
        # Twisted's own default is 50: a dead node's clients, all saying hello to
        # their standby at once, would wait for TCP's one-second retry past it
        reactor = MemoryReactor()
        Listener("tcp", "tcp:9100:interface=127.0.0.1", Factory(), reactor).privilegedStartService()
        port, _, backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (9100, LISTEN_BACKLOG, "127.0.0.1"))
        self.assertGreater(LISTEN_BACKLOG, 50)

    def test_a_backlog_given_is_kept(self) -> None:
        reactor = MemoryReactor()
        Listener("http", "tcp:8080:backlog=7", Factory(), reactor).privilegedStartService()
        self.assertEqual(reactor.tcpServers[0][2], 7)

    def test_only_stream_ports_with_a_backlog_get_one(self) -> None:
        self.assertEqual(with_backlog("tcp6:9100"), f"tcp6:9100:backlog={LISTEN_BACKLOG}")
        self.assertEqual(
            with_backlog("ssl:443:privateKey=k.pem"),
            f"ssl:443:privateKey=k.pem:backlog={LISTEN_BACKLOG}",
        )
        self.assertEqual(with_backlog("unix:/run/o2o.sock"), "unix:/run/o2o.sock")
        self.assertEqual(with_backlog("tcp:9100:backlog=10"), "tcp:9100:backlog=10")
