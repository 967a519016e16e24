"""The node's log: one JSON object a line (``log_format = json``), and budgets for noisy sources.

Events are logged with plain strings and numbers as keys (``user``,
``device``, ``transport``, ``peer``, ``code``...), so the JSON line of an
event carries them as they are; its ``message`` is the text line's message.
Keys that hold other objects are left out of the JSON (the message already
shows them), so nothing is written as "unpersistable"; so are keys that start
with ``_``, pieces of the text line only.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)

LOG_FORMATS = ("text", "json")
_PLAIN = (str, int, float, bool, type(None))


def json_line(event: dict[str, Any]) -> str:
    """One event as one line of JSON: time, level, namespace, message, then its plain keys."""
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        out["failure"] = failure.getTraceback()
    for key, value in event.items():
        if key in out or key.startswith(("log_", "_")) or key in ("format", "message"):
            continue
        if type(value) in _PLAIN:
            out[key] = value
    return json.dumps(out, ensure_ascii=False, default=str) + "\n"


def quiet(observer: ILogObserver) -> ILogObserver:
    """``observer`` without debug events, and with twisted.conch's chatter (a score of
    lines per console login: key exchange, services, channels) only from warnings up;
    the console logs its own line per login."""
    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    levels.setLogLevelForNamespace("twisted.conch", LogLevel.warn)
    return FilteringLogObserver(observer, [levels])


def twistd_observer(twistd_options: Any, log_format: str) -> ILogObserver | None:
    """The log twistd would open for its options (``--logfile``, ``-n``, stdout, SIGUSR1
    rotation), in ``log_format`` and ``quiet``; None for syslog, left to twistd."""
    if twistd_options.get("syslog"):
        return None
    # the Unix runner's logger knows where twistd's log goes; only the lines change
    from twisted.scripts._twistd_unix import UnixAppLogger

    observer = UnixAppLogger(twistd_options)._getLogObserver()
    if not isinstance(observer, FileLogObserver):
        return None
    if log_format == "json":
        observer.formatEvent = json_line
    return quiet(observer)


class Budget:
    """Lines a noisy source (one connection's errors) may log: ``burst`` at once, then
    one every ``every`` seconds. What is held back is counted and said with the next
    line, so a client sending garbage in a loop costs a few lines, not the disk."""

    __slots__ = ("_stamp", "_tokens", "held", "suppressed")

    def __init__(self, now: float, burst: int = 5) -> None:
        self._tokens = float(burst)
        self._stamp = now
        self.held = 0  # lines held back since the last one logged
        self.suppressed = 0  # lines held back in all

    def take(self, now: float, burst: int = 5, every: float = 10.0) -> bool:
        """Whether a line may be logged now; the caller reports and zeroes ``held``."""
        tokens = min(float(burst), self._tokens + (now - self._stamp) / every)
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        self.held += 1
        self.suppressed += 1
        return False
