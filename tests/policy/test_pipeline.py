"""The pipeline: stages in order on whole batches, verdicts, and the actor's seam."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from o2obroker.backend.interface import Receipt
from o2obroker.policy import REJECTED, UNAVAILABLE, Candidate, IMessageFilter, Pipeline, Rejected
from o2obroker.policy.pipeline import REJECTED_STATUS
from o2obroker.wire import Send


@implementer(IMessageFilter)
class Recorder:
    """A stage that records the batches it sees and answers with ``rule``."""

    def __init__(self, name: str, rule: Any, later: bool = False) -> None:
        self.name = name
        self.rule = rule
        self.later = later
        self.seen: list[list[Candidate]] = []
        self.pending: Deferred[list[Any]] | None = None

    def check(self, messages: list[Candidate]) -> Any:
        self.seen.append(messages)
        verdicts = [self.rule(m) for m in messages]
        if self.later:
            self.pending = Deferred()
            return self.pending
        return verdicts


def _batch(*bodies: Any) -> list[Candidate]:
    return [Candidate(str(i), "alice", "phone", "bob", None, b) for i, b in enumerate(bodies)]


class PipelineTests(TestCase):
    def test_stages_run_in_order_on_what_passed(self) -> None:
        upper = Recorder("upper", lambda m: m.body.upper() if m.body != "no" else REJECTED)
        second = Recorder("second", lambda m: m.body)
        pipeline = Pipeline([upper, second])
        verdicts = self.successResultOf(pipeline.run(_batch("a", "no", "c")))
        self.assertEqual(verdicts, ["A", REJECTED, "C"])
        # one call per stage per batch; the second saw the rewrites, not the rejected one
        self.assertEqual(len(upper.seen), 1)
        self.assertEqual([m.body for m in second.seen[0]], ["A", "C"])
        self.assertEqual(pipeline.counts["rejected"], 1)
        self.assertEqual(pipeline.counts["rewritten"], 2)

    def test_a_later_stage_holds_the_batch(self) -> None:
        slow = Recorder("slow", lambda m: m.body, later=True)
        after = Recorder("after", lambda m: m.body)
        d = Pipeline([slow, after]).run(_batch("x"))
        self.assertNoResult(d)
        self.assertEqual(after.seen, [])
        slow.pending.callback(["y"])
        self.assertEqual(self.successResultOf(d), ["y"])
        self.assertEqual(after.seen[0][0].body, "y")

    def test_a_failing_stage_refuses_its_batch(self) -> None:
        def boom(m: Candidate) -> Any:
            raise RuntimeError("rule crashed")

        pipeline = Pipeline([Recorder("boom", boom)])
        verdicts = self.successResultOf(pipeline.run(_batch("a", "b")))
        self.assertEqual(verdicts, [UNAVAILABLE, UNAVAILABLE])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_stage_answering_the_wrong_count_refuses(self) -> None:
        stage = Recorder("short", lambda m: m.body, later=True)
        d = Pipeline([stage]).run(_batch("a", "b"))
        stage.pending.callback(["a"])
        self.assertEqual(self.successResultOf(d), [UNAVAILABLE, UNAVAILABLE])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_a_stage_answering_not_a_list_at_once_refuses(self) -> None:
        @implementer(IMessageFilter)
        class Sloppy:
            name = "sloppy"

            def check(self, messages: list[Candidate]) -> Any:
                return None

        after = Recorder("after", lambda m: m.body)
        verdicts = self.successResultOf(Pipeline([Sloppy(), after]).run(_batch("a")))
        self.assertEqual(verdicts, [UNAVAILABLE])
        self.assertEqual(after.seen, [])  # nothing left for the next stage
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_a_failed_deferred_refuses(self) -> None:
        @implementer(IMessageFilter)
        class Down:
            name = "down"

            def check(self, messages: list[Candidate]) -> Any:
                return fail(ConnectionError("gone"))

        self.assertEqual(self.successResultOf(Pipeline([Down()]).run(_batch("a"))), [UNAVAILABLE])
        self.flushLoggedErrors(ConnectionError)


class _Device:
    def __init__(self, name: str = "phone") -> None:
        self.device = name
        self.frames: list[dict[str, Any]] = []

    def send_frame(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


class _Backend:
    def __init__(self) -> None:
        self.settled: list[tuple[str, dict[str, str]]] = []

    def settle(self, user: str, statuses: dict[str, str]) -> Deferred[None]:
        self.settled.append((user, statuses))
        return succeed(None)


class ScreenTests(TestCase):
    """The seam in the user's actor: a claimed batch in, the batch to route out."""

    def test_rejects_answered_rewrites_carried_repeats_untouched(self) -> None:
        def rule(m: Candidate) -> Any:
            if m.body == "bad":
                return REJECTED
            if m.body == "later":
                return Rejected("rejected by policy: application unavailable", final=False)
            return m.body.replace("x", "*")

        stage = Recorder("rule", rule)
        device, backend = _Device(), _Backend()
        sends = [
            Send("1", "bob", None, "fine"),
            Send("2", "bob", None, "bad"),
            Send("3", None, "room", "xx"),
            Send("4", "bob", None, "later"),
            Send("5", "bob", None, "bad"),  # a repeat with a receipt: answered elsewhere
        ]
        kept = [None, None, None, None, Receipt("m5", 1, "delivered")]
        accepted = [(device, s, f"m{i}") for i, s in enumerate(sends, 1)]
        got_kept, got = self.successResultOf(
            Pipeline([stage]).screen("alice", backend, kept, accepted)
        )
        self.assertEqual([s.id for _, s, _ in got], ["1", "3", "5"])
        self.assertEqual(got_kept, [None, None, kept[4]])
        self.assertEqual(got[1][1].body, "**")
        self.assertEqual(got[1][1].room, "room")
        self.assertEqual(len(stage.seen[0]), 4)  # the repeat was not screened
        self.assertEqual(
            device.frames,
            [
                {"t": "error", "code": 403, "reason": "rejected by policy", "ref": "2"},
                {
                    "t": "error",
                    "code": 403,
                    "reason": "rejected by policy: application unavailable",
                    "ref": "4",
                },
            ],
        )
        # only the final rejection is remembered: a retry of "4" is screened again
        self.assertEqual(backend.settled, [("alice", {"2": REJECTED_STATUS})])

    def test_nothing_to_screen_costs_no_stage_call(self) -> None:
        stage = Recorder("rule", lambda m: m.body)
        device = _Device()
        kept = [Receipt("m1", 1, "stored")]
        accepted = [(device, Send("1", "bob", None, "x"), "m1")]
        self.successResultOf(Pipeline([stage]).screen("alice", _Backend(), kept, accepted))
        self.assertEqual(stage.seen, [])
