"""The HTTP port's guards: request deadline (slowloris), body limits, static files."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from o2obroker.wire.limits import Limits
from tests.web.helpers import WebHarness


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = WebHarness(request_deadline=10)

    def test_slowloris_is_cut_at_the_deadline(self) -> None:
        c = self.h.http()
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100
        for byte in request:  # one byte a second: the idle timeout alone never fires
            c.send_raw(bytes((byte,)))
            self.h.clock.advance(1)
            if c.transport.disconnecting:
                break
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(c.response()[0], 408)
        self.assertEqual(self.h.site.slow_requests, 1)

    def test_a_request_in_time_is_served_and_the_next_gets_a_new_deadline(self) -> None:
        c = self.h.http()
        self.h.clock.advance(9)
        c.send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c.response()[0], 200)
        self.h.clock.advance(9)
        self.assertFalse(c.transport.disconnecting)
        c.send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c.response()[0], 200)
        self.h.clock.advance(10)
        self.assertTrue(c.transport.disconnecting)  # idle keep-alive: closed at the deadline

    def test_slow_body_is_cut(self) -> None:
        c = self.h.http()
        c.send_raw(b"POST /lp/open HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        self.h.clock.advance(10)
        self.assertTrue(c.transport.disconnecting)

    def test_held_poll_is_not_cut_by_the_deadline(self) -> None:
        h = WebHarness(request_deadline=5, lp_timeout=25)
        sid, _, pos = h.lp_open("bob")
        p = h.call("GET", f"/lp/poll?sid={sid}&pos={pos}")
        h.clock.advance(20)
        self.assertFalse(p.transport.disconnecting)
        h.clock.advance(5)
        self.assertEqual(p.json(), (200, {"pos": pos, "frames": []}))

    def test_websocket_is_not_cut_by_the_deadline(self) -> None:
        c = self.h.ws_login("alice")
        c.read()
        self.h.clock.advance(60)
        c.send({"t": "ping"})
        self.assertEqual(c.read(), [{"t": "pong"}])


class BodyLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = WebHarness(limits=Limits(max_frame=1000, max_body=500))

    def test_content_length_over_the_limit_is_413_unread(self) -> None:
        c = self.h.http()
        c.send_raw(b"POST /lp/open HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        code, _, body = c.response()
        self.assertEqual(code, 413)
        # the API reads "error"; a long-poll client reads the error frame in "frames"
        self.assertEqual(
            json.loads(body),
            {
                "error": "request body too large",
                "frames": [{"t": "error", "code": 413, "reason": "request body too large"}],
            },
        )
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(self.h.site.refused_bodies, 1)

    def test_huge_content_length_with_expect_continue(self) -> None:
        c = self.h.http()
        c.send_raw(
            b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        data = c.transport.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 413"))
        self.assertNotIn(b"100 Continue", data)

    def test_chunked_body_crossing_the_limit_is_413(self) -> None:
        c = self.h.http()
        c.send_raw(b"POST /lp/open HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            c.send_raw(b"190\r\n" + b"x" * 400 + b"\r\n")
        self.assertEqual(c.response()[0], 413)
        self.assertTrue(c.transport.disconnecting)

    def test_body_at_the_limit_is_read(self) -> None:
        hello = b'{"t":"hello","user":"bob","pad":"' + b"x" * 100 + b'"}'
        body = hello + b" " * (1000 - len(hello))
        code, answer = self.h.call("POST", "/lp/open", body).json()
        self.assertEqual(code, 200)
        self.assertEqual(answer["frames"][0]["t"], "welcome")


class StaticTests(SynchronousTestCase):
    def test_demo_page_and_client_are_served(self) -> None:
        h = WebHarness()
        for path, kind in [("/", "text/html"), ("/o2obroker.js", "javascript")]:
            code, headers, body = h.call("GET", path).response()
            self.assertEqual(code, 200)
            self.assertIn(kind, headers["content-type"])
            self.assertGreater(len(body), 500)
            self.assertEqual(headers["x-content-type-options"], "nosniff")

    def test_unknown_path_is_404(self) -> None:
        h = WebHarness()
        self.assertEqual(h.call("GET", "/nope").response()[0], 404)


class JsonErrorPagesTests(SynchronousTestCase):
    """twisted.web's own error pages are JSON on this port, like every other answer."""

    def setUp(self) -> None:
        self.h = WebHarness()

    def test_unknown_path_is_a_json_404(self) -> None:
        for path in ("/nope", "/lp/nope", "/api/v1/nope"):
            code, headers, body = self.h.call("GET", path).response()
            self.assertEqual(code, 404, path)
            self.assertEqual(headers["content-type"], "application/json")
            self.assertEqual(json.loads(body), {"error": "not found"})

    def test_method_not_allowed_is_a_json_405(self) -> None:
        for method, path in [("GET", "/lp/open"), ("POST", "/"), ("DELETE", "/o2obroker.js")]:
            code, headers, body = self.h.call(method, path).response()
            self.assertEqual(code, 405, path)
            self.assertEqual(headers["content-type"], "application/json")
            self.assertEqual(json.loads(body), {"error": f"method {method} not allowed"})
            self.assertIn("allow", headers)

    def test_a_resource_that_raises_is_a_json_500_and_a_log_line(self) -> None:
        class Broken(Resource):
            isLeaf = True

            def render_GET(self, request: object) -> bytes:
                raise ZeroDivisionError("a bug")

        self.h.site.resource.putChild(b"broken", Broken())
        c = self.h.call("GET", "/broken")
        code, headers, body = c.response()
        self.assertEqual(code, 500)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(json.loads(body), {"error": "internal error"})
        self.assertEqual(int(headers["content-length"]), len(body))
        self.assertNotIn(b"a bug", body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        # the connection serves the next request
        c.request("GET", "/healthz")
        self.assertEqual(c.response()[0], 200)

    def test_head_still_answers_like_get(self) -> None:
        c = self.h.call("HEAD", "/o2obroker.js")
        head = c.transport.value().split(b"\r\n")[0]
        self.assertEqual(head, b"HTTP/1.1 200 OK")
