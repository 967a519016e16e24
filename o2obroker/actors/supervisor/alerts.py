"""Alerts: the declared state machine that turns samples into alerts and scale hooks.

Every sample classifies the load as OVER (some metric at or above its
threshold), UNDER (every metric below its clear mark, threshold x alert_clear)
or BETWEEN, and says whether the cooldown since the scale-out hook last fired
has passed. ``TRANSITIONS`` maps (state, level, cooled) to the next state and
the actions to run. Hysteresis: an alert ends only UNDER the clear marks, so a
load hovering at a threshold stays in one alert. Cooldown: a new alert within
``alert_cooldown`` of the last scale-out is recorded but its hook is held, and
fires when the cooldown has passed if the load is still OVER.

Scale-in is simpler and lives beside it: every metric at or under its low-water
mark, with no alert, for ``scale_in_after`` seconds runs the scale-in hook once
per quiet stretch.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from o2obroker.actors.supervisor.sampling import Sample
from o2obroker.actors.supervisor.settings import SupervisorSettings

NORMAL, ALERTING, COOLDOWN = "normal", "alerting", "cooldown"
OVER, BETWEEN, UNDER = "over", "between", "under"

TRANSITIONS: dict[tuple[str, str, bool], tuple[str, tuple[str, ...]]] = {
    (NORMAL, OVER, True): (ALERTING, ("alert", "scale_out")),
    (NORMAL, OVER, False): (ALERTING, ("alert", "hold")),
    (NORMAL, BETWEEN, True): (NORMAL, ()),
    (NORMAL, BETWEEN, False): (NORMAL, ()),
    (NORMAL, UNDER, True): (NORMAL, ()),
    (NORMAL, UNDER, False): (NORMAL, ()),
    (ALERTING, OVER, False): (ALERTING, ()),
    (ALERTING, OVER, True): (ALERTING, ("release",)),
    (ALERTING, BETWEEN, False): (ALERTING, ()),
    (ALERTING, BETWEEN, True): (ALERTING, ()),
    (ALERTING, UNDER, False): (COOLDOWN, ("recovered",)),
    (ALERTING, UNDER, True): (NORMAL, ("recovered",)),
    (COOLDOWN, OVER, False): (ALERTING, ("alert", "hold")),
    (COOLDOWN, OVER, True): (ALERTING, ("alert", "scale_out")),
    (COOLDOWN, BETWEEN, False): (COOLDOWN, ()),
    (COOLDOWN, BETWEEN, True): (NORMAL, ()),
    (COOLDOWN, UNDER, False): (COOLDOWN, ()),
    (COOLDOWN, UNDER, True): (NORMAL, ()),
}

Reasons = dict[str, list[float]]
# asked to run a scale hook: (event, sample, reasons) -> what became of it, for the record
ScaleHook = Callable[[str, Sample, Reasons], str]


class Alerts:
    """Feeds classified samples through ``TRANSITIONS`` and keeps the recent alerts.

    It decides *when* a scale hook should run; ``scale`` runs it and says what
    happened (``fired``, ``none configured``, ...), which goes into the record.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        settings: SupervisorSettings,
        scale: ScaleHook,
        *,
        node_id: str = "n1",
        counts: Counter[str] | None = None,
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.scale = scale
        self.node_id = node_id
        self.counts: Counter[str] = Counter() if counts is None else counts
        self.state = NORMAL
        self._recent: deque[dict[str, Any]] = deque(maxlen=settings.recent_alerts)
        self._fired_at: float | None = None  # when scale-out last fired
        self._held: Reasons | None = None  # a scale-out waiting for its cooldown
        self._quiet_since: float | None = None
        self._scaled_in = False

    def feed(self, sample: Sample) -> None:
        """One sample: step the alert machine, then consider scaling in."""
        level, reasons = self.level(sample)
        self.step(level, sample, reasons)
        self._consider_scale_in(sample)

    def level(self, sample: Sample) -> tuple[str, Reasons]:
        """OVER, BETWEEN or UNDER, and the metrics at or over their thresholds."""
        s = self.settings
        marks = (
            ("connections", sample.total, s.alert_connections),
            ("cpu", sample.cpu, s.alert_cpu),
            ("memory", sample.memory, s.alert_memory),
        )
        over = {name: [value, limit] for name, value, limit in marks if limit and value >= limit}
        if over:
            return OVER, over
        if all(value < limit * s.alert_clear for _, value, limit in marks if limit):
            return UNDER, {}
        return BETWEEN, {}

    def step(self, level: str, sample: Sample, reasons: Reasons) -> None:
        """Feed one classified sample to the alert state machine."""
        now = self.clock.seconds()
        cooled = self._fired_at is None or now - self._fired_at >= self.settings.alert_cooldown
        self.state, actions = TRANSITIONS[(self.state, level, cooled)]
        for action in actions:
            getattr(self, f"_do_{action}")(sample, reasons)

    def _do_alert(self, sample: Sample, reasons: Reasons) -> None:
        self.counts["alerts"] += 1
        text = ", ".join(f"{k} {v:g} >= {lim:g}" for k, (v, lim) in sorted(reasons.items()))
        self.log.warn("node {node} overloaded: {text}", node=self.node_id, text=text)
        self.record("alert", sample, reasons=reasons)

    def _do_hold(self, sample: Sample, reasons: Reasons) -> None:
        self._held = reasons
        self._recent[-1]["hook"] = "held (cooldown)"

    def _do_release(self, sample: Sample, reasons: Reasons) -> None:
        if self._held is not None:
            self._held = None
            self._do_scale_out(sample, reasons)

    def _do_scale_out(self, sample: Sample, reasons: Reasons) -> None:
        self._fired_at = self.clock.seconds()
        outcome = self.scale("scale_out", sample, reasons)
        if self._recent and self._recent[-1]["event"] == "alert":
            self._recent[-1]["hook"] = outcome

    def _do_recovered(self, sample: Sample, reasons: Reasons) -> None:
        self._held = None
        self.log.info("node {node} load back under its clear marks", node=self.node_id)
        self.record("recovered", sample)

    def _consider_scale_in(self, sample: Sample) -> None:
        s = self.settings
        quiet = (
            self.state == NORMAL
            and sample.total <= s.scale_in_connections
            and sample.cpu <= s.scale_in_cpu
            and sample.memory <= s.scale_in_memory
        )
        if not quiet:
            self._quiet_since = None
            self._scaled_in = False
            return
        if self._quiet_since is None:
            self._quiet_since = sample.ts
        if not self._scaled_in and sample.ts - self._quiet_since >= s.scale_in_after:
            self._scaled_in = True  # once per quiet stretch
            entry = self.record("scale_in", sample)
            entry["hook"] = self.scale("scale_in", sample, {})

    def record(self, event: str, sample: Sample, **extra: Any) -> dict[str, Any]:
        """Keep an entry in the bounded list of recent alerts; return it."""
        entry = {"ts": sample.ts, "event": event, "node": self.node_id, "state": self.state}
        entry.update(extra)
        entry["metrics"] = sample.as_dict()
        self._recent.append(entry)
        return entry

    def recent(self) -> list[dict[str, Any]]:
        """The recent alerts, recoveries, scale-ins, hook failures and drains, oldest first."""
        return list(self._recent)
