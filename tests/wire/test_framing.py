"""FrameSplitter, frame and frame_many: the binary TCP length prefix."""

from itertools import combinations

from twisted.trial.unittest import SynchronousTestCase

from o2obroker.wire import DecodeError, FrameSplitter, FrameTooLarge, frame, frame_many


class FrameTests(SynchronousTestCase):
    def test_frame_prefixes_big_endian_length(self) -> None:
        self.assertEqual(frame(b"abc"), b"\x00\x00\x00\x03abc")
        self.assertEqual(frame(b"x" * 258)[:4], b"\x00\x00\x01\x02")

    def test_frame_refuses_empty_payload(self) -> None:
        with self.assertRaises(ValueError):
            frame(b"")

    def test_frame_many_is_one_bytes_object(self) -> None:
        payloads = [b"a", b"bc", b"def"]
        joined = frame_many(payloads)
        self.assertIsInstance(joined, bytes)
        self.assertEqual(joined, b"".join(frame(p) for p in payloads))
        self.assertEqual(frame_many([]), b"")
        self.assertEqual(frame_many(iter(payloads)), joined)

    def test_frame_many_refuses_empty_payload(self) -> None:
        with self.assertRaises(ValueError):
            frame_many([b"a", b""])


class FrameSplitterTests(SynchronousTestCase):
    def test_one_frame(self) -> None:
        splitter = FrameSplitter(100)
        self.assertEqual(splitter.feed(frame(b"hello")), [b"hello"])
        self.assertEqual(splitter.buffered, 0)

    def test_huge_prefix_refused_before_any_body(self) -> None:
        splitter = FrameSplitter(1 << 20)
        # The 4 prefix bytes alone are enough: nothing of the body is awaited or held.
        with self.assertRaises(FrameTooLarge) as caught:
            splitter.feed(b"\xff\xff\xff\xff")
        self.assertEqual(caught.exception.code, 413)
        self.assertTrue(caught.exception.fatal)
        self.assertEqual(splitter.buffered, 0)

    def test_huge_prefix_with_body_bytes(self) -> None:
        splitter = FrameSplitter(1 << 20)
        with self.assertRaises(FrameTooLarge):
            splitter.feed(b"\xff\xff\xff\xff" + b"x" * 5000)
        self.assertEqual(splitter.buffered, 0)

    def test_huge_prefix_split_across_feeds(self) -> None:
        splitter = FrameSplitter(1 << 20)
        self.assertEqual(splitter.feed(b"\xff\xff"), [])
        self.assertEqual(splitter.buffered, 2)
        with self.assertRaises(FrameTooLarge):
            splitter.feed(b"\xff\xff")
        self.assertEqual(splitter.buffered, 0)

    def test_huge_prefix_after_good_frames(self) -> None:
        splitter = FrameSplitter(100)
        with self.assertRaises(FrameTooLarge):
            splitter.feed(frame(b"ok") + b"\x00\x00\x00\x65")

    def test_max_frame_boundary(self) -> None:
        splitter = FrameSplitter(10)
        self.assertEqual(splitter.feed(frame(b"x" * 10)), [b"x" * 10])
        with self.assertRaises(FrameTooLarge):
            splitter.feed(b"\x00\x00\x00\x0b")

    def test_zero_length_is_a_decode_error(self) -> None:
        splitter = FrameSplitter(100)
        with self.assertRaises(DecodeError) as caught:
            splitter.feed(b"\x00\x00\x00\x00")
        self.assertEqual(caught.exception.code, 400)
        self.assertTrue(caught.exception.fatal)

    def test_dead_after_error(self) -> None:
        splitter = FrameSplitter(100)
        with self.assertRaises(DecodeError):
            splitter.feed(b"\x00\x00\x00\x00")
        for _ in range(3):
            with self.assertRaises(DecodeError):
                splitter.feed(frame(b"fine"))
        splitter = FrameSplitter(100)
        with self.assertRaises(FrameTooLarge):
            splitter.feed(b"\x01\x00\x00\x00")
        with self.assertRaises(FrameTooLarge):
            splitter.feed(frame(b"fine"))

    def test_frame_split_across_many_feeds(self) -> None:
        payload = bytes(range(256)) * 4
        data = frame(payload)
        splitter = FrameSplitter(2000)
        for i, byte in enumerate(data[:-1]):
            self.assertEqual(splitter.feed(bytes([byte])), [])
            self.assertEqual(splitter.buffered, i + 1)
        self.assertEqual(splitter.feed(data[-1:]), [payload])
        self.assertEqual(splitter.buffered, 0)

    def test_big_frame_in_chunks(self) -> None:
        payload = b"0123456789" * 100_000
        data = frame(payload) + frame(b"next")
        splitter = FrameSplitter(1 << 20)
        out = []
        for i in range(0, len(data), 4096):
            out.extend(splitter.feed(data[i : i + 4096]))
        self.assertEqual(out, [payload, b"next"])
        self.assertEqual(splitter.buffered, 0)

    def test_many_frames_in_one_feed(self) -> None:
        payloads = [b"%d" % i for i in range(5000)]
        splitter = FrameSplitter(100)
        self.assertEqual(splitter.feed(frame_many(payloads)), payloads)
        self.assertEqual(splitter.buffered, 0)

    def test_every_cut_of_a_stream(self) -> None:
        payloads = [b"a", b"bcdef", b"g" * 9]
        data = frame_many(payloads)
        for i, j in combinations(range(len(data) + 1), 2):
            splitter = FrameSplitter(100)
            out = splitter.feed(data[:i]) + splitter.feed(data[i:j]) + splitter.feed(data[j:])
            self.assertEqual(out, payloads, (i, j))
            self.assertEqual(splitter.buffered, 0)

    def test_buffered_counts_an_incomplete_frame(self) -> None:
        splitter = FrameSplitter(100)
        self.assertEqual(splitter.buffered, 0)
        self.assertEqual(splitter.feed(frame(b"one") + b"\x00\x00"), [b"one"])
        self.assertEqual(splitter.buffered, 2)
        self.assertEqual(splitter.feed(b"\x00\x05ab"), [])
        self.assertEqual(splitter.buffered, 6)
        self.assertEqual(splitter.feed(b"cde"), [b"abcde"])
        self.assertEqual(splitter.buffered, 0)

    def test_expected_announces_the_incoming_frame(self) -> None:
        splitter = FrameSplitter(1 << 20)
        self.assertEqual(splitter.expected, 0)
        splitter.feed(b"\x00\x01")
        self.assertEqual(splitter.expected, 0)  # the prefix is not whole yet
        splitter.feed(b"\x00\x00" + b"x" * 10)
        self.assertEqual((splitter.expected, splitter.buffered), (65536, 14))
        self.assertEqual(splitter.feed(b"x" * 65526), [b"x" * 65536])
        self.assertEqual((splitter.expected, splitter.buffered), (0, 0))
        splitter.feed(frame(b"ab") + b"\x00\x00\x00\x09abc")
        self.assertEqual((splitter.expected, splitter.buffered), (9, 7))

    def test_empty_feed(self) -> None:
        splitter = FrameSplitter(100)
        self.assertEqual(splitter.feed(b""), [])
        splitter.feed(b"\x00")
        self.assertEqual(splitter.feed(b""), [])
        self.assertEqual(splitter.buffered, 1)

    def test_bytes_like_input(self) -> None:
        splitter = FrameSplitter(100)
        self.assertEqual(splitter.feed(bytearray(frame(b"ab"))), [b"ab"])
        out = splitter.feed(memoryview(frame(b"cd")))
        self.assertEqual(out, [b"cd"])
        self.assertIs(type(out[0]), bytes)

    def test_max_frame_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            FrameSplitter(0)
