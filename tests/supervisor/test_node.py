"""The supervisor in a node, with real sessions on StringTransports (tests/harness.py)."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from tests.harness import Harness

PEER = {"node": "n2", "ws": "ws://10.0.0.2:8080/ws", "tcp": "10.0.0.2:9100", "load": 3}


def errors(device: Any) -> list[dict[str, Any]]:
    return [f for f in device.read() if f["t"] == "error"]


class NodeDrainTests(unittest.TestCase):
    def test_drain_sends_every_session_away_with_a_redirect(self) -> None:
        h = Harness(drain_rate=100)  # 10 sessions per 0.1 s
        supervisor = h.node.supervisor
        supervisor.peers = lambda: [PEER]
        devices = [h.login(f"user{i}") for i in range(35)]
        for d in devices:
            self.assertEqual(d.read_types(), ["welcome"])
        self.assertEqual(h.node.gateway.connections["tcp"], 35)
        done = []
        supervisor.drain().addCallback(done.append)
        self.assertEqual(sum(d.closed for d in devices), 10)
        h.clock.advance(0.1)
        self.assertEqual(sum(d.closed for d in devices), 20)
        h.clock.advance(0.1)
        h.clock.advance(0.1)
        self.assertEqual(done, [None])
        for d in devices:
            self.assertTrue(d.closed)
            [error] = errors(d)
            self.assertEqual(error["code"], 503)
            self.assertEqual(
                error["redirect"], {"ws": "ws://10.0.0.2:8080/ws", "tcp": "10.0.0.2:9100"}
            )
        self.assertEqual(h.node.gateway.connections["tcp"], 0)
        self.assertEqual(h.node.metrics.stats.errors[503], 35)

    def test_hello_while_draining_gets_503_and_is_closed(self) -> None:
        h = Harness()
        h.node.supervisor.peers = lambda: [PEER]
        h.node.supervisor.drain()
        late = h.login("alice")
        [error] = errors(late)
        self.assertEqual((error["code"], error["reason"]), (503, "node is draining"))
        self.assertIn("redirect", error)
        self.assertTrue(late.closed)
        self.assertNotIn("alice", h.node.router.actors)

    def test_resume_lets_hellos_in_again(self) -> None:
        h = Harness()
        h.node.supervisor.drain()
        h.node.supervisor.resume()
        self.assertEqual(h.login("alice").read_types(), ["welcome"])


class NodeRefusalTests(unittest.TestCase):
    def test_hard_connection_limit_refuses_with_503(self) -> None:
        h = Harness(hard_connections=2)
        a, b = h.login("a"), h.login("b")
        c = h.login("c")
        self.assertEqual(a.read_types(), ["welcome"])
        self.assertEqual(b.read_types(), ["welcome"])
        [error] = errors(c)
        self.assertEqual((error["code"], error["reason"]), (503, "node overloaded"))
        self.assertNotIn("redirect", error)  # one node: no better one known
        self.assertTrue(c.closed)
        a.lose()
        self.assertEqual(h.login("d").read_types(), ["welcome"])


class NodeMetricsTests(unittest.TestCase):
    def test_supervisor_figures_are_exported(self) -> None:
        h = Harness(alert_connections=1)
        h.login("alice")
        h.node.supervisor.tick()
        h.flush()
        text = h.node.metrics.render().decode()
        self.assertIn("o2o_cpu_percent ", text)
        self.assertIn("o2o_occupancy_percent 100.0", text)
        self.assertIn("o2o_alerting 1.0", text)
        self.assertIn('o2o_supervisor_events_total{event="alerts"} 1.0', text)
