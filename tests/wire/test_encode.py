"""OutFrame, MessageTemplate and the batch joiners: server frames encoded once."""

import json

import cbor2
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.wire import (
    Limits,
    MessageTemplate,
    OutFrame,
    cbor_array,
    decode_cbor_batch,
    decode_json,
    encode_cbor,
    encode_json,
    json_array,
)
from o2obroker.wire import encode as encode_module

SEQS = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 2**64, 2**70]

FIELDS = {
    "t": "msg",
    "mid": "m-1",
    "from": "alice",
    "from_device": "phone",
    "to": "bob",
    "body": {"text": "hi", "img": b"\x89PNG\x00"},
    "ts": 1763800000123,
}


def plain(seq: int, fields: dict) -> dict:
    rest = {k: v for k, v in fields.items() if k != "t"}
    return {"t": "msg", "seq": seq, **rest}


class OutFrameTests(SynchronousTestCase):
    def test_encodings(self) -> None:
        frame = {"t": "presence", "user": "bob", "state": "online", "status": "", "ts": 1}
        out = OutFrame(frame)
        self.assertIs(out.frame, frame)
        self.assertEqual(out.cbor(), encode_cbor(frame))
        self.assertEqual(out.json(), encode_json(frame))

    def test_each_encoding_made_once_and_only_when_asked(self) -> None:
        cbor_calls: list[object] = []
        json_calls: list[object] = []
        real_cbor, real_json = encode_module.encode_cbor, encode_module.encode_json
        self.patch(encode_module, "encode_cbor", lambda o: cbor_calls.append(o) or real_cbor(o))
        self.patch(encode_module, "encode_json", lambda o: json_calls.append(o) or real_json(o))
        out = OutFrame({"t": "pong"})
        self.assertEqual((cbor_calls, json_calls), ([], []))
        first = out.cbor()
        for _ in range(10):
            self.assertIs(out.cbor(), first)
        self.assertEqual((len(cbor_calls), len(json_calls)), (1, 0))
        text = out.json()
        for _ in range(10):
            self.assertIs(out.json(), text)
        self.assertEqual((len(cbor_calls), len(json_calls)), (1, 1))

    def test_slotted(self) -> None:
        self.assertFalse(hasattr(OutFrame({"t": "pong"}), "__dict__"))


class MessageTemplateTests(SynchronousTestCase):
    def test_equals_plain_encoding_for_every_seq_width(self) -> None:
        template = MessageTemplate(FIELDS)
        for seq in SEQS:
            self.assertEqual(template.cbor(seq), cbor2.dumps(plain(seq, FIELDS)), seq)
            self.assertEqual(template.json(seq), encode_json(plain(seq, FIELDS)), seq)
            self.assertEqual(template.frame(seq), plain(seq, FIELDS))

    def test_room_message_and_fields_without_t(self) -> None:
        fields = {"mid": "m", "from": "a", "from_device": "d", "room": "r", "body": b"", "ts": 5}
        template = MessageTemplate(fields)
        for seq in SEQS:
            self.assertEqual(template.cbor(seq), cbor2.dumps(plain(seq, fields)))
            self.assertEqual(template.json(seq), encode_json(plain(seq, fields)))

    def test_key_order(self) -> None:
        template = MessageTemplate(FIELDS)
        keys = list(json.loads(template.json(7)))
        self.assertEqual(keys, ["t", "seq", "mid", "from", "from_device", "to", "body", "ts"])
        self.assertEqual(list(cbor2.loads(template.cbor(7))), keys)

    def test_map_head_widths(self) -> None:
        # 21, 22 and 253, 254 extra fields: the map head grows where n + 2 crosses 24 and 256.
        for n in (0, 1, 21, 22, 253, 254):
            fields = {f"k{i}": i for i in range(n)}
            template = MessageTemplate(fields)
            for seq in (0, 24, 2**40):
                self.assertEqual(template.cbor(seq), cbor2.dumps(plain(seq, fields)), (n, seq))
                self.assertEqual(template.json(seq), encode_json(plain(seq, fields)), (n, seq))

    def test_decodes_as_a_msg_frame(self) -> None:
        template = MessageTemplate(FIELDS)
        limits = Limits()
        self.assertEqual(decode_json(template.json(42), limits), plain(42, FIELDS))
        self.assertEqual(decode_cbor_batch(template.cbor(42), limits), plain(42, FIELDS))

    def test_body_encoded_once_per_encoding(self) -> None:
        calls: list[object] = []
        real_cbor, real_json = encode_module.encode_cbor, encode_module.encode_json
        self.patch(encode_module, "encode_cbor", lambda o: calls.append(("c", o)) or real_cbor(o))
        self.patch(encode_module, "encode_json", lambda o: calls.append(("j", o)) or real_json(o))
        template = MessageTemplate(FIELDS)
        self.assertEqual(calls, [])
        for seq in range(1, 200):
            template.cbor(seq)
            template.json(seq)
        with_body = [kind for kind, obj in calls if isinstance(obj, dict) and "body" in obj]
        self.assertEqual(sorted(with_body), ["c", "j"])

    def test_seq_must_be_an_int(self) -> None:
        template = MessageTemplate(FIELDS)
        for seq in (True, "1", 1.0, None):
            with self.assertRaises(TypeError):
                template.cbor(seq)  # type: ignore[arg-type]
            with self.assertRaises(TypeError):
                template.json(seq)  # type: ignore[arg-type]

    def test_only_msg_fields(self) -> None:
        with self.assertRaises(ValueError):
            MessageTemplate({"t": "presence", "user": "a"})
        with self.assertRaises(ValueError):
            MessageTemplate({"t": "msg", "seq": 1, "body": 1})

    def test_cbor_map_is_the_fields_and_another_template_splices_from_it(self) -> None:
        calls: list[object] = []
        real = encode_module.encode_cbor
        self.patch(encode_module, "encode_cbor", lambda o: calls.append(o) or real(o))
        for n in (0, 1, 21, 22, 23, 253, 254, 70000):
            fields = {f"k{i}": i for i in range(n)}
            template = MessageTemplate(fields)
            blob = template.cbor_map()
            self.assertEqual(blob, cbor2.dumps(fields), n)
            other = MessageTemplate({})
            other.adopt_cbor_map(blob)
            for seq in (0, 24, 2**40):
                self.assertEqual(other.cbor(seq), cbor2.dumps(plain(seq, fields)), (n, seq))
                self.assertEqual(template.cbor(seq), other.cbor(seq), (n, seq))
            self.assertEqual(template.cbor_map(), blob)
        # one encoding per template, the adopted ones none
        self.assertEqual(len(calls), 8)
        # what is stored is what the frames are spliced from: without the t
        rest = {k: v for k, v in FIELDS.items() if k != "t"}
        self.assertEqual(cbor2.loads(MessageTemplate(FIELDS).cbor_map()), rest)

    def test_adopting_what_is_not_a_map_fails(self) -> None:
        template = MessageTemplate({})
        for bad in (b"", cbor2.dumps([1, 2]), b"\xbf", b"\xb9\x01", cbor2.dumps("x")):
            with self.assertRaises(ValueError, msg=bad):
                template.adopt_cbor_map(bad)

    def test_fields_kept(self) -> None:
        template = MessageTemplate(FIELDS)
        self.assertIs(template.fields, FIELDS)
        self.assertFalse(hasattr(template, "__dict__"))


class ArrayTests(SynchronousTestCase):
    def test_cbor_array(self) -> None:
        for n in (0, 1, 23, 24, 255, 256, 70000):
            frames = [{"t": "ack", "seq": i} for i in range(n)]
            joined = cbor_array([encode_cbor(f) for f in frames])
            self.assertEqual(joined, cbor2.dumps(frames), n)

    def test_cbor_array_of_templates_decodes_as_a_batch(self) -> None:
        template = MessageTemplate(FIELDS)
        joined = cbor_array([template.cbor(1), OutFrame({"t": "pong"}).cbor()])
        self.assertEqual(decode_cbor_batch(joined, Limits()), [plain(1, FIELDS), {"t": "pong"}])

    def test_json_array(self) -> None:
        for n in (0, 1, 3):
            frames = [{"t": "ack", "seq": i, "b": b"\x01"} for i in range(n)]
            joined = json_array([encode_json(f) for f in frames])
            self.assertEqual(joined, encode_json(frames))
            self.assertEqual(decode_json(joined, Limits()), frames)
