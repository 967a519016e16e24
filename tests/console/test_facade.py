"""The console's ``broker`` facade over a node on a task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from o2obroker.service.facade import MAX_PAGE, Broker
from o2obroker.wire import ProtocolError
from tests.harness import Harness


class FacadeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.broker = Broker(self.h.node)

    def result(self, d: Any) -> Any:
        self.h.flush()
        return self.successResultOf(d)

    def test_help(self) -> None:
        text = repr(self.broker)
        for name in ("stats", "users", "user", "kick", "send", "alerts", "drain"):
            self.assertIn(f"broker.{name}(", text)

    def test_stats(self) -> None:
        self.h = Harness(alert_cpu=0, alert_memory=0)  # the real sampler reads this machine
        self.broker = Broker(self.h.node)
        self.h.login("alice")
        self.h.node.supervisor.tick()
        self.h.flush()
        stats = self.broker.stats()
        self.assertEqual(stats["node"], "n1")
        self.assertEqual(stats["connections"], {"tcp": 1})
        self.assertEqual(stats["actors"], 1)
        self.assertEqual(stats["advice"], "ws")
        self.assertEqual(stats["state"], "normal")
        self.assertFalse(stats["draining"])
        self.assertGreater(stats["load"]["rss"], 0)

    def test_users_is_a_bounded_page(self) -> None:
        for i in range(30):
            self.h.login(f"u{i:02}")
        page = self.broker.users(limit=10, start=5)
        self.assertEqual(page["count"], 30)
        self.assertEqual(page["users"], [f"u{i:02}" for i in range(5, 15)])
        self.assertEqual(len(self.broker.users(limit=10**9)["users"]), 30)
        for i in range(30, MAX_PAGE + 10):
            self.h.node.router.actor(f"u{i}")
        self.assertEqual(len(self.broker.users(limit=10**9)["users"]), MAX_PAGE)

    def test_user(self) -> None:
        self.h.login("alice", "phone")
        self.assertEqual(
            self.broker.user("alice"),
            {
                "user": "alice",
                "devices": {
                    "phone": {"kind": "mobile", "transport": "tcp", "cursor": 0, "live": True}
                },
            },
        )
        self.assertIsNone(self.broker.user("nobody"))

    def test_where_each_device_is_live(self) -> None:
        self.h.login("alice", "phone")
        self.h.login("alice", "tablet")
        here = {"node": self.h.node.config.node, "boot": self.h.node.store.boot}
        self.assertEqual(
            self.successResultOf(self.broker.where("alice")),
            {"user": "alice", "devices": {"phone": here, "tablet": here}},
        )
        self.assertEqual(
            self.successResultOf(self.broker.where("nobody")), {"user": "nobody", "devices": {}}
        )

    def test_kick_closes_the_users_connections_only(self) -> None:
        phone = self.h.login("alice", "phone")
        tablet = self.h.login("alice", "tablet")
        bob = self.h.login("bob")
        self.assertEqual(self.broker.kick("alice"), 2)
        self.assertTrue(phone.closed and tablet.closed)
        self.assertFalse(bob.closed)
        self.assertEqual(phone.read()[-1]["code"], 503)
        self.assertEqual(self.broker.kick("nobody"), 0)

    def test_send_goes_through_the_actor_and_dedupes(self) -> None:
        alice = self.h.login("alice")
        alice.read()
        receipt = self.result(self.broker.send("alice", {"text": "maintenance at 2"}, id="m1"))
        self.assertEqual(receipt["status"], "delivered")
        [msg] = alice.read()
        self.assertEqual((msg["from"], msg["body"]), ("system", {"text": "maintenance at 2"}))
        again = self.result(self.broker.send("alice", {"text": "maintenance at 2"}, id="m1"))
        self.assertEqual(again["mid"], receipt["mid"])
        self.assertEqual(alice.read(), [])

    def test_sends_are_counted_like_a_clients(self) -> None:
        """The console's sends take the session layer's service path: the node's
        counters see them, receipts by status included."""
        self.h.login("alice").read()
        self.result(self.broker.send("alice", {"n": 1}))
        self.result(self.broker.send("nobody-here", {"n": 2}))
        stats = self.broker.stats()
        self.assertEqual(stats["messages_in"], 2)
        self.assertEqual(stats["receipts"], {"delivered": 1, "stored": 1})

    def test_send_refuses_bad_input(self) -> None:
        self.assertRaises(ProtocolError, self.broker.send, "alice", {}, sender="a/b")
        self.assertRaises(ProtocolError, self.broker.send, "", {"x": 1})
        big = "x" * (self.h.config.limits.max_body + 1)
        self.assertRaises(ProtocolError, self.broker.send, "alice", big)

    def test_drain_alerts_and_resume(self) -> None:
        alice = self.h.login("alice")
        done = []
        self.broker.drain().addCallback(done.append)
        self.assertTrue(alice.closed)
        self.assertEqual(done, [None])
        self.assertEqual([a["event"] for a in self.broker.alerts()], ["drain"])
        self.assertEqual(self.broker.alerts(0), [])
        self.broker.resume()
        self.assertTrue(self.broker.stats()["accepting"])
