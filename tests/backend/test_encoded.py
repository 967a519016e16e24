"""EncodedMessage: a stored message that is decoded only when its fields are read."""

from __future__ import annotations

import cbor2
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.backend import EncodedMessage, StoredMessage
from o2obroker.backend import interface as interface_module

FIELDS = {"mid": "m1", "from": "a", "from_device": "p", "to": "b", "body": {"x": [1]}, "ts": 7}


class EncodedMessageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.original = StoredMessage("m1", 7, FIELDS, 40)
        self.blob = self.original.cbor_map()
        self.decoded = 0
        real = cbor2.loads

        def loads(data: bytes) -> object:
            self.decoded += 1
            return real(data)

        self.patch(interface_module.cbor2, "loads", loads)

    def test_a_binary_frame_without_decoding(self) -> None:
        m = EncodedMessage(self.blob)
        self.assertEqual(m.cbor(3), self.original.cbor(3))
        self.assertEqual(m.size, len(self.blob))
        self.assertEqual(self.decoded, 0)

    def test_fields_decoded_once_when_read(self) -> None:
        m = EncodedMessage(self.blob)
        self.assertEqual(m.json(3), self.original.json(3))
        self.assertEqual((m.mid, m.ts, m.fields), ("m1", 7, FIELDS))
        self.assertEqual(m, self.original)
        self.assertEqual(m.frame(3), self.original.frame(3))
        self.assertEqual(self.decoded, 1)

    def test_other_attributes_are_not_decoded_for(self) -> None:
        m = EncodedMessage(self.blob)
        with self.assertRaises(AttributeError):
            m.nothing  # noqa: B018
        self.assertEqual(self.decoded, 0)

    def test_what_is_not_a_map(self) -> None:
        with self.assertRaises(ValueError):
            EncodedMessage(cbor2.dumps(["m1", 7, FIELDS]))
