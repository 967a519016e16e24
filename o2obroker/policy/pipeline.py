"""The message pipeline: stages that pass, rewrite or reject a whole batch of sends.

A stage sees the sends of one actor batch at once and answers one verdict per
send: the body to deliver (the very object it was given when it has nothing to
say, a new one to rewrite it) or a :class:`Rejected`. A stage may answer at once
(a list) or later (a Deferred of the list); the pipeline runs the stages in
order, each on what the ones before it let through, and costs one Deferred per
batch, not per message.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from o2obroker.wire import Send

#: the receipt status recorded for a send id a policy refused for good, so
#: that a retry with the same id is refused again rather than delivered
REJECTED_STATUS = "rejected"


class Candidate(NamedTuple):
    """One accepted send as the stages see it."""

    id: str
    sender: str
    device: str
    to: str | None
    room: str | None
    body: Any


class Rejected:
    """A verdict that refuses a send with error ``code`` (doc/protocol.md section 4).

    ``final`` rejections are remembered for the send id; a rejection that only
    says the application could not be asked is not, so a retry is screened again.
    """

    __slots__ = ("code", "final", "reason")

    def __init__(self, reason: str = "rejected by policy", final: bool = True) -> None:
        self.code = 403
        self.reason = reason
        self.final = final

    def __repr__(self) -> str:
        return f"Rejected({self.reason!r}, final={self.final})"


REJECTED = Rejected()
UNAVAILABLE = Rejected("rejected by policy: application unavailable", final=False)


class IMessageFilter(Interface):
    """A stage of the message pipeline; also the interface of in-process rules
    that teams ship as plugins (found in the ``o2obroker.plugins`` package with
    ``twisted.plugin.getPlugins``, or named by dotted path in the config)."""

    name = Attribute("A short name, for the config file, logs and metrics.")

    def check(messages: list[Candidate]) -> Any:
        """One verdict per message, in order, or a Deferred of that list.

        A verdict is the body to deliver (``message.body`` itself to pass it, a
        new value to rewrite it) or a :class:`Rejected`. Never block: a rule
        that needs I/O returns a Deferred.
        """


class Pipeline:
    """The stages of one node (or, later, one app), run on every accepted batch.

    ``counts`` holds how many sends were rejected and rewritten, for metrics.
    A stage that raises or fails refuses its batch as :data:`UNAVAILABLE`
    (logged): a policy never lets through what it could not check, and never
    drops a send silently.
    """

    log = Logger()

    def __init__(self, stages: list[Any]) -> None:
        self.stages = list(stages)
        self.counts: Counter[str] = Counter()

    def run(self, messages: list[Candidate]) -> Deferred[list[Any]]:
        """Fire with one verdict per message."""
        verdicts: list[Any] = [m.body for m in messages]
        return self._from(0, messages, verdicts)

    def _from(self, index: int, messages: list[Candidate], verdicts: list[Any]) -> Deferred[Any]:
        stages = self.stages
        while index < len(stages):
            stage = stages[index]
            index += 1
            # each stage sees what the ones before let through, with their rewrites
            live = [i for i, v in enumerate(verdicts) if type(v) is not Rejected]
            if not live:
                break
            subset = [
                m if v is m.body else m._replace(body=v)
                for m, v in ((messages[i], verdicts[i]) for i in live)
            ]
            try:
                result = stage.check(subset)
                if not isinstance(result, Deferred):
                    self._merge(result, stage, live, verdicts)
                    continue
            except Exception:
                self._failed(Failure(), stage, live, verdicts)
                continue
            result.addCallback(self._merge, stage, live, verdicts)
            result.addErrback(self._failed, stage, live, verdicts)
            return result.addCallback(lambda _, i=index: self._from(i, messages, verdicts))
        self._count(messages, verdicts)
        return succeed(verdicts)

    def _merge(self, result: Any, stage: Any, live: list[int], verdicts: list[Any]) -> None:
        if type(result) is not list or len(result) != len(live):
            raise ValueError(f"stage {stage.name!r} gave {result!r}, not one verdict per message")
        for i, verdict in zip(live, result, strict=True):
            verdicts[i] = verdict

    def _failed(self, failure: Failure, stage: Any, live: list[int], verdicts: list[Any]) -> None:
        self.log.failure(
            "policy stage {stage} failed: refusing its batch", failure, stage=stage.name
        )
        self.counts["stage_failed"] += 1
        for i in live:
            verdicts[i] = UNAVAILABLE

    def _count(self, messages: list[Candidate], verdicts: list[Any]) -> None:
        counts = self.counts
        for m, v in zip(messages, verdicts, strict=True):
            if type(v) is Rejected:
                counts["rejected"] += 1
            elif v is not m.body:
                counts["rewritten"] += 1

    def screen(
        self, user: str, backend: Any, kept: list[Any], accepted: list[tuple[Any, Any, str]]
    ) -> Deferred[tuple[list[Any], list[tuple[Any, Any, str]]]]:
        """Screen an actor's claimed batch: ``kept`` and ``accepted`` are what
        the backend's claim answered and the (device, send, mid) triples.

        Fires with the two lists less the rejected sends, whose devices have
        been answered with the error; rewritten sends carry their new body.
        A send already answered (a repeated id with a receipt) is not screened.
        """
        picked = [
            i for i, old in enumerate(kept) if old is None or old.status is None
        ]  # new ids, and ids claimed but never settled (delivered again)
        if not picked:
            return succeed((kept, accepted))
        candidates = []
        for i in picked:
            device, send, _ = accepted[i]
            candidates.append(
                Candidate(send.id, user, device.device, send.to, send.room, send.body)
            )
        return self.run(candidates).addCallback(self._apply, user, backend, picked, kept, accepted)

    def _apply(
        self,
        verdicts: list[Any],
        user: str,
        backend: Any,
        picked: list[int],
        kept: list[Any],
        accepted: list[tuple[Any, Any, str]],
    ) -> tuple[list[Any], list[tuple[Any, Any, str]]]:
        drop: set[int] = set()
        final: dict[str, str] = {}
        for i, verdict in zip(picked, verdicts, strict=True):
            device, send, mid = accepted[i]
            if type(verdict) is Rejected:
                drop.add(i)
                device.send_frame(
                    {"t": "error", "code": verdict.code, "reason": verdict.reason, "ref": send.id}
                )
                if verdict.final:
                    final[send.id] = REJECTED_STATUS
            elif verdict is not send.body:
                accepted[i] = (device, Send(send.id, send.to, send.room, verdict), mid)
        if final:
            backend.settle(user, final).addErrback(
                lambda f: self.log.failure("recording rejections of {user}", f, user=user)
            )
        if not drop:
            return kept, accepted
        keep = [i for i in range(len(kept)) if i not in drop]
        return [kept[i] for i in keep], [accepted[i] for i in keep]
