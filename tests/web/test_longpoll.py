"""HTTP long-poll (doc/protocol.md section 6) through the whole site, on a task.Clock."""

from __future__ import annotations

import json
from io import BytesIO

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from o2obroker.actors.user import UserActor
from o2obroker.metrics import NodeCollector, Stats
from o2obroker.transports.longpoll import Forwarder, make_sid, owner_of
from o2obroker.wire.limits import Limits
from tests.harness import SECRET
from tests.web.helpers import WebHarness


class LongPollTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = WebHarness(secret=SECRET, lp_timeout=25)

    def poll(self, sid: str, query: str = "") -> object:
        return self.h.call("GET", f"/lp/poll?sid={sid}{query}")

    def test_open_answers_with_the_welcome(self) -> None:
        sid, frames, pos = self.h.lp_open("bob")
        random, _, _ = sid.partition(".")
        self.assertEqual(len(random), 32)  # 192 bits
        self.assertEqual(owner_of(sid), self.h.node.config.node)  # then the owner node
        self.assertEqual([f["t"] for f in frames], ["welcome"])
        self.assertEqual(frames[0]["user"], "bob")
        self.assertEqual(pos, 1)
        self.assertEqual(self.h.node.gateway.connections["lp"], 1)

    def test_open_with_a_bad_token_is_401(self) -> None:
        code, answer = self.h.call("POST", "/lp/open", {"t": "hello", "token": "nope"}).json()
        self.assertEqual(code, 401)
        self.assertEqual(answer["frames"][0]["code"], 401)
        self.assertEqual(self.h.site.longpoll.sessions, {})
        self.assertEqual(self.h.node.gateway.connections["lp"], 0)

    def test_open_with_no_json_is_400(self) -> None:
        code, answer = self.h.call("POST", "/lp/open", b"{nope").json()
        self.assertEqual(code, 400)
        self.assertEqual(answer["frames"][0]["code"], 400)

    def test_poll_is_held_until_a_message_arrives(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        p = self.poll(sid, f"&pos={pos}")
        self.assertIsNone(p.response())
        alice = self.h.login("alice")
        alice.write({"t": "send", "id": "1", "to": "bob", "body": {"pic": b"\x01"}})
        code, answer = p.json()
        self.assertEqual(code, 200)
        [msg] = answer["frames"]
        self.assertEqual(msg["body"], {"pic": {"$bytes": "AQ=="}})
        self.assertEqual(answer["pos"], 2)
        self.assertEqual(alice.read()[-1]["status"], "delivered")

    def test_poll_returns_every_ready_frame_at_once(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        p = self.poll(sid, f"&pos={pos}")
        alice = self.h.login("alice")
        alice.write_bytes(
            b"".join(
                __import__("o2obroker.wire", fromlist=["frame"]).frame(
                    __import__("cbor2").dumps({"t": "send", "id": str(i), "to": "bob", "body": i})
                )
                for i in range(10)
            )
        )
        _, answer = p.json()
        self.assertEqual([f["body"] for f in answer["frames"]], list(range(10)))

    def test_lost_response_is_sent_again(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        self.h.login("alice").write({"t": "send", "id": "1", "to": "bob", "body": 1})
        _, first = self.poll(sid, f"&pos={pos}").json()
        self.assertEqual(len(first["frames"]), 1)
        # that response never arrived: the client polls again from the old pos
        _, again = self.poll(sid, f"&pos={pos}").json()
        self.assertEqual(again["frames"], first["frames"])
        self.assertEqual(again["pos"], first["pos"])
        # now it confirms: the next poll is held
        p = self.poll(sid, f"&pos={again['pos']}")
        self.assertIsNone(p.response())

    def test_poll_without_pos_confirms_what_was_sent(self) -> None:
        sid, _, _ = self.h.lp_open("bob")
        p = self.poll(sid)
        self.assertIsNone(p.response())

    def test_ack_on_poll_moves_the_cursor(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        self.h.login("alice").write({"t": "send", "id": "1", "to": "bob", "body": 1})
        _, answer = self.poll(sid, f"&pos={pos}").json()
        seq = answer["frames"][0]["seq"]
        self.poll(sid, f"&pos={answer['pos']}&ack={seq}")
        cursors = []
        self.h.node.backend.cursor("bob", "lp").addCallback(cursors.append)
        self.assertEqual(cursors, [1])

    def test_newer_poll_ends_the_held_one(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        first = self.poll(sid, f"&pos={pos}")
        second = self.poll(sid, f"&pos={pos}")
        self.assertEqual(first.json(), (200, {"pos": pos, "frames": []}))
        self.assertIsNone(second.response())

    def test_poll_timeout_answers_empty(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        p = self.poll(sid, f"&pos={pos}")
        self.h.clock.advance(24.9)
        self.assertIsNone(p.response())
        self.h.clock.advance(0.2)
        self.assertEqual(p.json(), (200, {"pos": pos, "frames": []}))

    def test_held_poll_whose_client_left_is_released(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        p = self.poll(sid, f"&pos={pos}")
        conn = self.h.site.longpoll.sessions[sid]
        self.assertIsNotNone(conn._poll)
        p.channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(conn._poll)
        self.assertEqual(
            [c for c in self.h.clock.getDelayedCalls() if c.func == conn._poll_timeout], []
        )

    def test_session_expires_without_polls(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        self.h.clock.pump([1] * 45)
        self.assertIn(sid, self.h.site.longpoll.sessions)
        self.h.clock.pump([1] * 15)
        self.assertNotIn(sid, self.h.site.longpoll.sessions)
        self.assertEqual(self.h.node.gateway.connections["lp"], 0)
        code, answer = self.poll(sid, f"&pos={pos}").json()
        self.assertEqual(code, 404)
        self.assertEqual(answer["frames"][0]["code"], 404)
        # what arrives now is stored for its resume
        alice = self.h.login("alice")
        alice.write({"t": "send", "id": "1", "to": "bob", "body": 1})
        self.assertEqual(alice.read()[-1]["status"], "stored")

    def test_a_held_poll_keeps_the_session(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        for _ in range(4):
            p = self.poll(sid, f"&pos={pos}")
            self.h.clock.pump([1] * 26)
            self.assertEqual(p.json()[0], 200)
        self.assertIn(sid, self.h.site.longpoll.sessions)

    def test_unknown_sid_is_404(self) -> None:
        code, answer = self.poll("x" * 32).json()
        self.assertEqual(code, 404)
        self.assertEqual(answer["frames"][0]["t"], "error")
        code, _ = self.h.call("POST", "/lp/send?sid=nope", {"t": "ping"}).json()
        self.assertEqual(code, 404)

    def test_send_answers_with_its_receipts_only(self) -> None:
        sid, _, pos = self.h.lp_open("alice")
        bob = self.h.login("bob")
        bob.read()
        s = self.h.call(
            "POST",
            f"/lp/send?sid={sid}",
            [
                {"t": "send", "id": "a1", "to": "bob", "body": {"$bytes": "AAE="}},
                {"t": "ping"},
                {"t": "send", "id": "a2", "to": "bob"},
                {"t": "send", "id": "a3", "room": "nowhere", "body": 1},
            ],
        )
        code, answer = s.json()
        self.assertEqual(code, 200)
        by_ref = {f.get("id") or f.get("ref"): f for f in answer["frames"]}
        self.assertEqual(set(by_ref), {"a1", "a2", "a3"})
        self.assertEqual(by_ref["a1"]["status"], "delivered")
        self.assertEqual(by_ref["a2"]["code"], 400)
        self.assertEqual(by_ref["a3"]["code"], 404)
        self.assertEqual(bob.read()[0]["body"], b"\x00\x01")
        # the pong comes through the poll
        _, polled = self.poll(sid, f"&pos={pos}").json()
        self.assertEqual([f["t"] for f in polled["frames"]], ["pong"])

    def test_send_with_a_retried_id_gets_the_same_receipt(self) -> None:
        sid, _, _ = self.h.lp_open("alice")
        frame = {"t": "send", "id": "r1", "to": "bob", "body": 1}
        _, one = self.h.call("POST", f"/lp/send?sid={sid}", frame).json()
        _, two = self.h.call("POST", f"/lp/send?sid={sid}", frame).json()
        self.assertEqual(one["frames"][0]["mid"], two["frames"][0]["mid"])

    def test_send_body_not_json_is_400(self) -> None:
        sid, _, _ = self.h.lp_open("alice")
        code, _ = self.h.call("POST", f"/lp/send?sid={sid}", b"\xff\xfe").json()
        self.assertEqual(code, 400)

    def test_close_says_bye_and_forgets_the_sid(self) -> None:
        sid, _, pos = self.h.lp_open("bob")
        held = self.poll(sid, f"&pos={pos}")
        code, answer = self.h.call("POST", f"/lp/close?sid={sid}").json()
        self.assertEqual((code, answer), (200, {"frames": [{"t": "bye"}]}))
        self.assertEqual(held.json()[0], 200)
        self.assertEqual(self.poll(sid).json()[0], 404)
        self.assertEqual(self.h.node.gateway.connections["lp"], 0)

    def test_replaced_session_learns_it_on_its_next_poll(self) -> None:
        sid, _, pos = self.h.lp_open("bob", "d")
        self.h.lp_open("bob", "d")
        _, answer = self.poll(sid, f"&pos={pos}").json()
        self.assertEqual(answer["frames"][-1]["code"], 409)
        self.assertEqual(self.poll(sid).json()[0], 404)

    def test_a_send_waiting_for_its_receipt_is_answered_when_the_session_ends(self) -> None:
        sid, _, _ = self.h.lp_open("bob", "d")
        self.patch(UserActor, "submit", lambda *a: None)  # a receipt that never comes
        s = self.h.call(
            "POST", f"/lp/send?sid={sid}", {"t": "send", "id": "w1", "to": "al", "body": 1}
        )
        self.assertIsNone(s.response())
        self.h.lp_open("bob", "d")  # replaced (a WebSocket of the same device would do the same)
        self.assertEqual(s.json(), (200, {"frames": []}))
        self.assertEqual([c for c in self.h.clock.getDelayedCalls() if "_late" in repr(c)], [])

    def test_sids_are_unguessable_and_never_reused(self) -> None:
        sids = {self.h.lp_open("bob", f"d{i}")[0] for i in range(20)}
        self.assertEqual(len(sids), 20)
        self.assertTrue(all(len(s.partition(".")[0]) == 32 for s in sids))

    def test_slow_consumer_is_closed(self) -> None:
        h = WebHarness(limits=Limits(max_queue=4096))
        sid, _, pos = h.lp_open("bob")
        alice = h.login("alice")
        for i in range(3):
            alice.write({"t": "send", "id": str(i), "to": "bob", "body": "x" * 1000})
        self.assertFalse(h.site.longpoll.sessions[sid].closed)
        h.clock.advance(24)
        alice.write({"t": "send", "id": "3", "to": "bob", "body": "x" * 1000})
        self.assertFalse(h.site.longpoll.sessions[sid].closed)  # it polled recently
        h.clock.advance(1)
        for i in range(4, 6):
            alice.write({"t": "send", "id": str(i), "to": "bob", "body": "x" * 1000})
        self.assertTrue(h.site.longpoll.sessions[sid].closed)
        _, answer = h.call("GET", f"/lp/poll?sid={sid}&pos={pos}").json()
        self.assertEqual(answer["frames"][-1]["code"], 503)
        self.assertEqual(h.call("GET", f"/lp/poll?sid={sid}").json()[0], 404)
        # nothing is lost: a new session resumes from the inbox
        _, frames, _ = h.lp_open("bob", resume={"last": 0})
        self.assertEqual(len([f for f in frames if f["t"] == "msg"]), 6)


class CorsTests(SynchronousTestCase):
    def test_preflight(self) -> None:
        h = WebHarness(allowed_origins="https://shop.example")
        r = h.call("OPTIONS", "/lp/send", headers={"Origin": "https://shop.example"}).response()
        code, headers, _ = r
        self.assertEqual(code, 204)
        self.assertEqual(headers["access-control-allow-origin"], "https://shop.example")
        self.assertIn("POST", headers["access-control-allow-methods"])

    def test_refused_origin_is_403(self) -> None:
        h = WebHarness(allowed_origins="https://shop.example")
        code, answer = h.call(
            "POST", "/lp/open", {"t": "hello", "user": "bob"}, {"Origin": "https://evil.example"}
        ).json()
        self.assertEqual(code, 403)
        self.assertEqual(answer["frames"][0]["code"], 403)
        self.assertEqual(h.site.longpoll.sessions, {})
        self.assertEqual(h.node.metrics.stats.refused, {"origin": 1})

    def test_null_origin_is_403(self) -> None:
        # a sandboxed frame or a file: page; allowed only where any origin is
        h = WebHarness(allowed_origins="https://shop.example")
        code, answer = h.call(
            "POST", "/lp/open", {"t": "hello", "user": "bob"}, {"Origin": "null"}
        ).json()
        self.assertEqual(code, 403)
        self.assertEqual(answer["frames"][0]["code"], 403)

    def test_a_beacon_from_another_origin_closes_the_session(self) -> None:
        # navigator.sendBeacon: a POST with a text/plain body, no custom headers, no preflight
        h = WebHarness(allowed_origins="https://shop.example")
        sid, _, _ = h.lp_open("bob")
        beacon = {"Origin": "https://shop.example", "Content-Type": "text/plain;charset=UTF-8"}
        code, answer = h.call("POST", f"/lp/close?sid={sid}", b"", beacon).json()
        self.assertEqual((code, answer), (200, {"frames": [{"t": "bye"}]}))
        self.assertEqual(h.site.longpoll.sessions, {})
        self.assertEqual(h.node.gateway.connections["lp"], 0)

    def test_allowed_origin_gets_cors_headers(self) -> None:
        h = WebHarness(allowed_origins="https://shop.example")
        r = h.call(
            "POST", "/lp/open", {"t": "hello", "user": "bob"}, {"Origin": "https://shop.example"}
        )
        code, headers, _ = r.response()
        self.assertEqual(code, 200)
        self.assertEqual(headers["access-control-allow-origin"], "https://shop.example")


class SidTests(SynchronousTestCase):
    """A sid names its owner node, and nothing else can be read into it."""

    def test_the_owner_is_read_back(self) -> None:
        for node in ("a", "node-7.eu", "nœud/1"):
            self.assertEqual(owner_of(make_sid(node)), node)

    def test_a_sid_without_an_owner_names_none(self) -> None:
        for sid in ("", "abc", "abc.", "abc.!!!", "abc.gA"):  # gA: not UTF-8
            self.assertIsNone(owner_of(sid))


class ForwarderTests(SynchronousTestCase):
    """The owner node must answer in time; one that does not costs the client a resume."""

    def request(self) -> DummyRequest:
        request = DummyRequest([b"poll"])
        request.args = {b"sid": [b"s.YQ"], b"pos": [b"3"]}
        request._disconnected = False
        request.content = BytesIO(b"")
        return request

    def test_an_owner_that_does_not_answer_in_time_is_404(self) -> None:
        reactor = MemoryReactorClock()
        forwarder = Forwarder(reactor, {"a": "http://10.0.0.7:8080"}.get, timeout=30)
        request = self.request()
        self.assertTrue(forwarder.forward(request, b"poll", "a"))
        [(_, port, *_)] = reactor.tcpClients  # the registry's address (the memory
        self.assertEqual(port, 8080)  # reactor resolves every host to 127.0.0.1)
        reactor.advance(29)
        self.assertEqual(request.finished, 0)  # a held poll may take its time
        reactor.advance(1)
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(forwarder.counts, {"failed": 1})
        self.assertEqual(json.loads(b"".join(request.written))["frames"][0]["code"], 404)

    def test_outcomes_are_exported(self) -> None:
        stats = Stats()
        stats.lp_forwards.update({"answered": 3, "failed": 1})
        [family] = [m for m in NodeCollector(stats).collect() if m.name == "o2o_lp_forwarded"]
        self.assertEqual(
            {s.labels["outcome"]: s.value for s in family.samples}, {"answered": 3, "failed": 1}
        )

    def test_a_node_the_registry_does_not_list_is_not_reached(self) -> None:
        reactor = MemoryReactorClock()
        forwarder = Forwarder(reactor, {"a": "ftp://x"}.get, timeout=30)
        for owner in ("a", "b"):
            self.assertFalse(forwarder.forward(self.request(), b"poll", owner))
        self.assertEqual(reactor.tcpClients, [])
