"""Presence across nodes on one real Redis: merged over devices on every node,
sent to watchers on any node, and only on a user-level change."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from o2obroker.backend import Location
from tests.redis_nodes import RedisNodesCase

SECRET = "cluster-node-secret-0123456789abcdef"


class ClusterPresenceTests(RedisNodesCase):
    secret = SECRET

    async def node(self, name: str, **kw: Any) -> str:
        kw.setdefault("presence_window", 0.01)
        return await super().node(name, presence_grace=0, **kw)

    async def watching(self, endpoint: str, user: str, *users: str) -> Any:
        c = await self.client(endpoint, user)
        first = c.wait_for("presence")
        c.write_frame({"t": "watch", "users": list(users)})
        await first
        return c

    @staticmethod
    def seen(c: Any) -> list[tuple[str, str, int]]:
        return [(f["user"], f["state"], f["devices"]) for f in c.frames if f["t"] == "presence"]

    async def test_devices_on_two_nodes_online_once_offline_with_the_last(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice = await self.watching(a, "alice", "bob")
        carol = await self.watching(b, "carol", "bob")
        went = alice.wait_for("presence"), carol.wait_for("presence")
        phone = await self.client(a, "bob", "phone")
        await went[0]
        await went[1]
        laptop = await self.client(b, "bob", "laptop")
        await deferLater(reactor, 0.1)
        await phone.bye()
        await deferLater(reactor, 0.1)
        went = alice.wait_for("presence"), carol.wait_for("presence")
        await laptop.bye()
        await went[0]
        await went[1]
        await deferLater(reactor, 0.1)
        for watcher in (alice, carol):
            # the watch's answer, the first device, the last one gone: nothing between
            self.assertEqual(
                self.seen(watcher),
                [("bob", "offline", 0), ("bob", "online", 1), ("bob", "offline", 0)],
            )

    async def test_a_watcher_on_another_node_gets_a_reported_change(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice = await self.watching(a, "alice", "bob")
        came = alice.wait_for("presence")
        bob = await self.client(b, "bob")
        self.assertEqual((await came)["state"], "online")
        busy = alice.wait_for("presence")
        bob.write_frame({"t": "presence", "state": "busy", "status": "in a meeting"})
        f = await busy
        self.assertEqual((f["user"], f["state"], f["status"]), ("bob", "busy", "in a meeting"))
        # and the broker's own answer agrees, on either node
        probe = alice.wait_for("presence")
        alice.write_frame({"t": "probe", "users": ["bob"]})
        self.assertEqual((await probe)["state"], "busy")

    async def test_a_dead_nodes_devices_go_offline_for_watchers(self) -> None:
        beat = 0.2
        a = await self.node("a", node_heartbeat=beat)
        b = await self.node("b", node_heartbeat=beat)
        alice = await self.watching(a, "alice", "bob")
        came = alice.wait_for("presence")
        await self.client(b, "bob")
        self.assertEqual((await came)["state"], "online")
        # b dies: no beat any more, no clean stop, its connections stay open
        self.nodes["b"].registry._loop.stop()
        died = reactor.seconds()
        went = alice.wait_for("presence")
        f = await went
        self.assertEqual((f["user"], f["state"], f["devices"]), ("bob", "offline", 0))
        # a reads the registry when b's record lapses, two beats after its last,
        # and sweeps it (0.2 s for the round trips of the sweep and the frame)
        self.assertLess(reactor.seconds() - died, 2 * beat + 0.2)
        probe = alice.wait_for("presence")
        alice.write_frame({"t": "probe", "users": ["bob"]})
        self.assertEqual((await probe)["state"], "offline")
        # b was only frozen: beating again, it records its devices again
        node_b = self.nodes["b"]
        back = alice.wait_for("presence")
        node_b.registry._loop.start(beat)
        f = await back
        self.assertEqual((f["user"], f["state"], f["devices"]), ("bob", "online", 1))
        # and the phone's location, which a swept, is b's again
        here = {"bob": {"phone": Location("b", node_b.store.boot)}}
        for _ in range(40):
            if await node_b.store.locations(["bob"]) == here:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(await node_b.store.locations(["bob"]), here)
