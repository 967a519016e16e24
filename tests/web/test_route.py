"""``/api/v1/route`` and ``/getFreeHostAddress`` over a node directory (protocol section 8)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import AppSettings
from o2obroker.routing import NodeInfo, StaticDirectory, pick
from tests.harness import SECRET
from tests.supervisor.helpers import FakeSampler
from tests.web.helpers import WebHarness


def remote(node_id: str, cluster: str = "c1", **fields: Any) -> NodeInfo:
    host = f"{node_id}.example"
    addresses = {"ws": f"ws://{host}/ws", "tcp": f"{host}:9100", "lp": f"http://{host}/lp"}
    return NodeInfo(node_id, cluster, addresses, **fields)


class RouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = WebHarness(
            secret=SECRET,
            api_key="k",
            cluster="c1",
            apps={"shop": AppSettings(cluster="c2"), "pos": AppSettings()},
        )
        self.directory = StaticDirectory(
            [remote("a", "c2"), remote("b", "c2"), remote("c", "c2"), remote("x", "c1")]
        )
        self.h.node.directory = self.directory

    def route(self, query: str, **headers: str) -> tuple[int, dict[str, str], Any]:
        code, head, body = self.h.call("GET", f"/api/v1/route?{query}", headers=headers).response()
        return code, head, json.loads(body)

    def test_is_public_and_names_node_and_standby(self) -> None:
        code, _, answer = self.route("app=shop&key=store-42")
        self.assertEqual(code, 200)
        node, standby = pick("store-42", self.successResultOf(self.directory.nodes()), "c2")  # type: ignore[misc]
        self.assertEqual(
            answer,
            {
                "app": "shop",
                "cluster": "c2",
                "key": "store-42",
                "node": {"id": node.id, **node.addresses},
                "standby": {"id": standby.id, **standby.addresses},
            },
        )

    def test_before_the_shared_registry_is_read_the_answer_is_503(self) -> None:
        self.h.node.apps.loaded = False  # a node on Redis that has not read it yet
        code, head, answer = self.route("app=shop&key=store-42")
        self.assertEqual((code, answer["error"]), (503, "the app registry has not been read yet"))
        self.assertIn("retry-after", head)
        self.h.node.apps.replace_shared({})
        self.assertEqual(self.route("app=shop&key=store-42")[0], 200)

    def test_the_app_picks_the_cluster(self) -> None:
        _, _, answer = self.route("app=pos&key=k")  # no cluster given: the node's own
        self.assertEqual(
            (answer["cluster"], answer["node"]["id"], answer["standby"]), ("c1", "x", None)
        )

    def test_an_unknown_or_missing_app_is_403(self) -> None:
        for query in ("app=nope&key=k", "key=k", "cluster=c2&key=k"):
            code, _, answer = self.route(query)
            self.assertEqual((code, answer), (403, {"error": "unknown app"}), query)

    def test_a_missing_or_bad_key_is_400(self) -> None:
        for query in ("app=shop", "app=shop&key=", "app=shop&key=a%00b"):
            code, _, _ = self.route(query)
            self.assertEqual(code, 400, query)

    def test_a_dead_node_hands_over_to_its_standby(self) -> None:
        _, _, before = self.route("app=shop&key=store-42")
        self.directory.remove(before["node"]["id"])
        _, _, after = self.route("app=shop&key=store-42")
        self.assertEqual(after["node"], before["standby"])
        self.assertNotEqual(after["standby"]["id"], before["node"]["id"])

    def test_no_healthy_node_in_the_cluster_is_503(self) -> None:
        for node_id in ("a", "b", "c"):
            self.directory.update(node_id, healthy=False)
        code, headers, answer = self.route("app=shop&key=k")
        self.assertEqual((code, headers["retry-after"]), (503, "5"))
        self.assertIn("c2", answer["error"])

    def test_a_directory_that_fails_is_503(self) -> None:
        self.h.node.directory = type("Broken", (), {"nodes": lambda self: fail(OSError("down"))})()
        code, _, _ = self.route("app=shop&key=k")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(OSError)

    def test_a_page_of_an_allowed_origin_may_read_it(self) -> None:
        _, headers, _ = self.route("app=shop&key=k", Origin="https://shop.example")
        self.assertEqual(headers["access-control-allow-origin"], "https://shop.example")


class RouteWithoutRegistryTests(SynchronousTestCase):
    def test_one_node_routes_every_key_to_itself_as_reached(self) -> None:
        h = WebHarness(secret=SECRET, api_key="k")
        code, answer = h.call("GET", "/api/v1/route?key=alice").json()
        self.assertEqual(code, 200)
        self.assertEqual(
            (answer["app"], answer["cluster"], answer["standby"]), (None, "default", None)
        )
        self.assertEqual(
            answer["node"],
            {
                "id": "n1",
                "ws": "ws://127.0.0.1:8080/ws",
                "lp": "http://127.0.0.1:8080/lp",
                "tcp": "127.0.0.1:9100",
            },
        )

    def test_cluster_names_the_cluster_and_app_is_ignored(self) -> None:
        h = WebHarness(secret=SECRET)
        h.node.directory = StaticDirectory([remote("a", "eu"), remote("b", "us")])
        code, answer = h.call("GET", "/api/v1/route?app=any&cluster=us&key=k").json()
        self.assertEqual((code, answer["cluster"], answer["node"]["id"]), (200, "us", "b"))
        code, _ = h.call("GET", "/api/v1/route?key=k").json()  # the node's own: none there
        self.assertEqual(code, 503)

    def test_a_draining_node_is_not_routed_to(self) -> None:
        h = WebHarness(secret=SECRET)
        h.node.supervisor.drain()
        code, _ = h.call("GET", "/api/v1/route?key=k").json()
        self.assertEqual(code, 503)


class LocalDirectoryTests(SynchronousTestCase):
    """A node alone is its own directory: its alert state and limits are its health."""

    def test_over_an_alert_threshold_no_key_routes_here_yet_clients_may_come(self) -> None:
        h = WebHarness(secret=SECRET, api_key="k", alert_connections=2)
        h.node.supervisor.sampler = FakeSampler()
        for user in ("a", "b", "c"):
            h.ws_login(user).read()
        self.assertEqual(h.call("GET", "/api/v1/route?key=k").json()[0], 200)
        h.node.supervisor.tick()
        h.flush()
        self.assertEqual(h.node.supervisor.state, "alerting")
        self.assertEqual(h.call("GET", "/api/v1/route?key=k").json()[0], 503)
        code, answer = h.call("GET", "/getFreeHostAddress?room=r").json()
        self.assertEqual((code, answer["node"]), (200, "n1"))
        # the registry record says so too
        [record] = h.call("GET", "/api/v1/nodes", headers={"Authorization": "Bearer k"}).json()[1][
            "nodes"
        ]
        self.assertEqual((record["healthy"], record["full"]), (False, False))

    def test_past_a_hard_limit_the_node_takes_no_client(self) -> None:
        h = WebHarness(secret=SECRET, hard_connections=1)
        h.ws_login("a").read()
        [node] = self.successResultOf(h.node.directory.nodes())
        self.assertEqual((node.full, node.takes_clients, node.connections), (True, False, 1))
        self.assertEqual(h.call("GET", "/api/v1/route?key=k").json()[0], 503)


class FreeHostDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = WebHarness(secret=SECRET, cluster="c1")
        self.directory = StaticDirectory(
            [
                remote("a", connections=30),
                remote("b", connections=10, advice="lp"),
                remote("c", connections=20),
                remote("z", "c2", connections=0),
            ]
        )
        self.h.node.directory = self.directory

    def free(self, query: str = "") -> tuple[int, Any]:
        return self.h.call("GET", f"/getFreeHostAddress{query}").json()

    def test_the_least_loaded_node_of_this_cluster_with_its_advice(self) -> None:
        code, answer = self.free()
        self.assertEqual(code, 200)
        self.assertEqual(answer, {"node": "b", **remote("b").addresses, "transport": "lp"})
        self.directory.update("b", draining=True)
        self.assertEqual(self.free()[1]["node"], "c")
        self.directory.update("c", full=True)
        self.assertEqual(self.free()[1]["node"], "a")

    def test_a_rooms_callers_get_the_same_node_while_it_is_healthy(self) -> None:
        _, first = self.free("?room=store-7")
        for connections in (100, 1000):
            self.directory.update(first["node"], connections=connections)
            self.assertEqual(self.free("?room=store-7")[1]["node"], first["node"])
        self.directory.update(first["node"], healthy=False)
        _, moved = self.free("?room=store-7")
        self.assertNotEqual(moved["node"], first["node"])
        self.assertEqual(self.free("?room=store-7")[1]["node"], moved["node"])

    def test_no_node_that_takes_clients_is_503(self) -> None:
        for node_id in ("a", "b", "c"):
            self.directory.update(node_id, draining=True)
        code, answer = self.free("?room=r")
        self.assertEqual((code, answer), (503, {"error": "no node can take clients now"}))

    def test_a_bad_room_is_400(self) -> None:
        self.assertEqual(self.free("?room=")[0], 400)
