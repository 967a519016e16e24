"""parse_frame and the name rules: every client frame type and every field rule."""

from dataclasses import FrozenInstanceError

from twisted.trial.unittest import SynchronousTestCase

from o2obroker.wire import (
    Ack,
    BadFrame,
    Bye,
    Hello,
    Join,
    Leave,
    Limits,
    Ping,
    Pong,
    PresenceReport,
    Probe,
    Send,
    Unwatch,
    Watch,
    encode_cbor,
    encode_json,
    parse_frame,
    valid_device,
    valid_room,
    valid_user,
)

LIMITS = Limits()


class FrameTestCase(SynchronousTestCase):
    def assertBad(
        self, obj: object, limits: Limits = LIMITS, code: int = 400, **kwargs: object
    ) -> BadFrame:
        with self.assertRaises(BadFrame) as caught:
            parse_frame(obj, limits, **kwargs)  # type: ignore[arg-type]
        self.assertEqual(caught.exception.code, code)
        self.assertFalse(caught.exception.fatal)
        return caught.exception


class DispatchTests(FrameTestCase):
    def test_every_client_frame_type(self) -> None:
        cases = [
            ({"t": "hello"}, Hello()),
            ({"t": "send", "id": "1", "to": "bob", "body": 1}, Send("1", "bob", None, 1)),
            ({"t": "ack", "seq": 4}, Ack(4)),
            ({"t": "join", "room": "r"}, Join("r")),
            ({"t": "leave", "room": "r"}, Leave("r")),
            ({"t": "ping"}, Ping()),
            ({"t": "pong"}, Pong()),
            ({"t": "bye"}, Bye()),
            ({"t": "presence", "state": "busy"}, PresenceReport("busy", None)),
            ({"t": "watch", "users": ["a"]}, Watch(("a",))),
            ({"t": "unwatch", "users": ["a"]}, Unwatch(("a",))),
            ({"t": "probe", "users": ["a"]}, Probe(("a",))),
        ]
        for obj, expected in cases:
            frame = parse_frame(obj, LIMITS)
            self.assertIs(type(frame), type(expected))
            self.assertEqual(frame, expected)

    def test_not_a_map(self) -> None:
        for obj in ([{"t": "ping"}], "ping", None, 1, b"x"):
            self.assertEqual(self.assertBad(obj).reason, "frame is not a map")

    def test_missing_type(self) -> None:
        error = self.assertBad({"id": "c-1"})
        self.assertEqual(error.reason, "missing frame type t")
        self.assertEqual(error.ref, "c-1")

    def test_type_not_a_string(self) -> None:
        for t in (1, True, ["send"], {"a": 1}, b"send"):
            self.assertEqual(self.assertBad({"t": t}).reason, "frame type t must be a string")

    def test_unknown_type(self) -> None:
        error = self.assertBad({"t": "x", "id": "c-3"})
        self.assertEqual(error.reason, "unknown frame type 'x'")
        self.assertEqual(error.ref, "c-3")
        long_error = self.assertBad({"t": "y" * 10_000})
        self.assertLess(len(long_error.reason), 60)

    def test_server_frames_are_unknown_from_a_client(self) -> None:
        for t in ("msg", "welcome", "receipt", "error", "joined", "left", "Send", "send "):
            self.assertIn("unknown frame type", self.assertBad({"t": t}).reason)

    def test_unknown_keys_are_ignored(self) -> None:
        self.assertEqual(parse_frame({"t": "ping", "future": [1, 2]}, LIMITS), Ping())
        frame = parse_frame({"t": "ack", "seq": 1, "x": {"y": None}}, LIMITS)
        self.assertEqual(frame, Ack(1))

    def test_frames_are_frozen_and_slotted(self) -> None:
        frame = parse_frame({"t": "send", "id": "1", "room": "r", "body": None}, LIMITS)
        with self.assertRaises(FrozenInstanceError):
            frame.id = "2"  # type: ignore[misc]
        self.assertFalse(hasattr(frame, "__dict__"))
        self.assertEqual(hash(frame), hash(Send("1", None, "r", None)))


class HelloTests(FrameTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(
            parse_frame({"t": "hello"}, LIMITS),
            Hello(1, None, None, None, None, False, "online", ""),
        )

    def test_all_fields(self) -> None:
        obj = {
            "t": "hello",
            "v": 1,
            "token": "jwt",
            "user": "alice",
            "device": "phone",
            "resume": {"last": 41},
            "batch": True,
            "state": "away",
            "status": "lunch",
        }
        self.assertEqual(
            parse_frame(obj, LIMITS), Hello(1, "jwt", "alice", "phone", 41, True, "away", "lunch")
        )

    def test_nulls_are_absent(self) -> None:
        obj = {"t": "hello", "v": None, "token": None, "user": None, "device": None}
        obj.update({"resume": None, "batch": None, "state": None, "status": None})
        self.assertEqual(parse_frame(obj, LIMITS), Hello())

    def test_v_must_be_an_int(self) -> None:
        self.assertEqual(parse_frame({"t": "hello", "v": 2}, LIMITS).v, 2)
        for v in ("1", 1.0, True, [1]):
            self.assertBad({"t": "hello", "v": v})

    def test_token_must_be_a_string(self) -> None:
        self.assertBad({"t": "hello", "token": 5})
        self.assertBad({"t": "hello", "token": b"jwt"})

    def test_user_and_device(self) -> None:
        for user in ("", "a/b", "a\x00", "x" * 129, 5):
            self.assertBad({"t": "hello", "user": user})
        self.assertEqual(parse_frame({"t": "hello", "user": "x" * 128}, LIMITS).user, "x" * 128)
        for device in ("", "a/b", "\x7f", "d" * 65, ["phone"]):
            self.assertBad({"t": "hello", "device": device})
        self.assertEqual(parse_frame({"t": "hello", "device": "d" * 64}, LIMITS).device, "d" * 64)

    def test_resume(self) -> None:
        self.assertEqual(parse_frame({"t": "hello", "resume": {"last": 0}}, LIMITS).resume_last, 0)
        resumed = parse_frame({"t": "hello", "resume": {"last": 2**63, "x": 1}}, LIMITS)
        self.assertEqual(resumed.resume_last, 2**63)
        for resume in (41, [41], {}, {"last": -1}, {"last": True}, {"last": "4"}, {"last": 1.0}):
            error = self.assertBad({"t": "hello", "id": "h", "resume": resume})
            self.assertIn("resume", error.reason)
            self.assertEqual(error.ref, "h")

    def test_batch(self) -> None:
        self.assertTrue(parse_frame({"t": "hello", "batch": True}, LIMITS).batch)
        for batch in (1, "true", 0):
            self.assertBad({"t": "hello", "batch": batch})

    def test_state_and_status(self) -> None:
        for state in ("online", "away", "busy", "offline"):
            self.assertEqual(parse_frame({"t": "hello", "state": state}, LIMITS).state, state)
        for state in ("Online", "", "idle", 1, ["online"]):
            self.assertBad({"t": "hello", "state": state})
        status = "é" * 128  # 256 bytes
        self.assertEqual(parse_frame({"t": "hello", "status": status}, LIMITS).status, status)
        for bad in (status + "x", 5):
            self.assertBad({"t": "hello", "status": bad})


class SendTests(FrameTestCase):
    def test_to_a_user_and_to_a_room(self) -> None:
        self.assertEqual(
            parse_frame({"t": "send", "id": "c-17", "to": "bob", "body": {"text": "hi"}}, LIMITS),
            Send("c-17", "bob", None, {"text": "hi"}),
        )
        self.assertEqual(
            parse_frame({"t": "send", "id": "c-18", "room": "store-42", "body": None}, LIMITS),
            Send("c-18", None, "store-42", None),
        )

    def test_size_is_known_without_encoding_again(self) -> None:
        body = {"text": "x" * 100}
        obj = {"t": "send", "id": "c-1", "to": "bob", "body": body}
        # the frame's size, when the transport measured it
        self.assertEqual(parse_frame(obj, LIMITS, 140).size, 140)
        # else the body's, measured for the max_body check, in the encoding it came in
        self.assertEqual(parse_frame(obj, LIMITS).size, len(encode_cbor(body)))
        self.assertEqual(parse_frame(obj, LIMITS, text=True).size, len(encode_json(body).encode()))
        # the size takes no part in comparisons
        self.assertEqual(parse_frame(obj, LIMITS, 140), Send("c-1", "bob", None, body))

    def test_exactly_one_of_to_and_room(self) -> None:
        both = {"t": "send", "id": "c-1", "to": "bob", "room": "r", "body": 1}
        self.assertEqual(self.assertBad(both).ref, "c-1")
        self.assertEqual(self.assertBad({"t": "send", "id": "c-1", "body": 1}).ref, "c-1")
        null_to = {"t": "send", "id": "c-1", "to": None, "room": "r", "body": 1}
        self.assertEqual(parse_frame(null_to, LIMITS).room, "r")

    def test_id(self) -> None:
        base = {"t": "send", "to": "bob", "body": 1}
        self.assertIsNone(self.assertBad(base).ref)
        for id_ in ("", 17, None, ["c-1"], "x" * 65, "é" * 33):
            self.assertIsNone(self.assertBad({**base, "id": id_}).ref)
        self.assertEqual(parse_frame({**base, "id": "x" * 64}, LIMITS).id, "x" * 64)
        self.assertEqual(parse_frame({**base, "id": "é" * 32}, LIMITS).id, "é" * 32)

    def test_recipient_names(self) -> None:
        for to in ("", "a/b", "tab\there", "x" * 129, 5, "\u0085"):
            self.assertEqual(self.assertBad({"t": "send", "id": "i", "to": to, "body": 1}).ref, "i")
        for room in ("", "x" * 129, "\x1b[31m", 7):
            error = self.assertBad({"t": "send", "id": "i", "room": room, "body": 1})
            self.assertEqual(error.ref, "i")
        self.assertEqual(
            parse_frame({"t": "send", "id": "i", "room": "a/b", "body": 1}, LIMITS).room, "a/b"
        )

    def test_body_is_required(self) -> None:
        error = self.assertBad({"t": "send", "id": "c-9", "to": "bob"})
        self.assertEqual(error.reason, "send: missing body")
        self.assertEqual(error.ref, "c-9")

    def test_body_size_in_cbor(self) -> None:
        limits = Limits(max_body=100)
        fits = "x" * 98  # encodes as 0x78 0x62 + 98 bytes = 100 bytes
        self.assertEqual(len(encode_cbor(fits)), 100)
        frame = {"t": "send", "id": "c-1", "to": "bob", "body": fits}
        self.assertEqual(parse_frame(frame, limits).body, fits)
        self.assertEqual(parse_frame(frame, limits, size=200).body, fits)
        frame["body"] = fits + "x"
        for size in (None, 200):
            error = self.assertBad(frame, limits, code=413, size=size)
            self.assertEqual(error.ref, "c-1")

    def test_body_size_in_json(self) -> None:
        limits = Limits(max_body=100)
        fits = "é" * 49  # '"' + 98 bytes + '"' = 100 bytes of JSON
        self.assertEqual(len(encode_json(fits).encode()), 100)
        frame = {"t": "send", "id": "c-1", "room": "r", "body": fits}
        self.assertEqual(parse_frame(frame, limits, size=300, text=True).body, fits)
        frame["body"] = fits + "x"
        self.assertEqual(self.assertBad(frame, limits, code=413, text=True).ref, "c-1")

    def test_body_measured_in_its_own_encoding(self) -> None:
        limits = Limits(max_body=100)
        quotes = '"' * 60  # 62 bytes of CBOR, 122 of JSON (each quote escaped)
        frame = {"t": "send", "id": "c-1", "to": "bob", "body": quotes}
        self.assertEqual(parse_frame(frame, limits, size=150).body, quotes)
        self.assertBad(frame, limits, code=413, size=150, text=True)

    def test_bytes_body_size(self) -> None:
        limits = Limits(max_body=100)
        frame = {"t": "send", "id": "c-1", "to": "bob", "body": b"\x00" * 60}
        # 62 bytes of CBOR; as JSON {"$bytes":"<80 base64 chars>"} is 93 bytes.
        self.assertEqual(parse_frame(frame, limits).body, b"\x00" * 60)
        self.assertEqual(parse_frame(frame, limits, text=True).body, b"\x00" * 60)
        frame["body"] = b"\x00" * 72  # 74 bytes of CBOR, 109 of JSON
        self.assertEqual(parse_frame(frame, limits).body, b"\x00" * 72)
        self.assertBad(frame, limits, code=413, text=True)

    def test_small_message_is_not_measured_again(self) -> None:
        # A message within max_body bytes cannot hold a larger body: no re-encoding.
        unencodable = object()
        frame = {"t": "send", "id": "c-1", "to": "bob", "body": unencodable}
        self.assertIs(parse_frame(frame, LIMITS, size=LIMITS.max_body).body, unencodable)


class SmallFrameTests(FrameTestCase):
    def test_ack(self) -> None:
        self.assertEqual(parse_frame({"t": "ack", "seq": 0}, LIMITS), Ack(0))
        self.assertEqual(parse_frame({"t": "ack", "seq": 2**64 - 1}, LIMITS), Ack(2**64 - 1))
        for seq in (-1, True, False, "1", 1.0, None, [1]):
            self.assertBad({"t": "ack", "seq": seq})
        self.assertBad({"t": "ack"})

    def test_join_and_leave(self) -> None:
        for t in ("join", "leave"):
            self.assertEqual(parse_frame({"t": t, "room": "r" * 128}, LIMITS).room, "r" * 128)
            for room in ("", "r" * 129, None, 1, ["r"], "a\nb"):
                self.assertBad({"t": t, "room": room})
            self.assertBad({"t": t})

    def test_join_and_leave_ids(self) -> None:
        # an id, when given, is what an error answering the frame names as ref
        self.assertEqual(
            parse_frame({"t": "join", "room": "r", "id": "j-1"}, LIMITS), Join("r", "j-1")
        )
        self.assertEqual(parse_frame({"t": "leave", "room": "r", "id": None}, LIMITS), Leave("r"))
        for t in ("join", "leave"):
            self.assertEqual(
                parse_frame({"t": t, "room": "r", "id": "i" * 64}, LIMITS).id, "i" * 64
            )
            for id_ in ("", "i" * 65, 7, ["j"]):
                self.assertBad({"t": t, "room": "r", "id": id_})
            # a bad room names the frame's id
            self.assertEqual(self.assertBad({"t": t, "room": "", "id": "j-2"}).ref, "j-2")

    def test_ping_pong_bye(self) -> None:
        self.assertEqual(parse_frame({"t": "ping"}, LIMITS), Ping())
        self.assertEqual(parse_frame({"t": "pong"}, LIMITS), Pong())
        self.assertEqual(parse_frame({"t": "bye"}, LIMITS), Bye())
        self.assertNotEqual(Ping(), Pong())

    def test_presence(self) -> None:
        for state in ("online", "away", "busy", "offline"):
            frame = parse_frame({"t": "presence", "state": state, "status": "s"}, LIMITS)
            self.assertEqual(frame, PresenceReport(state, "s"))
        self.assertIsNone(parse_frame({"t": "presence", "state": "away"}, LIMITS).status)
        for state in (None, "Away", "invisible", 1, ["busy"]):
            self.assertBad({"t": "presence", "state": state})
        limits = Limits(max_status=4)
        self.assertEqual(
            parse_frame({"t": "presence", "state": "busy", "status": "abcd"}, limits).status, "abcd"
        )
        for status in ("abcde", "ééé", 4, ["a"]):
            self.assertBad({"t": "presence", "state": "busy", "status": status}, limits)

    def test_watch_unwatch_probe(self) -> None:
        limits = Limits(max_watch=3)
        for t, cls in (("watch", Watch), ("unwatch", Unwatch), ("probe", Probe)):
            frame = parse_frame({"t": t, "users": ["a", "b", "c"]}, limits)
            self.assertEqual(frame, cls(("a", "b", "c")))
            self.assertIsInstance(frame.users, tuple)
            self.assertEqual(parse_frame({"t": t, "users": []}, limits), cls(()))
            self.assertIn(
                "more than 3", self.assertBad({"t": t, "users": ["a"] * 4}, limits).reason
            )
            for users in (None, "a", {"a": 1}, ["a", ""], ["a", "b/c"], ["a", 1], ["x" * 129]):
                self.assertBad({"t": t, "users": users}, limits)

    def test_watch_since(self) -> None:
        frame = parse_frame({"t": "watch", "users": ["a"], "since": 1763800000123}, LIMITS)
        self.assertEqual(frame, Watch(("a",), 1763800000123))
        self.assertEqual(parse_frame({"t": "watch", "users": ["a"], "since": 0}, LIMITS).since, 0)
        # null counts as absent: a full answer
        self.assertIsNone(parse_frame({"t": "watch", "users": ["a"], "since": None}, LIMITS).since)
        self.assertIsNone(parse_frame({"t": "watch", "users": ["a"]}, LIMITS).since)
        for since in (-1, 1.5, 1e12, "1763800000123", True, [1], {"ms": 1}):
            error = self.assertBad({"t": "watch", "id": "w1", "users": ["a"], "since": since})
            self.assertEqual(error.reason, "watch: since must be a non-negative integer (ms)")
            self.assertEqual(error.ref, "w1")


class NameTests(SynchronousTestCase):
    def test_valid_user(self) -> None:
        for user in ("alice", "store-0042@acme", "김철수", "😀", "a b", "x" * 128, "é" * 64):
            self.assertTrue(valid_user(user, LIMITS), user)
        for user in ("", "a/b", "x" * 129, "é" * 65, "a\x00", "\x1f", "\x7f", "\x80", "\x9f"):
            self.assertFalse(valid_user(user, LIMITS), repr(user))
        for user in ("\ud800", "é\udfff", None, 5, b"alice", ["alice"]):
            self.assertFalse(valid_user(user, LIMITS), repr(user))

    def test_valid_user_default_limits(self) -> None:
        self.assertTrue(valid_user("x" * 128))
        self.assertFalse(valid_user("x" * 129))
        self.assertTrue(valid_user("x" * 200, Limits(max_user=200)))

    def test_valid_device(self) -> None:
        self.assertTrue(valid_device("web-3f2a", LIMITS))
        self.assertTrue(valid_device("d" * 64, LIMITS))
        for device in ("", "d" * 65, "a/b", "\n"):
            self.assertFalse(valid_device(device, LIMITS))

    def test_valid_room(self) -> None:
        for room in ("store-42", "a/b", "방", "r" * 128):
            self.assertTrue(valid_room(room, LIMITS), room)
        for room in ("", "r" * 129, "a\tb", "\x85", "\ud800", None):
            self.assertFalse(valid_room(room, LIMITS), repr(room))
