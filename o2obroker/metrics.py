"""Prometheus metrics of a node, read from plain counters at scrape time.

Hot paths count with plain ``int`` attributes (``stats.msgs_in += n``), which
costs nothing measurable; this collector turns them into Prometheus families
only when ``/metrics`` is scraped. Each node has its own registry, so tests can
build many nodes in one process.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

TRANSPORTS = ("tcp", "ws", "lp")

# seconds from a send's acceptance (its ts, in ms) to the write of the msg frame
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Traffic:
    """Frames and bytes through one transport, counted by its connections per read or write."""

    __slots__ = ("bytes_in", "bytes_out", "frames_in", "frames_out")

    def __init__(self) -> None:
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0


class Latency:
    """A histogram kept in plain numbers: ``observe`` is a bisect and two additions
    (prometheus_client's Histogram takes a lock and costs about 1 µs); exported as a
    Prometheus histogram at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.total)


class Stats:
    """Plain counters, bumped where things happen."""

    __slots__ = (
        "closed",
        "errors",
        "latency",
        "lp_forwards",
        "msgs_in",
        "msgs_out",
        "opened",
        "pings_saved_live",
        "pings_saved_transfer",
        "pings_sent",
        "presence_bytes",
        "presence_coalesced",
        "presence_frames",
        "receipts",
        "refused",
        "store_refused",
        "traffic",
    )

    def __init__(self) -> None:
        self.traffic = {name: Traffic() for name in TRANSPORTS}
        self.opened: Counter[str] = Counter()  # connections, by transport
        self.closed: Counter[str] = Counter()  # after a welcome, by reason
        self.refused: Counter[str] = Counter()  # ended before a welcome, by reason
        # long-poll requests for another node's session, by outcome (answered, failed)
        self.lp_forwards: Counter[str] = Counter()
        # observed once per batch of msg frames written, for the batch's newest message
        self.latency = Latency(LATENCY_BUCKETS)
        self.msgs_in = 0  # sends accepted
        self.msgs_out = 0  # msg frames written to devices
        self.receipts: Counter[str] = Counter()  # by status
        self.errors: Counter[int] = Counter()  # error frames sent, by code
        self.store_refused = 0  # sends answered 503 "store full": a byte cap of the store
        # presence load (doc/protocol.md section 5)
        self.presence_frames = 0  # presence frames written to devices
        self.presence_bytes = 0  # their encoded size
        self.presence_coalesced = 0  # changes never sent: superseded within a window
        self.pings_sent = 0
        self.pings_saved_live = 0  # heartbeat probes not needed: the device had spoken
        self.pings_saved_transfer = 0  # probes held back during a large transfer


def traffic_of(stats: Stats, transport: str) -> Traffic:
    """The Traffic a connection of ``transport`` counts into (fetched once per connection)."""
    traffic = stats.traffic.get(transport)
    if traffic is None:
        traffic = stats.traffic[transport] = Traffic()
    return traffic


class NodeCollector:
    """Exports a node's Stats and gauges. ``gauges`` maps a metric name to
    (help text, callable returning a number or a {label value: number} dict, label name)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.gauges: dict[str, tuple[str, Callable[[], Any], str | None]] = {}
        self.counters: dict[str, tuple[str, Callable[[], Any], str]] = {}

    def add_gauge(
        self, name: str, doc: str, read: Callable[[], Any], label: str | None = None
    ) -> None:
        self.gauges[name] = (doc, read, label)

    def add_counter(self, name: str, doc: str, read: Callable[[], Any], label: str) -> None:
        """A labelled counter read at scrape time: ``read`` returns {label value: count}."""
        self.counters[name] = (doc, read, label)

    def collect(self) -> Iterable[Metric]:
        s = self.stats
        for name, doc, attr in _TRAFFIC:
            family = CounterMetricFamily(name, doc, labels=["transport"])
            for transport, traffic in s.traffic.items():
                family.add_metric([transport], getattr(traffic, attr))
            yield family
        yield s.latency.family(
            "o2o_send_to_write_seconds",
            "From a send's acceptance to the write of its msg frame to a live device"
            " (sampled: the newest message of each batch written; 1 ms resolution).",
        )
        for name, doc, counts, label in (
            ("o2o_connections_opened", "Connections opened, by transport.", s.opened, "transport"),
            (
                "o2o_connections_closed",
                "Connections closed after their welcome, by reason (bye, lost, silent, or"
                " the code of the error that closed them).",
                s.closed,
                "reason",
            ),
            (
                "o2o_connections_refused",
                "Connections that ended before a welcome, by reason (the error code, lost"
                " when the peer went away, origin for a browser page not allowed).",
                s.refused,
                "reason",
            ),
            (
                "o2o_lp_forwarded",
                "Long-poll requests for a session another node holds, forwarded to it, by"
                " outcome (answered: the owner's answer passed on; failed: 404 instead).",
                s.lp_forwards,
                "outcome",
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, n in sorted(counts.items()):
                family.add_metric([key], n)
            yield family
        yield _counter("o2o_messages_in", "Sends accepted.", s.msgs_in)
        yield _counter("o2o_messages_out", "msg frames written to devices.", s.msgs_out)
        receipts = CounterMetricFamily("o2o_receipts", "Receipts by status.", labels=["status"])
        for status, n in sorted(s.receipts.items()):
            receipts.add_metric([status], n)
        yield receipts
        yield _counter(
            "o2o_presence_frames", "Presence frames written to devices.", s.presence_frames
        )
        yield _counter(
            "o2o_presence_bytes", "Encoded bytes of presence frames written.", s.presence_bytes
        )
        yield _counter(
            "o2o_presence_coalesced",
            "Presence changes superseded within a window and never sent.",
            s.presence_coalesced,
        )
        yield _counter("o2o_pings_sent", "Heartbeat pings sent.", s.pings_sent)
        pings_saved = CounterMetricFamily(
            "o2o_pings_saved", "Heartbeat pings not sent, by rule.", labels=["rule"]
        )
        pings_saved.add_metric(["liveness"], s.pings_saved_live)
        pings_saved.add_metric(["transfer"], s.pings_saved_transfer)
        yield pings_saved
        yield _counter(
            "o2o_store_refused",
            "Sends refused with 503 because a stored-bytes cap was reached.",
            s.store_refused,
        )
        errors = CounterMetricFamily("o2o_errors", "Error frames sent, by code.", labels=["code"])
        for code, n in sorted(s.errors.items()):
            errors.add_metric([str(code)], n)
        yield errors
        for name, (doc, read, label) in self.counters.items():
            c = CounterMetricFamily(name, doc, labels=[label])
            for key, v in sorted(read().items()):
                c.add_metric([str(key)], v)
            yield c
        for name, (doc, read, label) in self.gauges.items():
            value = read()
            if label is None:
                yield GaugeMetricFamily(name, doc, value=value)
            else:
                g = GaugeMetricFamily(name, doc, labels=[label])
                for key, v in sorted(value.items()):
                    g.add_metric([str(key)], v)
                yield g


_TRAFFIC = (
    ("o2o_frames_in", "Frames received from clients, by transport.", "frames_in"),
    ("o2o_bytes_in", "Bytes received from clients, by transport.", "bytes_in"),
    ("o2o_frames_out", "Frames written to clients, by transport.", "frames_out"),
    ("o2o_bytes_out", "Bytes written to clients, by transport.", "bytes_out"),
)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class Metrics:
    """A node's registry: ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.collector = NodeCollector(self.stats)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        # open fds against the limit, CPU seconds, memory, start time (/proc, at scrape time)
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
