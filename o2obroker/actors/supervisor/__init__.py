"""The supervisor: a node watching its own load and acting on it.

It samples the process's CPU and memory and the node's connection counts on a
timer (``sampling``), and from each sample decides:

* **alerts** and the **scale hooks** (a command or a webhook that adds or
  removes nodes), through a declared alert state machine with hysteresis and
  a cooldown, so a load hovering at a threshold fires the scale-out hook once
  (``alerts``, ``hooks``);
* what **new clients** are told (``admission``): the transport advice, from
  the occupancy P = (A - B) / (A + B) x 100, where A counts duplex connections
  (binary TCP and WebSocket) and B long-poll sessions, and past a hard limit a
  503 with a redirect to a less loaded node when one is known.

Draining belongs to the gateway (session layer); the supervisor asks for it.
Everything here is transport-free: the gateway, the sampler, the hooks, the
clock and the source of known nodes are given to it.
"""

from o2obroker.actors.supervisor.admission import Admission, IGate, Unavailable
from o2obroker.actors.supervisor.alerts import (
    ALERTING,
    BETWEEN,
    COOLDOWN,
    NORMAL,
    OVER,
    TRANSITIONS,
    UNDER,
    Alerts,
)
from o2obroker.actors.supervisor.core import SUPERVISOR_GAUGES, Supervisor
from o2obroker.actors.supervisor.hooks import (
    CommandHook,
    HookFailed,
    HookRunner,
    IHook,
    WebhookHook,
    make_hook,
)
from o2obroker.actors.supervisor.sampling import (
    ASYNC,
    DUPLEX,
    ISampler,
    PsutilSampler,
    Resources,
    Sample,
    occupancy,
    occupancy_of,
)
from o2obroker.actors.supervisor.settings import SupervisorSettings

__all__ = [
    "ALERTING",
    "ASYNC",
    "BETWEEN",
    "COOLDOWN",
    "DUPLEX",
    "NORMAL",
    "OVER",
    "SUPERVISOR_GAUGES",
    "TRANSITIONS",
    "UNDER",
    "Admission",
    "Alerts",
    "CommandHook",
    "HookFailed",
    "HookRunner",
    "IGate",
    "IHook",
    "ISampler",
    "PsutilSampler",
    "Resources",
    "Sample",
    "Supervisor",
    "SupervisorSettings",
    "Unavailable",
    "WebhookHook",
    "make_hook",
    "occupancy",
    "occupancy_of",
]
