"""The supervisor's thresholds and rates, taken from the node's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SupervisorSettings:
    """Thresholds and rates; 0 turns a threshold off. See doc/operations.md."""

    interval: float = 5.0
    # alerts and the scale-out hook
    alert_connections: int = 0
    alert_cpu: float = 90.0
    alert_memory: float = 90.0
    alert_clear: float = 0.8
    alert_cooldown: float = 300.0
    # the scale-in hook: every metric at or below its mark for scale_in_after seconds
    scale_in_connections: int = 0
    scale_in_cpu: float = 10.0
    scale_in_memory: float = 50.0
    scale_in_after: float = 600.0
    # refusing new connections
    hard_connections: int = 0
    hard_memory: float = 0.0
    # transport advice: long-poll when P >= advice_async_above, WebSocket again when
    # P <= advice_duplex_below; always WebSocket below advice_min_connections
    advice_async_above: float = 80.0
    advice_duplex_below: float = 50.0
    advice_min_connections: int = 1000
    # how fast the gateway is asked to send clients away when the node drains
    drain_rate: float = 200.0
    recent_alerts: int = 100

    @classmethod
    def from_config(cls, config: Any) -> SupervisorSettings:
        """Take every config key of the same name (``sample_interval`` for ``interval``)."""
        values = {}
        for name in cls.__dataclass_fields__:
            key = "sample_interval" if name == "interval" else name
            if hasattr(config, key):
                values[name] = getattr(config, key)
        return cls(**values)
