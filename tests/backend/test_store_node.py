"""The store on a whole node: its config keys, byte caps with their metrics, resume fixes."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import ConfigError, load
from o2obroker.service.node import Node
from tests.harness import Device, Harness

BODY = "x" * 60_000


class StoreConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = load()
        self.assertEqual(config.backend_timeout, 5.0)
        self.assertEqual(config.max_stored_bytes_per_user, 16 << 20)
        self.assertEqual(config.max_stored_bytes, 512 << 20)

    def test_ini_keys_reach_the_node(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[broker]\nbackend_timeout = 0.5\nmax_stored_bytes_per_user = 1000\n"
                "max_stored_bytes = 0\n"
            )
        config = load(path)
        node = Node(config, Harness().clock)
        self.assertEqual(node.backend.timeout, 0.5)
        self.assertEqual(node.backend.inner._max_user_bytes, 1000)
        self.assertEqual(node.backend.inner._max_bytes, 0)

    def test_bad_values_are_refused_by_name(self) -> None:
        for overrides, name in (
            ({"backend_timeout": 0}, "backend_timeout"),
            ({"max_stored_bytes": -1}, "max_stored_bytes"),
            ({"max_stored_bytes_per_user": -1}, "max_stored_bytes_per_user"),
            ({"max_stored_bytes": 10, "max_stored_bytes_per_user": 20}, "max_stored_bytes"),
        ):
            with self.assertRaises(ConfigError) as e:
                load(overrides=overrides)
            self.assertTrue(str(e.exception).startswith(name), str(e.exception))


class StoreCapTests(SynchronousTestCase):
    """One client sending large bodies to users that never connect: the store stays bounded."""

    def setUp(self) -> None:
        self.h = Harness(auth="none", max_stored_bytes_per_user=200_000, max_stored_bytes=1_000_000)
        self.alice = self.h.login("alice")
        self.alice.read()

    def send(self, device: Device, n: int, to: str) -> dict[str, Any]:
        device.write({"t": "send", "id": f"c-{n}", "to": to, "body": BODY})
        [answer] = device.read()
        return answer

    def metric(self, name: str) -> float:
        for line in self.h.node.metrics.render().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not on /metrics")

    def test_per_user_cap(self) -> None:
        answers = [self.send(self.alice, i, "bob") for i in range(4)]
        self.assertEqual([a["t"] for a in answers], ["receipt"] * 3 + ["error"])
        self.assertEqual(
            answers[3], {"t": "error", "code": 503, "reason": "store full", "ref": "c-3"}
        )
        # another inbox still has room
        self.assertEqual(self.send(self.alice, 4, "carol")["status"], "stored")
        self.assertEqual(self.metric("o2o_store_refused_total"), 1)
        # once bob acknowledges, his inbox takes the send again, retried with its id
        bob = self.h.login("bob")
        bob.read()
        bob.write({"t": "ack", "seq": 3})
        self.assertEqual(self.send(self.alice, 3, "bob")["status"], "delivered")

    def test_node_cap(self) -> None:
        answers = [self.send(self.alice, i, f"user{i}") for i in range(20)]
        stored = [a for a in answers if a["t"] == "receipt"]
        # 60,000 bytes and the fields: 16 fit in 1,000,000 bytes
        self.assertEqual(len(stored), 16)
        self.assertEqual({a["reason"] for a in answers[16:]}, {"store full"})
        self.assertLessEqual(self.metric("o2o_stored_bytes"), 1_000_000)
        self.assertEqual(
            self.metric("o2o_stored_bytes"), 16 * (self.h.node.backend.stored_bytes / 16)
        )
        self.assertEqual(self.metric("o2o_store_refused_total"), 4)
        self.assertFalse(self.alice.closed)


class ResumeOverTheWireTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(auth="none")
        alice = self.h.login("alice")
        alice.read()
        for i in range(3):
            alice.write({"t": "send", "id": f"c-{i}", "to": "bob", "body": i})
        alice.read()

    def hello(self, **hello: Any) -> list[dict[str, Any]]:
        bob = self.h.login("bob", **hello)
        frames = bob.read()
        bob.write({"t": "bye"})
        bob.read()
        return frames

    def test_resume_above_the_last_seq_keeps_the_inbox(self) -> None:
        welcome, *msgs = self.hello(resume={"last": 100})
        self.assertEqual((welcome["resumed"], welcome["last"]), (False, 3))
        self.assertEqual([m["seq"] for m in msgs], [1, 2, 3])
        # and the next hello still finds them
        _, *msgs = self.hello()
        self.assertEqual([m["seq"] for m in msgs], [1, 2, 3])

    def test_resume_below_the_cursor_sends_what_is_kept_again(self) -> None:
        self.hello(device="web")  # a second device, which acknowledges nothing
        bob = self.h.login("bob")
        bob.read()
        bob.write({"t": "ack", "seq": 3})
        bob.write({"t": "bye"})
        welcome, *msgs = self.hello(resume={"last": 1})
        self.assertTrue(welcome["resumed"])
        self.assertEqual([m["seq"] for m in msgs], [2, 3])
