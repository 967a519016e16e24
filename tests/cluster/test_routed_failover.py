"""RoutedClient against real broker processes on one real Redis.

A device routed by key to one of three nodes receives a stream of messages
while that node is killed with SIGKILL, or drained (a 503 naming another
node): it moves to the standby, or the redirect's target, resumes there,
and every message that got a receipt reaches it once, in the order sent.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from o2obroker.client import RoutedClient, connect
from o2obroker.session.auth import make_token
from tests.backend.test_redis_outage import eventually
from tests.cluster.nodes import SECRET, BrokerProcess
from tests.redis_server import RedisServer

MESSAGES = 60
#: receipts before the node is killed or drained: mid-traffic
BEFORE = 20


async def get_json(url: str, **kw: Any) -> Any:
    r = await treq.get(url, persistent=False, **kw)
    return json.loads(await r.content())


async def three_nodes(case: TestCase) -> list[BrokerProcess]:
    """n1, n2, n3 on a Redis of the test's own, once each lists all three."""
    redis = RedisServer()
    redis.start()
    case.addCleanup(redis.destroy)
    nodes = [BrokerProcess(f"n{i}", redis.url) for i in (1, 2, 3)]
    for node in nodes:
        case.addCleanup(node.destroy)
    await gatherResults([node.start() for node in nodes])
    for _ in range(100):
        listed = await get_json(
            f"{nodes[0].http}/api/v1/nodes", headers={"Authorization": "Bearer k"}
        )
        if sorted(n["id"] for n in listed["nodes"]) == ["n1", "n2", "n3"]:
            break
        await deferLater(reactor, 0.1, lambda: None)
    # two more heartbeats: every node has read all three (its redirects name its peers)
    await deferLater(reactor, 1.0, lambda: None)
    return nodes


async def key_on(lookup: str, node: str) -> tuple[str, dict[str, Any]]:
    """A key that ``/api/v1/route`` puts on ``node``, and the route's answer."""
    for i in range(200):
        answer = await get_json(f"{lookup}/api/v1/route?key=store-{i}")
        if answer["node"]["id"] == node:
            return f"store-{i}", answer
    raise AssertionError(f"no key routes to {node}")


class Sender:
    """Sends numbered messages to ``to`` one after another from a node that stays up;
    ``receipted`` holds the mids that got a receipt, in the order sent."""

    def __init__(self, to: str) -> None:
        self.to = to
        self.receipted: list[str] = []
        self.client: Any = None

    async def run(self, endpoint: str, n: int) -> None:
        self.client = await connect(reactor, endpoint, token=make_token(SECRET, "bob"), device="pc")
        for i in range(n):
            receipt = await self.client.send({"i": i}, to=self.to, id=f"bob-{i}")
            self.receipted.append(receipt["mid"])
            await deferLater(reactor, 0.005, lambda: None)  # a stream, not a burst
        await self.client.bye()


class RoutedFailoverTests(TestCase):
    timeout = 90

    async def setUp(self) -> None:
        self.nodes = await three_nodes(self)
        self.by_id = {n.name: n for n in self.nodes}
        self.lookup = self.nodes[0].http

    async def routed(self, node: str) -> tuple[RoutedClient, list[dict[str, Any]], dict[str, Any]]:
        key, answer = await key_on(self.lookup, node)
        got: list[dict[str, Any]] = []
        client = RoutedClient(
            reactor,
            [self.lookup],
            key=key,
            hello={"token": make_token(SECRET, "alice"), "device": "phone"},
            on_msg=got.append,
        )
        self.addCleanup(client.stop)
        await client.start()
        self.assertEqual(client.node, node)
        return client, got, answer

    def assertOnceInOrder(self, got: list[dict[str, Any]], receipted: list[str]) -> None:
        mids = [m["mid"] for m in got]
        self.assertEqual(len(receipted), MESSAGES)
        self.assertEqual(mids, receipted)  # each once, in the order sent
        seqs = [m["seq"] for m in got]
        self.assertEqual(seqs, sorted(set(seqs)))

    async def test_kill_9_of_the_keys_node_mid_traffic(self) -> None:
        client, got, answer = await self.routed("n3")
        sender = Sender("alice")
        sending = Deferred.fromCoroutine(sender.run(self.nodes[0].tcp, MESSAGES))
        await eventually(lambda: len(sender.receipted) >= BEFORE, 20)
        await self.by_id["n3"].kill()
        await sending
        await eventually(lambda: len(got) >= MESSAGES, 20)
        self.assertEqual((client.node, client.moves), (answer["standby"]["id"], 1))
        self.assertOnceInOrder(got, sender.receipted)

    async def test_a_drained_node_sends_the_device_where_its_503_says(self) -> None:
        client, got, _ = await self.routed("n3")
        sender = Sender("alice")
        sending = Deferred.fromCoroutine(sender.run(self.nodes[0].tcp, MESSAGES))
        await eventually(lambda: len(sender.receipted) >= BEFORE, 20)
        first = client.connected
        looked: list[None] = []
        lookup = client.lookup

        def counted() -> Any:
            looked.append(None)
            return lookup()

        client.lookup = counted  # type: ignore[method-assign]
        r = await treq.post(
            f"{self.by_id['n3'].http}/api/v1/drain",
            headers={"Authorization": "Bearer k"},
            persistent=False,
        )
        self.assertEqual(r.code, 202)
        await first.closed
        self.assertEqual(first.lost.code, 503)
        redirect = first.lost.frame["redirect"]["tcp"]
        await sending
        await eventually(lambda: len(got) >= MESSAGES, 20)
        target = next(n.name for n in self.nodes if n.tcp.endswith(redirect.rsplit(":", 1)[1]))
        self.assertNotEqual(target, "n3")
        self.assertEqual((client.node, client.moves), (target, 1))
        self.assertEqual(looked, [])  # straight to the redirect, no look-up
        self.assertOnceInOrder(got, sender.receipted)
