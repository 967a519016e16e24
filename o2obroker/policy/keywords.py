"""The keyword filter: word lists matched as substrings, masked or rejected.

Matching is by substring, not by word, because Chinese and Japanese text has
no spaces between words. One Aho-Corasick automaton (pyahocorasick) holds every
list, so a body is scanned once whatever the number of keywords. Matching
ignores case where lower-casing keeps a text's length (masks line up with the
original characters); every string value of a body is scanned, at any depth.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ahocorasick
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from o2obroker.policy.pipeline import REJECTED, Candidate, IMessageFilter, Rejected

MASK, REJECT = "mask", "reject"


class WordListError(ValueError):
    """A word list cannot be read."""


@dataclass(frozen=True, slots=True)
class WordList:
    """A named list of keywords from files, and what a match does."""

    name: str
    files: tuple[str, ...]
    action: str = MASK


def read_words(path: str) -> list[str]:
    """The keywords of one UTF-8 file: one a line; blank lines and ``#`` comments skipped.

    Blocking: call it at start-up or in a thread.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise WordListError(f"cannot read word list {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise WordListError(f"word list {path} is not UTF-8") from None
    words = []
    for line in lines:
        word = line.strip()
        if word and not word.startswith("#"):
            words.append(word)
    return words


class Matcher:
    """One automaton for every list. ``scan(text)`` answers the text itself when
    nothing matches, the masked text, or REJECTED; reject wins over mask."""

    __slots__ = ("_automaton", "keywords")

    def __init__(self, lists: list[tuple[list[str], str]]) -> None:
        automaton = ahocorasick.Automaton()
        kinds: dict[str, bool] = {}
        for words, action in lists:
            for word in words:
                key = _fold(word)
                kinds[key] = kinds.get(key, False) or action == REJECT
        for key, reject in kinds.items():
            automaton.add_word(key, (len(key), reject))
        self.keywords = len(kinds)
        if kinds:
            automaton.make_automaton()
            self._automaton: Any = automaton
        else:
            self._automaton = None

    def scan(self, text: str) -> str | Rejected:
        automaton = self._automaton
        if automaton is None:
            return text
        folded = _fold(text)
        hits: list[tuple[int, int]] | None = None
        for end, (length, reject) in automaton.iter(folded):
            if reject:
                return REJECTED
            if hits is None:
                hits = []
            hits.append((end - length + 1, end + 1))
        if hits is None:
            return text
        chars = list(text)
        for start, stop in hits:
            chars[start:stop] = "*" * (stop - start)
        return "".join(chars)

    def body(self, value: Any) -> Any:
        """Scan every string value of a body; a new body only where one changed."""
        t = type(value)
        if t is str:
            return self.scan(value)
        if t is dict:
            new = None
            for key, item in value.items():
                out = self.body(item)
                if out is REJECTED:
                    return REJECTED
                if out is not item:
                    if new is None:
                        new = dict(value)
                    new[key] = out
            return value if new is None else new
        if t is list:
            new_list = None
            for i, item in enumerate(value):
                out = self.body(item)
                if out is REJECTED:
                    return REJECTED
                if out is not item:
                    if new_list is None:
                        new_list = list(value)
                    new_list[i] = out
            return value if new_list is None else new_list
        return value


def _fold(text: str) -> str:
    folded = text.lower()
    return folded if len(folded) == len(text) else text


def build_matcher(lists: list[WordList]) -> Matcher:
    """Read every list and build the automaton (blocking: start-up or a thread)."""
    return Matcher(
        [([w for path in wl.files for w in read_words(path)], wl.action) for wl in lists]
    )


@implementer(IMessageFilter)
class KeywordFilter:
    """The pipeline stage. ``reload()`` reads the lists again through ``run``
    (a function that calls a blocking function off the reactor thread and
    returns a Deferred of its result) and swaps the automaton in one step;
    a list that cannot be read keeps the old automaton and fails the Deferred."""

    name = "keywords"
    log = Logger()

    def __init__(
        self,
        lists: list[WordList],
        run: Callable[[Callable[[], Matcher]], Deferred[Matcher]],
        matcher: Matcher | None = None,
    ) -> None:
        self.lists = lists
        self._run = run
        self.matcher = matcher if matcher is not None else build_matcher(lists)
        self.counts: Counter[str] = Counter()

    def check(self, messages: list[Candidate]) -> list[Any]:
        body = self.matcher.body
        return [body(m.body) for m in messages]

    def reload(self) -> Deferred[int]:
        """Read the word lists again; fire with the number of keywords."""

        def swap(matcher: Matcher) -> int:
            self.matcher = matcher
            self.counts["reloads"] += 1
            self.log.info("keyword filter reloaded: {n} keywords", n=matcher.keywords)
            return matcher.keywords

        def failed(f: Any) -> Any:
            self.counts["reload_failures"] += 1
            self.log.error(
                "keyword filter not reloaded, keeping the old lists: {why}",
                why=f.getErrorMessage(),
            )
            return f

        lists = self.lists
        return self._run(lambda: build_matcher(lists)).addCallbacks(swap, failed)
