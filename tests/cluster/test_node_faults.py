"""Three real broker processes on one real Redis, and one of them killed with SIGKILL.

What must hold: after the killed node's users resume on another node, every
message that got a receipt reaches every device of its recipient, in seq
order, none twice; and the registry drops the dead node within two heartbeats.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from o2obroker.client import ClientError, connect
from o2obroker.session.auth import make_token
from tests.backend.test_redis_outage import eventually
from tests.cluster.nodes import SECRET, BrokerProcess
from tests.redis_server import RedisServer


class Device:
    """One user's device across its connections: what it saw, in the order it saw it."""

    def __init__(self, user: str, name: str = "d") -> None:
        self.user = user
        self.name = name
        self.seen: list[tuple[int, str]] = []  # (seq, mid)
        self.client: Any = None

    async def connect(self, endpoint: str) -> None:
        resume = self.seen[-1][0] if self.seen else None
        c = await connect(
            reactor,
            endpoint,
            token=make_token(SECRET, self.user),
            device=self.name,
            resume=resume,
        )
        c.on_msg = lambda m: self.seen.append((m["seq"], m["mid"]))
        self.client = c

    def close(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.abortConnection()


class NodeKillTests(TestCase):
    timeout = 90

    async def setUp(self) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.destroy)
        self.nodes = [BrokerProcess(f"n{i}", self.redis.url) for i in (1, 2, 3)]
        for node in self.nodes:
            self.addCleanup(node.destroy)
        await gatherResults([node.start() for node in self.nodes])

    async def live_nodes(self, node: BrokerProcess) -> list[str]:
        r = await treq.get(
            f"{node.http}/api/v1/nodes", headers={"Authorization": "Bearer k"}, persistent=False
        )
        return [n["id"] for n in json.loads(await r.content())["nodes"]]

    async def test_kill_9_a_node_mid_traffic(self) -> None:
        n1, _, n3 = self.nodes
        listed: list[str] = []

        async def poll() -> None:
            listed[:] = await self.live_nodes(n1)

        await poll()
        for _ in range(100):
            if listed == ["n1", "n2", "n3"]:
                break
            await deferLater(reactor, 0.1, lambda: None)
            await poll()
        self.assertEqual(listed, ["n1", "n2", "n3"])

        users = [f"u{i}" for i in range(6)]
        home = {u: self.nodes[i % 3] for i, u in enumerate(users)}
        devices = {u: Device(u) for u in users}
        for u, d in devices.items():
            await d.connect(home[u].tcp)
            self.addCleanup(d.close)
        receipted: dict[str, list[str]] = {u: [] for u in users}  # recipient -> mids
        rounds = 30

        async def traffic(sender: str, start: int) -> None:
            """Send to the next users in turn; go on from another node when this one dies."""
            device = devices[sender]
            for i in range(start, rounds):
                to = users[(users.index(sender) + 1 + i % 5) % 6]
                try:
                    receipt = await device.client.send({"i": i}, to=to, id=f"{sender}-{i}")
                except (ClientError, ConnectionError):
                    return  # no receipt: the send is the client's to retry
                receipted[to].append(receipt["mid"])

        senders = [Deferred.fromCoroutine(traffic(u, 0)) for u in users]
        half = rounds // 2
        killed: list[bool] = []

        async def killer() -> None:
            await eventually(lambda: len(receipted["u0"]) >= half // 2, 20)
            killed.append(sum(map(len, receipted.values())) < len(users) * rounds)
            await n3.kill()

        await gatherResults([Deferred.fromCoroutine(killer()), *senders])
        self.assertEqual(killed, [True])  # killed while messages were still being sent

        # the dead node leaves the registry within two heartbeats (0.5 s each)
        for _ in range(40):
            await poll()
            if listed == ["n1", "n2"]:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(listed, ["n1", "n2"])

        # its users resume on a live node, and all users send what is left
        orphans = [u for u in users if home[u] is n3]
        for u in orphans:
            devices[u].close()
            await devices[u].connect(n1.tcp)
        await gatherResults([Deferred.fromCoroutine(traffic(u, half)) for u in users])

        def complete() -> bool:
            return all(set(receipted[u]) <= {mid for _, mid in devices[u].seen} for u in users)

        await eventually(complete, 20)
        for u in users:
            seqs = [seq for seq, _ in devices[u].seen]
            self.assertEqual(seqs, sorted(seqs), f"{u} got seqs out of order")
            mids = [mid for _, mid in devices[u].seen]
            self.assertEqual(len(mids), len(set(mids)), f"{u} got a message twice")


class NodeDeathTests(TestCase):
    """What watchers on a live node see of the users of a node killed with SIGKILL."""

    timeout = 60

    async def setUp(self) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.destroy)

    async def node(self, name: str, heartbeat: float) -> BrokerProcess:
        node = BrokerProcess(name, self.redis.url, heartbeat=heartbeat)
        self.addCleanup(node.destroy)
        await node.start()
        return node

    async def client(self, node: BrokerProcess, user: str) -> Any:
        c = await connect(reactor, node.tcp, token=make_token(SECRET, user), device="phone")
        self.addCleanup(lambda: c.transport and c.transport.abortConnection())
        return c

    async def records(self, node: BrokerProcess) -> dict[str, dict[str, Any]]:
        r = await treq.get(
            f"{node.http}/api/v1/nodes", headers={"Authorization": "Bearer k"}, persistent=False
        )
        return {n["id"]: n for n in json.loads(await r.content())["nodes"]}

    async def bob_online_for(self, alice: Any, b: BrokerProcess) -> Any:
        answer = alice.wait_for("presence")
        alice.write_frame({"t": "watch", "users": ["bob"]})
        self.assertEqual((await answer)["state"], "offline")
        came = alice.wait_for("presence")
        bob = await self.client(b, "bob")
        self.assertEqual((await came)["state"], "online")
        return bob

    async def test_a_killed_nodes_users_go_offline_within_two_intervals(self) -> None:
        interval = 1.0
        # how late the watcher's frame may be: the sweep's and the watcher's round
        # trips on loopback, on a machine shared with other test runs
        tolerance = 0.3
        # the watcher's node beats seldom: its own beats cannot be what notices
        # (it reads b's record at its first beat, then follows b's lapses)
        b = await self.node("b", interval)
        a = await self.node("a", 30.0)
        alice = await self.client(a, "alice")
        await self.bob_online_for(alice, b)
        went = alice.wait_for("presence")
        went.addTimeout(2 * interval + tolerance + 1, reactor)
        killed = reactor.seconds()
        await b.kill()
        f = await went
        took = reactor.seconds() - killed
        self.assertEqual((f["user"], f["state"], f["devices"]), ("bob", "offline", 0))
        self.assertLessEqual(took, 2 * interval + tolerance)
        self.assertEqual(list(await self.records(a)), ["a"])

    async def test_a_node_started_again_does_not_count_its_previous_life(self) -> None:
        # records live 20 s: whatever happens below happens long before b's lapses
        a = await self.node("a", 10.0)
        b = await self.node("b", 10.0)
        alice = await self.client(a, "alice")
        for _ in range(50):
            if "b" in await self.records(a):
                break
            await deferLater(reactor, 0.1, lambda: None)
        await self.bob_online_for(alice, b)
        old = (await self.records(a))["b"]
        went = alice.wait_for("presence")
        went.addTimeout(15, reactor)
        await b.kill()
        await b.start()  # the same id, a new boot: bob is not back
        f = await went
        self.assertEqual((f["user"], f["state"], f["devices"]), ("bob", "offline", 0))
        self.assertLess(reactor.seconds(), old["expires"])  # the old record had not lapsed
        new = (await self.records(a))["b"]
        self.assertNotEqual(new["boot"], old["boot"])
        # bob back on the new boot counts again
        came = alice.wait_for("presence")
        await self.client(b, "bob")
        self.assertEqual((await came)["state"], "online")
