"""The browser client's documentation and types cannot drift from its source.

Every option the client reads, every event it emits and every public method
it has must be in doc/web.md's tables and in the package's TypeScript
declarations (js/index.d.ts), and those must name nothing the client lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]
SOURCE = (ROOT / "o2obroker" / "web" / "static" / "o2obroker.js").read_text("utf-8")
DOC = (ROOT / "doc" / "web.md").read_text("utf-8")
TYPES = (ROOT / "js" / "index.d.ts").read_text("utf-8")


def _section(text: str, title: str) -> str:
    """The text under a markdown heading, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#)", text, re.S | re.M)
    assert match is not None, title
    return match.group(1)


def _first_column(table: str) -> set[str]:
    """The names in backticks in the first column of a markdown table, before any '('."""
    names = set()
    for line in table.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first = re.split(r"(?<!\\)\|", line)[1]  # not at an escaped \|
            names |= {re.split(r"[({]", n)[0] for n in re.findall(r"`([^`]+)`", first)}
    return names


def _block(text: str, opening: str) -> str:
    """The body of `opening {...}` in the declarations."""
    start = text.index(opening + " {")
    return text[start : text.index("\n}", start)]


def source_options() -> set[str]:
    constructor = SOURCE[SOURCE.index("function O2OBroker(options)") :]
    constructor = constructor[: constructor.index("\n  }\n")]
    return set(re.findall(r"options\.(\w+)", constructor))


def source_events() -> set[str]:
    events = set(re.findall(r'_emit\("(\w+)"', SOURCE))
    # joined and left are emitted under the frame's own type
    forwarded = re.search(r'case "joined":\s*case "left":[^}]*?_emit\(f\.t, f\)', SOURCE)
    assert forwarded is not None
    return events | {"joined", "left"}


def source_methods() -> set[str]:
    return set(re.findall(r"^  P\.([a-z]\w*) = function", SOURCE, re.M))


class WebClientDocTests(SynchronousTestCase):
    def test_options(self) -> None:
        options = source_options()
        self.assertIn("baseUrl", options)
        self.assertEqual(_first_column(_section(DOC, "Options")), options)
        self.assertEqual(
            set(re.findall(r"^  (\w+)\?:", _block(TYPES, "interface Options"), re.M)), options
        )

    def test_events(self) -> None:
        events = source_events()
        self.assertTrue({"transport", "located", "message"} <= events, events)
        self.assertEqual(_first_column(_section(DOC, "Events")), events)
        self.assertEqual(
            set(re.findall(r"^  (\w+): \(", _block(TYPES, "interface Events"), re.M)), events
        )

    def test_methods(self) -> None:
        methods = source_methods()
        self.assertTrue({"connect", "once", "history"} <= methods, methods)
        self.assertEqual(_first_column(_section(DOC, "Methods")), methods)
        declared = _block(TYPES, "export declare class O2OBroker")
        found = set(re.findall(r"^  ([a-z]\w*)(?:<[^>]*>)?\(", declared, re.M))
        self.assertEqual(found - {"constructor"}, methods)
