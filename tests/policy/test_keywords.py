"""The keyword filter: substrings in any language, mask or reject, reloads."""

from __future__ import annotations

import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import maybeDeferred
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from o2obroker.policy import REJECTED, Candidate, IMessageFilter
from o2obroker.policy.keywords import (
    KeywordFilter,
    Matcher,
    WordList,
    WordListError,
    build_matcher,
    read_words,
)


def _now(f):
    return maybeDeferred(f)


class MatcherTests(TestCase):
    def test_chinese_substrings_masked_char_for_char(self) -> None:
        m = Matcher([(["坏蛋", "笨"], "mask")])
        # no spaces between words: matched inside a longer run of characters
        self.assertEqual(m.scan("你这个坏蛋真笨啊"), "你这个**真*啊")

    def test_mixed_text_and_case(self) -> None:
        m = Matcher([(["spam", "广告"], "mask")])
        self.assertEqual(m.scan("Buy SPAM now, 看广告!"), "Buy **** now, 看**!")

    def test_masked_text_keeps_its_length(self) -> None:
        m = Matcher([(["ab", "bc"], "mask")])  # overlapping matches
        out = m.scan("xabcx")
        self.assertEqual(out, "x***x")
        self.assertEqual(len(out), 5)

    def test_a_length_changing_lowercase_matches_as_written(self) -> None:
        # "İ".lower() is two characters: the text is matched unfolded, masks still line up
        m = Matcher([(["bad"], "mask")])
        self.assertEqual(m.scan("İ bad İ"), "İ *** İ")

    def test_reject_wins_over_mask(self) -> None:
        m = Matcher([(["炸弹"], "mask"), (["炸弹"], "reject"), (["坏"], "mask")])
        self.assertIs(m.scan("坏人有炸弹"), REJECTED)

    def test_untouched_text_is_the_same_object(self) -> None:
        m = Matcher([(["bad"], "mask")])
        text = "all good here"
        self.assertIs(m.scan(text), text)
        body = {"text": text, "n": [1, {"deep": "fine"}]}
        self.assertIs(m.body(body), body)

    def test_every_string_value_is_walked(self) -> None:
        m = Matcher([(["bad"], "mask"), (["evil"], "reject")])
        body = {"bad": "bad", "list": ["ok", {"x": "so bad"}], "raw": b"bad", "n": 3}
        out = m.body(body)
        # values masked at any depth; keys and byte strings are not text
        self.assertEqual(
            out, {"bad": "***", "list": ["ok", {"x": "so ***"}], "raw": b"bad", "n": 3}
        )
        self.assertEqual(body["list"][1]["x"], "so bad")  # the original is not changed
        self.assertIs(m.body({"a": ["fine", ["evil deep"]]}), REJECTED)

    def test_no_keywords_passes_everything(self) -> None:
        m = Matcher([([], "mask")])
        self.assertEqual(m.keywords, 0)
        self.assertEqual(m.scan("anything"), "anything")


class WordFileTests(TestCase):
    def _file(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        self.addCleanup(os.unlink, path)
        return path

    def test_comments_and_blank_lines_skipped(self) -> None:
        path = self._file("# a list\n坏蛋\n\n  spam  \n")
        self.assertEqual(read_words(path), ["坏蛋", "spam"])

    def test_missing_and_non_utf8_files_give_clear_errors(self) -> None:
        with self.assertRaises(WordListError) as e:
            read_words("/nonexistent/words.txt")
        self.assertIn("/nonexistent/words.txt", str(e.exception))
        fd, path = tempfile.mkstemp()
        os.write(fd, b"\xff\xfe\xfa")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        with self.assertRaises(WordListError):
            read_words(path)

    def test_stage_provides_the_interface(self) -> None:
        stage = KeywordFilter([WordList("soft", (self._file("x\n"),), "mask")], _now)
        self.assertTrue(verifyObject(IMessageFilter, stage))

    def test_stage_masks_and_rejects_a_batch(self) -> None:
        lists = [
            WordList("soft", (self._file("坏蛋\n"),), "mask"),
            WordList("hard", (self._file("炸弹\n"),), "reject"),
        ]
        stage = KeywordFilter(lists, _now)
        batch = [
            Candidate("1", "a", "p", "b", None, {"text": "你好"}),
            Candidate("2", "a", "p", "b", None, {"text": "坏蛋"}),
            Candidate("3", "a", "p", "b", None, {"text": "炸弹"}),
        ]
        out = stage.check(batch)
        self.assertIs(out[0], batch[0].body)
        self.assertEqual(out[1], {"text": "**"})
        self.assertIs(out[2], REJECTED)

    def test_reload_takes_new_words(self) -> None:
        path = self._file("old\n")
        stage = KeywordFilter([WordList("l", (path,), "mask")], _now)
        with open(path, "w", encoding="utf-8") as f:
            f.write("new\n")
        self.assertEqual(stage.matcher.scan("old new"), "*** new")
        got = self.successResultOf(stage.reload())
        self.assertEqual(got, 1)
        self.assertEqual(stage.matcher.scan("old new"), "old ***")
        self.assertEqual(stage.counts["reloads"], 1)

    def test_failed_reload_keeps_the_old_lists(self) -> None:
        path = self._file("old\n")
        stage = KeywordFilter([WordList("l", (path,), "mask")], _now)
        os.unlink(path)
        self.addCleanup(lambda: open(path, "w").close())  # for the cleanup's unlink
        self.failureResultOf(stage.reload(), WordListError)
        self.assertEqual(stage.matcher.scan("old"), "***")
        self.assertEqual(stage.counts["reload_failures"], 1)

    def test_ten_thousand_keywords_one_scan(self) -> None:
        words = [f"w{i:05d}x" for i in range(10_000)]
        m = build_matcher([WordList("big", (self._file("\n".join(words)),), "mask")])
        self.assertEqual(m.keywords, 10_000)
        self.assertEqual(m.scan("a w04242x b"), "a ******* b")


class MaskPropertyTests(TestCase):
    """Masking, for any text and keywords: same length, only matched characters
    changed, and no keyword left readable."""

    @given(
        text=st.text(alphabet="ab坏蛋炸 .", max_size=40),
        words=st.lists(st.text(alphabet="ab坏蛋炸 .", min_size=1, max_size=4), max_size=6),
    )
    @settings(max_examples=300, deadline=None)
    def test_mask(self, text: str, words: list[str]) -> None:
        out = Matcher([(words, "mask")]).scan(text)
        assert isinstance(out, str)
        self.assertEqual(len(out), len(text))
        covered = set()
        for word in set(words):
            start = text.find(word)
            while start != -1:
                covered.update(range(start, start + len(word)))
                start = text.find(word, start + 1)
        for i, (a, b) in enumerate(zip(text, out, strict=True)):
            self.assertEqual(b, "*" if i in covered else a)
