"""Long-poll on any node: two nodes in one process on one real Redis, real HTTP ports.

A session opened on node A is polled, sent on and closed through node B;
once A is gone, B answers 404 and the client's resume on B loses nothing.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.service.site import build_site
from o2obroker.session.auth import make_token
from o2obroker.transports.longpoll import make_sid
from tests.backend.test_redis_outage import eventually
from tests.redis_server import shared, unique_prefix

SECRET = "longpoll-node-secret-0123456789abcdef"


class LongPollOnAnyNodeTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.prefix = unique_prefix()
        self.nodes: dict[str, Node] = {}
        self.sites: dict[str, Any] = {}

    async def node(self, name: str) -> str:
        """Start node ``name`` with its HTTP site; its base URL."""
        config = Config(
            secret=SECRET, node=name, lp_timeout=2, allowed_origins="https://app.example"
        )
        backend = RedisBackend(parse_urls(shared().url), reactor, reactor, name, prefix=self.prefix)
        node = self.nodes[name] = Node(config, reactor, backend=backend)
        node.start()
        self.addCleanup(node.stop)
        await backend.when_ready()
        await eventually(lambda: backend.bus.ready)
        site = self.sites[name] = build_site(node, reactor)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.addCleanup(site.longpoll.stop)
        node.http_port = port.getHost().port  # what its registry record tells the others
        await node.registry.beat()
        return f"http://127.0.0.1:{node.http_port}"

    async def see_each_other(self) -> None:
        for node in self.nodes.values():
            await node.registry.beat()

    async def call(
        self, method: str, url: str, body: Any = None, origin: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if origin is None else {"origin": origin}
        r = await treq.request(method, url, data=data, headers=headers, persistent=False)
        return r.code, json.loads(await r.content())

    async def open(self, base: str, user: str, **hello: Any) -> tuple[str, int]:
        code, opened = await self.call(
            "POST",
            base + "/lp/open",
            {"t": "hello", "token": make_token(SECRET, user), "device": "web", **hello},
        )
        self.assertEqual(code, 200, opened)
        return opened["sid"], opened["pos"]

    async def test_poll_send_and_close_through_another_node(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        await self.see_each_other()
        bob, bob_pos = await self.open(a, "bob")
        alice, _ = await self.open(a, "alice")
        self.assertNotIn(bob, self.sites["b"].longpoll.sessions)  # A holds both
        # alice sends through B: B forwards to A, and the receipt comes back through B
        code, sent = await self.call(
            "POST", b + f"/lp/send?sid={alice}", {"t": "send", "id": "s1", "to": "bob", "body": 1}
        )
        self.assertEqual(code, 200)
        [receipt] = sent["frames"]
        self.assertEqual(
            (receipt["t"], receipt["id"], receipt["status"]), ("receipt", "s1", "delivered")
        )
        # bob polls through B and gets the message A holds for him
        code, polled = await self.call("GET", b + f"/lp/poll?sid={bob}&pos={bob_pos}")
        self.assertEqual(code, 200)
        [msg] = polled["frames"]
        self.assertEqual(
            (msg["t"], msg["seq"], msg["body"], msg["mid"]), ("msg", 1, 1, receipt["mid"])
        )
        self.assertEqual(self.sites["b"].longpoll.forwarder.counts, {"answered": 2})
        self.assertIs(
            self.sites["b"].longpoll.forwarder.counts, self.nodes["b"].gateway.stats.lp_forwards
        )
        # ack through B moves bob's cursor on A; close through B ends the session on A
        code, polled = await self.call("GET", b + f"/lp/poll?sid={bob}&pos={polled['pos']}&ack=1")
        self.assertEqual((code, polled["frames"]), (200, []))  # held on A, then empty
        code, closed = await self.call("POST", b + f"/lp/close?sid={bob}")
        self.assertEqual((code, closed["frames"]), (200, [{"t": "bye"}]))
        self.assertNotIn(bob, self.sites["a"].longpoll.sessions)
        code, _ = await self.call("GET", b + f"/lp/poll?sid={bob}")
        self.assertEqual(code, 404)  # A forgot it: its answer, passed on

    async def test_forwards_reuse_the_connections_of_one_pool(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        await self.see_each_other()
        bob, pos = await self.open(a, "bob")
        alice, _ = await self.open(a, "alice")
        accepted: list[Any] = []
        owner = self.sites["a"]
        build = owner.buildProtocol
        owner.buildProtocol = lambda addr: accepted.append(addr) or build(addr)
        n = 10
        for i in range(n):
            code, sent = await self.call(
                "POST",
                b + f"/lp/send?sid={alice}",
                {"t": "send", "id": f"s{i}", "to": "bob", "body": i},
            )
            self.assertEqual(code, 200, sent)
            code, polled = await self.call("GET", b + f"/lp/poll?sid={bob}&pos={pos}")
            self.assertEqual(code, 200, polled)
            pos = polled["pos"]
        self.assertEqual(self.sites["b"].longpoll.forwarder.counts, {"answered": 2 * n})
        # one connection from B to A carried all of them, one after the other
        self.assertEqual(len(accepted), 1)
        # while a poll is held on A, a send takes a second connection, and both stay
        held = Deferred.fromCoroutine(self.call("GET", b + f"/lp/poll?sid={bob}&pos={pos}"))
        await eventually(lambda: self.sites["a"].longpoll.sessions[bob]._poll is not None)
        await self.call(
            "POST", b + f"/lp/send?sid={alice}", {"t": "send", "id": "last", "to": "bob", "body": n}
        )
        code, polled = await held
        self.assertEqual([f["body"] for f in polled["frames"]], [n])
        self.assertEqual(len(accepted), 2)
        idle = self.sites["b"].longpoll.forwarder.pool._connections
        await eventually(lambda: sum(map(len, idle.values())) == 2)

    async def test_the_pool_keeps_a_bounded_number_of_idle_connections_per_peer(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        await self.see_each_other()
        forwarder = self.sites["b"].longpoll.forwarder
        forwarder.pool.maxPersistentPerHost = 1
        bob, pos = await self.open(a, "bob")
        alice, _ = await self.open(a, "alice")
        # two at once: a held poll and a send, two connections
        held = Deferred.fromCoroutine(self.call("GET", b + f"/lp/poll?sid={bob}&pos={pos}"))
        await eventually(lambda: self.sites["a"].longpoll.sessions[bob]._poll is not None)
        await self.call("POST", b + f"/lp/send?sid={alice}", {"t": "send", "to": "bob", "body": 1})
        await held
        idle = forwarder.pool._connections
        await eventually(lambda: sum(map(len, idle.values())) == 1)  # one kept, one closed
        self.assertEqual(sum(map(len, idle.values())), 1)

    async def test_after_the_owner_is_gone_a_resume_on_any_node_loses_nothing(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        await self.see_each_other()
        bob, pos = await self.open(a, "bob")
        self.sites["a"].longpoll.stop()  # node A goes away, its sessions with it
        await self.nodes["a"].stop()  # and leaves the registry at once
        await self.see_each_other()
        carol, _ = await self.open(b, "carol")
        for n in (1, 2):
            await self.call(
                "POST",
                b + f"/lp/send?sid={carol}",
                {"t": "send", "id": f"c{n}", "to": "bob", "body": n},
            )
        # B does not forward to a node the registry no longer lists
        counts = dict(self.sites["b"].longpoll.forwarder.counts)
        code, gone = await self.call("GET", b + f"/lp/poll?sid={bob}")
        self.assertEqual((code, gone["frames"][0]["code"]), (404, 404))
        self.assertEqual(self.sites["b"].longpoll.forwarder.counts, counts)
        # the client opens again with resume, on B: both messages, in order
        bob, pos = await self.open(b, "bob", resume={"last": 0})
        code, polled = await self.call("GET", b + f"/lp/poll?sid={bob}&pos={pos}")
        self.assertEqual([m["body"] for m in polled["frames"] if m["t"] == "msg"], [1, 2])

    async def test_only_registry_nodes_are_reached(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        await self.see_each_other()
        forwarder = self.sites["b"].longpoll.forwarder
        # a sid naming a node nobody runs, or this node itself, is unknown here
        for owner in ("nobody", "b", "127.0.0.1:6379"):
            code, _ = await self.call("GET", b + f"/lp/poll?sid={make_sid(owner)}")
            self.assertEqual(code, 404)
        self.assertEqual(forwarder.counts, {})
        # a request already forwarded is answered, never forwarded again
        r = await treq.get(
            b + f"/lp/poll?sid={make_sid('a')}", headers={"x-o2o-forwarded": "1"}, persistent=False
        )
        self.assertEqual(r.code, 404)
        await r.content()
        self.assertEqual(forwarder.counts, {})
        # the query is rebuilt from parsed arguments: nothing but them reaches the owner
        bob, pos = await self.open(a, "bob")
        code, _ = await self.call("GET", b + f"/lp/poll?sid={bob}&pos={pos}&x=%0d%0aHost:evil")
        self.assertEqual(code, 200)
        self.assertEqual(forwarder.counts, {"answered": 1})

    async def test_the_origin_is_checked_where_the_request_lands(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        await self.see_each_other()
        bob, pos = await self.open(a, "bob")
        # a page of B's own site (behind a balancer: the balancer's host) is allowed on B,
        # though it is not A's; a page of another site is refused on B, never forwarded
        code, polled = await self.call("GET", b + f"/lp/poll?sid={bob}&pos={pos}", origin=b)
        self.assertEqual(code, 200, polled)
        code, refused = await self.call(
            "GET", b + f"/lp/poll?sid={bob}", origin="https://evil.example"
        )
        self.assertEqual((code, refused["frames"][0]["code"]), (403, 403))
        self.assertEqual(self.sites["b"].longpoll.forwarder.counts, {"answered": 1})
