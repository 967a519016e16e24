"""``broker``: what an operator types at the admin console.

A handful of questions and actions over the live node, safe on a big node
(nothing walks every user in one call) and answering with plain dicts that
read well in a terminal. Calls that wait on the backend return a Deferred;
the console prints its result when it fires. The live objects (``node``,
``node.gateway``, ``node.router``...) are in the console's namespace too, for
debugging.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from twisted.internet.defer import Deferred

from o2obroker.routing.apps import app_settings, valid_name
from o2obroker.wire import ProtocolError

MAX_PAGE = 1000


def _without_t(frame: dict[str, Any]) -> dict[str, Any]:
    """A receipt reads better at the prompt without its ``t``; an error keeps it."""
    if frame.get("t") == "receipt":
        return {k: v for k, v in frame.items() if k != "t"}
    return frame


class Broker:
    """The console facade. ``broker`` alone prints this help.

    broker.stats()                  node figures: connections, actors, messages, load, advice
    broker.users(limit=50, start=0) a page of the users with an actor here, and their count
    broker.user("alice")            alice's devices on this node
    broker.where("alice")           on which live node each of alice's devices is (Deferred)
    broker.inbox("alice")           alice's inbox state (Deferred)
    broker.kick("alice")            close alice's connections here (503; clients reconnect)
    broker.send("alice", body)      send a message from "system" (Deferred of the receipt)
    broker.alerts(n=20)             the supervisor's recent alerts
    broker.drain()                  stop taking clients and send them away (Deferred: empty)
    broker.resume()                 take clients again after a drain
    broker.reload_filters()         read the keyword lists again (Deferred), like SIGHUP
    broker.apps()                   the app registry: business id -> cluster, and the source
    broker.add_app("shop", "c1")    add or change an app of the shared registry (Deferred)
    broker.remove_app("shop")       remove an app from the shared registry (Deferred)
    """

    def __init__(self, node: Any) -> None:
        self._node = node

    def __repr__(self) -> str:
        return (type(self).__doc__ or "").strip()

    # -- questions -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """One look at the node, from counters it keeps anyway."""
        node = self._node
        stats = node.metrics.stats
        supervisor = getattr(node, "supervisor", None)
        out: dict[str, Any] = {
            "node": node.config.node,
            "connections": dict(node.gateway.connections),
            "actors": len(node.actors),
            "frames_in": sum(t.frames_in for t in stats.traffic.values()),
            "messages_in": stats.msgs_in,
            "messages_out": stats.msgs_out,
            "receipts": dict(stats.receipts),
            "errors": dict(stats.errors),
            "accepting": node.gateway.accepting,
        }
        if supervisor is not None:
            last = supervisor.last
            out["load"] = (
                None
                if last is None
                else {
                    "cpu": last.cpu,
                    "rss": last.rss,
                    "memory": last.memory,
                    "occupancy": last.occupancy,
                    "at": last.ts,
                }
            )
            out["state"] = supervisor.state
            out["advice"] = supervisor.advice()["transport"]
            out["draining"] = supervisor.draining
        return out

    def users(self, limit: int = 50, start: int = 0) -> dict[str, Any]:
        """A page of users with an actor on this node (in arrival order) and how many there are.

        Pages are at most MAX_PAGE long, so a node with a million users costs
        one page, not a million entries.
        """
        limit = max(0, min(int(limit), MAX_PAGE))
        start = max(0, int(start))
        actors = self._node.router.actors
        return {
            "count": len(actors),
            "start": start,
            "users": list(islice(actors, start, start + limit)),
        }

    def user(self, user: str) -> dict[str, Any] | None:
        """The user's devices on this node, or None when it has no actor here."""
        actor = self._node.router.actors.get(user)
        if actor is None:
            return None
        devices = {}
        for name, device in list(actor.devices.items())[:MAX_PAGE]:
            conn = getattr(device, "conn", None)
            devices[name] = {
                "kind": device.kind,
                "transport": getattr(conn, "transport_name", None),
                "cursor": device.cursor,
                "live": getattr(device, "live", None),
            }
        return {"user": user, "devices": devices}

    def where(self, user: str) -> Deferred[dict[str, Any]]:
        """Each live device of the user, on any node: its node and that node's boot."""
        d = self._node.backend.locations([user])

        def found(located: dict[str, Any]) -> dict[str, Any]:
            devices = located.get(user, {})
            return {
                "user": user,
                "devices": {
                    name: {"node": at.node, "boot": at.boot} for name, at in sorted(devices.items())
                },
            }

        return d.addCallback(found)

    def inbox(self, user: str) -> Deferred[dict[str, Any]]:
        """The user's inbox state in the backend: highest seq given, lowest kept."""
        d = self._node.backend.inbox_state(user)
        return d.addCallback(lambda s: {"user": user, "last": s.last, "first": s.first})

    def alerts(self, n: int = 20) -> list[dict[str, Any]]:
        """The supervisor's most recent alerts, recoveries and hook failures."""
        supervisor = getattr(self._node, "supervisor", None)
        if supervisor is None:
            return []
        return supervisor.alerts()[-max(0, int(n)) :] if n else []

    # -- actions -------------------------------------------------------------------

    def kick(self, user: str, reason: str = "disconnected by the operator") -> int:
        """Close every connection of ``user`` on this node with a 503; how many closed.

        Nothing is lost: the messages stay in the inbox for the client's resume.
        """
        actor = self._node.router.actors.get(user)
        if actor is None:
            return 0
        devices = [d for d in actor.devices.values() if hasattr(d, "fail")]
        for device in devices:
            device.fail(ProtocolError(503, reason, fatal=True))
        return len(devices)

    def send(
        self, user: str, body: Any, sender: str = "system", id: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """Send ``body`` to ``user`` from ``sender`` through the same path as a client's send.

        Fires with the receipt (or the error frame). ``id`` dedupes like a
        send's: repeating it returns the first receipt and delivers nothing.
        """
        d = self._node.gateway.service.send(sender, body, to=user, id=id, device="console")
        return d.addCallback(_without_t)

    def drain(self) -> Deferred[None]:
        """Stop taking clients and send the connected ones elsewhere; fires when empty."""
        return self._node.supervisor.drain()

    def reload_filters(self) -> Deferred[str]:
        """Read the keyword filter's word lists again without a restart.

        The new lists take effect at once for every later message; a list that
        cannot be read keeps the old ones and fails with the reason.
        """
        return self._node.reload_filters()

    def resume(self) -> None:
        """Take clients again after a drain."""
        self._node.supervisor.resume()

    # -- the app registry -----------------------------------------------------------

    def apps(self) -> dict[str, dict[str, Any]]:
        """Every app this node admits: its cluster, settings, and source (config or shared)."""
        return self._node.apps.listing()

    def add_app(self, app: str, cluster: str, **settings: Any) -> Deferred[str]:
        """Add ``app`` to the registry every node shares, or change it; every node
        admits it within its ``app_refresh`` (this one at once)."""
        record = app_settings(app, cluster, **settings)
        return self._edit(lambda store: store.put_app(app, record), app, "added")

    def remove_app(self, app: str) -> Deferred[str]:
        """Remove ``app`` from the shared registry: new hellos naming it get 403
        within ``app_refresh``; connected clients stay until they leave."""
        if not valid_name(app):
            raise ValueError(f"{app!r} is not a valid business id")
        return self._edit(lambda store: store.remove_app(app), app, "removed")

    def _edit(self, edit: Any, app: str, done: str) -> Deferred[str]:
        node = self._node
        shared = getattr(node, "shared_apps", None)
        if shared is None:
            raise RuntimeError(
                "the embedded backend has no shared app registry: use [app:ID] config sections"
            )

        def edited(changed: bool) -> Deferred[str]:
            d = shared.refresh()
            note = "" if changed else " (no change)"
            if app in node.config.apps and done == "removed":
                note += f"; still admitted here by this node's [app:{app}] section"
            return d.addCallback(lambda _: f"{app} {done}{note}")

        return edit(node.store).addCallback(edited)
