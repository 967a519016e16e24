"""Which nodes exist, and which one a client should use.

``INodeDirectory`` is the one question routing asks of a cluster: the live
nodes and how they fare. A node alone answers it from its own figures
(``LocalDirectory``); a cluster answers it from the node registry, whose
records ``NodeInfo.from_record`` reads. ``pick`` and ``least_loaded`` are
the two rules clients are routed by (doc/protocol.md section 8): a
rendezvous hash of a key onto the healthy nodes of a cluster, with the next
node for that key as standby, and the fewest connections.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

TRANSPORTS = ("ws", "tcp", "lp")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One live node as routing sees it.

    ``addresses`` maps ``ws``, ``tcp`` and ``lp`` to where clients reach the
    node; empty for "as this request reached us" (a node alone does not know
    the name it is called by). ``healthy`` is False while the node is over
    an alert threshold; ``full`` while it is past a hard limit; ``draining``
    while it sends its clients away.
    """

    id: str
    cluster: str = "default"
    addresses: Mapping[str, str] = field(default_factory=dict)
    connections: int = 0
    occupancy: float = 0.0
    advice: str = "ws"
    draining: bool = False
    healthy: bool = True
    full: bool = False

    @property
    def takes_clients(self) -> bool:
        """Whether a new client's hello would be let in."""
        return not (self.draining or self.full)

    @property
    def routable(self) -> bool:
        """Whether keys may hash here: taking clients and under every alert threshold."""
        return self.healthy and not (self.draining or self.full)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> NodeInfo:
        """Read a node registry record (the shape of ``GET /api/v1/nodes``)."""
        connections = record.get("connections") or 0
        if isinstance(connections, Mapping):
            connections = sum(connections.values())
        addresses = record.get("addresses") or {}
        return cls(
            id=str(record["id"]),
            cluster=str(record.get("cluster") or "default"),
            addresses={k: str(addresses[k]) for k in TRANSPORTS if addresses.get(k)},
            connections=int(connections),
            occupancy=float(record.get("occupancy") or 0.0),
            advice=str(record.get("advice") or "ws"),
            draining=bool(record.get("draining", False)),
            healthy=bool(record.get("healthy", True)),
            full=bool(record.get("full", False)),
        )


class INodeDirectory(Interface):
    """The live nodes of every cluster this node knows of."""

    def nodes() -> Deferred[list[NodeInfo]]:
        """Fire with the live nodes (this one included), in any order.

        A node whose heartbeat lapsed is not in the list. May fail (the
        registry is unreachable): callers answer 503.
        """


@implementer(INodeDirectory)
class StaticDirectory:
    """A fixed, editable list of nodes: tests, and clusters described by hand."""

    def __init__(self, nodes: Iterable[NodeInfo] = ()) -> None:
        self._nodes = {n.id: n for n in nodes}

    def nodes(self) -> Deferred[list[NodeInfo]]:
        return succeed(list(self._nodes.values()))

    def put(self, node: NodeInfo) -> None:
        """Add a node or replace its record."""
        self._nodes[node.id] = node

    def remove(self, node_id: str) -> None:
        """The node died: it is gone from the next answer."""
        self._nodes.pop(node_id, None)

    def update(self, node_id: str, **changes: Any) -> None:
        """Change some fields of a node's record (``healthy=False``, ...)."""
        self._nodes[node_id] = replace(self._nodes[node_id], **changes)


@implementer(INodeDirectory)
class LocalDirectory:
    """A node alone: the directory holds this node, from its own figures, as of now.

    ``figures`` returns the parts of the record that change (connections by
    transport, occupancy, advice, draining, healthy, full); it is called once
    per look-up, not per message.
    """

    def __init__(self, node_id: str, cluster: str, figures: Callable[[], Mapping[str, Any]]):
        self.node_id = node_id
        self.cluster = cluster
        self._figures = figures

    def nodes(self) -> Deferred[list[NodeInfo]]:
        record = {"id": self.node_id, "cluster": self.cluster, **self._figures()}
        return succeed([NodeInfo.from_record(record)])


@implementer(INodeDirectory)
class RegistryDirectory:
    """The nodes of a node registry: ``records`` fires with its live records
    (dicts in the shape of ``GET /api/v1/nodes``), read by ``NodeInfo.from_record``.

    A record that cannot be read is left out (and logged), so that one bad
    node never hides the others.
    """

    log = Logger()

    def __init__(self, records: Callable[[], Deferred[list[Mapping[str, Any]]]]) -> None:
        self._records = records

    def nodes(self) -> Deferred[list[NodeInfo]]:
        return self._records().addCallback(self._read)

    def _read(self, records: list[Mapping[str, Any]]) -> list[NodeInfo]:
        nodes = []
        for record in records:
            try:
                nodes.append(NodeInfo.from_record(record))
            except (KeyError, TypeError, ValueError) as e:
                self.log.warn("node record left out: {error!r}", error=e)
        return nodes


def _score(key: bytes, node_id: str) -> bytes:
    # rendezvous (highest random weight): every node draws a number for the key;
    # the highest wins. sha256, because the front proxy's njs script
    # (service/proxy.js) has it too and must rank keys exactly alike.
    return hashlib.sha256(key + b"\0" + node_id.encode()).digest()[:8]


def rank(key: str, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    """``nodes`` in the order they claim ``key``, the strongest claim first.

    The order of two nodes never depends on the others: a node that leaves
    takes only the keys it held, each to the node next in that key's own
    order, so a dead node's keys spread over the rest.
    """
    k = key.encode("utf-8", "surrogatepass")
    return sorted(nodes, key=lambda n: _score(k, n.id), reverse=True)


def pick(
    key: str, nodes: Iterable[NodeInfo], cluster: str
) -> tuple[NodeInfo, NodeInfo | None] | None:
    """The node of ``cluster`` that ``key`` hashes to, and its standby.

    Only routable nodes count (healthy, not draining, not full): while a
    key's node is not, its standby is the key's node. None when the cluster
    has no routable node.
    """
    k = key.encode("utf-8", "surrogatepass")
    # the two strongest claims only: no sort of the whole cluster per look-up
    top = heapq.nlargest(
        2,
        (n for n in nodes if n.cluster == cluster and n.routable),
        key=lambda n: _score(k, n.id),
    )
    if not top:
        return None
    return top[0], top[1] if len(top) > 1 else None


def least_loaded(nodes: Iterable[NodeInfo], room: str | None = None) -> NodeInfo | None:
    """Where a new client should go: the node taking clients with the fewest connections.

    With ``room``, the room's own node (a rendezvous hash of the room over
    the healthy nodes taking clients), so that a room's members meet on one
    node while it stays healthy; when none is healthy, the least loaded.
    Ties go to the lower id, so that every node answers alike.
    """
    open_ = [n for n in nodes if n.takes_clients]
    if room is not None:
        ranked = rank(room, (n for n in open_ if n.healthy))
        if ranked:
            return ranked[0]
    if not open_:
        return None
    return min(open_, key=lambda n: (n.connections, n.id))
