"""Property-based tests: round trips, splicing, and hostile bytes never escaping as crashes."""

from typing import Any

import cbor2
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.wire import (
    BadFrame,
    DecodeError,
    FrameSplitter,
    Limits,
    MessageTemplate,
    ProtocolError,
    decode_cbor,
    decode_cbor_batch,
    decode_json,
    encode_cbor,
    encode_json,
    frame_many,
    parse_frame,
)

LIMITS = Limits()
SMALL = Limits(max_frame=4096, max_depth=8)
CHECK = settings(max_examples=150, deadline=None, database=None)

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | st.binary(max_size=16)
)


def _model_ok(value: Any) -> bool:
    """No map whose only key is $bytes: that is reserved, not a plain value."""
    if isinstance(value, dict):
        if list(value) == ["$bytes"]:
            return False
        return all(_model_ok(v) for v in value.values())
    if isinstance(value, list):
        return all(_model_ok(v) for v in value)
    return True


values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
).filter(_model_ok)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


frames = st.builds(
    lambda t, extra, body: {**extra, "t": t, "body": body},
    st.sampled_from(["send", "msg", "x"]),
    st.dictionaries(texts, values, max_size=4),
    values,
)

FIELD_NAMES = [
    *("id", "to", "room", "body", "seq", "users", "state", "status"),
    *("v", "resume", "token", "user", "device", "batch"),
]
JSON_ALPHABET = '{}[]":,0123456789.eE+- tfnrulaNIy\\$bbytes'


class RoundTripProperties(SynchronousTestCase):
    @CHECK
    @given(frames)
    def test_cbor_round_trip(self, frame: dict) -> None:
        assume(depth(frame) <= LIMITS.max_depth)
        self.assertEqual(decode_cbor(encode_cbor(frame), LIMITS), frame)

    @CHECK
    @given(frames)
    def test_json_round_trip(self, frame: dict) -> None:
        assume(depth(frame) <= LIMITS.max_depth)
        text = encode_json(frame)
        self.assertEqual(decode_json(text, LIMITS), frame)
        self.assertEqual(decode_json(text.encode("utf-8"), LIMITS), frame)

    @CHECK
    @given(st.lists(frames, min_size=1, max_size=4))
    def test_relay_across_encodings(self, batch: list[dict]) -> None:
        assume(all(depth(f) <= LIMITS.max_depth for f in batch))
        from_cbor = decode_cbor_batch(encode_cbor(batch), LIMITS)
        self.assertEqual(decode_json(encode_json(from_cbor), LIMITS), batch)

    @CHECK
    @given(values)
    def test_depth_limit_is_the_same_in_both_encodings(self, value: Any) -> None:
        frame = {"t": "send", "body": value}
        limits = Limits(max_depth=3)
        allowed = depth(frame) <= limits.max_depth
        for decode, encode in ((decode_cbor, encode_cbor), (decode_json, encode_json)):
            try:
                decoded = decode(encode(frame), limits)
            except DecodeError:
                self.assertFalse(allowed, decode.__name__)
            else:
                self.assertTrue(allowed, decode.__name__)
                self.assertEqual(decoded, frame)


class SpliceProperties(SynchronousTestCase):
    @CHECK
    @given(
        st.dictionaries(texts.filter(lambda k: k not in ("t", "seq")), values, max_size=6),
        st.integers(0, 2**70),
    )
    def test_message_template_equals_plain_encoding(self, fields: dict, seq: int) -> None:
        template = MessageTemplate(fields)
        frame = {"t": "msg", "seq": seq, **fields}
        self.assertEqual(template.cbor(seq), cbor2.dumps(frame))
        self.assertEqual(template.json(seq), encode_json(frame))
        self.assertEqual(template.cbor(seq + 1), cbor2.dumps({**frame, "seq": seq + 1}))


class HostileInputProperties(SynchronousTestCase):
    def _only_protocol_errors(self, decode: Any, data: Any, limits: Limits = LIMITS) -> None:
        try:
            result = decode(data, limits)
        except ProtocolError:
            return
        self.assertIsInstance(result, (dict, list))

    @CHECK
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data: bytes) -> None:
        for decode in (decode_cbor, decode_cbor_batch, decode_json):
            self._only_protocol_errors(decode, data)
            self._only_protocol_errors(decode, data, SMALL)

    @CHECK
    @given(frames, st.data())
    def test_mutated_cbor(self, frame: dict, data: st.DataObject) -> None:
        encoded = bytearray(encode_cbor(frame))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(encoded)))
            action = data.draw(st.sampled_from(["set", "insert", "delete"]))
            byte = data.draw(st.integers(0, 255))
            if action == "set" and i < len(encoded):
                encoded[i] = byte
            elif action == "insert":
                encoded.insert(i, byte)
            elif i < len(encoded):
                del encoded[i]
        for decode in (decode_cbor, decode_cbor_batch):
            self._only_protocol_errors(decode, bytes(encoded))
            self._only_protocol_errors(decode, bytes(encoded), SMALL)

    @CHECK
    @given(st.text(JSON_ALPHABET, max_size=80))
    def test_json_like_text(self, text: str) -> None:
        self._only_protocol_errors(decode_json, text)
        self._only_protocol_errors(decode_json, text.encode(), SMALL)

    @CHECK
    @given(st.text(st.characters(blacklist_categories=()), max_size=40))
    def test_any_text_even_with_surrogates(self, text: str) -> None:
        self._only_protocol_errors(decode_json, text)

    @CHECK
    @given(st.lists(st.binary(max_size=64), max_size=8))
    def test_random_stream_into_splitter(self, chunks: list[bytes]) -> None:
        splitter = FrameSplitter(100)
        try:
            for chunk in chunks:
                for payload in splitter.feed(chunk):
                    self.assertTrue(0 < len(payload) <= 100)
        except ProtocolError as e:
            self.assertTrue(e.fatal)

    @CHECK
    @given(st.lists(st.binary(min_size=1, max_size=50), max_size=10), st.data())
    def test_splitter_reassembles_any_chunking(self, payloads: list[bytes], data: Any) -> None:
        stream = frame_many(payloads)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
        splitter = FrameSplitter(50)
        out: list[bytes] = []
        for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            out.extend(splitter.feed(stream[start:stop]))
        self.assertEqual(out, payloads)
        self.assertEqual(splitter.buffered, 0)

    @CHECK
    @given(
        st.sampled_from(
            ["hello", "send", "ack", "join", "leave", "ping", "presence", "watch", "probe"]
        ),
        st.dictionaries(
            st.sampled_from(FIELD_NAMES),
            values,
            max_size=6,
        ),
    )
    def test_parse_frame_only_raises_bad_frame(self, t: str, fields: dict) -> None:
        try:
            parse_frame({**fields, "t": t}, LIMITS)
        except BadFrame as e:
            self.assertFalse(e.fatal)
            self.assertIn(e.code, (400, 413))
