"""decode_json and encode_json: the value rules of doc/protocol.md section 1 for JSON."""

import json
import time

import cbor2
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.wire import (
    BadFrame,
    DecodeError,
    FrameTooLarge,
    Limits,
    decode_cbor,
    decode_json,
    encode_cbor,
    encode_json,
)

LIMITS = Limits()


def nested(n: int, inner: str = "0") -> str:
    """A frame {"a": [[...inner...]]} with n nested arrays."""
    return '{"a":' + "[" * n + inner + "]" * n + "}"


class JSONTestCase(SynchronousTestCase):
    def assertBadFrame(self, text: str | bytes, limits: Limits = LIMITS) -> BadFrame:
        with self.assertRaises(BadFrame) as caught:
            decode_json(text, limits)
        self.assertEqual(caught.exception.code, 400)
        self.assertFalse(caught.exception.fatal)
        return caught.exception

    def assertDecodeError(self, text: str | bytes, limits: Limits = LIMITS) -> DecodeError:
        with self.assertRaises(DecodeError) as caught:
            decode_json(text, limits)
        self.assertEqual(caught.exception.code, 400)
        self.assertTrue(caught.exception.fatal)
        return caught.exception


class DecodeTests(JSONTestCase):
    def test_typical_send(self) -> None:
        text = '{"t":"send","id":"c-17","to":"bob","body":{"text":"hi","n":[1,2.5]}}'
        expected = {"t": "send", "id": "c-17", "to": "bob", "body": {"text": "hi", "n": [1, 2.5]}}
        self.assertEqual(decode_json(text, LIMITS), expected)
        self.assertEqual(decode_json(text.encode(), LIMITS), expected)
        self.assertEqual(decode_json(bytearray(text.encode()), LIMITS), expected)
        self.assertEqual(decode_json(memoryview(text.encode()), LIMITS), expected)

    def test_whitespace_around(self) -> None:
        self.assertEqual(decode_json(' \r\n\t{"t" : "ping"} \n', LIMITS), {"t": "ping"})

    def test_empty_and_blank(self) -> None:
        for text in ("", b"", "   ", b"\n"):
            self.assertDecodeError(text)

    def test_not_json(self) -> None:
        for text in ("{", "hello", "{'t': 'ping'}", '{"a":1,}', "\ufeff{}", '{"a":"\n"}'):
            self.assertDecodeError(text)

    def test_trailing_data(self) -> None:
        self.assertDecodeError('{"t":"ping"} x')
        self.assertDecodeError('{"t":"ping"}{"t":"ping"}')

    def test_not_utf8(self) -> None:
        self.assertDecodeError(b'{"a":"\xff"}')
        self.assertDecodeError(b'{"a":"\xed\xa0\x80"}')  # an encoded surrogate
        self.assertDecodeError(b'{"a":"\xc3"}')  # truncated sequence
        self.assertEqual(decode_json('{"a":"é€😀"}'.encode(), LIMITS), {"a": "é€😀"})

    def test_str_with_a_lone_surrogate(self) -> None:
        self.assertDecodeError('{"a":"\ud800"}')

    def test_escaped_lone_surrogate(self) -> None:
        for escape in ("\\ud800", "\\uDFFF", "\\udbff x", "\\ude00\\ud83d"):
            error = self.assertBadFrame('{"id":"c-1","a":"' + escape + '"}')
            self.assertEqual(error.ref, "c-1")
        self.assertBadFrame('{"\\ud800":1}')
        self.assertEqual(decode_json('{"a":"\\ud83d\\ude00"}', LIMITS), {"a": "😀"})
        # An escaped backslash followed by "ud800" is plain text.
        self.assertEqual(decode_json('{"a":"\\\\ud800"}', LIMITS), {"a": "\\ud800"})

    def test_not_a_map(self) -> None:
        for text in ("1", '"ping"', "null", "true"):
            self.assertEqual(self.assertBadFrame(text).reason, "frame is not a map")

    def test_frame_size(self) -> None:
        limits = Limits(max_frame=20)
        exact = '{"a":"' + "x" * 12 + '"}'
        self.assertEqual(len(exact), 20)
        self.assertEqual(decode_json(exact, limits), {"a": "x" * 12})
        self.assertEqual(decode_json(exact.encode(), limits), {"a": "x" * 12})
        for too_big in ('{"a":"' + "x" * 13 + '"}', '{"a":"' + "é" * 7 + '"}'):
            for form in (too_big, too_big.encode()):
                with self.assertRaises(FrameTooLarge) as caught:
                    decode_json(form, limits)
                self.assertTrue(caught.exception.fatal)


class BatchTests(JSONTestCase):
    def test_array_of_maps(self) -> None:
        self.assertEqual(
            decode_json('[{"t":"ping"},{"t":"ack","seq":1}]', LIMITS),
            [{"t": "ping"}, {"t": "ack", "seq": 1}],
        )
        self.assertEqual(decode_json("[]", LIMITS), [])

    def test_array_with_a_non_map(self) -> None:
        self.assertEqual(
            self.assertBadFrame('[{"t":"ping"},1]').reason, "a batch must hold only maps"
        )
        self.assertBadFrame("[[]]")

    def test_each_frame_keeps_its_own_depth(self) -> None:
        self.assertEqual(len(decode_json("[" + nested(31) + "]", LIMITS)), 1)
        self.assertDecodeError("[" + nested(32) + "]")
        self.assertDecodeError(" [" + nested(32) + "]")


class DepthTests(JSONTestCase):
    def test_boundary(self) -> None:
        self.assertIsInstance(decode_json(nested(31), LIMITS), dict)
        self.assertEqual(self.assertDecodeError(nested(32)).reason, "nested deeper than 32 levels")
        self.assertIsInstance(decode_json('{"a":' * 32 + "0" + "}" * 32, LIMITS), dict)
        self.assertDecodeError('{"a":' * 33 + "1" + "}" * 33)

    def test_empty_containers_count(self) -> None:
        self.assertIsInstance(decode_json(nested(31, ""), LIMITS), dict)
        self.assertDecodeError(nested(31, "[]"))
        self.assertDecodeError(nested(31, "{}"))

    def test_configured_depth(self) -> None:
        limits = Limits(max_depth=3)
        decode_json(nested(2), limits)
        self.assertDecodeError(nested(3), limits)

    def test_brackets_in_strings_do_not_count(self) -> None:
        text = '{"a":"' + "[{" * 100 + '","b":["]]]","{"]}'
        self.assertEqual(decode_json(text, LIMITS)["b"], ["]]]", "{"])

    def test_wide_but_shallow(self) -> None:
        text = '{"items":[' + ",".join(['{"sku":"a","q":[1]}'] * 200) + "]}"
        self.assertEqual(len(decode_json(text, LIMITS)["items"]), 200)

    def test_deep_in_one_of_many_branches(self) -> None:
        text = '{"x":[' + "[]," * 50 + nested(31)[5:-1] + "]}"
        self.assertDecodeError(text)

    def test_bytes_maps_are_scalars(self) -> None:
        # 31 arrays inside the frame map, then a byte string: 32 levels.
        value = decode_json(nested(31, '{"$bytes":"AA=="}'), LIMITS)
        inner = value["a"]
        for _ in range(30):
            inner = inner[0]
        self.assertEqual(inner, [b"\x00"])
        # The same value as CBOR is accepted too.
        self.assertEqual(decode_cbor(encode_cbor(value), LIMITS), value)

    def test_very_deep_fails_fast(self) -> None:
        for n in (5_000, 100_000):
            for text in (nested(n), "[" * n, '{"a":' * n + "1" + "}" * n, "[" * n + "]" * n):
                started = time.perf_counter()
                self.assertDecodeError(text)
                self.assertLess(time.perf_counter() - started, 0.5)


class ValueRuleTests(JSONTestCase):
    def test_bytes(self) -> None:
        value = decode_json('{"body":{"$bytes":"aGk="},"e":{"$bytes":""}}', LIMITS)
        self.assertEqual(value, {"body": b"hi", "e": b""})
        self.assertIs(type(value["body"]), bytes)
        self.assertEqual(decode_json('{"a":[{"$bytes":"AP8="}]}', LIMITS), {"a": [b"\x00\xff"]})

    def test_bytes_with_other_keys_is_a_map(self) -> None:
        value = decode_json('{"a":{"$bytes":"!!","b":1}}', LIMITS)
        self.assertEqual(value, {"a": {"$bytes": "!!", "b": 1}})

    def test_bad_base64(self) -> None:
        for encoded in ('"aGk"', '"a!k="', '"aG k="', '"aGk=\\n"', '"-_8="', '"é"', "1", "null"):
            error = self.assertBadFrame('{"id":"c-1","body":{"$bytes":' + encoded + "}}")
            self.assertEqual(error.ref, "c-1")
            self.assertIn("$bytes", error.reason)

    def test_nan_and_infinity_literals(self) -> None:
        for literal in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400"):
            error = self.assertBadFrame('{"id":"c-2","a":[' + literal + "]}")
            self.assertEqual(error.reason, "NaN and infinity are not allowed")
            self.assertEqual(error.ref, "c-2")
        self.assertEqual(
            decode_json('{"a":1.7976931348623157e308}', LIMITS)["a"], 1.7976931348623157e308
        )

    def test_nan_in_bad_json_is_a_decode_error(self) -> None:
        self.assertDecodeError('{"a":NaN,')
        self.assertDecodeError('{"a":NaN} x')
        self.assertDecodeError('{"a":NaN,"b":' + "[" * 40 + "]" * 40 + "}")

    def test_duplicate_keys(self) -> None:
        self.assertEqual(self.assertBadFrame('{"a":1,"a":2}').reason, "duplicate map key")
        self.assertBadFrame('{"a":{"b":1,"b":1}}')
        self.assertBadFrame('[{"t":"ping"},{"a":1,"a":1}]')

    def test_integer_range(self) -> None:
        fits = '{"a":[18446744073709551615,-18446744073709551616,9999999999999999999]}'
        self.assertEqual(decode_json(fits, LIMITS)["a"], [2**64 - 1, -(2**64), 9999999999999999999])
        for number in ("18446744073709551616", "-18446744073709551617", "9" * 5000):
            error = self.assertBadFrame('{"a":' + number + "}")
            self.assertEqual(error.reason, "integer out of range")
        # A long run of digits in a string or a float is fine.
        value = decode_json('{"a":"' + "7" * 40 + '","b":0.' + "1" * 40 + "}", LIMITS)
        self.assertEqual(value["a"], "7" * 40)

    def test_json_ints_survive_cbor(self) -> None:
        value = decode_json('{"a":[18446744073709551615,-18446744073709551616]}', LIMITS)
        self.assertEqual(decode_cbor(encode_cbor(value), LIMITS), value)


class EncodeTests(SynchronousTestCase):
    def test_compact_and_not_ascii_escaped(self) -> None:
        self.assertEqual(encode_json({"a": [1, "é"], "b": None}), '{"a":[1,"é"],"b":null}')

    def test_bytes_become_base64(self) -> None:
        self.assertEqual(encode_json({"b": b"\x00\xff"}), '{"b":{"$bytes":"AP8="}}')
        self.assertEqual(encode_json(b"hi"), '{"$bytes":"aGk="}')

    def test_matches_json_dumps(self) -> None:
        value = {"t": "msg", "seq": 1, "x": [True, False, None, 0.1, -5, 'a\u2028"\\']}
        self.assertEqual(
            encode_json(value), json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        )

    def test_refuses_nan_and_foreign_types(self) -> None:
        with self.assertRaises(ValueError):
            encode_json({"a": float("nan")})
        with self.assertRaises(TypeError):
            encode_json({"a": object()})
        with self.assertRaises(TypeError):
            encode_json({"a": bytearray(b"x")})

    def test_round_trips(self) -> None:
        value = {"t": "msg", "body": {"b": b"\x01", "l": [1.5, "x", {"y": None}]}}
        self.assertEqual(decode_json(encode_json(value), LIMITS), value)
        self.assertEqual(decode_cbor(encode_cbor(value), LIMITS), value)
        self.assertEqual(cbor2.loads(encode_cbor(value)), value)
