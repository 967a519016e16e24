"""Everything cluster-wide lives behind one interface: inboxes, cursors, rooms, dedupe."""

from o2obroker.backend.interface import (
    BackendUnavailable,
    IBackend,
    InboxState,
    StoredMessage,
    StoreFull,
)
from o2obroker.backend.memory import MemoryBackend

__all__ = [
    "BackendUnavailable",
    "IBackend",
    "InboxState",
    "MemoryBackend",
    "StoreFull",
    "StoredMessage",
]
