"""WebSocket on /ws through the whole site, in memory on a task.Clock."""

from __future__ import annotations

import json
import zlib

import psutil
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.transports import websocket
from o2obroker.wire import encode as wire_encode
from o2obroker.wire.limits import Limits
from tests.harness import SECRET
from tests.web.helpers import WebHarness, ws_frame


class FramesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = WebHarness(secret=SECRET)

    def test_welcome_as_json_object(self) -> None:
        c = self.h.ws_login("alice")
        [welcome] = c.read()
        self.assertEqual(welcome["t"], "welcome")
        self.assertEqual(welcome["user"], "alice")
        self.assertEqual(self.h.node.gateway.connections["ws"], 1)

    def test_batch_client_gets_one_array_per_turn(self) -> None:
        bob = self.h.ws_login("bob", "b", batch=True)
        self.assertEqual(bob.read(), [[bob.messages[0][0]]])  # an array, also of one frame
        self.assertEqual(bob.messages[0][0]["t"], "welcome")
        alice = self.h.ws_login("alice", "a")
        alice.read()
        alice.send([{"t": "send", "id": f"s{i}", "to": "bob", "body": i} for i in range(5)])
        [batch] = bob.read()
        self.assertEqual([f["body"] for f in batch], [0, 1, 2, 3, 4])
        self.assertEqual([f["seq"] for f in batch], [1, 2, 3, 4, 5])

    def test_plain_client_gets_one_message_per_frame(self) -> None:
        bob = self.h.ws_login("bob", "b")
        bob.read()
        alice = self.h.ws_login("alice", "a")
        alice.read()
        alice.send([{"t": "send", "id": f"s{i}", "to": "bob", "body": i} for i in range(3)])
        messages = bob.read()
        self.assertEqual([m["body"] for m in messages], [0, 1, 2])
        self.assertEqual([m["t"] for m in alice.read()], ["receipt", "receipt", "receipt"])

    def test_ping_is_answered(self) -> None:
        c = self.h.ws_login("alice")
        c.read()
        c.send({"t": "ping"})
        self.assertEqual(c.read(), [{"t": "pong"}])

    def test_heartbeat_from_the_broker(self) -> None:
        self.h.node.gateway.start()
        self.addCleanup(self.h.node.gateway.stop)
        c = self.h.ws_login("alice")
        c.read()
        self.h.clock.pump([1] * 40)
        self.assertIn({"t": "ping"}, c.read())
        self.h.clock.pump([1] * 30)
        c.read()
        self.assertEqual(c.close_code, 1000)
        self.assertEqual(self.h.node.gateway.connections["ws"], 0)

    def test_undecodable_text_closes_with_400(self) -> None:
        c = self.h.ws_login("alice")
        c.read()
        c.write_raw(ws_frame(b"{not json"))
        [error] = c.read()
        self.assertEqual((error["t"], error["code"]), ("error", 400))
        self.assertEqual(c.close_code, 1000)

    def test_text_that_is_not_utf8_closes_with_400(self) -> None:
        # decoded by the broker, like any undecodable message: an error frame
        # that says why, then the close (not Autobahn's bare close 1007)
        c = self.h.ws_login("alice")
        c.read()
        c.write_raw(ws_frame(b'{"t":"ping","x":"\xff"}'))
        [error] = c.read()
        self.assertEqual(
            (error["t"], error["code"], error["reason"]), ("error", 400, "not valid UTF-8")
        )
        self.assertEqual(c.close_code, 1000)

    def test_bad_frame_keeps_the_connection(self) -> None:
        c = self.h.ws_login("alice")
        c.read()
        c.send({"t": "send", "id": "x", "to": "bob"})
        [error] = c.read()
        self.assertEqual((error["code"], error["ref"]), (400, "x"))
        c.send({"t": "ping"})
        self.assertEqual(c.read(), [{"t": "pong"}])

    def test_first_frame_must_be_hello(self) -> None:
        c = self.h.ws()
        c.send({"t": "ping"})
        [error] = c.read()
        self.assertEqual(error["code"], 401)
        self.assertEqual(c.close_code, 1000)

    def test_connection_counted_until_gone(self) -> None:
        c = self.h.ws_login("alice")
        self.assertEqual(self.h.node.gateway.connections["ws"], 1)
        c.lose()
        self.assertEqual(self.h.node.gateway.connections["ws"], 0)
        actor = self.h.node.router.actors.get("alice")
        self.assertFalse(actor is not None and actor.devices)


class EncodingsTests(SynchronousTestCase):
    """One broker, three encodings: every device gets each message in its own."""

    def setUp(self) -> None:
        self.h = WebHarness()

    def test_phone_and_browser_of_one_user_both_get_it(self) -> None:
        phone = self.h.login("bob", "phone")
        browser = self.h.ws_login("bob", "browser")
        cbor_tab = self.h.ws_login("bob", "tab", protocol="o2o.cbor.v1")
        phone.read(), browser.read(), cbor_tab.read()
        sender = self.h.login("alice", "phone")
        sender.read()
        sender.write({"t": "send", "id": "1", "to": "bob", "body": {"pic": b"\x00\x01\xff"}})
        [on_phone] = phone.read()
        [in_browser] = browser.read()
        [in_tab] = cbor_tab.read()
        self.assertEqual(on_phone["body"], {"pic": b"\x00\x01\xff"})
        self.assertEqual(in_browser["body"], {"pic": {"$bytes": "AAH/"}})
        self.assertEqual(in_tab["body"], {"pic": b"\x00\x01\xff"})
        self.assertEqual(on_phone["mid"], in_browser["mid"])
        self.assertEqual(sender.read()[0]["status"], "delivered")

    def test_browser_bytes_reach_a_phone_as_bytes(self) -> None:
        phone = self.h.login("bob", "phone")
        phone.read()
        browser = self.h.ws_login("alice", "web")
        browser.read()
        browser.send({"t": "send", "id": "1", "to": "bob", "body": {"$bytes": "AAEC"}})
        [msg] = phone.read()
        self.assertEqual(msg["body"], b"\x00\x01\x02")

    def test_cbor_subprotocol_is_binary(self) -> None:
        c = self.h.ws(protocol="o2o.cbor.v1")
        self.assertIn("Sec-WebSocket-Protocol: o2o.cbor.v1", c.handshake)
        c.send({"t": "hello", "user": "alice", "batch": True})
        [[welcome]] = c.read()
        self.assertEqual(welcome["t"], "welcome")

    def test_each_message_encoded_once_per_encoding(self) -> None:
        calls = []
        real = wire_encode.encode_json

        def counting(obj):
            calls.append(obj)
            return real(obj)

        self.patch(wire_encode, "encode_json", counting)
        members = [self.h.ws_login(f"u{i}", "w") for i in range(4)]
        for m in members:
            m.send({"t": "join", "room": "r"})
            m.read()
        sender = self.h.login("boss", "phone")
        sender.write({"t": "join", "room": "r"})
        sender.read()
        body = {"text": "x" * 1000}
        sender.write({"t": "send", "id": "1", "room": "r", "body": body})
        for m in members:
            [msg] = m.read()
            self.assertEqual(msg["body"], body)
        self.assertEqual(len([c for c in calls if c.get("body") == body]), 1)

    def test_presence_encoded_once_for_all_web_watchers(self) -> None:
        calls = []
        real = wire_encode.encode_json

        def counting(obj):
            calls.append(obj)
            return real(obj)

        self.patch(wire_encode, "encode_json", counting)
        self.patch(websocket, "encode_json", counting)
        watchers = [self.h.ws_login(f"w{i}", "w") for i in range(3)]
        for w in watchers:
            w.send({"t": "watch", "users": ["carol"]})
            w.read()
        carol = self.h.login("carol", "phone")
        carol.write({"t": "presence", "state": "busy", "status": "in a meeting"})
        self.h.clock.advance(1)
        self.h.flush()
        for w in watchers:
            frames = [f for f in w.read() if f.get("t") == "presence"]
            self.assertEqual(frames[-1]["state"], "busy")
        pushed = [c for c in calls if c.get("t") == "presence" and c.get("state") == "busy"]
        self.assertEqual(len(pushed), 1)


class OriginTests(SynchronousTestCase):
    def test_loopback_pages_only_without_auth(self) -> None:
        h = WebHarness()
        self.assertEqual(h.ws(origin="http://localhost:3000").status, 101)
        self.assertEqual(h.ws(origin="http://127.0.0.1:8080").status, 101)
        refused = h.ws(origin="https://evil.example")
        self.assertEqual(refused.status, 403)
        self.assertEqual(h.node.gateway.connections["ws"], 2)
        self.assertEqual(h.site.websockets.refused_origins, 1)
        self.assertEqual(h.node.metrics.stats.refused, {"origin": 1})

    def test_null_origin_is_403(self) -> None:
        # Autobahn itself would answer 400; the origin policy refuses it like any origin
        for settings in ({}, {"allowed_origins": "https://shop.example"}):
            refused = WebHarness(**settings).ws(origin="null")
            self.assertEqual(refused.status, 403)
        self.assertEqual(WebHarness(allowed_origins="*").ws(origin="null").status, 101)

    def test_no_origin_is_allowed(self) -> None:
        h = WebHarness(allowed_origins="https://shop.example")
        self.assertEqual(h.ws().status, 101)

    def test_allow_list(self) -> None:
        h = WebHarness(secret=SECRET, allowed_origins="https://shop.example, https://b.example")
        self.assertEqual(h.ws(origin="https://shop.example").status, 101)
        self.assertEqual(h.ws(origin="https://b.example").status, 101)
        self.assertEqual(h.ws(origin="https://evil.example").status, 403)
        self.assertEqual(h.ws(origin="http://localhost").status, 403)

    def test_same_origin_page_is_allowed(self) -> None:
        h = WebHarness(allowed_origins="https://shop.example")
        self.assertEqual(h.ws(origin="http://127.0.0.1:8080").status, 101)

    def test_any_origin_with_tokens(self) -> None:
        h = WebHarness(secret=SECRET)
        self.assertEqual(h.ws(origin="https://anywhere.example").status, 101)


class LimitsTests(SynchronousTestCase):
    def test_message_over_the_limit_closes_1009(self) -> None:
        h = WebHarness(ws_max_message=4096)
        c = h.ws_login("alice")
        c.read()
        big = json.dumps({"t": "send", "id": "1", "to": "bob", "body": "x" * 5000}).encode()
        c.write_raw(ws_frame(big[:3000], fin=False) + ws_frame(big[3000:], opcode=0))
        c.read()
        self.assertEqual(c.close_code, 1009)

    def test_frame_over_the_limit_closes_1009(self) -> None:
        h = WebHarness(ws_max_frame=1024)
        c = h.ws_login("alice")
        c.read()
        c.write_raw(ws_frame(b'{"t":"ping","pad":"' + b"x" * 2000 + b'"}'))
        c.read()
        self.assertEqual(c.close_code, 1009)

    def test_message_at_the_limit_passes(self) -> None:
        h = WebHarness(ws_max_message=4096, limits=Limits(max_body=8192))
        c = h.ws_login("alice")
        c.read()
        frame = {"t": "send", "id": "1", "to": "bob", "body": ""}
        frame["body"] = "x" * (4096 - len(json.dumps(frame, separators=(",", ":"))))
        payload = json.dumps(frame, separators=(",", ":")).encode()
        self.assertEqual(len(payload), 4096)
        c.write_raw(ws_frame(payload))
        [receipt] = c.read()
        self.assertEqual((receipt["t"], receipt["status"]), ("receipt", "stored"))

    def test_compressed_bomb_closes_1009_and_memory_stays_flat(self) -> None:
        h = WebHarness(ws_compression=True)
        c = h.ws(extensions="permessage-deflate")
        self.assertIn("permessage-deflate", c.handshake)
        c.send({"t": "hello", "user": "alice"})
        c.read()
        # 1 GiB of zeros, deflated in pieces: about 1 MB on the wire
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        chunk = b"\x00" * (1 << 20)
        head = z.compress(b'{"t":"ping","pad":"') + z.compress(chunk)
        pieces = [head] + [z.compress(chunk) for _ in range(1023)]
        pieces.append(z.flush(zlib.Z_SYNC_FLUSH))
        compressed = b"".join(pieces)
        self.assertLess(len(compressed), 2 << 20)
        before = psutil.Process().memory_info().rss
        step = 64 << 10
        parts = [compressed[i : i + step] for i in range(0, len(compressed), step)]
        for i, part in enumerate(parts):
            first, last = i == 0, i == len(parts) - 1
            c.write_raw(ws_frame(part, opcode=1 if first else 0, fin=last, rsv1=first))
            if c.transport.disconnecting or (c.read() and c.close_code):
                break
        c.read()
        self.assertEqual(c.close_code, 1009)
        grown = psutil.Process().memory_info().rss - before
        self.assertLess(grown, 64 << 20)

    def test_compression_off_by_default(self) -> None:
        h = WebHarness()
        c = h.ws(extensions="permessage-deflate")
        self.assertEqual(c.status, 101)
        self.assertNotIn("permessage-deflate", c.handshake)


class TimersTests(SynchronousTestCase):
    def test_opening_handshake_timeout(self) -> None:
        h = WebHarness(ws_handshake_timeout=3)
        c = h.http()
        c.send_raw(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        self.assertFalse(c.transport.disconnecting)
        h.clock.advance(30)  # the request deadline of the HTTP layer cuts a half request too
        self.assertTrue(c.transport.disconnecting)

    def test_autobahn_handshake_timer_is_on_the_clock(self) -> None:
        h = WebHarness(ws_handshake_timeout=3)
        factory = h.site.websockets
        proto = factory.buildProtocol(None)
        from twisted.internet.testing import StringTransport

        t = StringTransport()
        t.registerProducer(proto, True)  # as the HTTP channel leaves it; Autobahn unregisters
        proto.makeConnection(t)
        proto.dataReceived(b"GET /ws HTTP/1.1\r\n")
        h.clock.advance(2.9)
        self.assertFalse(t.disconnecting)
        h.clock.advance(0.2)
        self.assertTrue(t.disconnecting or t.disconnected)

    def test_auto_ping_and_its_timeout(self) -> None:
        h = WebHarness(ws_auto_ping=5, ws_auto_ping_timeout=2)
        c = h.ws_login("alice")
        c.read()
        h.clock.advance(5)
        data = c.transport.value()
        self.assertIn(b"\x89", data[:1] + data)  # a ping frame went out
        self.assertFalse(c.transport.disconnecting)
        h.clock.advance(2.5)
        self.assertTrue(c.transport.disconnecting or c.transport.disconnected)

    def test_no_auto_ping_by_default(self) -> None:
        h = WebHarness()
        c = h.ws_login("alice")
        c.read()
        h.clock.advance(20)
        self.assertEqual(c.transport.value(), b"")


class BacklogPacingTests(SynchronousTestCase):
    def test_backlog_waits_for_the_socket(self) -> None:
        h = WebHarness(auth="none")
        alice = h.login("alice")
        for i in range(1200):
            alice.write({"t": "send", "id": f"c-{i}", "to": "bob", "body": i})
        bob = h.ws()
        conn = bob.transport.protocol
        real = bob.transport.write

        def write(data: bytes) -> None:
            real(data)
            conn._pressure.pauseProducing()  # the socket's buffer is full after each write

        bob.transport.write = write
        bob.send({"t": "hello", "user": "bob", "device": "web"})
        seqs = [f["seq"] for f in bob.frames() if f["t"] == "msg"]
        self.assertEqual(seqs, list(range(1, 501)))
        for _ in range(2):
            conn._pressure.resumeProducing()
            h.flush()
            seqs += [f["seq"] for f in bob.frames() if f["t"] == "msg"]
        self.assertEqual(seqs, list(range(1, 1201)))
