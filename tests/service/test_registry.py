"""The node registry: heartbeats with a ttl, /api/v1/nodes from it, redirects fed by it."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from o2obroker.backend import MemoryBackend
from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.service.registry import LAPSE_MARGIN, Registry
from o2obroker.service.site import build_site
from tests.backend.test_redis_outage import eventually
from tests.doubles import FlakyBackend
from tests.redis_server import shared, unique_prefix

SECRET = "registry-secret-0123456789abcdef0123"


def record(node: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": node,
        "cluster": "default",
        "addresses": {"ws": f"ws://{node}/ws", "lp": f"http://{node}/lp", "tcp": f"{node}:1"},
        "occupancy": 10.0,
        "advice": "ws",
        "draining": False,
        **kw,
    }


def bare(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without what the store adds (boot, expires)."""
    return [{k: v for k, v in r.items() if k not in ("boot", "expires")} for r in records]


class RegistryUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = FlakyBackend(MemoryBackend(self.clock, "n1"))
        self.me = record("n1")
        self.registry = Registry(self.backend, self.clock, lambda: self.me, interval=2.0)

    def test_beats_every_interval_with_a_ttl_of_two(self) -> None:
        self.registry.start()
        self.assertEqual(bare(self.registry.nodes), [self.me])
        self.assertEqual(self.backend.calls, ["heartbeat", "nodes"])
        self.clock.advance(2.0)
        self.assertEqual(self.backend.calls, ["heartbeat", "nodes"] * 2)
        self.assertEqual(self.registry.ttl, 4.0)

    def test_a_node_that_stops_beating_is_dead_within_two_intervals(self) -> None:
        self.registry.start()
        self.registry._loop.stop()  # as a killed process would: no depart
        self.clock.advance(3.9)
        self.assertEqual(len(self.successResultOf(self.backend.nodes())), 1)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(self.backend.nodes()), [])

    def test_a_clean_stop_departs_at_once(self) -> None:
        self.registry.start()
        self.successResultOf(self.registry.stop())
        self.assertEqual(self.successResultOf(self.backend.nodes()), [])

    def test_peers_are_the_other_live_nodes_of_the_cluster(self) -> None:
        self.registry.nodes = [
            self.me,
            record("n2", occupancy=40.0, draining=True, advice="lp"),
            record("n3", cluster="other"),
        ]
        [peer] = self.registry.peers()
        self.assertEqual(
            peer,
            {
                "node": "n2",
                "ws": "ws://n2/ws",
                "lp": "http://n2/lp",
                "tcp": "n2:1",
                "load": 40.0,
                "draining": True,
                "advice": "lp",
            },
        )

    def test_a_node_redirects_to_peers_of_its_own_cluster(self) -> None:
        node = Node(Config(node="n1", cluster="eu"), Clock())
        node.registry.nodes = [record("n1", cluster="eu"), record("n2", cluster="eu"), record("n3")]
        self.assertEqual([p["node"] for p in node.registry.peers()], ["n2"])
        node.supervisor.admission.find_better()
        self.assertEqual(node.supervisor.better_node()["node"], "n2")

    def test_a_failed_beat_forgets_the_peers_and_the_next_one_recovers(self) -> None:
        self.registry.nodes = [self.me, record("n2")]
        self.backend.break_("fail", "heartbeat")
        self.registry.start()
        self.assertEqual(self.registry.nodes, [])
        self.backend.heal()
        self.clock.advance(2.0)
        self.assertEqual(bare(self.registry.nodes), [self.me])

    def test_one_beat_at_a_time(self) -> None:
        self.backend.break_("hold", "heartbeat")
        self.registry.start()
        self.clock.advance(2.0)
        self.clock.advance(2.0)
        self.assertEqual(self.backend.calls, ["heartbeat"])  # a slow backend: no pile-up
        self.backend.heal()
        self.backend.release()
        self.assertEqual(bare(self.registry.nodes), [self.me])

    def test_a_beat_anew_follows_the_one_under_way(self) -> None:
        self.backend.break_("hold", "heartbeat")
        self.registry.start()
        done = self.registry.beat_anew()
        self.assertNoResult(done)
        self.backend.heal()
        self.backend.release()
        # the beat under way may have gone out before what the caller knows of:
        # another one was made after it
        self.successResultOf(done)
        self.assertEqual(self.backend.calls, ["heartbeat", "nodes"] * 2)
        self.successResultOf(self.registry.beat_anew())  # none under way: one beat
        self.assertEqual(self.backend.calls, ["heartbeat", "nodes"] * 3)


class _WithPeers(MemoryBackend):
    """One node's store, plus the records of peers whose lapses a test sets."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, "n1")
        self.peers: dict[str, float] = {}  # peer id -> when its record lapses

    def nodes(self) -> Any:
        now = self._clock.seconds()
        live = [record(p, expires=e) for p, e in sorted(self.peers.items()) if e > now]
        return super().nodes().addCallback(lambda mine: mine + live)


class LapseTests(SynchronousTestCase):
    """A peer's death is read when its record lapses, not at this node's next beat."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.store = _WithPeers(self.clock)
        self.backend = FlakyBackend(self.store)
        self.registry = Registry(self.backend, self.clock, lambda: record("n1"), interval=2.0)
        self.swept: list[float] = []
        self.registry.on_beat = lambda: self.swept.append(self.clock.seconds())

    def ids(self) -> list[str]:
        return [r["id"] for r in self.registry.nodes]

    def test_a_peers_lapse_is_read_when_it_happens(self) -> None:
        # n2 beat last at 99.0 with a ttl of 4 s: it lapses at 103.0, between
        # this node's beats at 102 and 104
        self.store.peers["n2"] = 103.0
        self.registry.start()
        self.clock.advance(2.0)
        self.assertEqual(self.ids(), ["n1", "n2"])
        self.clock.advance(0.999)
        self.assertEqual(self.swept, [100.0, 102.0])
        self.clock.advance(0.001 + LAPSE_MARGIN)
        # read again at once, without a beat, and swept
        self.assertEqual(self.ids(), ["n1"])
        self.assertEqual(self.swept[-1], 103.0 + LAPSE_MARGIN)
        self.assertEqual(self.backend.calls, ["heartbeat", "nodes"] * 2 + ["nodes"])
        # nothing left to wait for until the next beat
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_a_peer_that_beat_again_is_watched_until_its_new_lapse(self) -> None:
        self.store.peers["n2"] = 101.0
        self.registry.start()
        self.store.peers["n2"] = 104.5  # it beat at 100.5
        self.clock.advance(1.0 + LAPSE_MARGIN)
        self.assertEqual(self.ids(), ["n1", "n2"])
        self.clock.advance(2.0)  # this node's own beat at 102
        self.clock.advance(1.5)  # 104.5: n2 beat no more
        self.assertEqual(self.ids(), ["n1"])
        self.assertEqual(self.swept[-1], 104.5 + LAPSE_MARGIN)

    def test_a_beat_that_finds_its_record_lapsed_records_the_nodes_state_again(self) -> None:
        rejoined: list[float] = []
        self.registry.on_rejoin = lambda: rejoined.append(self.clock.seconds())
        self.registry.start()
        self.clock.advance(2.0)
        self.assertEqual(rejoined, [])  # a first beat is no rejoin, nor is a beat in time
        self.backend.break_("fail", "heartbeat")
        self.clock.advance(4.0)  # the beats of 104 and 106 fail: the record lapses at 106
        self.assertEqual(rejoined, [])
        self.backend.heal()
        self.clock.advance(2.0)
        self.assertEqual(rejoined, [108.0])
        self.clock.advance(2.0)
        self.assertEqual(rejoined, [108.0])

    def test_a_beat_due_during_a_lapses_read_is_made_after_it(self) -> None:
        self.store.peers["n2"] = 101.0
        self.registry.start()
        self.backend.break_("hold", "nodes")
        self.clock.advance(1.0 + LAPSE_MARGIN)  # lapsed: read, and the read hangs
        self.clock.advance(1.0)  # the beat of 102 comes while it is under way
        beat = self.registry.beat()
        self.assertNoResult(beat)
        self.backend.heal()
        self.backend.release()
        # this node's record is written all the same, once the read is done
        self.assertEqual(self.backend.calls, ["heartbeat", "nodes", "nodes", "heartbeat", "nodes"])
        self.successResultOf(beat)
        self.assertEqual(self.store._nodes["n1"][0], self.clock.seconds() + self.registry.ttl)

    def test_no_read_while_a_beat_is_under_way_and_none_after_stop(self) -> None:
        self.store.peers["n2"] = 101.0
        self.registry.start()
        self.backend.break_("hold", "heartbeat")
        self.clock.advance(1.0 + LAPSE_MARGIN)  # lapsed: read
        self.assertEqual(self.backend.calls[-1], "nodes")
        self.store.peers["n2"] = 103.0
        self.clock.advance(1.0)  # the beat at 102 hangs
        self.clock.advance(1.0 + LAPSE_MARGIN)
        self.assertEqual(self.backend.calls[-1], "heartbeat")  # the held beat reads after it
        self.backend.heal()
        self.successResultOf(self.registry.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RegistryNodesTests(TestCase):
    """Real nodes on one real Redis: each lists every live node and redirects to a peer."""

    timeout = 30

    def setUp(self) -> None:
        self.prefix = unique_prefix()

    async def node(self, name: str, **kw: Any) -> tuple[Node, str]:
        config = Config(secret=SECRET, node=name, api_key="k", node_heartbeat=0.2, **kw)
        backend = RedisBackend(parse_urls(shared().url), reactor, reactor, name, prefix=self.prefix)
        node = Node(config, reactor, backend=backend)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            build_site(node, reactor)
        )
        self.addCleanup(port.stopListening)
        node.http_port = port.getHost().port
        node.start()
        self.addCleanup(node.stop)
        await backend.when_ready()
        await node.registry.beat()
        return node, f"http://127.0.0.1:{node.http_port}"

    async def listed(self, url: str) -> list[dict[str, Any]]:
        response = await treq.get(
            f"{url}/api/v1/nodes", headers={"Authorization": "Bearer k"}, persistent=False
        )
        self.assertEqual(response.code, 200)
        return json.loads(await response.content())["nodes"]

    async def test_every_node_lists_every_live_node(self) -> None:
        a, url_a = await self.node("a")
        b, url_b = await self.node("b")
        await a.registry.beat()
        for url in (url_a, url_b):
            nodes = await self.listed(url)
            self.assertEqual([n["id"] for n in nodes], ["a", "b"])
            for n in nodes:
                self.assertIn("occupancy", n)
                self.assertIn("advice", n)
                self.assertFalse(n["draining"])
        [b_seen_by_a] = [n for n in await self.listed(url_a) if n["id"] == "b"]
        self.assertEqual(b_seen_by_a["addresses"]["http"], url_b)
        self.assertEqual(b_seen_by_a["addresses"]["ws"], f"ws://127.0.0.1:{b.http_port}/ws")

    async def test_a_killed_node_is_dropped_within_two_intervals(self) -> None:
        a, url_a = await self.node("a")
        b, _ = await self.node("b")
        await a.registry.beat()
        self.assertEqual([n["id"] for n in await self.listed(url_a)], ["a", "b"])
        b.registry._loop.stop()  # no more beats, no depart: as after kill -9
        await eventually(lambda: [n["id"] for n in a.registry.nodes] == ["a"], within=2.0)
        self.assertEqual([n["id"] for n in await self.listed(url_a)], ["a"])

    async def test_the_redirect_names_a_live_peer_that_is_not_draining(self) -> None:
        a, _ = await self.node("a")
        b, _ = await self.node("b")
        c, _ = await self.node("c")
        c.gateway.accepting = False  # draining: never a redirect target
        await c.registry.beat()
        await a.registry.beat()
        a.supervisor.admission.find_better()
        better = a.supervisor.better_node()
        self.assertEqual(better["node"], "b")
        self.assertEqual(a.supervisor.admission.redirect["ws"], f"ws://127.0.0.1:{b.http_port}/ws")
