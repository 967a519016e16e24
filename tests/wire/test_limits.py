"""Limits and ProtocolError: the small value types everything else is built on."""

from dataclasses import FrozenInstanceError, fields

from twisted.trial.unittest import SynchronousTestCase

from o2obroker.wire import (
    DEFAULT_LIMITS,
    BadFrame,
    DecodeError,
    FrameTooLarge,
    Limits,
    ProtocolError,
)
from o2obroker.wire.limits import MAX_DEPTH_CEILING


class LimitsTests(SynchronousTestCase):
    def test_defaults_are_the_protocol_defaults(self) -> None:
        limits = Limits()
        self.assertEqual(limits.max_frame, 1 << 20)
        self.assertEqual(limits.max_body, 64 << 10)
        self.assertEqual(limits.max_user, 128)
        self.assertEqual(limits.max_room, 128)
        self.assertEqual(limits.max_id, 64)
        self.assertEqual(limits.max_device, 64)
        self.assertEqual(limits.max_status, 256)
        self.assertEqual(limits.max_queue, 4 << 20)
        self.assertEqual(limits.max_depth, 32)
        self.assertEqual(limits.max_watch, 1000)
        self.assertEqual(DEFAULT_LIMITS, limits)

    def test_every_field_must_be_positive(self) -> None:
        for f in fields(Limits):
            for bad in (0, -1):
                with self.assertRaises(ValueError, msg=f.name):
                    Limits(**{f.name: bad})
            self.assertEqual(getattr(Limits(**{f.name: 1}), f.name), 1)

    def test_every_field_must_be_an_int(self) -> None:
        for f in fields(Limits):
            for bad in (True, 1.5, "10", None):
                with self.assertRaises(TypeError, msg=f"{f.name}={bad!r}"):
                    Limits(**{f.name: bad})

    def test_max_depth_ceiling(self) -> None:
        self.assertEqual(Limits(max_depth=MAX_DEPTH_CEILING).max_depth, MAX_DEPTH_CEILING)
        with self.assertRaises(ValueError):
            Limits(max_depth=MAX_DEPTH_CEILING + 1)

    def test_max_frame_fits_the_length_prefix(self) -> None:
        self.assertEqual(Limits(max_frame=0xFFFFFFFF).max_frame, 0xFFFFFFFF)
        with self.assertRaises(ValueError):
            Limits(max_frame=0x100000000)

    def test_frozen_and_slotted(self) -> None:
        limits = Limits()
        with self.assertRaises(FrozenInstanceError):
            limits.max_frame = 5  # type: ignore[misc]
        self.assertFalse(hasattr(limits, "__dict__"))
        self.assertEqual(hash(limits), hash(Limits()))


class ProtocolErrorTests(SynchronousTestCase):
    def test_frame_without_ref(self) -> None:
        error = ProtocolError(404, "no such room")
        self.assertEqual(error.frame(), {"t": "error", "code": 404, "reason": "no such room"})
        self.assertFalse(error.fatal)
        self.assertEqual(str(error), "no such room")

    def test_frame_with_ref(self) -> None:
        error = ProtocolError(409, "replaced", ref="c-1", fatal=True)
        self.assertEqual(
            error.frame(), {"t": "error", "code": 409, "reason": "replaced", "ref": "c-1"}
        )
        self.assertTrue(error.fatal)

    def test_decode_error_is_fatal_400(self) -> None:
        error = DecodeError("not valid CBOR")
        self.assertIsInstance(error, ProtocolError)
        self.assertEqual((error.code, error.fatal, error.ref), (400, True, None))
        self.assertEqual(error.reason, "not valid CBOR")

    def test_bad_frame_is_kept_400_by_default(self) -> None:
        error = BadFrame("send: missing body", "c-9")
        self.assertIsInstance(error, ProtocolError)
        self.assertEqual((error.code, error.fatal, error.ref), (400, False, "c-9"))
        self.assertEqual(BadFrame("too big", code=413).code, 413)
        self.assertEqual(BadFrame("not yours", code=403).frame()["code"], 403)

    def test_frame_too_large_is_fatal_413(self) -> None:
        error = FrameTooLarge()
        self.assertIsInstance(error, ProtocolError)
        self.assertEqual((error.code, error.fatal), (413, True))
        self.assertEqual(error.frame()["t"], "error")

    def test_repr_names_the_fields(self) -> None:
        self.assertEqual(
            repr(BadFrame("x", "r")), "BadFrame(code=400, reason='x', ref='r', fatal=False)"
        )
