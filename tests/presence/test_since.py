"""``watch`` with ``since``: only what changed since the client's view (protocol section 5)."""

from __future__ import annotations

from typing import Any

from o2obroker.backend.interface import Presence
from tests.harness import Device
from tests.presence.test_presence import PresenceCase

T0 = 1_763_800_000.0  # a real epoch, so that no record has ts 0


class SinceTests(PresenceCase):
    settings = {"presence_skew": 5.0}

    def setUp(self) -> None:
        super().setUp()
        self.h.clock.advance(T0)

    def at(self, seconds: float) -> None:
        """Move the clock to T0 + ``seconds`` and let changes go out."""
        self.settle(T0 + seconds - self.h.clock.seconds())

    @staticmethod
    def ms(seconds: float) -> int:
        return int((T0 + seconds) * 1000)

    def rewatch(self, d: Device, users: list[str], since: Any) -> list[tuple[str, str, int]]:
        d.write({"t": "watch", "users": users, "since": since})
        return [(f["user"], f["state"], f["ts"]) for f in d.read() if f["t"] == "presence"]

    def test_only_users_changed_since_are_sent(self) -> None:
        self.login("bob")  # online at 0, not changed since
        carol = self.login("carol")
        dave = self.login("dave")
        self.at(100)
        carol.write({"t": "presence", "state": "busy", "status": "call"})
        self.at(200)
        dave.write({"t": "bye"})  # offline at 200: the record keeps when
        self.at(300)
        alice = self.login("alice")
        got = self.rewatch(alice, ["bob", "carol", "dave"], self.ms(100))
        self.assertEqual(got, [("carol", "busy", self.ms(100)), ("dave", "offline", self.ms(200))])
        got = self.rewatch(alice, ["bob", "carol", "dave"], self.ms(150))
        self.assertEqual(got, [("dave", "offline", self.ms(200))])
        # without since, the full answer
        alice.write({"t": "watch", "users": ["bob", "carol", "dave"]})
        self.assertEqual([u for u, *_ in self.presence(alice)], ["bob", "carol", "dave"])

    def test_the_skew_margin_is_crossed(self) -> None:
        carol = self.login("carol")
        self.at(100)
        carol.write({"t": "presence", "state": "away"})
        self.at(300)
        alice = self.login("alice")
        # changed at 100: sent for since up to 105 (5 s of skew), not after
        self.assertEqual(
            self.rewatch(alice, ["carol"], self.ms(105)), [("carol", "away", self.ms(100))]
        )
        self.assertEqual(self.rewatch(alice, ["carol"], self.ms(105) + 1), [])

    def test_no_skew_margin(self) -> None:
        self.h.node.presence.skew_ms = 0
        carol = self.login("carol")
        self.at(100)
        carol.write({"t": "presence", "state": "away"})
        self.at(300)
        alice = self.login("alice")
        self.assertEqual(
            self.rewatch(alice, ["carol"], self.ms(100)), [("carol", "away", self.ms(100))]
        )
        self.assertEqual(self.rewatch(alice, ["carol"], self.ms(100) + 1), [])

    def test_a_second_device_is_not_a_change(self) -> None:
        self.login("bob")
        self.at(100)
        self.login("bob", "web")  # the count changes, the user-level state does not
        self.at(200)
        alice = self.login("alice")
        self.assertEqual(self.rewatch(alice, ["bob"], self.ms(50)), [])
        alice.write({"t": "probe", "users": ["bob"]})
        self.assertEqual(self.presence(alice), [("bob", "online", "", 2)])

    def test_users_with_no_record_are_sent(self) -> None:
        # nothing known of zed (never seen, or a store that was reset): its last change
        # is unknown, so the client cannot be assumed to know it
        alice = self.login("alice")
        self.assertEqual(self.rewatch(alice, ["zed"], self.ms(0)), [("zed", "offline", 0)])

    def test_since_still_adds_to_the_watch_list(self) -> None:
        bob = self.login("bob")
        self.at(100)
        alice = self.login("alice")
        self.assertEqual(self.rewatch(alice, ["bob"], self.ms(100)), [])
        bob.write({"t": "presence", "state": "busy"})
        self.settle()
        self.assertEqual(self.presence(alice), [("bob", "busy", "", 1)])

    def test_a_bad_since_is_400_and_changes_nothing(self) -> None:
        bob = self.login("bob")
        alice = self.login("alice")
        alice.write({"t": "watch", "id": "w1", "users": ["bob"], "since": "yesterday"})
        [error] = alice.read()
        self.assertEqual(
            error,
            {
                "t": "error",
                "code": 400,
                "reason": "watch: since must be a non-negative integer (ms)",
                "ref": "w1",
            },
        )
        self.assertFalse(alice.closed)
        bob.write({"t": "presence", "state": "busy"})
        self.settle()
        self.assertEqual(self.presence(alice), [])  # not added to the watch list
        alice.write({"t": "ping"})
        self.assertEqual(alice.read(), [{"t": "pong"}])


class OfflineRecordTests(PresenceCase):
    def test_the_backend_keeps_when_a_user_went_offline(self) -> None:
        self.h.clock.advance(T0)
        bob = self.login("bob")
        self.h.clock.advance(10)
        bob.write({"t": "bye"})
        self.settle()
        found = self.successResultOf(self.h.node.backend.presence(["bob"]))
        self.assertEqual(found["bob"], Presence("offline", "", 0, int((T0 + 10) * 1000)))

    def test_offline_records_are_forgotten_after_a_day_and_still_sent(self) -> None:
        self.h.clock.advance(T0)
        bob = self.login("bob")
        bob.write({"t": "bye"})
        self.settle()
        self.h.clock.advance(24 * 3600 - 1)
        self.login("carol")  # any record written sweeps out the expired ones
        self.assertIn("bob", self.h.node.backend._presence)
        self.h.clock.advance(1)
        self.login("dave")
        self.assertNotIn("bob", self.h.node.backend._presence)
        alice = self.login("alice")
        alice.write({"t": "watch", "users": ["bob"], "since": int(T0 * 1000) + 1000})
        frames = [f for f in alice.read() if f["t"] == "presence"]
        # no record: when bob last changed is unknown, so he is sent
        self.assertEqual(
            [(f["user"], f["state"], f["ts"]) for f in frames], [("bob", "offline", 0)]
        )
