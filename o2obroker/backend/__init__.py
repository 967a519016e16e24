"""Everything cluster-wide lives behind one interface: inboxes, cursors, rooms, dedupe."""

from o2obroker.backend.interface import (
    BackendUnavailable,
    IBackend,
    InboxState,
    Location,
    StoredMessage,
    StoreFull,
)
from o2obroker.backend.memory import MemoryBackend
from o2obroker.backend.timeouts import TimeoutBackend

__all__ = [
    "BackendUnavailable",
    "IBackend",
    "InboxState",
    "Location",
    "MemoryBackend",
    "StoreFull",
    "StoredMessage",
    "TimeoutBackend",
]
