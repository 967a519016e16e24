"""Hooks against a real local HTTP server standing in for the application."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from o2obroker.client.binary import BinaryClient, ClientError, connect
from o2obroker.config import Config, HookSettings, PolicySettings
from o2obroker.policy import UNAVAILABLE, Candidate, IMessageFilter
from o2obroker.policy.breaker import CircuitBreaker
from o2obroker.policy.events import EventQueue
from o2obroker.policy.hooks import ConnectHook, HookClient, HookError, PublishHook
from o2obroker.service.node import Node
from o2obroker.transports.tcp import BinaryFactory


class App(Resource):
    """The application: records every call; ``mode`` says how it answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.mode = "accept"
        self.calls: list[dict[str, Any]] = []
        self.held: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        body = json.loads(request.content.read())
        self.calls.append(body)
        request.setHeader(b"content-type", b"application/json")
        mode = self.mode
        if mode == "hang":
            self.held.append(request)
            return NOT_DONE_YET
        if mode == "500":
            request.setResponseCode(500)
            return b"oops"
        if mode == "huge":
            return b" " * (5 << 20) + b"{}"
        if mode == "huge-chunked":
            for _ in range(5):
                request.write(b" " * (1 << 20))
            request.write(b"{}")
            request.finish()
            return NOT_DONE_YET
        if body["hook"] == "connect":
            if mode == "refuse":
                return json.dumps({"allow": False, "code": 403, "reason": "shop closed"}).encode()
            return json.dumps({"allow": True, "user": "store-" + body["user"]}).encode()
        if body["hook"] != "publish":
            return b"{}"
        verdicts = []
        for m in body["messages"]:
            text = m["body"]
            if mode == "reject" or text == "no":
                verdicts.append({"action": "reject", "reason": "not on sundays"})
            elif mode == "rewrite":
                verdicts.append({"action": "rewrite", "body": text.upper()})
            else:
                verdicts.append({"action": "accept"})
        return json.dumps({"verdicts": verdicts}).encode()


class HookTestCase(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.app = App()
        self.port = reactor.listenTCP(0, Site(self.app), interface="127.0.0.1")
        self.addCleanup(self._stop_app)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/hooks"
        self.addCleanup(self._release)

    def _stop_app(self) -> Any:
        return self.port.stopListening() if self.port is not None else None

    def _release(self) -> None:
        for request in self.app.held:
            if not request.finished and not request._disconnected:
                request.finish()

    def client(self, **kw: Any) -> HookClient:
        from o2obroker.policy.build import make_agent

        agent, pool = make_agent(reactor)
        self.addCleanup(pool.closeCachedConnections)
        return HookClient("app", self.url, agent, reactor, **kw)


def _batch(*bodies: str) -> list[Candidate]:
    return [Candidate(str(i), "alice", "phone", "bob", None, b) for i, b in enumerate(bodies)]


class PublishHookTests(HookTestCase):
    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IMessageFilter, PublishHook(self.client())))

    async def test_accept_reject_rewrite(self) -> None:
        hook = PublishHook(self.client())
        verdicts = await hook.check(_batch("yes", "no"))
        self.assertEqual(verdicts[0], "yes")
        self.assertEqual(verdicts[1].reason, "rejected by policy: not on sundays")
        self.assertEqual(verdicts[1].code, 403)
        self.app.mode = "rewrite"
        self.assertEqual(await hook.check(_batch("a", "b")), ["A", "B"])
        # one call per batch, carrying every message
        self.assertEqual([len(c["messages"]) for c in self.app.calls], [2, 2])
        self.assertEqual(self.app.calls[0]["messages"][0]["from"], "alice")

    async def test_a_rewrite_over_max_body_is_a_failure(self) -> None:
        from o2obroker.wire.limits import Limits

        self.app.mode = "rewrite"
        hook = PublishHook(self.client(), "refuse", Limits(max_body=10))
        self.assertEqual(await hook.check(_batch("short")), ["SHORT"])
        self.assertEqual(await hook.check(_batch("x" * 20)), [UNAVAILABLE])

    async def test_timeout_follows_on_failure(self) -> None:
        self.app.mode = "hang"
        allow = PublishHook(self.client(timeout=0.2), "allow")
        self.assertEqual(await allow.check(_batch("x")), ["x"])
        refuse = PublishHook(self.client(timeout=0.2), "refuse")
        self.assertEqual(await refuse.check(_batch("x")), [UNAVAILABLE])

    async def test_500_counts_against_the_breaker(self) -> None:
        self.app.mode = "500"
        client = self.client(breaker=CircuitBreaker(reactor, failures=2, reset=0.3))
        hook = PublishHook(client, "refuse")
        for _ in range(2):
            self.assertEqual(await hook.check(_batch("x")), [UNAVAILABLE])
        self.assertEqual(len(self.app.calls), 2)
        # open: refused at once, the application is not called
        self.assertEqual(await hook.check(_batch("x")), [UNAVAILABLE])
        self.assertEqual(len(self.app.calls), 2)
        self.assertEqual(client.counts["refused"], 1)
        # after the reset period one probe goes; it succeeds and closes the circuit
        self.app.mode = "accept"
        await deferLater(reactor, 0.35)
        self.assertEqual(await hook.check(_batch("x")), ["x"])
        self.assertEqual(client.breaker.state, "closed")
        self.assertEqual(len(self.app.calls), 3)

    async def test_a_bad_answer_is_a_failure(self) -> None:
        client = self.client()
        with self.assertRaises(HookError):
            await client.call("publish", {"messages": []}).addCallback(
                lambda a: PublishHook(client)._verdicts(a, _batch("x"))
            )

    async def test_an_answer_past_the_limit_is_a_failure(self) -> None:
        from o2obroker.policy.hooks import MAX_ANSWER

        self.assertLess(MAX_ANSWER, 5 << 20)
        client = self.client()
        for mode in ("huge", "huge-chunked"):  # with a content-length, and without
            self.app.mode = mode
            with self.assertRaises(HookError) as e:
                await client.call("publish", {"messages": []})
            # stopped while reading, not read whole and refused by the JSON decoder
            self.assertIn(f"answer larger than {MAX_ANSWER} bytes", str(e.exception))
        self.app.mode = "accept"
        self.assertEqual(await client.call("publish", {"messages": []}), {"verdicts": []})

    async def test_bounded_concurrency(self) -> None:
        self.app.mode = "hang"
        client = self.client(concurrency=2, max_waiting=1, timeout=5)
        calls = [client.call("publish", {"messages": []}) for _ in range(3)]
        with self.assertRaises(HookError):
            await client.call("publish", {"messages": []})  # the fourth: nowhere to wait
        await deferLater(reactor, 0.2)
        self.assertEqual(len(self.app.calls), 2)  # two at once, the third waits
        for d in calls:
            d.addErrback(lambda f: None)
            d.cancel()


class ConnectHookTests(HookTestCase):
    async def test_refuse_and_rename(self) -> None:
        hook = ConnectHook(self.client())
        answer = await hook.check("alice", "phone", "tcp")
        self.assertTrue(answer.allowed)
        self.assertEqual(answer.user, "store-alice")
        self.app.mode = "refuse"
        answer = await hook.check("alice", "phone", "tcp")
        self.assertEqual((answer.code, answer.reason), (403, "shop closed"))

    async def test_down(self) -> None:
        self.app.mode = "500"
        self.assertTrue((await ConnectHook(self.client(), "allow").check("a", "p", "tcp")).allowed)
        answer = await ConnectHook(self.client(), "refuse").check("a", "p", "tcp")
        self.assertEqual(answer.code, 503)


class OfflineQueueTests(HookTestCase):
    async def test_nothing_lost_while_the_application_is_away(self) -> None:
        queue = EventQueue(
            "offline", self.client(timeout=0.5), reactor, window=0.01, backoff=0.05, max_backoff=0.1
        )
        self.addCleanup(queue.stop)
        port = self.port.getHost().port
        await self.port.stopListening()
        self.port = None
        for i in range(5):
            queue.add({"user": "bob", "n": i})
        for _ in range(100):
            if queue.counts["retried"] >= 10:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(self.app.calls, [])
        self.assertGreaterEqual(queue.counts["retried"], 10)  # two attempts at least
        self.port = reactor.listenTCP(port, Site(self.app), interface="127.0.0.1")
        for _ in range(100):
            if queue.counts["sent"] == 5:
                break
            await deferLater(reactor, 0.05)
        events = [e for c in self.app.calls for e in c["events"]]
        self.assertEqual([e["n"] for e in events], [0, 1, 2, 3, 4])
        self.assertEqual(len({e["id"] for e in events}), 5)
        self.assertEqual(self.app.calls[0]["hook"], "offline")


class NodeWithHooksTests(HookTestCase):
    """A whole node on loopback: the publish and connect hooks in the real message path."""

    def node(self, config: Config) -> tuple[Node, str]:
        """A node of ``config`` started for this test, and the endpoint of its binary port."""
        node = Node(config, reactor)
        node.start()
        self.addCleanup(node.stop)
        listener = reactor.listenTCP(0, BinaryFactory(node.gateway), interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        return node, f"tcp:127.0.0.1:{listener.getHost().port}"

    async def test_publish_hook_in_the_message_path(self) -> None:
        config = Config(
            policies={"": PolicySettings(publish_hook="app", connect_hook="app")},
            hooks={"app": HookSettings(url=self.url, timeout=2)},
        )
        _, endpoint = self.node(config)
        alice = await connect(reactor, endpoint, user="alice", device="p")
        bob = await connect(reactor, endpoint, user="bob", device="p")
        for c in (alice, bob):
            self.addCleanup(c.transport.loseConnection)
        self.app.mode = "rewrite"
        receipt = await alice.send("hi", to="store-bob")
        self.assertEqual(receipt["status"], "delivered")
        got = await bob.messages.get()
        self.assertEqual(got["body"], "HI")
        self.assertEqual(got["from"], "store-alice")  # the user the connect hook named
        self.app.mode = "accept"
        with self.assertRaises(ClientError) as e:
            await alice.send("no", to="store-bob")
        self.assertEqual(e.exception.code, 403)
        self.app.mode = "refuse"
        with self.assertRaises(ClientError) as e:
            await connect(reactor, endpoint, user="carol", device="p")
        self.assertEqual(e.exception.frame["reason"], "shop closed")
        await deferLater(reactor, 0)

    async def test_offline_and_presence_hooks_from_the_node(self) -> None:
        """Pushes only for users with no live device, presence edges, and what
        was stored while the application was away arrives once it is back."""
        # the application's connections, to close them when it goes away
        port = self.port.getHost().port
        await self.port.stopListening()
        app = WrappingFactory(Site(self.app))
        self.port = reactor.listenTCP(port, app, interface="127.0.0.1")
        hook = HookSettings(
            url=self.url, timeout=0.5, window=0.01, backoff=0.05, max_backoff=0.1,
            breaker_reset=0.2,
        )  # fmt: skip
        config = Config(
            policies={"": PolicySettings(offline_hook="app", presence_hook="app")},
            hooks={"app": hook},
        )
        node, endpoint = self.node(config)
        alice = await connect(reactor, endpoint, user="alice", device="p")
        carol = await connect(reactor, endpoint, user="carol", device="p")
        for c in (alice, carol):
            self.addCleanup(c.transport.loseConnection)
        self.assertEqual((await alice.send("to a phone in a pocket", to="bob"))["status"], "stored")
        self.assertEqual((await alice.send("to a live device", to="carol"))["status"], "delivered")

        async def events(kind: str, n: int) -> list[dict[str, Any]]:
            for _ in range(200):
                got = [e for c in self.app.calls if c["hook"] == kind for e in c["events"]]
                if len(got) >= n:
                    return got
                await deferLater(reactor, 0.02)
            self.fail(f"{kind}: {got}")

        [pushed] = await events("offline", 1)
        self.assertEqual(
            (pushed["user"], pushed["message"]["body"]), ("bob", "to a phone in a pocket")
        )
        online = await events("presence", 2)
        self.assertEqual(
            sorted((e["user"], e["state"]) for e in online),
            [("alice", "online"), ("carol", "online")],
        )
        # the application goes away; what is stored meanwhile waits, and is not lost
        await self.port.stopListening()
        self.port = None
        for conn in list(app.protocols):
            conn.transport.loseConnection()
        for i in range(3):
            await alice.send(f"while away {i}", to="bob")
        await deferLater(reactor, 0.5)  # retries, the breaker opens
        self.port = reactor.listenTCP(port, Site(self.app), interface="127.0.0.1")
        pushed = await events("offline", 4)
        self.assertEqual(
            [e["message"]["body"] for e in pushed[1:]], [f"while away {i}" for i in range(3)]
        )
        self.assertEqual(len({e["id"] for e in pushed}), 4)
        self.assertGreater(node.business.offline.counts["retried"], 0)
        await deferLater(reactor, 0)


del BinaryClient
