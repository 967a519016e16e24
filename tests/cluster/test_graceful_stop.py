"""A graceful stop on real broker processes: SIGTERM to a node with ``stop_drain``.

Two nodes on one real Redis; a device routed to n1 receives a stream sent
from n2. SIGTERM to n1 drains it first: the device gets the 503 naming n2,
moves there and resumes without losing a receipted message, and n1 exits
within its bound.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from o2obroker.client import RoutedClient
from o2obroker.session.auth import make_token
from tests.backend.test_redis_outage import eventually
from tests.cluster.nodes import SECRET, BrokerProcess
from tests.cluster.test_routed_failover import BEFORE, MESSAGES, Sender, get_json, key_on
from tests.redis_server import RedisServer

STOP_DRAIN = 5


class GracefulStopTests(TestCase):
    timeout = 90

    async def setUp(self) -> None:
        redis = RedisServer()
        redis.start()
        self.addCleanup(redis.destroy)
        self.n1, self.n2 = nodes = [BrokerProcess(name, redis.url) for name in ("n1", "n2")]
        with open(self.n1.config, "a") as f:
            f.write(f"stop_drain = {STOP_DRAIN}\n")
        for node in nodes:
            self.addCleanup(node.destroy)
        await gatherResults([node.start() for node in nodes])
        for _ in range(100):
            listed = await get_json(
                f"{self.n1.http}/api/v1/nodes", headers={"Authorization": "Bearer k"}
            )
            if sorted(n["id"] for n in listed["nodes"]) == ["n1", "n2"]:
                break
            await deferLater(reactor, 0.1, lambda: None)
        await deferLater(reactor, 1.0, lambda: None)  # n1's redirects name n2

    async def test_sigterm_drains_to_the_peer_and_exits_within_the_bound(self) -> None:
        key, _ = await key_on(self.n1.http, "n1")
        got: list[dict] = []
        client = RoutedClient(
            reactor,
            [self.n1.http, self.n2.http],
            key=key,
            hello={"token": make_token(SECRET, "alice"), "device": "phone"},
            on_msg=got.append,
        )
        self.addCleanup(client.stop)
        await client.start()
        self.assertEqual(client.node, "n1")
        first = client.connected
        sender = Sender("alice")
        sending = Deferred.fromCoroutine(sender.run(self.n2.tcp, MESSAGES))
        await eventually(lambda: len(sender.receipted) >= BEFORE, 20)

        began = reactor.seconds()
        exited = self.n1.stop()  # SIGTERM
        await first.closed
        self.assertEqual(first.lost.code, 503)
        self.assertEqual(first.lost.frame["redirect"]["tcp"], self.n2.tcp.split(":", 1)[1])
        await exited
        self.assertLess(reactor.seconds() - began, STOP_DRAIN + 3)
        self.assertIn(b"draining for up to 5 s", self.n1.output)
        self.assertIn(b"node n1 drained", self.n1.output)

        await sending
        await eventually(lambda: len(got) >= MESSAGES, 20)
        self.assertEqual((client.node, client.moves), ("n2", 1))
        self.assertEqual([m["mid"] for m in got], sender.receipted)  # each once, in order
