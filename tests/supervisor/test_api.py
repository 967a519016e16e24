"""The supervisor's figures in the HTTP API: /api/v1/nodes and /getFreeHostAddress."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.actors.supervisor import Resources
from tests.harness import SECRET
from tests.supervisor.helpers import FakeSampler
from tests.web.helpers import WebHarness

KEY = {"Authorization": "Bearer k"}
PEER = {"node": "n2", "ws": "ws://10.0.0.2:8080/ws", "lp": "http://10.0.0.2:8080/lp", "load": 1}


class NodesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = WebHarness(secret=SECRET, api_key="k", advice_min_connections=4)
        self.sampler = self.h.node.supervisor.sampler = FakeSampler()
        self.sampler.resources = Resources(cpu=12.5, rss=300 << 20, memory=41.5)

    def nodes(self) -> list[dict[str, Any]]:
        code, answer = self.h.call("GET", "/api/v1/nodes", headers=KEY).json()
        self.assertEqual(code, 200)
        return answer["nodes"]

    def sample(self) -> None:
        self.h.node.supervisor.tick()
        self.h.flush()

    def test_fields_are_named_for_what_they_hold(self) -> None:
        for user in ("a", "b", "c"):
            self.h.ws_login(user).read()
        self.h.lp_open("d")
        self.sample()
        [node] = self.nodes()
        self.assertEqual(
            set(node),
            {
                "id",
                "boot",
                "cluster",
                "addresses",
                "connections",
                "cpu",
                "rss_bytes",
                "memory_percent",
                "occupancy",
                "advice",
                "draining",
                "healthy",
                "full",
                "last_heartbeat",
            },
        )
        self.assertEqual(node["connections"], {"ws": 3, "lp": 1})
        self.assertEqual(node["cpu"], 12.5)
        self.assertEqual(node["rss_bytes"], 300 << 20)
        self.assertEqual(node["memory_percent"], 41.5)
        self.assertEqual(node["occupancy"], 50.0)  # (3 - 1) / 4
        self.assertEqual(node["advice"], "ws")
        self.assertIs(node["draining"], False)
        self.assertEqual((node["healthy"], node["full"]), (True, False))
        self.assertEqual(node["last_heartbeat"], self.h.clock.seconds())
        self.assertEqual(node["boot"], self.h.node.store.boot)

    def test_before_the_first_sample_the_figures_are_null(self) -> None:
        [node] = self.nodes()
        self.assertEqual((node["cpu"], node["rss_bytes"], node["memory_percent"]), (None,) * 3)
        self.assertEqual((node["occupancy"], node["advice"]), (0.0, "ws"))

    def test_advice_follows_the_supervisor(self) -> None:
        for user in ("a", "b", "c", "d"):  # P = 100 with 4 connections: long-poll advised
            self.h.ws_login(user).read()
        self.sample()
        [node] = self.nodes()
        self.assertEqual((node["occupancy"], node["advice"]), (100.0, "lp"))
        code, answer = self.h.call("GET", "/getFreeHostAddress").json()
        self.assertEqual((code, answer["transport"]), (200, "lp"))

    def test_draining_is_shown(self) -> None:
        self.h.node.supervisor.drain()
        [node] = self.nodes()
        self.assertIs(node["draining"], True)


class FreeHostTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = WebHarness(secret=SECRET, api_key="k")
        self.supervisor = self.h.node.supervisor

    def free_host(self) -> tuple[int, dict[str, str], dict[str, Any]]:
        code, headers, body = self.h.call("GET", "/getFreeHostAddress?room=r").response()
        return code, headers, json.loads(body)

    def drain(self) -> list[Any]:
        failures: list[Any] = []
        self.supervisor.drain().addErrback(failures.append)
        return failures

    def test_a_draining_node_with_no_other_node_answers_503(self) -> None:
        self.drain()
        code, headers, answer = self.free_host()
        self.assertEqual(code, 503)
        self.assertEqual(answer, {"error": "no node can take clients now"})
        self.assertEqual(headers["retry-after"], "5")

    def test_a_draining_node_sends_clients_to_the_better_node(self) -> None:
        self.supervisor.peers = lambda: [PEER, {**PEER, "node": "n3", "draining": True}]
        self.drain()
        code, _, answer = self.free_host()
        self.assertEqual(code, 200)
        self.assertEqual(
            answer,
            {
                "node": "n2",
                "ws": "ws://10.0.0.2:8080/ws",
                "lp": "http://10.0.0.2:8080/lp",
                "transport": "ws",
            },
        )

    def test_a_node_at_its_hard_limit_is_not_offered(self) -> None:
        h = self.h = WebHarness(secret=SECRET, api_key="k", hard_connections=2)
        a = h.ws_login("a")
        self.assertEqual(self.free_host()[0], 200)
        h.ws_login("b").read()
        code, _, _ = self.free_host()  # a third client's hello would be refused
        self.assertEqual(code, 503)
        a.read()
        [refused] = h.ws_login("c").frames()
        self.assertEqual(refused["code"], 503)
        a.lose()
        self.assertEqual(self.free_host()[0], 200)

    def test_after_resume_the_node_is_offered_again(self) -> None:
        failures = self.drain()
        self.supervisor.resume()
        for f in failures:
            f.trap(CancelledError)
        code, _, answer = self.free_host()
        self.assertEqual((code, answer["node"]), (200, "n1"))
