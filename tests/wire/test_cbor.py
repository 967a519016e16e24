"""decode_cbor and decode_cbor_batch: the value rules of doc/protocol.md section 1 for CBOR."""

import sys
import threading
import time

import cbor2
from cbor2 import CBORTag
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.wire import (
    BadFrame,
    DecodeError,
    FrameTooLarge,
    Limits,
    decode_cbor,
    decode_cbor_batch,
    encode_cbor,
)

LIMITS = Limits()
KEY_A = b"\x61a"  # the text string "a"


def nested_lists(n: int, inner: bytes = b"\x00") -> bytes:
    """A frame map {"a": [[...[inner]...]]} with n nested one-element arrays."""
    return b"\xa1" + KEY_A + b"\x81" * n + inner


def nested_maps(n: int) -> bytes:
    """n nested maps {"a": {"a": ... 0}}: n levels, the outer one being the frame."""
    return (b"\xa1" + KEY_A) * n + b"\x00"


def with_body(body: bytes, frame_id: str = "c-1") -> bytes:
    """A send frame whose body is the raw CBOR item ``body``."""
    head = b"\xa4" + cbor2.dumps("t") + cbor2.dumps("send") + cbor2.dumps("id")
    head += cbor2.dumps(frame_id) + cbor2.dumps("to") + cbor2.dumps("bob")
    return head + cbor2.dumps("body") + body


def colliding_tuples(n: int) -> list[tuple[int, int]]:
    """n pairs of ints that CPython 3.11's tuple hash (xxHash-like) maps to one value."""
    mask = (1 << 64) - 1
    p1, p2, p5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
    modulus = (1 << 61) - 1  # hash(i) == i for 0 <= i < modulus

    def rotl(x: int) -> int:
        return ((x << 31) | (x >> 33)) & mask

    def rotr(x: int) -> int:
        return ((x >> 31) | (x << 33)) & mask

    wanted = rotr(12345 * pow(p1, -1, 1 << 64) & mask)
    pairs = []
    a = 1
    while len(pairs) < n:
        after_a = rotl((p5 + a * p2) & mask) * p1 & mask
        b = (wanted - after_a) * pow(p2, -1, 1 << 64) & mask
        if 1 < b < modulus:
            pairs.append((a, b))
        a += 1
    return pairs


class CBORTestCase(SynchronousTestCase):
    def assertBadFrame(self, payload: bytes, limits: Limits = LIMITS) -> BadFrame:
        with self.assertRaises(BadFrame) as caught:
            decode_cbor(payload, limits)
        self.assertEqual(caught.exception.code, 400)
        self.assertFalse(caught.exception.fatal)
        return caught.exception

    def assertDecodeError(self, payload: bytes, limits: Limits = LIMITS) -> DecodeError:
        with self.assertRaises(DecodeError) as caught:
            decode_cbor(payload, limits)
        self.assertEqual(caught.exception.code, 400)
        self.assertTrue(caught.exception.fatal)
        return caught.exception


class DecodeTests(CBORTestCase):
    def test_typical_send(self) -> None:
        frame = {"t": "send", "id": "c-17", "to": "bob", "body": {"text": "hi", "n": [1, 2.5]}}
        self.assertEqual(decode_cbor(cbor2.dumps(frame), LIMITS), frame)

    def test_value_model(self) -> None:
        frame = {
            "s": "é€😀",
            "b": b"\x00\xff",
            "i": [0, -1, 2**64 - 1, -(2**64)],
            "f": [0.5, -0.0, 1e300],
            "k": [True, False, None],
            "m": {"$bytes": "x", "other": 1},
            "e": {},
        }
        decoded = decode_cbor(cbor2.dumps(frame), LIMITS)
        self.assertEqual(decoded, frame)
        self.assertIs(type(decoded["b"]), bytes)

    def test_half_and_single_precision_floats(self) -> None:
        self.assertEqual(decode_cbor(b"\xa1" + KEY_A + b"\xf9\x3e\x00", LIMITS), {"a": 1.5})
        self.assertEqual(decode_cbor(b"\xa1" + KEY_A + b"\xfa\x3f\xc0\x00\x00", LIMITS), {"a": 1.5})

    def test_bytes_like_payload(self) -> None:
        payload = cbor2.dumps({"t": "ping"})
        self.assertEqual(decode_cbor(bytearray(payload), LIMITS), {"t": "ping"})
        self.assertEqual(decode_cbor(memoryview(payload), LIMITS), {"t": "ping"})

    def test_empty_payload(self) -> None:
        self.assertDecodeError(b"")

    def test_undecodable(self) -> None:
        for payload in (b"\xff", b"\x1c", b"\xa1\x61", b"\xa1" + KEY_A, b"\x5b" + b"\xff" * 8):
            self.assertDecodeError(payload)

    def test_huge_declared_lengths_fail_fast(self) -> None:
        for head in (b"\x9b", b"\xbb", b"\x5b", b"\x7b"):
            started = time.perf_counter()
            self.assertDecodeError(b"\xa1" + KEY_A + head + b"\xff" * 8)
            self.assertLess(time.perf_counter() - started, 0.5)

    def test_invalid_utf8(self) -> None:
        self.assertDecodeError(b"\xa1" + KEY_A + b"\x62\xff\xfe")
        # An encoded surrogate is not UTF-8 either.
        self.assertDecodeError(b"\xa1" + KEY_A + b"\x63\xed\xa0\x80")

    def test_trailing_bytes(self) -> None:
        payload = cbor2.dumps({"t": "ping"})
        self.assertDecodeError(payload + b"\x00")
        self.assertDecodeError(payload + payload)
        self.assertEqual(decode_cbor(payload, LIMITS), {"t": "ping"})

    def test_indefinite_lengths(self) -> None:
        for item in (
            b"\x9f\x00\xff",
            b"\xbf" + KEY_A + b"\x00\xff",
            b"\x5f\x41a\xff",
            b"\x7f\x61a\xff",
        ):
            error = self.assertDecodeError(b"\xa1" + KEY_A + item)
            self.assertIn("indefinite", error.reason)
        self.assertDecodeError(b"\xbf" + KEY_A + b"\x00\xff")

    def test_not_a_map(self) -> None:
        for value in ([{"t": "ping"}], 1, "ping", None, b"x"):
            error = self.assertBadFrame(cbor2.dumps(value))
            self.assertEqual(error.reason, "frame is not a map")

    def test_frame_size(self) -> None:
        limits = Limits(max_frame=20)
        exact = cbor2.dumps({"a": "x" * 16})
        self.assertEqual(len(exact), 20)
        self.assertEqual(decode_cbor(exact, limits), {"a": "x" * 16})
        with self.assertRaises(FrameTooLarge) as caught:
            decode_cbor(cbor2.dumps({"a": "x" * 17}), limits)
        self.assertTrue(caught.exception.fatal)
        self.assertEqual(caught.exception.code, 413)

    def test_decoder_recovers_after_errors(self) -> None:
        good = cbor2.dumps({"t": "ping"})
        bad_ones = (
            b"\xa1" + KEY_A,
            good + b"\x00",
            cbor2.dumps({"a": CBORTag(1, 0)}),
            # Errors with bytes left over, which must not leak into the next decode:
            cbor2.dumps({"a": CBORTag(1, 0), "b": "x" * 50}),
            b"\xa3" + KEY_A + b"\x00" + KEY_A + b"\x01\x61b\x02",
            b"\xa2\x01\x00" + KEY_A + b"\x00",
            b"\xa2" + KEY_A + b"\xff\x61b\x00",
        )
        for bad in bad_ones:
            with self.assertRaises((DecodeError, BadFrame)):
                decode_cbor(bad, LIMITS)
            self.assertEqual(decode_cbor(good, LIMITS), {"t": "ping"})

    def test_threads_do_not_share_a_decoder(self) -> None:
        payloads = [cbor2.dumps({"n": i, "pad": "x" * (i % 50)}) for i in range(64)]
        failures: list[object] = []

        def work(offset: int) -> None:
            for round_ in range(300):
                i = (offset + round_) % len(payloads)
                if decode_cbor(payloads[i], LIMITS)["n"] != i:
                    failures.append(i)

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(interval)
        self.assertEqual(failures, [])


class DepthTests(CBORTestCase):
    def test_cbor2_counts_the_frame_map_as_level_one(self) -> None:
        # map + 31 arrays = 32 levels: allowed; map + 32 arrays = 33 levels: refused.
        value = decode_cbor(nested_lists(31), LIMITS)["a"]
        depth = 1
        while isinstance(value, list):
            value = value[0]
            depth += 1
        self.assertEqual(depth, 32)
        error = self.assertDecodeError(nested_lists(32))
        self.assertEqual(error.reason, "nested deeper than 32 levels")

    def test_nested_maps_boundary(self) -> None:
        self.assertIsInstance(decode_cbor(nested_maps(32), LIMITS), dict)
        self.assertDecodeError(nested_maps(33))

    def test_empty_containers_count(self) -> None:
        # cbor2's max_depth only counts containers holding items; an empty
        # one at level 33 must be refused all the same.
        for empty in (b"\x80", b"\xa0"):
            self.assertIsInstance(decode_cbor(nested_lists(30, empty), LIMITS), dict)
            self.assertDecodeError(nested_lists(31, empty))
            self.assertDecodeError(b"\xa2\x61b\x00" + nested_lists(31, empty)[1:])
            self.assertIsInstance(decode_cbor(nested_maps(31)[:-1] + empty, LIMITS), dict)
            self.assertDecodeError(nested_maps(32)[:-1] + empty)

    def test_empty_container_too_deep_after_a_bad_value(self) -> None:
        # {"b": undefined, "a": [[...[]...]]}: the structural problem wins.
        self.assertDecodeError(b"\xa2\x61b\xf7" + nested_lists(31, b"\x80")[1:])
        self.assertDecodeError(b"\xa2\x61b\xc1\x00" + nested_lists(31, b"\x80")[1:])
        self.assertBadFrame(b"\xa2\x61b\xf7" + nested_lists(30, b"\x80")[1:])

    def test_configured_depth(self) -> None:
        limits = Limits(max_depth=5)
        decode_cbor(nested_lists(4), limits)
        self.assertDecodeError(nested_lists(5), limits)

    def test_very_deep_fails_fast(self) -> None:
        for n in (5_000, 100_000):
            for payload in (nested_lists(n), nested_maps(n), b"\x81" * n + b"\x00"):
                started = time.perf_counter()
                self.assertDecodeError(payload)
                self.assertLess(time.perf_counter() - started, 0.5)

    def test_deep_and_otherwise_bad_is_a_decode_error(self) -> None:
        # A tag early in the frame does not hide undecodable nesting later on.
        payload = b"\xa2" + KEY_A + b"\xc1\x00" + b"\x61b" + b"\x81" * 40 + b"\x00"
        self.assertDecodeError(payload)


class TagTests(CBORTestCase):
    TAGS = {
        0: "2013-03-21T20:04:00Z",
        1: 1363896240,
        2: b"\x01\x00",
        3: b"\x01\x00",
        4: [-2, 27315],
        5: [-1, 3],
        25: 0,
        28: [1, 2],
        29: 0,
        30: [1, 3],
        35: "^a+$",
        36: "Content-Type: text/plain\n\nhi",
        37: b"\x00" * 16,
        52: b"\x7f\x00\x00\x01",
        54: b"\x00" * 16,
        100: 1,
        256: ["abc"],
        258: [1, 2],
        260: b"\x7f\x00\x00\x01",
        261: {b"\x7f\x00\x00\x01": 8},
        1004: "2024-01-01",
        43000: [1.0, 2.0],
        55799: {"t": "ping"},
        99: "unknown",
        2**64 - 1: 0,
    }

    def test_every_tag_is_a_bad_frame(self) -> None:
        for tag, value in self.TAGS.items():
            error = self.assertBadFrame(with_body(cbor2.dumps(CBORTag(tag, value))))
            self.assertEqual(error.reason, f"CBOR tag {tag} is not allowed")
            self.assertEqual(error.ref, "c-1")

    def test_tag_at_top_level(self) -> None:
        self.assertBadFrame(cbor2.dumps(CBORTag(55799, {"t": "ping"})))
        self.assertBadFrame(cbor2.dumps(CBORTag(1, 0)))

    def test_shared_references(self) -> None:
        # [28([1]), 29(0)]: the second element would alias the first.
        self.assertBadFrame(with_body(b"\x82\xd8\x1c\x81\x01\xd8\x1d\x00"))

    def test_tag_followed_by_bad_bytes_is_a_decode_error(self) -> None:
        self.assertDecodeError(with_body(cbor2.dumps(CBORTag(1, 0))) + b"\x00")
        self.assertDecodeError(b"\xa2" + KEY_A + b"\xc1\x00" + b"\x61b")


class ValueRuleTests(CBORTestCase):
    def test_duplicate_keys(self) -> None:
        error = self.assertBadFrame(b"\xa2" + KEY_A + b"\x00" + KEY_A + b"\x01")
        self.assertEqual(error.reason, "duplicate map key")
        self.assertBadFrame(with_body(b"\xa2" + KEY_A + b"\x00" + KEY_A + b"\x01"))
        self.assertEqual(decode_cbor(b"\xa2" + KEY_A + b"\x00\x61b\x01", LIMITS), {"a": 0, "b": 1})

    def test_duplicate_key_then_truncated_is_a_decode_error(self) -> None:
        self.assertDecodeError(b"\xa3" + KEY_A + b"\x00" + KEY_A + b"\x01")

    def test_non_string_keys(self) -> None:
        keys = [b"\x01", b"\x20", b"\x41a", b"\x81\x00", b"\xa0", b"\xf9\x3e\x00", b"\xf5", b"\xf6"]
        for key in keys:
            error = self.assertBadFrame(b"\xa1" + key + b"\x00")
            self.assertEqual(error.reason, "map keys must be strings")
            self.assertBadFrame(with_body(b"\xa1" + key + b"\x00"))

    def test_colliding_keys_are_refused_before_hashing(self) -> None:
        # Array keys decode as tuples, whose hash is not randomised: 12,000 of
        # them with one hash make building the map quadratic (about a second
        # here, a minute for a 1 MiB frame) unless refused before insertion.
        pairs = colliding_tuples(12_000)
        self.assertEqual(len({hash(pair) for pair in pairs}), 1)
        entries = b"".join(cbor2.dumps(list(pair)) + b"\x00" for pair in pairs)
        payload = b"\xb9" + len(pairs).to_bytes(2, "big") + entries
        started = time.perf_counter()
        self.assertBadFrame(payload)
        self.assertLess(time.perf_counter() - started, 0.5)

    def test_nan_and_infinity(self) -> None:
        floats = [
            b"\xf9\x7e\x00",
            b"\xf9\x7c\x00",
            b"\xf9\xfc\x00",
            b"\xfa\x7f\xc0\x00\x00",
            b"\xfa\x7f\x80\x00\x00",
            b"\xfa\xff\x80\x00\x00",
            b"\xfb\x7f\xf8" + b"\x00" * 6,
            b"\xfb\x7f\xf0" + b"\x00" * 6,
            b"\xfb\xff\xf0" + b"\x00" * 6,
        ]
        for item in floats:
            error = self.assertBadFrame(with_body(item))
            self.assertEqual(error.reason, "NaN and infinity are not allowed")
            self.assertEqual(error.ref, "c-1")
            self.assertBadFrame(with_body(b"\x82\x00" + item))
            self.assertBadFrame(with_body(b"\xa1" + KEY_A + item))

    def test_largest_finite_float(self) -> None:
        payload = with_body(b"\xfb\x7f\xef" + b"\xff" * 6)
        self.assertEqual(decode_cbor(payload, LIMITS)["body"], sys.float_info.max)

    def test_simple_values(self) -> None:
        for item in (b"\xe0", b"\xf0", b"\xf3", b"\xf7", b"\xf8\x20", b"\xf8\xff"):
            self.assertBadFrame(with_body(item))
            self.assertBadFrame(with_body(b"\x81" + item))
        self.assertEqual(
            decode_cbor(with_body(b"\x83\xf4\xf5\xf6"), LIMITS)["body"], [False, True, None]
        )

    def test_reserved_simple_encodings_are_undecodable(self) -> None:
        self.assertDecodeError(with_body(b"\xf8\x10"))
        self.assertDecodeError(with_body(b"\xfc"))

    def test_bytes_map(self) -> None:
        error = self.assertBadFrame(with_body(cbor2.dumps({"$bytes": "aGk="})))
        self.assertEqual(error.reason, "a map whose only key is $bytes is reserved")
        self.assertBadFrame(cbor2.dumps({"$bytes": b"x"}))
        self.assertBadFrame(with_body(cbor2.dumps([1, {"$bytes": "aGk="}])))
        self.assertEqual(
            decode_cbor(with_body(cbor2.dumps({"$bytes": "x", "y": 1})), LIMITS)["body"],
            {"$bytes": "x", "y": 1},
        )

    def test_ref_only_for_a_usable_id(self) -> None:
        self.assertIsNone(self.assertBadFrame(with_body(b"\xf7", "x" * 65)).ref)
        self.assertEqual(self.assertBadFrame(with_body(b"\xf7", "x" * 64)).ref, "x" * 64)


class BatchTests(CBORTestCase):
    def test_single_map(self) -> None:
        self.assertEqual(decode_cbor_batch(cbor2.dumps({"t": "ping"}), LIMITS), {"t": "ping"})
        self.assertEqual(decode_cbor_batch(cbor2.dumps({"t": "ping"})), {"t": "ping"})

    def test_array_of_maps(self) -> None:
        frames = [{"t": "ping"}, {"t": "ack", "seq": 3}]
        self.assertEqual(decode_cbor_batch(cbor2.dumps(frames), LIMITS), frames)
        self.assertEqual(decode_cbor_batch(b"\x80", LIMITS), [])

    def test_array_with_a_non_map(self) -> None:
        with self.assertRaises(BadFrame):
            decode_cbor_batch(cbor2.dumps([{"t": "ping"}, 1]), LIMITS)
        with self.assertRaises(BadFrame):
            decode_cbor_batch(cbor2.dumps("ping"), LIMITS)

    def test_each_frame_keeps_its_own_depth(self) -> None:
        self.assertEqual(len(decode_cbor_batch(b"\x81" + nested_lists(31), LIMITS)), 1)
        with self.assertRaises(DecodeError):
            decode_cbor_batch(b"\x81" + nested_lists(32), LIMITS)
        with self.assertRaises(DecodeError):
            decode_cbor_batch(nested_lists(32), LIMITS)

    def test_value_rules_apply(self) -> None:
        with self.assertRaises(BadFrame):
            decode_cbor_batch(b"\x81" + with_body(b"\xf7"), LIMITS)
        with self.assertRaises(DecodeError):
            decode_cbor_batch(cbor2.dumps([{"t": "ping"}]) + b"\x00", LIMITS)
        with self.assertRaises(DecodeError):
            decode_cbor_batch(b"", LIMITS)

    def test_round_trip_of_encode_cbor(self) -> None:
        frames = [{"t": "msg", "body": b"\x00"}, {"t": "pong"}]
        self.assertEqual(decode_cbor_batch(encode_cbor(frames), LIMITS), frames)
