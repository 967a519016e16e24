"""History on real loopback sockets: binary TCP, WebSocket, long-poll and the HTTP API,
with the memory archive and with the Redis one (a real redis-server)."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.backend.redis.archive import RedisArchive
from o2obroker.client.binary import BinaryClient, ClientError, connect
from o2obroker.config import ArchiveSettings, Config
from o2obroker.service.node import Node
from tests.backend.test_redis_outage import eventually
from tests.redis_server import shared, unique_prefix
from tests.web import test_loopback

KEY = {b"Authorization": [b"Bearer k3y"]}


class HistoryLoopbackTests(test_loopback.LoopbackCase):
    def makeNode(self) -> Node:
        return Node(Config(archive=ArchiveSettings(enabled=True), api_key="k3y"), reactor)

    # the Python client of o2obroker, not the test's minimal one
    async def phone(self, user: str) -> BinaryClient:
        client = await connect(reactor, self.endpoint, user=user, device="phone")
        self.addCleanup(client.transport.loseConnection)
        return client

    async def _conversation(self) -> tuple[BinaryClient, BinaryClient]:
        alice = await self.phone("alice")
        bob = await self.phone("bob")
        for i in range(3):
            await alice.send({"n": i}, to="bob")
        await bob.send(b"\x00bytes", to="alice")
        return alice, bob

    async def test_binary_tcp(self) -> None:
        alice, _ = await self._conversation()
        page = await alice.history(with_="bob", limit=3)
        self.assertEqual([m["body"] for m in page["messages"]], [b"\x00bytes", {"n": 2}, {"n": 1}])
        self.assertTrue(page["more"])
        older = await alice.history(with_="bob", before=page["messages"][-1]["mid"])
        self.assertEqual([m["body"] for m in older["messages"]], [{"n": 0}])
        self.assertFalse(older["more"])
        await alice.join("r")
        carol = await self.phone("carol")
        with self.assertRaises(ClientError) as e:
            await carol.history(room="r")
        self.assertEqual(e.exception.code, 403)

    async def test_websocket(self) -> None:
        await self._conversation()
        browser = await self.ws("bob", "tab")
        browser.write({"t": "history", "id": "h1", "with": "alice", "limit": 2})
        page = await browser.factory.frames.get()
        self.assertEqual((page["t"], page["ref"], page["more"]), ("history", "h1", True))
        # a mobile client's bytes reach the browser as $bytes, in history too
        self.assertEqual(page["messages"][0]["body"], {"$bytes": "AGJ5dGVz"})

    async def test_long_poll(self) -> None:
        await self._conversation()
        r = await treq.post(
            self.base + "/lp/open",
            json.dumps({"t": "hello", "user": "bob"}).encode(),
            persistent=False,
        )
        opened = json.loads(await r.content())
        sid, pos = opened["sid"], opened["pos"]
        r = await treq.post(
            self.base + f"/lp/send?sid={sid}",
            json.dumps({"t": "history", "id": "h", "with": "alice"}).encode(),
            persistent=False,
        )
        self.assertEqual(r.code, 200)
        await r.content()
        # the answer is not a receipt: it comes through the poll stream (doc/protocol.md 6)
        frames: list[Any] = []
        for _ in range(10):
            r = await treq.get(self.base + f"/lp/poll?sid={sid}&pos={pos}", persistent=False)
            answer = json.loads(await r.content())
            pos = answer["pos"]
            frames.extend(answer["frames"])
            if any(f["t"] == "history" for f in frames):
                break
        [page] = [f for f in frames if f["t"] == "history"]
        self.assertEqual(len(page["messages"]), 4)
        self.assertEqual(page["messages"][-1]["body"], {"n": 0})
        await treq.post(self.base + f"/lp/close?sid={sid}", persistent=False)

    async def test_http_api(self) -> None:
        alice, _ = await self._conversation()
        await alice.join("r")
        await alice.send("in the room", room="r")
        r = await treq.get(
            self.base + "/api/v1/history?user=bob&with=alice&limit=2",
            headers=KEY,
            persistent=False,
        )
        page = json.loads(await r.content())
        self.assertEqual(r.code, 200)
        self.assertEqual(len(page["messages"]), 2)
        self.assertTrue(page["more"])
        before = page["messages"][-1]["mid"]
        r = await treq.get(
            self.base + f"/api/v1/history?user=bob&with=alice&before={before}",
            headers=KEY,
            persistent=False,
        )
        self.assertEqual(len(json.loads(await r.content())["messages"]), 2)
        # a room: any for the service, members only when a user is named
        r = await treq.get(self.base + "/api/v1/history?room=r", headers=KEY, persistent=False)
        self.assertEqual(json.loads(await r.content())["messages"][0]["body"], "in the room")
        r = await treq.get(
            self.base + "/api/v1/history?room=r&user=bob", headers=KEY, persistent=False
        )
        self.assertEqual(
            (r.code, json.loads(await r.content())), (403, {"error": "not a member of this room"})
        )
        for query in (
            "",
            "?user=bob",
            "?user=bob&with=alice&limit=500",
            "?room=r&limit=x",
            "?room=r&limit=%C2%B2",  # a digit to str.isdigit, not to int()
            "?room=r&limit=-1",
        ):
            r = await treq.get(self.base + "/api/v1/history" + query, headers=KEY, persistent=False)
            self.assertEqual(r.code, 400, query)
            await r.content()
        r = await treq.get(self.base + "/api/v1/history?room=r", persistent=False)
        self.assertEqual(r.code, 401)
        await r.content()
        await deferLater(reactor, 0)

    async def test_http_api_without_an_archive_is_404(self) -> None:
        self.node.business.archive = None
        r = await treq.get(self.base + "/api/v1/history?room=r", headers=KEY, persistent=False)
        self.assertEqual((r.code, json.loads(await r.content())), (404, {"error": "no archive"}))


class RedisHistoryLoopbackTests(HistoryLoopbackTests):
    """The same, on a node whose backend and archive are Redis."""

    def makeNode(self) -> Node:
        backend = RedisBackend(parse_urls(shared().url), reactor, reactor, prefix=unique_prefix())
        node = Node(Config(archive=ArchiveSettings(enabled=True), api_key="k3y"), reactor, backend)
        self.assertIsInstance(node.business.archive, RedisArchive)
        return node

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        await self.node.store.when_ready()
        # a hello tracks its user on the bus: its subscriber must be up too
        await eventually(lambda: self.node.store.bus.ready)

    async def test_another_node_reads_the_same_history(self) -> None:
        await self._conversation()
        other = Node(
            Config(archive=ArchiveSettings(enabled=True), node="n2"),
            reactor,
            RedisBackend(
                parse_urls(shared().url), reactor, reactor, prefix=self.node.store._prefix
            ),
        )
        other.start()
        self.addCleanup(other.stop)
        await other.store.when_ready()
        messages, more = await other.business.archive.page("c/alice/bob", None, 10)
        self.assertEqual([m.fields["body"] for m in messages][-1], {"n": 0})
        self.assertEqual((len(messages), more), (4, False))
