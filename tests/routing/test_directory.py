"""Routing clients to nodes: rendezvous hashing with a standby, the least loaded, rooms."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from o2obroker.routing import (
    AppRegistry,
    INodeDirectory,
    LocalDirectory,
    NodeInfo,
    RegistryDirectory,
    StaticDirectory,
    least_loaded,
    pick,
    rank,
)

KEYS = [f"shop-{i}" for i in range(5000)]


def fleet(n: int, cluster: str = "c1", **fields: Any) -> list[NodeInfo]:
    return [NodeInfo(f"{cluster}-n{i}", cluster, **fields) for i in range(n)]


def owners(nodes: list[NodeInfo], cluster: str = "c1") -> dict[str, tuple[str, str | None]]:
    out = {}
    for key in KEYS:
        found = pick(key, nodes, cluster)
        assert found is not None
        node, standby = found
        out[key] = (node.id, None if standby is None else standby.id)
    return out


class RendezvousTests(SynchronousTestCase):
    def test_keys_spread_over_the_nodes(self) -> None:
        counts = Counter(node for node, _ in owners(fleet(5)).values())
        self.assertEqual(len(counts), 5)
        for n in counts.values():  # 1000 each on average
            self.assertTrue(800 < n < 1200, counts)

    def test_the_standby_is_another_node(self) -> None:
        for node, standby in owners(fleet(4)).values():
            self.assertIsNotNone(standby)
            self.assertNotEqual(node, standby)

    def test_the_answer_does_not_depend_on_the_order_nodes_are_listed_in(self) -> None:
        nodes = fleet(6)
        self.assertEqual(owners(nodes), owners(list(reversed(nodes))))

    def test_removing_a_node_moves_only_its_keys_each_to_its_own_standby(self) -> None:
        nodes = fleet(5)
        before = owners(nodes)
        dead = "c1-n2"
        after = owners([n for n in nodes if n.id != dead])
        moved = Counter()
        for key, (node, standby) in before.items():
            if node == dead:
                self.assertEqual(after[key][0], standby, key)
                moved[standby] += 1
            else:
                self.assertEqual(after[key][0], node, key)  # nobody else's key moves
        # the dead node's ~1000 keys spread over all four others, not onto one
        self.assertEqual(len(moved), 4)
        self.assertTrue(max(moved.values()) < 0.4 * sum(moved.values()), moved)

    def test_adding_a_node_takes_keys_only_onto_itself(self) -> None:
        nodes = fleet(4)
        before = owners(nodes)
        after = owners([*nodes, NodeInfo("c1-new", "c1")])
        changed = [k for k in KEYS if before[k][0] != after[k][0]]
        self.assertTrue(all(after[k][0] == "c1-new" for k in changed))
        self.assertTrue(800 < len(changed) < 1200, len(changed))

    def test_an_unhealthy_node_hands_its_keys_to_their_standby_until_it_recovers(self) -> None:
        directory = StaticDirectory(fleet(3))
        key = "store-42"
        nodes = self.successResultOf(directory.nodes())
        node, standby = pick(key, nodes, "c1")
        for change in ({"healthy": False}, {"draining": True}, {"full": True}):
            directory.update(node.id, **change)
            moved, _ = pick(key, self.successResultOf(directory.nodes()), "c1")
            self.assertEqual(moved.id, standby.id, change)
            directory.put(node)
            back, _ = pick(key, self.successResultOf(directory.nodes()), "c1")
            self.assertEqual(back.id, node.id)

    def test_only_the_named_cluster_counts(self) -> None:
        nodes = fleet(3, "c1") + fleet(3, "c2")
        for key in KEYS[:200]:
            node, standby = pick(key, nodes, "c2")
            self.assertEqual((node.cluster, standby.cluster), ("c2", "c2"))
        self.assertIsNone(pick("k", nodes, "c3"))

    def test_one_node_has_no_standby_and_none_left_is_none(self) -> None:
        [only] = fleet(1)
        self.assertEqual(pick("k", [only], "c1"), (only, None))
        self.assertIsNone(pick("k", [NodeInfo("x", "c1", healthy=False)], "c1"))
        self.assertIsNone(pick("k", [], "c1"))

    def test_rank_is_stable_across_calls(self) -> None:
        nodes = fleet(8)
        self.assertEqual(
            [n.id for n in rank("room-7", nodes)], [n.id for n in rank("room-7", nodes)]
        )


class LeastLoadedTests(SynchronousTestCase):
    def test_fewest_connections_ties_to_the_lower_id(self) -> None:
        nodes = [
            NodeInfo("b", connections=3),
            NodeInfo("a", connections=3),
            NodeInfo("c", connections=9),
        ]
        self.assertEqual(least_loaded(nodes).id, "a")
        nodes.append(NodeInfo("d", connections=1))
        self.assertEqual(least_loaded(nodes).id, "d")

    def test_draining_and_full_nodes_get_no_clients(self) -> None:
        nodes = [
            NodeInfo("a", connections=0, draining=True),
            NodeInfo("b", connections=1, full=True),
            NodeInfo("c", connections=50),
        ]
        self.assertEqual(least_loaded(nodes).id, "c")
        self.assertEqual(least_loaded(nodes, "r").id, "c")
        self.assertIsNone(least_loaded(nodes[:2]))
        self.assertIsNone(least_loaded(nodes[:2], "r"))

    def test_a_rooms_callers_meet_on_one_node_whatever_the_load(self) -> None:
        directory = StaticDirectory(fleet(4))
        first = least_loaded(self.successResultOf(directory.nodes()), "room-9")
        assert first is not None
        for connections in (10, 100, 1000):  # its load grows, others stay idle
            directory.update(first.id, connections=connections)
            again = least_loaded(self.successResultOf(directory.nodes()), "room-9")
            self.assertEqual(again.id, first.id)

    def test_a_room_leaves_its_node_once_over_an_alert_threshold(self) -> None:
        directory = StaticDirectory(fleet(4))
        first = least_loaded(self.successResultOf(directory.nodes()), "room-9")
        assert first is not None
        directory.update(first.id, healthy=False)
        moved = least_loaded(self.successResultOf(directory.nodes()), "room-9")
        self.assertNotEqual(moved.id, first.id)
        # every caller of the room goes to the same new node
        self.assertEqual(least_loaded(self.successResultOf(directory.nodes()), "room-9"), moved)

    def test_rooms_spread_over_the_nodes(self) -> None:
        nodes = fleet(4)
        counts = Counter(least_loaded(nodes, f"room-{i}").id for i in range(400))
        self.assertEqual(len(counts), 4)

    def test_when_no_node_is_healthy_a_room_goes_to_the_least_loaded(self) -> None:
        nodes = [NodeInfo("a", connections=5, healthy=False), NodeInfo("b", healthy=False)]
        self.assertEqual(least_loaded(nodes, "r").id, "b")


class DirectoryTests(SynchronousTestCase):
    def test_both_provide_the_interface(self) -> None:
        verifyObject(INodeDirectory, StaticDirectory())
        verifyObject(INodeDirectory, LocalDirectory("n1", "c1", dict))

    def test_local_directory_reads_the_figures_at_each_look_up(self) -> None:
        figures: dict[str, Any] = {"connections": {"ws": 2, "tcp": 1}, "advice": "lp"}
        directory = LocalDirectory("n1", "eu", lambda: figures)
        [node] = self.successResultOf(directory.nodes())
        self.assertEqual((node.id, node.cluster, node.connections), ("n1", "eu", 3))
        self.assertEqual((node.advice, node.addresses), ("lp", {}))
        figures["draining"] = True
        [node] = self.successResultOf(directory.nodes())
        self.assertFalse(node.takes_clients)

    def test_a_registry_directory_reads_records_and_skips_bad_ones(self) -> None:
        records = [
            {"id": "a", "cluster": "c1", "connections": {"ws": 2}},
            {"cluster": "c1"},  # no id
            {"id": "b", "connections": "many"},
        ]
        directory = RegistryDirectory(lambda: succeed(records))
        verifyObject(INodeDirectory, directory)
        [node] = self.successResultOf(directory.nodes())
        self.assertEqual((node.id, node.cluster, node.connections), ("a", "c1", 2))

    def test_a_registry_that_fails_fails_the_look_up(self) -> None:
        directory = RegistryDirectory(lambda: fail(OSError("registry down")))
        self.failureResultOf(directory.nodes(), OSError)

    def test_a_registry_record_is_read(self) -> None:
        record = {
            "id": "n7",
            "cluster": "c2",
            "addresses": {"ws": "ws://h:1/ws", "tcp": "h:2", "lp": "http://h:1/lp", "x": "y"},
            "connections": {"ws": 4, "lp": 1},
            "occupancy": 60.0,
            "advice": "lp",
            "draining": False,
            "cpu": 3.0,
        }
        node = NodeInfo.from_record(record)
        self.assertEqual(node.addresses, {"ws": "ws://h:1/ws", "tcp": "h:2", "lp": "http://h:1/lp"})
        self.assertEqual((node.connections, node.occupancy, node.advice), (5, 60.0, "lp"))
        self.assertTrue(node.routable)


class AppRegistryTests(SynchronousTestCase):
    def test_empty_admits_anything(self) -> None:
        apps = AppRegistry()
        self.assertFalse(apps)
        self.assertTrue(apps.admits(None))
        self.assertTrue(apps.admits("whatever"))

    def test_a_registry_admits_only_its_apps(self) -> None:
        apps = AppRegistry({"shop": "c1", "pos": "c2"})
        self.assertTrue(apps.admits("pos"))
        self.assertFalse(apps.admits("other"))
        self.assertFalse(apps.admits(None))
        self.assertEqual((apps.cluster_of("shop"), apps.cluster_of("x")), ("c1", None))


class ScoreTests(SynchronousTestCase):
    """The front proxy's njs script ranks keys by the same score: sha256 of
    ``key NUL node id``, its first 8 bytes, highest first. These vectors pin it,
    so that a change of the score here is a change there too
    (tests.cluster.test_front_proxy checks nginx against ``pick``)."""

    def test_known_vectors(self) -> None:
        nodes = [NodeInfo(n, "c1") for n in ("n1", "n2", "n3")]
        # sha256("k1\0n3")[:8] = a6589897a9ab94a8 > "k1\0n2" 324fb3ba... > "k1\0n1" 1f75dcf0...
        self.assertEqual([n.id for n in rank("k1", nodes)], ["n3", "n2", "n1"])
        # non-ASCII keys are hashed as UTF-8: "ké\0n3" dff7d386... > "ké\0n2" bc3b5eb0...
        node, standby = pick("ké", nodes, "c1")  # type: ignore[misc]
        self.assertEqual((node.id, standby.id), ("n3", "n2"))
        # a key whose order is not the reverse of the ids
        node, standby = pick("shop-1", nodes, "c1")  # type: ignore[misc]
        self.assertEqual((node.id, standby.id), ("n1", "n3"))
