"""Everything cluster-wide lives behind one interface: inboxes, cursors, rooms, dedupe."""

from o2obroker.backend.interface import (
    BackendUnavailable,
    EncodedMessage,
    IBackend,
    InboxState,
    Location,
    Resynced,
    StoredMessage,
    StoreFull,
)
from o2obroker.backend.memory import MemoryBackend
from o2obroker.backend.timeouts import TimeoutBackend

__all__ = [
    "BackendUnavailable",
    "EncodedMessage",
    "IBackend",
    "InboxState",
    "Location",
    "MemoryBackend",
    "Resynced",
    "StoreFull",
    "StoredMessage",
    "TimeoutBackend",
]
