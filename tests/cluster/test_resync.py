"""The resync of a node's users on a real redis-server: what it costs, and how often.

A resync records each local user's presence part and device locations again
and reads the inboxes of devices that missed something. It comes after the
node's subscriber reconnects and after its heartbeat finds its record
lapsed; a Redis restart brings both.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from o2obroker.actors.user import UserActor
from o2obroker.backend import Location, StoredMessage
from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.config import Config
from o2obroker.service.node import Node
from tests.actors.test_user import FakeDevice
from tests.backend.test_redis_outage import eventually
from tests.redis_nodes import RedisNodesCase
from tests.redis_server import RedisServer, unique_prefix


def counted(case: Any) -> dict[str, int]:
    """How often each user's actor is told to resync, from now on."""
    told: dict[str, int] = {}
    resync = UserActor.resync

    def counting(actor: UserActor) -> None:
        told[actor.user] = told.get(actor.user, 0) + 1
        resync(actor)

    case.patch(UserActor, "resync", counting)
    return told


async def attach(node: Node, users: list[str]) -> dict[str, FakeDevice]:
    """A live phone of each user on ``node``, welcomed."""
    devices = {}
    for user in users:
        device = devices[user] = FakeDevice(user, "phone")
        node.router.actor(user).attach(device, None)
    # attached, not only welcomed: a backlog read after the welcome may still
    # be under way, and a Redis restart then would fail the attach (a 503)
    actors = node.router.actors
    await eventually(
        lambda: all(d.welcomed and actors[u].devices.get("phone") is d for u, d in devices.items())
    )
    return devices


def commands(store: RedisBackend) -> int:
    return sum(s.calls for s in store.shards)


class ResyncCostTests(RedisNodesCase):
    async def test_a_resync_of_many_users_costs_a_few_commands_a_slice(self) -> None:
        n, behind = 1000, 5
        await self.node("a")
        node = self.nodes["a"]
        store: RedisBackend = node.store
        users = [f"u{i}" for i in range(n)]
        devices = await attach(node, users)
        here = Location("a", store.boot)
        # what a sweep leaves of a node taken for dead: no presence part, no
        # location; and messages whose publishes were lost
        shard = store.shards[0]
        hub = node.presence
        # every attach's presence merge has run, and its change has gone out
        for _ in range(200):
            found = await store.presence(users)
            if all(p.state == "online" for p in found.values()):
                break
            await deferLater(reactor, 0.05, lambda: None)
        await eventually(lambda: hub._timer is None and not hub._pending)
        for i in range(0, n, 200):
            keys = [store._key(u, k) for u in users[i : i + 200] for k in ("presn", "pres", "loc")]
            await shard.call("DEL", *keys)
        now = int(reactor.seconds() * 1000)
        lost = StoredMessage(
            "m1", now, {"mid": "m1", "from": "x", "to": "u0", "body": 1, "ts": now}
        )
        await store.append_many({u: [lost] for u in users[:behind]})
        told = counted(self)
        done = []
        self.patch(UserActor, "_resynced", _counting(UserActor._resynced, done))

        before = commands(store)
        node.cluster_publisher.rejoined(users)
        await eventually(lambda: len(done) == n)
        await eventually(lambda: all(devices[u].msgs for u in users[:behind]))
        # and the resync's: each user came back online for its watchers
        await eventually(lambda: hub._timer is None and not hub._pending)
        sent = commands(store) - before

        self.assertEqual(told, dict.fromkeys(users, 1))
        # a few commands a slice of 500 users (their watchers' look-up included)
        # and one read per device behind,
        # where it was some per user (1000 users: 5000 and more)
        self.assertLessEqual(sent, n // 50 + behind + 10)
        # and the work was done: parts, locations, the lost messages
        found = await store.presence(users)
        self.assertEqual({(p.state, p.devices) for p in found.values()}, {("online", 1)})
        self.assertEqual(await store.locations(users), {u: {"phone": here} for u in users})
        self.assertEqual([devices[u].msgs for u in users[:behind]], [[(1, "m1")]] * behind)
        self.assertEqual([devices[u].msgs for u in users[behind:]], [[]] * (n - behind))


def _counting(method: Any, done: list[Any]) -> Any:
    def wrapper(actor: UserActor, found: Any) -> Any:
        done.append(actor.user)
        return method(actor, found)

    return wrapper


class RedisRestartTests(RedisNodesCase):
    """A node on a Redis server of its own, which the test restarts empty."""

    timeout = 90

    async def test_a_redis_restart_resyncs_each_user_once(self) -> None:
        server = RedisServer()
        server.start()
        self.addCleanup(server.destroy)
        beat = 0.2
        config = Config(secret=self.secret, node="a", node_heartbeat=beat)
        store = RedisBackend(parse_urls(server.url), reactor, reactor, "a", prefix=unique_prefix())
        node = Node(config, reactor, backend=store)
        node.start()
        self.addCleanup(node.stop)
        await store.when_ready()
        await eventually(lambda: store.bus.ready)
        users = [f"u{i}" for i in range(50)]
        devices = await attach(node, users)
        rejoins: list[float] = []
        on_rejoin = node.registry.on_rejoin
        assert on_rejoin is not None

        def rejoined() -> None:
            rejoins.append(reactor.seconds())
            on_rejoin()

        node.registry.on_rejoin = rejoined
        resubscribes: list[int] = []
        on_ready = store.bus.on_ready
        store.bus.on_ready = lambda users: (resubscribes.append(len(users)), on_ready(users))
        told = counted(self)

        # everything the node kept in Redis is gone, its subscriptions too
        server.stop()
        server.start()
        here = {u: {"phone": Location("a", store.boot)} for u in users}

        async def restored() -> bool:
            return await store.locations(users) == here

        # both triggers come: the record lapsed, and the channels were lost
        await eventually(lambda: bool(rejoins and resubscribes), within=30)
        self.assertEqual(len(rejoins), 1)
        self.assertEqual(resubscribes, [len(users)])
        await eventually(lambda: len(told) == len(users), within=10)
        for _ in range(500):
            if await restored():
                break
            await deferLater(reactor, 0.02, lambda: None)
        # a few beats more: no second pass comes
        await deferLater(reactor, 4 * beat, lambda: None)
        self.assertEqual(told, dict.fromkeys(users, 1))
        self.assertTrue(await restored())
        found = await store.presence(users)
        self.assertEqual({p.state for p in found.values()}, {"online"})
        self.assertTrue(all(d.live for d in devices.values()))
