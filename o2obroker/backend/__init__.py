"""Everything cluster-wide lives behind one interface: inboxes, cursors, rooms, dedupe."""

from o2obroker.backend.interface import IBackend, InboxState, StoredMessage
from o2obroker.backend.memory import MemoryBackend

__all__ = ["IBackend", "InboxState", "MemoryBackend", "StoredMessage"]
