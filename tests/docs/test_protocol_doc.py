"""doc/protocol.md cannot drift from the code: every example in it is checked here.

Frames a client sends must pass the broker's own parser; frames the broker
sends must have the fields, and the types, of what the broker really writes;
the hex dumps must decode, with the binary framing and CBOR codec, to the
frames printed above them, and be exactly what the encoder makes of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import ArchiveSettings
from o2obroker.wire import (
    BadFrame,
    FrameSplitter,
    decode_cbor,
    decode_json,
    encode_cbor,
    parse_frame,
)
from o2obroker.wire.limits import Limits
from tests.harness import Harness

DOC = Path(__file__).resolve().parents[2] / "doc" / "protocol.md"
LIMITS = Limits()

#: frame types only the broker sends
SERVER = {"welcome", "receipt", "msg", "joined", "left", "error"}
#: frame types only clients send
CLIENT = {"hello", "send", "ack", "join", "leave", "watch", "unwatch", "probe"}
#: frame types both send (history: a question one way, a page the other)
BOTH = {"presence", "ping", "pong", "bye", "history"}
#: in the contract, not built yet: the parser must still refuse them, so that
#: whoever builds one is told to check its examples here
NOT_YET: set[str] = set()
#: fields the contract gives a frame in cases the scenario below does not reach
EXTRA = {"welcome": {"presence_kept"}, "error": {"ref", "redirect", "versions"}}

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(DOC.read_text("utf-8"))]


def real_frames() -> dict[str, list[dict[str, Any]]]:
    """One of every frame the broker sends, from a real node on a fake clock."""
    h = Harness(auth="none", archive=ArchiveSettings(enabled=True))
    h.clock.advance(1_763_800_000)
    h.node.start()
    h.clock.advance(1)  # the heartbeat wheel reads the clock
    alice, bob = h.login("alice"), h.login("bob")
    alice.write({"t": "join", "room": "r"})
    bob.write({"t": "join", "room": "r"})
    alice.write({"t": "send", "id": "1", "to": "bob", "body": "hi"})
    alice.write({"t": "send", "id": "2", "room": "r", "body": "all"})
    alice.write({"t": "send", "id": "3", "room": "nowhere", "body": 1})
    alice.write({"t": "watch", "users": ["bob", "zed"]})
    alice.write({"t": "history", "id": "h1", "with": "bob", "limit": 1})
    alice.write({"t": "leave", "room": "r"})
    alice.write({"t": "ack", "seq": "x"})
    alice.write({"t": "ping"})
    alice.write({"t": "bye"})
    h.clock.pump([1] * 40)  # bob has been silent for hb: he is pinged
    found: dict[str, list[dict[str, Any]]] = {}
    for f in alice.read() + bob.read():
        found.setdefault(f["t"], []).append(f)
    h.node.stop()
    return found


class ProtocolDocTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.real = real_frames()

    def check_client(self, f: dict[str, Any], where: str) -> None:
        if f["t"] in NOT_YET:
            with self.assertRaises(BadFrame, msg=f"{f['t']} is built now: {where}"):
                parse_frame(f, LIMITS)
            return
        self.assertNotIn(f["t"], SERVER, where)
        parse_frame(f, LIMITS)  # raises on anything the broker would refuse

    def check_server(self, f: dict[str, Any], where: str) -> None:
        t = f["t"]
        if t in NOT_YET:
            return
        self.assertNotIn(t, CLIENT, where)
        self.assertIn(t, self.real, f"no real {t} frame to compare with: {where}")
        real = self.real[t]
        required = set.intersection(*(set(r) for r in real))
        allowed = set.union(*(set(r) for r in real)) | EXTRA.get(t, set())
        self.assertLessEqual(required, set(f), f"fields missing: {where}")
        self.assertLessEqual(set(f), allowed, f"fields the broker never sends: {where}")
        for key, value in f.items():
            if key == "body":
                continue
            types = {type(r[key]) for r in real if key in r}
            if types:
                self.assertIn(type(value), types, f"{key} has the wrong type: {where}")

    def frames(self, value: Any) -> list[dict[str, Any]]:
        """The frames in a decoded example: a frame, an array, or a long-poll body."""
        if type(value) is list:
            return value
        if "t" in value:
            return [value]
        return list(value.get("frames", []))

    def test_frame_examples(self) -> None:
        checked = 0
        for lang, text in blocks():
            if lang not in ("text", "http"):
                continue
            answer = False  # in an http block: past the status line
            for line in text.splitlines():
                where = line[:90]
                if lang == "http" and line.startswith("HTTP/1.1 "):
                    answer = True
                if lang == "text" and line[:2] in ("→ ", "← "):
                    from_client, raw = line[0] == "→", line[2:]
                elif lang == "http" and line[:1] in ("{", "["):
                    from_client, raw = not answer, line
                else:
                    continue
                value = decode_json(raw.encode(), LIMITS)
                for f in self.frames(value):
                    if from_client:
                        self.check_client(f, where)
                    else:
                        self.check_server(f, where)
                    checked += 1
        self.assertGreater(checked, 40)

    def test_every_frame_type_has_an_example(self) -> None:
        text = DOC.read_text("utf-8")
        for t in SERVER | CLIENT | NOT_YET | BOTH:
            self.assertIn(f'{{"t":"{t}"', text, t)

    def test_hex_examples(self) -> None:
        found = blocks()
        dumps = 0
        for i, (lang, text) in enumerate(found):
            if lang != "hex":
                continue
            data = bytes.fromhex(text)
            payloads = FrameSplitter(LIMITS.max_frame).feed(data)
            # the frames printed in the text block above the dump, in order
            printed = [
                decode_json(line[2:].encode(), LIMITS)
                for line in found[i - 1][1].splitlines()
                if line[:2] in ("→ ", "← ")
            ]
            self.assertEqual(len(payloads), len(printed), text)
            for payload, expected in zip(payloads, printed, strict=True):
                self.assertEqual(decode_cbor(payload, LIMITS), expected)
                self.assertEqual(encode_cbor(expected), payload)
            dumps += 1
        self.assertGreaterEqual(dumps, 2)

    def test_a_doc_that_drifts_fails(self) -> None:
        """The checks above can fail: a field the broker does not send, a bad
        client frame, a wrong type."""
        with self.assertRaises(self.failureException):
            self.check_server({"t": "receipt", "id": "1", "mid": "m", "ts": 1}, "no status")
        with self.assertRaises(self.failureException):
            self.check_server({"t": "pong", "extra": 1}, "a field the broker never sends")
        with self.assertRaises(self.failureException):
            self.check_server({"t": "joined", "room": "r", "members": "3"}, "members as a string")
        with self.assertRaises(BadFrame):
            self.check_client({"t": "watch", "users": ["a"], "since": -1}, "bad since")

    def test_the_history_page_holds_msg_frames_without_seq(self) -> None:
        for _, text in blocks():
            for line in text.splitlines():
                if line.startswith("← ") and '"t":"history"' in line:
                    page = decode_json(line[2:].encode(), LIMITS)
                    self.assertTrue(page["messages"])
                    for m in page["messages"]:
                        self.assertNotIn("seq", m)
                        # otherwise the fields of a msg frame
                        self.check_server({**m, "seq": 1}, line[:90])
                    return
        self.fail("no history page in the examples")
