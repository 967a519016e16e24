"""The server-side HTTP API (doc/protocol.md section 8), health and metrics."""

from __future__ import annotations

from twisted.internet.defer import fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.backend import BackendUnavailable
from o2obroker.wire.limits import Limits
from tests.harness import SECRET
from tests.web.helpers import WebHarness

KEY = {"Authorization": "Bearer s3cret-key"}


class ApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = WebHarness(secret=SECRET, api_key="s3cret-key")

    def api(self, method: str, path: str, body: object = None, headers: dict | None = None):
        return self.h.call(method, path, body, KEY if headers is None else headers).json()

    def test_publish_reaches_every_device_in_its_encoding(self) -> None:
        phone = self.h.login("bob", "phone")
        web = self.h.ws_login("bob", "web")
        phone.read(), web.read()
        code, receipt = self.api(
            "POST", "/api/v1/publish", {"to": "bob", "body": {"order": 991}, "id": "o-991"}
        )
        self.assertEqual(code, 200)
        self.assertEqual(
            (receipt["t"], receipt["id"], receipt["status"]), ("receipt", "o-991", "delivered")
        )
        [on_phone] = phone.read()
        [on_web] = web.read()
        self.assertEqual(on_phone["from"], "system")
        self.assertEqual(on_web["mid"], receipt["mid"])
        self.assertEqual(self.h.node.metrics.stats.msgs_in, 1)

    def test_publish_with_a_repeated_id_is_not_delivered_again(self) -> None:
        web = self.h.ws_login("bob", "web")
        web.read()
        _, one = self.api("POST", "/api/v1/publish", {"to": "bob", "body": 1, "id": "x"})
        _, two = self.api("POST", "/api/v1/publish", {"to": "bob", "body": 1, "id": "x"})
        self.assertEqual(one, two)
        self.assertEqual(len(web.read()), 1)

    def test_publish_to_a_room_the_service_is_not_in(self) -> None:
        web = self.h.ws_login("bob", "web")
        web.send({"t": "join", "room": "store-42"})
        web.read()
        code, receipt = self.api("POST", "/api/v1/publish", {"room": "store-42", "body": "hi"})
        self.assertEqual((code, receipt["status"]), (200, "accepted"))
        [msg] = web.read()
        self.assertEqual((msg["room"], msg["body"]), ("store-42", "hi"))

    def test_publish_to_an_empty_room_is_404(self) -> None:
        code, answer = self.api("POST", "/api/v1/publish", {"room": "nobody", "body": 1})
        self.assertEqual(code, 404)
        self.assertEqual(answer["error"], "no such room")

    def test_publish_offline_is_stored(self) -> None:
        _, receipt = self.api("POST", "/api/v1/publish", {"to": "carol", "body": 1, "from": "ops"})
        self.assertEqual(receipt["status"], "stored")
        phone = self.h.login("carol")
        frames = phone.read()
        self.assertEqual(frames[-1]["from"], "ops")

    def test_publish_is_counted_like_a_send(self) -> None:
        self.api("POST", "/api/v1/publish", {"to": "carol", "body": 1})
        self.api("POST", "/api/v1/publish", {"room": "nobody", "body": 1})
        stats = self.h.node.metrics.stats
        self.assertEqual(stats.msgs_in, 2)
        self.assertEqual((dict(stats.receipts), dict(stats.errors)), ({"stored": 1}, {404: 1}))

    def test_bad_bodies_are_400(self) -> None:
        for body in (
            b"{nope",
            b"[1]",
            {"body": 1},
            {"to": "a", "room": "b", "body": 1},
            {"to": "bob"},
            {"to": "a/b", "body": 1},
            {"to": "bob", "body": 1, "from": ""},
        ):
            code, answer = self.api("POST", "/api/v1/publish", body)
            self.assertEqual(code, 400, body)
            self.assertIsInstance(answer["error"], str)

    def test_key_is_required(self) -> None:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret-key"},
        ):
            code, answer = self.api("POST", "/api/v1/publish", {"to": "bob", "body": 1}, headers)
            self.assertEqual(code, 401)
            self.assertIn("API key", answer["error"])
        code, _ = self.api("GET", "/api/v1/nodes", headers={})
        self.assertEqual(code, 401)

    def test_no_key_configured_closes_the_api_when_tokens_are_on(self) -> None:
        h = WebHarness(secret=SECRET)
        code, _ = h.call("GET", "/api/v1/nodes", headers={"Authorization": "Bearer "}).json()
        self.assertEqual(code, 401)

    def test_wrong_method_is_405(self) -> None:
        code, _ = self.api("GET", "/api/v1/publish")
        self.assertEqual(code, 405)

    def test_presence_of_users_never_seen_is_offline(self) -> None:
        code, answer = self.api("GET", "/api/v1/presence?user=a&user=b")
        self.assertEqual(code, 200)
        offline = {"state": "offline", "status": "", "devices": 0}
        self.assertEqual(answer, {"users": {"a": offline, "b": offline}})

    def test_presence_of_a_connected_user(self) -> None:
        ws = self.h.ws_login("alice", "web", state="busy", status="in a meeting")
        ws.read()
        self.h.clock.advance(1)
        _, answer = self.api("GET", "/api/v1/presence?user=alice&user=zed")
        self.assertEqual(
            answer["users"]["alice"], {"state": "busy", "status": "in a meeting", "devices": 1}
        )
        self.assertEqual(answer["users"]["zed"]["state"], "offline")
        ws.send({"t": "bye"})
        self.h.clock.advance(1)
        _, answer = self.api("GET", "/api/v1/presence?user=alice")
        self.assertEqual(answer["users"]["alice"]["state"], "offline")

    def test_presence_when_the_backend_fails_is_503(self) -> None:
        self.h.node.presence.lookup = lambda users: fail(BackendUnavailable("redis is down"))
        code, answer = self.api("GET", "/api/v1/presence?user=a")
        self.assertEqual((code, answer), (503, {"error": "redis is down"}))

    def test_presence_needs_valid_users(self) -> None:
        self.assertEqual(self.api("GET", "/api/v1/presence")[0], 400)
        self.assertEqual(self.api("GET", "/api/v1/presence?user=a/b")[0], 400)

    def test_nodes(self) -> None:
        self.h.ws_login("alice").read()
        code, answer = self.api("GET", "/api/v1/nodes")
        self.assertEqual(code, 200)
        [node] = answer["nodes"]
        self.assertEqual(node["id"], "n1")
        self.assertEqual(node["connections"]["ws"], 1)
        self.assertEqual(node["addresses"]["ws"], "ws://127.0.0.1:8080/ws")

    def test_nodes_while_the_registry_cannot_be_read_is_503(self) -> None:
        self.h.node.backend.nodes = lambda: fail(BackendUnavailable("redis down"))
        code, answer = self.api("GET", "/api/v1/nodes")
        self.assertEqual(code, 503)
        self.assertEqual([n["id"] for n in answer["nodes"]], ["n1"])  # this node still is
        self.assertIn("redis down", answer["error"])

    def test_nodes_lists_the_registry(self) -> None:
        self.h.node.backend.nodes = lambda: succeed([{"id": "n0"}, {"id": "n1"}, {"id": "n2"}])
        code, answer = self.api("GET", "/api/v1/nodes")
        self.assertEqual(code, 200)
        self.assertEqual([n["id"] for n in answer["nodes"]], ["n0", "n1", "n2"])
        # this node's own record is made for the request, not read back
        self.assertIn("connections", answer["nodes"][1])

    def test_free_host_is_public(self) -> None:
        code, answer = self.h.call("GET", "/getFreeHostAddress?room=r").json()
        self.assertEqual(code, 200)
        self.assertEqual(answer["node"], "n1")
        self.assertEqual(answer["transport"], "ws")
        self.assertEqual(answer["lp"], "http://127.0.0.1:8080/lp")
        self.assertEqual(answer["tcp"], "127.0.0.1:9100")

    def test_health_is_503_until_the_shared_app_registry_is_read(self) -> None:
        self.h.node.apps.loaded = False  # a node on Redis that has not read it yet
        self.assertEqual(
            self.h.call("GET", "/healthz").json(), (503, {"status": "starting", "node": "n1"})
        )
        self.h.node.apps.replace_shared({})
        self.assertEqual(self.h.call("GET", "/healthz").json()[0], 200)

    def test_health_and_drain(self) -> None:
        self.assertEqual(
            self.h.call("GET", "/healthz").json(), (200, {"status": "ok", "node": "n1"})
        )
        code, _ = self.api("POST", "/api/v1/drain")
        self.assertEqual(code, 202)
        self.h.flush()
        self.assertEqual(self.h.call("GET", "/healthz").json()[0], 503)
        c = self.h.ws_login("late")
        [error] = c.frames()
        self.assertEqual(error["code"], 503)

    def test_metrics(self) -> None:
        alice = self.h.ws_login("alice")
        alice.read()
        alice.send({"t": "send", "id": "m1", "to": "carol", "body": 1})
        self.h.lp_open("bob")
        code, headers, body = self.h.call("GET", "/metrics").response()
        self.assertEqual(code, 200)
        self.assertIn("text/plain", headers["content-type"])
        text = body.decode()
        self.assertIn('o2o_connections{transport="ws"} 1.0', text)
        self.assertIn('o2o_connections{transport="lp"} 1.0', text)
        self.assertIn("o2o_messages_in_total", text)
        self.assertIn("o2o_inbox_messages 1.0", text)  # carol's, stored while she is away


class ApiLimitsTests(SynchronousTestCase):
    def test_large_body_is_413(self) -> None:
        h = WebHarness(api_key="k", limits=Limits(max_frame=2000, max_body=1000))
        body = {"to": "bob", "body": "x" * 3000}
        code, _ = h.call("POST", "/api/v1/publish", body, {"Authorization": "Bearer k"}).json()
        self.assertEqual(code, 413)

    def test_body_over_max_body_is_413(self) -> None:
        h = WebHarness(api_key="k", limits=Limits(max_frame=4000, max_body=1000))
        body = {"to": "bob", "body": "x" * 1500}
        code, answer = h.call("POST", "/api/v1/publish", body, {"Authorization": "Bearer k"}).json()
        self.assertEqual(code, 413, answer)
