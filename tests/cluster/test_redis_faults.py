"""Real broker processes while their Redis is killed and restarted, or frozen.

Each test is bounded in time (``timeout``), and every process it starts is
gone after its cleanup.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import psutil
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from o2obroker.client import ClientError, connect
from o2obroker.session.auth import make_token
from tests.backend.test_redis_outage import eventually
from tests.cluster.nodes import SECRET, BrokerProcess
from tests.redis_server import RedisServer


async def health(node: BrokerProcess) -> int:
    r = await treq.get(f"{node.http}/healthz", persistent=False)
    await r.content()
    return int(r.code)


async def client(case: TestCase, node: BrokerProcess, user: str, **kw: Any) -> Any:
    c = await connect(reactor, node.tcp, token=make_token(SECRET, user), device="d", **kw)
    case.addCleanup(lambda: c.transport and c.transport.abortConnection())
    return c


class RedisFaultTests(TestCase):
    timeout = 60

    async def start(self, *redis_args: str, nodes: int = 2) -> list[BrokerProcess]:
        self.redis = RedisServer(*redis_args)
        self.redis.start()
        self.addCleanup(self.redis.destroy)
        procs = [BrokerProcess(f"n{i + 1}", self.redis.url) for i in range(nodes)]
        for p in procs:
            self.addCleanup(p.destroy)
            await p.start()
        return procs

    async def test_redis_kill_9_and_restart_loses_no_receipted_message(self) -> None:
        n1, n2 = await self.start("--appendonly", "yes", "--appendfsync", "always")
        bob = await client(self, n2, "bob")
        seen: list[tuple[int, str]] = []
        bob.on_msg = lambda m: seen.append((m["seq"], m["mid"]))
        alice = await client(self, n1, "alice")
        receipted: list[str] = []
        errors = 0
        restarted = False
        for i in range(60):
            if i == 20:
                self.redis.kill()  # SIGKILL: no shutdown, what is on disk is what is left
            if i == 30:
                self.redis.start()
                restarted = True
            receipt = None
            while receipt is None:
                try:
                    receipt = await alice.send({"i": i}, to="bob", id=f"s{i}")
                except ClientError as e:
                    self.assertEqual(e.frame["code"], 503)
                    errors += 1
                    if 20 <= i < 30:
                        break  # Redis is gone: this send stays without a receipt
                    # the nodes reconnect by themselves: retry with the same id
                    await deferLater(reactor, 0.1, lambda: None)
            if receipt is not None:
                receipted.append(receipt["mid"])
        self.assertTrue(restarted)
        self.assertGreater(errors, 0)  # the outage was seen: sends got 503

        await eventually(lambda: set(receipted) <= {mid for _, mid in seen}, 20)
        seqs = [s for s, _ in seen]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(seen), len({mid for _, mid in seen}))
        self.assertEqual(await health(n1), 200)

    async def test_redis_frozen_sends_503_healthz_503_memory_bounded_then_recovers(self) -> None:
        [n1] = await self.start(nodes=1)
        alice = await client(self, n1, "alice")
        self.assertEqual((await alice.send("before", to="bob"))["status"], "stored")
        pid = self.redis.process.pid
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: self.redis.process and os.kill(pid, signal.SIGCONT))
        # longer than redis_timeout (2 s): the call times out and the send gets 503
        with self.assertRaises(ClientError) as e:
            await alice.send("frozen", to="bob", id="f0")
        self.assertEqual(e.exception.frame["code"], 503)
        codes: list[int] = []

        async def polled() -> None:
            codes.append(await health(n1))

        for _ in range(50):
            await polled()
            if codes[-1] == 503:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(codes[-1], 503)
        # while it stays frozen, sends fail at once and the node keeps nothing for them
        rss = psutil.Process(n1._transport.pid).memory_info().rss
        failed = 0
        for i in range(300):
            try:
                await alice.send({"n": i, "pad": "x" * 1000}, to="bob", id=f"g{i}")
            except ClientError:
                failed += 1
        self.assertEqual(failed, 300)
        grown = psutil.Process(n1._transport.pid).memory_info().rss - rss
        self.assertLess(grown, 20 << 20)
        os.kill(pid, signal.SIGCONT)
        for _ in range(100):
            await polled()
            if codes[-1] == 200:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(codes[-1], 200)
        again = await alice.send("after", to="bob", id="f0")  # the retry of the first
        self.assertIn(again["status"], ("stored", "delivered"))
        bob = await client(self, n1, "bob", auto_ack=False)
        bodies = [(await bob.messages.get())["body"] for _ in range(2)]
        self.assertEqual(bodies[0], "before")
        self.assertIn(bodies[1], ("frozen", "after"))  # the retried id, stored once
        r = await treq.get(
            f"{n1.http}/api/v1/nodes", headers={"Authorization": "Bearer k"}, persistent=False
        )
        self.assertEqual([n["id"] for n in json.loads(await r.content())["nodes"]], ["n1"])
