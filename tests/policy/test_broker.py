"""The business layer in a node on a fake clock: binary devices over StringTransport."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase

from o2obroker.config import ArchiveSettings, FilterSettings, HookSettings, PolicySettings
from o2obroker.policy.hooks import ConnectAnswer
from o2obroker.service.facade import Broker
from o2obroker.wire import encode_cbor, frame
from tests.harness import Harness
from tests.policy.test_events import FakeClient


def word_file(case: TestCase, text: str) -> str:
    fd, path = tempfile.mkstemp(suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    case.addCleanup(os.unlink, path)
    return path


def business_harness(case: TestCase, *, archive: bool = True, **policy: Any) -> Harness:
    mask = word_file(case, "坏蛋\nspam\n")
    reject = word_file(case, "炸弹\n")
    hooks = {"app": HookSettings(url="http://127.0.0.1:1/hooks")}
    return Harness(
        policies={"": PolicySettings(**policy)},
        filters={
            "soft": FilterSettings(files=[mask], action="mask"),
            "hard": FilterSettings(files=[reject], action="reject"),
        },
        hooks=hooks,
        archive=ArchiveSettings(enabled=archive),
    )


def msgs(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["t"] == "msg"]


class FilterInTheMessagePathTests(TestCase):
    def setUp(self) -> None:
        self.h = business_harness(self, filters=["soft", "hard"])
        self.alice = self.h.login("alice")
        self.bob = self.h.login("bob")
        self.alice.read()
        self.bob.read()

    def test_masked_before_it_is_stored(self) -> None:
        self.alice.write({"t": "send", "id": "1", "to": "bob", "body": {"text": "你是坏蛋 spam!"}})
        [receipt] = self.alice.read()
        self.assertEqual(receipt["status"], "delivered")
        [m] = msgs(self.bob.read())
        self.assertEqual(m["body"], {"text": "你是** ****!"})
        # the inbox holds the masked text: a resume gets it too
        inbox = self.successResultOf(self.h.node.backend.read("bob", 0, 10))
        self.assertEqual(inbox[0][1].fields["body"], {"text": "你是** ****!"})

    def test_rejected_gets_403_and_nothing_is_stored(self) -> None:
        self.alice.write({"t": "send", "id": "1", "to": "bob", "body": {"text": "有炸弹"}})
        self.assertEqual(
            self.alice.read(),
            [{"t": "error", "code": 403, "reason": "rejected by policy", "ref": "1"}],
        )
        self.assertEqual(self.bob.read(), [])
        self.assertEqual(self.successResultOf(self.h.node.backend.inbox_state("bob")).last, 0)
        # a retry with the same id is refused again, not let through by the dedupe
        self.alice.write({"t": "send", "id": "1", "to": "bob", "body": {"text": "有炸弹"}})
        self.assertEqual(self.alice.read()[0]["code"], 403)
        self.assertEqual(self.bob.read(), [])
        # and the archive has nothing of it
        self.alice.write({"t": "history", "id": "h", "with": "bob"})
        self.assertEqual(self.alice.read()[0]["messages"], [])

    def test_room_messages_are_screened(self) -> None:
        self.alice.write({"t": "join", "room": "r"})
        self.bob.write({"t": "join", "room": "r"})
        self.alice.read()
        self.bob.read()
        self.alice.write({"t": "send", "id": "1", "room": "r", "body": "spam here"})
        self.alice.write({"t": "send", "id": "2", "room": "r", "body": "炸弹"})
        frames = self.alice.read()
        self.assertEqual(
            [(f["t"], f.get("ref", f.get("id"))) for f in frames],
            [("receipt", "1"), ("error", "2")],
        )
        self.assertEqual([m["body"] for m in msgs(self.bob.read())], ["**** here"])

    def test_a_batch_mixes_verdicts_and_keeps_order(self) -> None:
        # four sends in one read: one actor batch, one pipeline run
        self.alice.proto.dataReceived(
            b"".join(
                frame(encode_cbor({"t": "send", "id": str(i), "to": "bob", "body": body}))
                for i, body in enumerate(["a", "炸弹", "坏蛋", "b"])
            )
        )
        self.h.flush()
        self.assertEqual([m["body"] for m in msgs(self.bob.read())], ["a", "**", "b"])
        self.assertEqual(self.h.node.business.pipeline.counts["rejected"], 1)
        self.assertEqual(self.h.node.business.pipeline.counts["rewritten"], 1)

    def test_a_service_send_is_screened_too(self) -> None:
        # the console's and the HTTP API's sends take the same path as a client's
        d = Broker(self.h.node).send("bob", {"text": "炸弹"}, id="svc-1")
        self.h.flush()
        self.assertEqual(
            self.successResultOf(d),
            {"t": "error", "code": 403, "reason": "rejected by policy", "ref": "svc-1"},
        )
        d = Broker(self.h.node).send("bob", {"text": "坏蛋"})
        self.h.flush()
        self.assertEqual(self.successResultOf(d)["status"], "delivered")
        self.assertEqual([m["body"] for m in msgs(self.bob.read())], [{"text": "**"}])

    def test_console_reload(self) -> None:
        path = self.h.config.filters["soft"].files[0]
        with open(path, "w", encoding="utf-8") as f:
            f.write("hello\n")
        result = self.successResultOf(Broker(self.h.node).reload_filters())
        self.assertEqual(result, "keyword filter reloaded: 2 keywords")
        self.alice.write({"t": "send", "id": "1", "to": "bob", "body": "hello 坏蛋"})
        self.assertEqual(msgs(self.bob.read())[0]["body"], "***** 坏蛋")


class NoPolicyTests(TestCase):
    def test_off_means_actors_hold_nothing(self) -> None:
        h = Harness()
        self.assertIsNone(h.node.actors.business)
        alice = h.login("alice")
        self.assertIsNone(h.node.router.actors["alice"]._business)
        alice.write({"t": "history", "id": "h", "with": "bob"})
        self.assertEqual(
            alice.read()[-1], {"t": "error", "code": 404, "reason": "no archive", "ref": "h"}
        )
        self.assertEqual(
            self.successResultOf(Broker(h.node).reload_filters()), "no keyword filter configured"
        )


class HistoryFrameTests(TestCase):
    def setUp(self) -> None:
        self.h = business_harness(self)
        self.alice = self.h.login("alice")
        self.bob = self.h.login("bob")
        self.carol = self.h.login("carol")
        for d in (self.alice, self.bob, self.carol):
            d.read()

    def test_pages_of_a_conversation(self) -> None:
        for i in range(5):
            self.alice.write({"t": "send", "id": f"a{i}", "to": "bob", "body": i})
        self.bob.write({"t": "send", "id": "b", "to": "alice", "body": "back"})
        self.alice.write({"t": "send", "id": "x", "to": "carol", "body": "other"})
        self.alice.read()
        self.bob.write({"t": "history", "id": "h1", "with": "alice", "limit": 4})
        [page] = [f for f in self.bob.read() if f["t"] == "history"]
        self.assertEqual(page["ref"], "h1")
        self.assertEqual([m["body"] for m in page["messages"]], ["back", 4, 3, 2])
        self.assertTrue(page["more"])
        self.assertNotIn("seq", page["messages"][0])
        self.assertEqual(page["messages"][0]["t"], "msg")
        before = page["messages"][-1]["mid"]
        self.bob.write({"t": "history", "id": "h2", "with": "alice", "before": before})
        [page] = [f for f in self.bob.read() if f["t"] == "history"]
        self.assertEqual([m["body"] for m in page["messages"]], [1, 0])
        self.assertFalse(page["more"])

    def test_room_history_for_members_only(self) -> None:
        self.alice.write({"t": "join", "room": "r"})
        self.bob.write({"t": "join", "room": "r"})
        self.alice.write({"t": "send", "id": "1", "room": "r", "body": "hi"})
        self.bob.write({"t": "history", "id": "h", "room": "r"})
        [page] = [f for f in self.bob.read() if f["t"] == "history"]
        self.assertEqual([m["body"] for m in page["messages"]], ["hi"])
        self.assertEqual(page["messages"][0]["room"], "r")
        self.carol.write({"t": "history", "id": "h", "room": "r"})
        self.assertEqual(
            self.carol.read(),
            [{"t": "error", "code": 403, "reason": "not a member of this room", "ref": "h"}],
        )

    def test_bad_history_frames_get_400_and_the_session_goes_on(self) -> None:
        for bad in (
            {"t": "history", "id": "h"},
            {"t": "history", "id": "h", "with": "bob", "room": "r"},
            {"t": "history", "id": "h", "with": "bob", "limit": 101},
            {"t": "history", "id": "h", "with": "bob", "limit": 0},
            {"t": "history", "id": "h", "with": "bob", "before": 7},
            {"t": "history", "with": "bob"},
        ):
            self.alice.write(bad)
            [error] = self.alice.read()
            self.assertEqual(error["code"], 400, bad)
        self.assertFalse(self.alice.closed)
        self.alice.write({"t": "history", "id": "h", "with": "bob", "limit": 100})
        self.assertEqual(self.alice.read()[0]["t"], "history")


class OfflineAndPresenceHookTests(TestCase):
    def setUp(self) -> None:
        self.h = business_harness(self, archive=False, offline_hook="app", presence_hook="app")
        self.client = FakeClient(auto=True)
        business = self.h.node.business
        business.offline.client = self.client
        business.presence.client = self.client

    def calls(self, kind: str) -> list[dict[str, Any]]:
        return [e for k, p, _ in self.client.calls if k == kind for e in p["events"]]

    def test_offline_event_for_a_user_without_devices(self) -> None:
        alice = self.h.login("alice")
        bob = self.h.login("bob")
        alice.write({"t": "send", "id": "1", "to": "bob", "body": "live"})
        bob.lose()
        self.h.clock.advance(60)  # past the presence grace
        alice.write({"t": "send", "id": "2", "to": "bob", "body": "stored"})
        alice.write({"t": "send", "id": "3", "to": "carol", "body": "never online"})
        self.h.clock.advance(1)
        events = self.calls("offline")
        self.assertEqual(
            [(e["user"], e["message"]["body"]) for e in events],
            [("bob", "stored"), ("carol", "never online")],
        )
        self.assertEqual(len({e["id"] for e in events}), 2)

    def test_a_dropped_link_in_its_grace_period_is_not_a_live_device(self) -> None:
        alice = self.h.login("alice")
        bob = self.h.login("bob")
        bob.lose()  # presence holds bob online for the grace period; no device takes messages
        alice.write({"t": "send", "id": "1", "to": "bob", "body": "for the push"})
        self.assertEqual(alice.read()[-1]["status"], "stored")
        self.h.clock.advance(1)
        self.assertEqual(
            [(e["user"], e["message"]["body"]) for e in self.calls("offline")],
            [("bob", "for the push")],
        )

    def test_presence_edges_only(self) -> None:
        alice = self.h.login("alice", "phone")
        self.h.flush()
        alice2 = self.h.login("alice", "tablet")  # a second device: no edge
        alice.write({"t": "presence", "state": "busy"})  # a change, not an edge
        self.h.clock.advance(1)
        alice.write({"t": "bye"})
        alice2.write({"t": "bye"})
        self.h.clock.advance(1)
        events = self.calls("presence")
        self.assertEqual(
            [(e["user"], e["state"]) for e in events], [("alice", "online"), ("alice", "offline")]
        )


class _Connect:
    def __init__(self, answer: ConnectAnswer | Deferred[ConnectAnswer]) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str, str]] = []

    def check(self, user: str, device: str, transport: str) -> Deferred[ConnectAnswer]:
        self.asked.append((user, device, transport))
        return self.answer if isinstance(self.answer, Deferred) else succeed(self.answer)


class ConnectHookSessionTests(TestCase):
    def test_refused_with_the_applications_reason(self) -> None:
        h = Harness()
        h.node.gateway.connect_hook = _Connect(ConnectAnswer(403, "shop closed"))
        d = h.login("alice")
        self.assertEqual(d.read(), [{"t": "error", "code": 403, "reason": "shop closed"}])
        self.assertTrue(d.closed)
        self.assertNotIn("alice", h.node.router.actors)

    def test_named_user_and_rooms(self) -> None:
        h = Harness()
        h.node.gateway.connect_hook = _Connect(
            ConnectAnswer(user="store-42", rooms=frozenset({"a"}))
        )
        d = h.login("alice")
        welcome = d.read()[0]
        self.assertEqual(welcome["user"], "store-42")
        d.write({"t": "join", "room": "b"})
        self.assertEqual(d.read()[0]["code"], 403)
        d.write({"t": "join", "room": "a"})
        self.assertEqual(d.read()[0]["t"], "joined")

    def test_frames_before_the_answer_wait_for_it(self) -> None:
        h = Harness()
        pending: Deferred[ConnectAnswer] = Deferred()
        h.node.gateway.connect_hook = _Connect(pending)
        d = h.login("alice")
        d.write({"t": "send", "id": "1", "to": "bob", "body": "early"})
        self.assertEqual(d.read(), [])
        pending.callback(ConnectAnswer())
        h.flush()
        self.assertEqual(d.read_types(), ["welcome", "receipt"])

    def test_too_many_frames_before_the_answer_close(self) -> None:
        from o2obroker.session.session import MAX_HELD

        h = Harness()
        h.node.gateway.connect_hook = _Connect(Deferred())
        d = h.login("alice")
        for _ in range(MAX_HELD):
            d.write({"t": "ping"})
        self.assertEqual(d.read(), [])
        self.assertFalse(d.closed)
        d.write({"t": "ping"})
        self.assertEqual(d.read()[0]["code"], 429)
        self.assertTrue(d.closed)

    def test_refused_by_an_application_that_is_down(self) -> None:
        h = Harness()
        h.node.gateway.connect_hook = _Connect(ConnectAnswer(503, "application unavailable"))
        d = h.login("alice")
        self.assertEqual(
            d.read()[0], {"t": "error", "code": 503, "reason": "application unavailable"}
        )
        self.assertTrue(d.closed)


class MetricsTests(TestCase):
    def test_business_counters_on_metrics(self) -> None:
        h = business_harness(self, filters=["soft", "hard"])
        alice = h.login("alice")
        alice.write({"t": "send", "id": "1", "to": "bob", "body": "坏蛋"})
        alice.write({"t": "send", "id": "2", "to": "bob", "body": "炸弹"})
        text = h.node.metrics.render().decode()
        self.assertIn('o2o_business_events_total{event="pipeline_rejected"} 1.0', text)
        self.assertIn('o2o_business_events_total{event="pipeline_rewritten"} 1.0', text)
        self.assertIn("o2o_archive_messages 1.0", text)


class RejectedSendsLeaveNoTraceTests(TestCase):
    """A rejected send, and each retry of its id, stores nothing, archives
    nothing and pushes nothing; a repeated accepted id is pushed and archived once."""

    def setUp(self) -> None:
        self.h = business_harness(self, filters=["hard"], offline_hook="app")
        self.client = FakeClient(auto=True)
        self.h.node.business.offline.client = self.client
        self.alice = self.h.login("alice")
        self.alice.read()

    def offline_events(self) -> list[tuple[str, Any]]:
        self.h.clock.advance(1)  # the offline queue's batching window
        return [
            (e["user"], e["message"]["body"])
            for k, p, _ in self.client.calls
            if k == "offline"
            for e in p["events"]
        ]

    def history(self) -> list[Any]:
        self.alice.write({"t": "history", "id": "h", "with": "carol"})
        [page] = self.alice.read()
        return [m["body"] for m in page["messages"]]

    def test_rejected_and_retried(self) -> None:
        for _ in range(3):  # the send, then two retries of its id
            self.alice.write({"t": "send", "id": "1", "to": "carol", "body": "炸弹"})
            self.assertEqual(
                self.alice.read(),
                [{"t": "error", "code": 403, "reason": "rejected by policy", "ref": "1"}],
            )
        self.assertEqual(self.successResultOf(self.h.node.backend.inbox_state("carol")).last, 0)
        self.assertEqual(self.offline_events(), [])
        self.assertEqual(self.history(), [])
        self.assertEqual(self.h.node.business.archive.stored, 0)

    def test_a_retried_accepted_id_is_pushed_and_archived_once(self) -> None:
        for _ in range(2):
            self.alice.write({"t": "send", "id": "2", "to": "carol", "body": "ok"})
            [receipt] = self.alice.read()
            self.assertEqual(receipt["status"], "stored")
        self.assertEqual(self.offline_events(), [("carol", "ok")])
        self.assertEqual(self.history(), ["ok"])
        self.assertEqual(self.successResultOf(self.h.node.backend.inbox_state("carol")).last, 1)
