"""The session protocol end to end through the binary transport, on a fake clock."""

from __future__ import annotations

import jwt
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.wire import frame
from o2obroker.wire.limits import Limits
from tests.harness import SECRET, Harness


class HelloTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(secret=SECRET)

    def test_welcome(self) -> None:
        d = self.h.login("alice", "phone")
        [welcome] = d.read()
        self.assertEqual(welcome["t"], "welcome")
        self.assertEqual(welcome["user"], "alice")
        self.assertEqual(welcome["device"], "phone")
        self.assertEqual(welcome["node"], "n1")
        self.assertEqual(welcome["hb"], 30)
        self.assertEqual(welcome["max_frame"], 1 << 20)
        self.assertIs(welcome["resumed"], True)
        self.assertEqual(welcome["last"], 0)

    def test_first_frame_not_hello(self) -> None:
        d = self.h.connect()
        d.write({"t": "send", "id": "x", "to": "bob", "body": 1})
        [error] = d.read()
        self.assertEqual((error["t"], error["code"]), ("error", 401))
        self.assertTrue(d.closed)

    def test_bad_signature(self) -> None:
        d = self.h.connect()
        token = self.h.token("alice")
        d.write({"t": "hello", "token": token[:-2] + ("AA" if token[-2:] != "AA" else "BB")})
        [error] = d.read()
        self.assertEqual((error["code"], error["reason"]), (401, "bad token"))
        self.assertTrue(d.closed)

    def test_library_error_text_stays_in_the_log(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        d = self.h.connect()
        d.write({"t": "hello", "token": "not.a.jwt"})
        [error] = d.read()
        self.assertEqual((error["code"], error["reason"]), (401, "bad token"))
        [logged] = [e for e in events if e.get("log_format") == "bad token: {error}"]
        self.assertTrue(logged["error"])  # the detail, for the operator

    def test_token_expires_on_the_node_clock(self) -> None:
        # the node's clock, not the wall clock: at 0 s this token has 100 s to live
        self.assertEqual(self.h.clock.seconds(), 0)
        token = self.h.token("alice", exp=100)
        d = self.h.login("alice", claims={"exp": 100})
        self.assertEqual(d.read_types(), ["welcome"])
        self.h.clock.advance(105)  # within the leeway (10 s)
        d = self.h.connect()
        d.write({"t": "hello", "token": token, "device": "p2"})
        self.assertEqual(d.read_types(), ["welcome"])
        self.h.clock.advance(10)
        d = self.h.connect()
        d.write({"t": "hello", "token": token, "device": "p3"})
        [error] = d.read()
        self.assertEqual((error["code"], error["reason"]), (401, "token expired"))
        self.assertTrue(d.closed)

    def test_token_not_valid_yet(self) -> None:
        d = self.h.connect()
        d.write({"t": "hello", "token": jwt.encode({"sub": "a", "nbf": 60}, SECRET)})
        [error] = d.read()
        self.assertEqual((error["code"], error["reason"]), (401, "bad token"))
        self.h.clock.advance(55)
        d = self.h.connect()
        d.write({"t": "hello", "token": jwt.encode({"sub": "a", "nbf": 60}, SECRET)})
        self.assertEqual(d.read_types(), ["welcome"])

    def test_exp_that_is_not_a_number(self) -> None:
        for exp in ("soon", True):
            d = self.h.connect()
            d.write({"t": "hello", "token": jwt.encode({"sub": "a", "exp": exp}, SECRET)})
            [error] = d.read()
            self.assertEqual((error["code"], error["reason"]), (401, "bad token"))

    def test_system_is_a_reserved_user_id(self) -> None:
        d = self.h.connect()
        d.write({"t": "hello", "token": self.h.token("system")})
        [error] = d.read()
        self.assertEqual((error["code"], error["reason"]), (401, "reserved user id"))
        self.assertTrue(d.closed)
        h = Harness(auth="none")
        d = h.connect()
        d.write({"t": "hello", "user": "system"})
        [error] = d.read()
        self.assertEqual((error["code"], error["reason"]), (401, "reserved user id"))

    def test_token_for_another_user(self) -> None:
        d = self.h.connect()
        d.write({"t": "hello", "token": self.h.token("alice"), "user": "bob"})
        [error] = d.read()
        self.assertEqual(error["code"], 401)
        self.assertTrue(d.closed)

    def test_no_token(self) -> None:
        d = self.h.connect()
        d.write({"t": "hello", "user": "alice"})
        [error] = d.read()
        self.assertEqual(error["code"], 401)

    def test_other_version(self) -> None:
        d = self.h.connect()
        d.write({"t": "hello", "v": 2, "token": self.h.token("alice")})
        [error] = d.read()
        self.assertEqual((error["code"], error["versions"]), (400, [1]))
        self.assertTrue(d.closed)

    def test_null_optional_fields_count_as_absent(self) -> None:
        # doc/protocol.md section 1: v null is version 1, not another version
        d = self.h.connect()
        d.write({"t": "hello", "v": None, "device": None, "token": self.h.token("alice")})
        [welcome] = d.read()
        self.assertEqual(welcome["t"], "welcome")

    def test_a_version_that_is_not_an_integer_is_a_bad_hello(self) -> None:
        for v in (True, 1.0, "1"):
            d = self.h.connect()
            d.write({"t": "hello", "v": v, "token": self.h.token("alice")})
            [error] = d.read()
            self.assertEqual((error["code"], error["reason"]), (400, "hello: v must be an integer"))
            self.assertTrue(d.closed)

    def test_default_device_is_new_each_time(self) -> None:
        one = self.h.connect()
        one.write({"t": "hello", "token": self.h.token("alice")})
        two = self.h.connect()
        two.write({"t": "hello", "token": self.h.token("alice")})
        [w1], [w2] = one.read(), two.read()
        self.assertTrue(w1["device"].startswith("mobile-"))
        self.assertNotEqual(w1["device"], w2["device"])

    def test_replaced(self) -> None:
        old = self.h.login("alice", "phone")
        old.read()
        new = self.h.login("alice", "phone")
        self.assertEqual(new.read_types(), ["welcome"])
        [error] = old.read()
        self.assertEqual((error["code"], error["reason"]), (409, "replaced"))
        self.assertTrue(old.closed)


class MessageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(auth="none")
        self.alice = self.h.login("alice", "phone")
        self.bob = self.h.login("bob", "phone")
        self.alice.read()
        self.bob.read()

    def test_delivered(self) -> None:
        self.alice.write({"t": "send", "id": "c-1", "to": "bob", "body": {"text": "hi"}})
        [receipt] = self.alice.read()
        self.assertEqual(receipt["t"], "receipt")
        self.assertEqual((receipt["id"], receipt["status"]), ("c-1", "delivered"))
        [msg] = self.bob.read()
        self.assertEqual(msg["t"], "msg")
        self.assertEqual(msg["seq"], 1)
        self.assertEqual(msg["mid"], receipt["mid"])
        self.assertEqual(msg["ts"], receipt["ts"])
        self.assertEqual((msg["from"], msg["from_device"], msg["to"]), ("alice", "phone", "bob"))
        self.assertEqual(msg["body"], {"text": "hi"})

    def test_stored_then_sent_on_connect(self) -> None:
        self.alice.write({"t": "send", "id": "c-1", "to": "carol", "body": b"\x00\xff"})
        [receipt] = self.alice.read()
        self.assertEqual(receipt["status"], "stored")
        carol = self.h.login("carol", "tablet")
        welcome, msg = carol.read()
        self.assertEqual((welcome["last"], welcome["resumed"]), (1, True))
        self.assertEqual((msg["seq"], msg["body"]), (1, b"\x00\xff"))

    def test_every_device_gets_it_once(self) -> None:
        laptop = self.h.login("bob", "laptop")
        laptop.read()
        self.alice.write({"t": "send", "id": "c-1", "to": "bob", "body": 1})
        self.assertEqual([f["seq"] for f in self.bob.read()], [1])
        self.assertEqual([f["seq"] for f in laptop.read()], [1])

    def test_order_and_seq(self) -> None:
        data = b"".join(
            frame(__import__("cbor2").dumps({"t": "send", "id": f"c-{i}", "to": "bob", "body": i}))
            for i in range(50)
        )
        self.alice.write_bytes(data)
        msgs = self.bob.read()
        self.assertEqual([m["body"] for m in msgs], list(range(50)))
        self.assertEqual([m["seq"] for m in msgs], list(range(1, 51)))
        receipts = self.alice.read()
        self.assertEqual([r["id"] for r in receipts], [f"c-{i}" for i in range(50)])

    def test_repeated_id_is_not_delivered_again(self) -> None:
        self.alice.write({"t": "send", "id": "c-1", "to": "bob", "body": 1})
        [first] = self.alice.read()
        self.bob.read()
        other = self.h.login("alice", "laptop")
        other.read()
        other.write({"t": "send", "id": "c-1", "to": "bob", "body": 1})
        [again] = other.read()
        self.assertEqual(again, first)
        self.assertEqual(self.bob.read(), [])

    def test_repeated_id_forgotten_after_ttl(self) -> None:
        self.alice.write({"t": "send", "id": "c-1", "to": "bob", "body": 1})
        self.alice.read()
        self.h.clock.advance(601)
        self.alice.write({"t": "ping"})  # keep alive is not needed: liveness is not started
        self.alice.write({"t": "send", "id": "c-1", "to": "bob", "body": 1})
        _pong, receipt = self.alice.read()
        self.assertEqual(len(self.bob.read()), 2)
        self.assertEqual(receipt["status"], "delivered")

    def test_ack_and_resume(self) -> None:
        for i in range(5):
            self.alice.write({"t": "send", "id": f"c-{i}", "to": "bob", "body": i})
        self.assertEqual(len(self.bob.read()), 5)
        self.bob.write({"t": "ack", "seq": 3})
        self.bob.lose()
        again = self.h.login("bob", "phone")
        frames = again.read()
        self.assertEqual(frames[0]["t"], "welcome")
        self.assertEqual((frames[0]["last"], frames[0]["resumed"]), (5, True))
        self.assertEqual([f["seq"] for f in frames[1:]], [4, 5])

    def test_resume_last_sets_cursor(self) -> None:
        for i in range(5):
            self.alice.write({"t": "send", "id": f"c-{i}", "to": "bob", "body": i})
        self.bob.lose()
        again = self.h.login("bob", "phone", resume={"last": 4})
        frames = again.read()
        self.assertEqual([f.get("seq") for f in frames], [None, 5])

    def test_ack_above_last_is_clamped(self) -> None:
        self.alice.write({"t": "send", "id": "c-1", "to": "bob", "body": 1})
        self.bob.read()
        self.bob.write({"t": "ack", "seq": 999})
        self.bob.lose()
        self.alice.write({"t": "send", "id": "c-2", "to": "bob", "body": 2})
        again = self.h.login("bob", "phone")
        self.assertEqual([f.get("seq") for f in again.read()], [None, 2])

    def test_resume_after_trim_is_not_resumed(self) -> None:
        h = Harness(auth="none", inbox_cap=3)
        alice = h.login("alice")
        for i in range(6):
            alice.write({"t": "send", "id": f"c-{i}", "to": "bob", "body": i})
        bob = h.login("bob", resume={"last": 1})
        frames = bob.read()
        self.assertEqual((frames[0]["resumed"], frames[0]["last"]), (False, 6))
        self.assertEqual([f["seq"] for f in frames[1:]], [4, 5, 6])

    def test_resume_beyond_store_means_reset(self) -> None:
        bob = self.h.login("bob", "tablet", resume={"last": 40})
        [welcome] = bob.read()
        self.assertEqual((welcome["resumed"], welcome["last"]), (False, 0))

    def test_new_device_starts_at_highest_cursor(self) -> None:
        for i in range(3):
            self.alice.write({"t": "send", "id": f"c-{i}", "to": "bob", "body": i})
        self.bob.write({"t": "ack", "seq": 2})
        tablet = self.h.login("bob", "tablet")
        self.assertEqual([f.get("seq") for f in tablet.read()], [None, 3])

    def test_bye(self) -> None:
        self.bob.write({"t": "bye"})
        self.assertEqual(self.bob.read_types(), ["bye"])
        self.assertTrue(self.bob.closed)
        self.alice.write({"t": "send", "id": "c-1", "to": "bob", "body": 1})
        self.assertEqual(self.alice.read()[0]["status"], "stored")
        self.assertEqual(self.bob.read(), [])

    def test_ping(self) -> None:
        self.alice.write({"t": "ping"})
        self.assertEqual(self.alice.read_types(), ["pong"])


class BadFrameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(auth="none", limits=Limits(max_body=100))
        self.alice = self.h.login("alice")
        self.bob = self.h.login("bob")
        self.alice.read()
        self.bob.read()

    def assertStillWorks(self) -> None:
        self.alice.write({"t": "send", "id": "ok", "to": "bob", "body": "fine"})
        self.assertEqual(self.alice.read()[-1]["status"], "delivered")
        self.assertEqual(self.bob.read()[-1]["body"], "fine")

    def test_body_over_limit(self) -> None:
        self.alice.write({"t": "send", "id": "big", "to": "bob", "body": "x" * 200})
        [error] = self.alice.read()
        self.assertEqual((error["code"], error["ref"]), (413, "big"))
        self.assertFalse(self.alice.closed)
        self.assertEqual(self.bob.read(), [])
        self.assertStillWorks()

    def test_unknown_type(self) -> None:
        self.alice.write({"t": "launch", "id": "x"})
        [error] = self.alice.read()
        self.assertEqual(error["code"], 400)
        self.assertFalse(self.alice.closed)
        self.assertStillWorks()

    def test_sending_as_someone_else(self) -> None:
        self.alice.write({"t": "send", "id": "s", "to": "bob", "from": "carol", "body": 1})
        [error] = self.alice.read()
        self.assertEqual((error["code"], error["ref"]), (403, "s"))
        self.assertEqual(self.bob.read(), [])
        self.assertStillWorks()

    def test_undecodable_closes_only_that_connection(self) -> None:
        self.bob.write_bytes(frame(b"\xff\xff\xff"))
        [error] = self.bob.read()
        self.assertEqual(error["code"], 400)
        self.assertTrue(self.bob.closed)
        self.alice.write({"t": "send", "id": "ok", "to": "bob", "body": 1})
        self.assertEqual(self.alice.read()[-1]["status"], "stored")

    def test_huge_length_prefix(self) -> None:
        self.alice.write_bytes(b"\xff\xff\xff\xff")
        [error] = self.alice.read()
        self.assertEqual(error["code"], 413)
        self.assertTrue(self.alice.closed)

    def test_zero_length(self) -> None:
        self.alice.write_bytes(b"\x00\x00\x00\x00")
        [error] = self.alice.read()
        self.assertEqual(error["code"], 400)
        self.assertTrue(self.alice.closed)

    def test_deep_nesting(self) -> None:
        self.alice.write_bytes(frame(b"\x81" * 5000 + b"\x00"))
        [error] = self.alice.read()
        self.assertEqual(error["code"], 400)
        self.assertTrue(self.alice.closed)

    def test_tags_are_bad_frames(self) -> None:
        for tagged in (
            b"\xd8\x1c\x01",
            b"\xd8\x1d\x00",
            b"\xd8\x23\x61a",
            b"\xd8\x24\x61a",
            b"\xc2\x41\x01",
            b"\xc3\x41\x01",
        ):
            body = b"\xa4\x61t\x64send\x62id\x61x\x62to\x63bob\x64body" + tagged
            self.alice.write_bytes(frame(body))
            [error] = self.alice.read()
            self.assertEqual(error["code"], 400, tagged)
            self.assertFalse(self.alice.closed)
        self.assertEqual(self.bob.read(), [])
        self.assertStillWorks()

    def test_duplicate_keys(self) -> None:
        dup = b"\xa5\x61t\x64send\x62id\x61x\x62to\x63bob\x62to\x65carol\x64body\x01"
        self.alice.write_bytes(frame(dup))
        [error] = self.alice.read()
        self.assertEqual(error["code"], 400)
        self.assertStillWorks()


class RoomTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(secret=SECRET)

    def test_room_message(self) -> None:
        alice = self.h.login("alice", "phone")
        alice_web = self.h.login("alice", "web")
        bob = self.h.login("bob")
        for d in (alice, alice_web, bob):
            d.write({"t": "join", "room": "store-42"})
        self.assertEqual(alice.read()[-1], {"t": "joined", "room": "store-42", "members": 1})
        self.assertEqual(bob.read()[-1]["members"], 2)
        alice_web.read()
        alice.write({"t": "send", "id": "r-1", "room": "store-42", "body": {"order": 991}})
        [receipt] = alice.read()
        self.assertEqual(receipt["status"], "accepted")
        [msg] = bob.read()
        self.assertEqual((msg["room"], msg["from"], msg["seq"]), ("store-42", "alice", 1))
        [own] = alice_web.read()
        self.assertEqual(own["mid"], msg["mid"])
        # the sending device never gets its own room message, not on resume either
        alice.lose()
        again = self.h.login("alice", "phone", resume={"last": 0})
        self.assertEqual(again.read_types(), ["welcome"])

    def test_not_a_member(self) -> None:
        alice = self.h.login("alice")
        bob = self.h.login("bob")
        bob.write({"t": "join", "room": "r"})
        alice.write({"t": "send", "id": "x", "room": "r", "body": 1})
        self.assertEqual(alice.read()[-1]["code"], 403)

    def test_no_such_room(self) -> None:
        alice = self.h.login("alice")
        alice.write({"t": "send", "id": "x", "room": "nowhere", "body": 1})
        error = alice.read()[-1]
        self.assertEqual((error["code"], error["ref"]), (404, "x"))

    def test_token_rooms_claim(self) -> None:
        alice = self.h.login("alice", claims={"rooms": ["a"]})
        alice.write({"t": "join", "room": "a"})
        alice.write({"t": "join", "room": "b"})
        frames = alice.read()
        self.assertEqual(frames[1]["t"], "joined")
        self.assertEqual(frames[2]["code"], 403)

    def test_a_refused_join_names_its_id(self) -> None:
        # which of several joins was refused, without guessing by order
        alice = self.h.login("alice", claims={"rooms": ["a"]})
        alice.write({"t": "join", "room": "b", "id": "j-1"})
        alice.write({"t": "join", "room": "a", "id": "j-2"})
        alice.write({"t": "join", "room": "c"})
        frames = alice.read()[1:]
        self.assertEqual(
            frames,
            [
                {"t": "error", "code": 403, "reason": "room not allowed by token", "ref": "j-1"},
                {"t": "joined", "room": "a", "members": 1},
                {"t": "error", "code": 403, "reason": "room not allowed by token"},
            ],
        )

    def test_leave(self) -> None:
        alice = self.h.login("alice")
        alice.write({"t": "join", "room": "r"})
        alice.write({"t": "leave", "room": "r"})
        self.assertEqual(alice.read()[-1], {"t": "left", "room": "r"})
        alice.write({"t": "send", "id": "x", "room": "r", "body": 1})
        self.assertEqual(alice.read()[-1]["code"], 404)


class LivenessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(auth="none", hb=8)
        self.h.node.start()

    def tearDown(self) -> None:
        self.h.node.stop()

    def test_silent_device_is_pinged_then_closed(self) -> None:
        d = self.h.login("alice")
        d.read()
        self.h.clock.pump([1] * 9)
        self.assertEqual(d.read_types(), ["ping"])
        self.h.clock.pump([1] * 6)
        self.assertFalse(d.closed)
        self.h.clock.pump([1] * 4)
        self.assertTrue(d.closed)

    def test_any_frame_is_proof_of_life(self) -> None:
        d = self.h.login("alice")
        d.read()
        for _ in range(30):
            self.h.clock.pump([1] * 6)
            d.write({"t": "ack", "seq": 0})
        self.assertEqual(d.read(), [])
        self.assertFalse(d.closed)

    def test_no_hello_in_time(self) -> None:
        d = self.h.connect()
        self.h.clock.pump([1] * 12)
        self.assertEqual(d.read()[0]["code"], 401)
        self.assertTrue(d.closed)

    def test_stalled_frame(self) -> None:
        d = self.h.login("alice")
        d.read()
        d.write_bytes(b"\x00\x00\x10\x00" + b"x" * 100)
        for _ in range(31):
            self.h.clock.advance(1)
            d.write_bytes(b"")
        self.assertEqual(d.read()[0]["code"], 400)
        self.assertTrue(d.closed)


class BacklogPacingTests(SynchronousTestCase):
    """A resume's backlog goes a page at a time, each once the link took the last."""

    def setUp(self) -> None:
        self.h = Harness(auth="none")
        alice = self.h.login("alice")
        for i in range(1200):
            alice.write({"t": "send", "id": f"c-{i}", "to": "bob", "body": i})

    def slow_login(self) -> tuple[object, list[int]]:
        """Bob's link stops taking bytes after every write, as a full socket buffer does."""
        bob = self.h.connect()
        proto = bob.proto
        real = bob.transport.write

        def write(data: bytes) -> None:
            real(data)
            proto._pressure.pauseProducing()  # what Twisted does once its buffer is over its size

        bob.transport.write = write
        bob.write({"t": "hello", "user": "bob", "device": "phone"})
        return bob, [f["seq"] for f in bob.read() if f["t"] == "msg"]

    def test_waits_for_the_link(self) -> None:
        bob, seqs = self.slow_login()
        self.assertEqual(seqs, list(range(1, 501)))  # one page, then it waits
        bob.proto._pressure.resumeProducing()
        self.h.flush()
        self.assertEqual([f["seq"] for f in bob.read()], list(range(501, 1001)))
        bob.proto._pressure.resumeProducing()
        self.h.flush()
        self.assertEqual([f["seq"] for f in bob.read()], list(range(1001, 1201)))

    def test_new_messages_wait_behind_the_backlog(self) -> None:
        bob, _ = self.slow_login()
        carol = self.h.login("carol")
        carol.write({"t": "send", "id": "late", "to": "bob", "body": "late"})
        self.assertEqual(bob.read(), [])
        for _ in range(3):
            bob.proto._pressure.resumeProducing()
            self.h.flush()
        bodies = [f["body"] for f in bob.read() if f["t"] == "msg"]
        self.assertEqual(bodies[-1], "late")
        self.assertEqual(len(bodies), 701)  # the 700 left of the backlog, then the new one

    def test_a_link_that_goes_away_ends_the_backlog(self) -> None:
        bob, _ = self.slow_login()
        bob.lose()
        # the actor is not held by the dead link: another device gets everything
        tablet = self.h.login("bob", "tablet")
        seqs = [f["seq"] for f in tablet.read() if f["t"] == "msg"]
        self.assertEqual(seqs, list(range(1, 1201)))
