"""The server-side HTTP API (doc/protocol.md section 8), health and metrics.

Every answer is JSON (``/metrics`` is Prometheus text). ``/api/v1/...`` needs
``Authorization: Bearer <api key>``; health, metrics, the free-host and the
route look-ups are public. A publish goes through the sending user's actor
exactly like a client's ``send``: the same id dedupe, routing, inbox and
receipt.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from o2obroker.actors.history import read_history
from o2obroker.actors.supervisor import occupancy_of
from o2obroker.routing import NodeInfo, least_loaded, pick
from o2obroker.transports.common import finish, json_answer, json_body
from o2obroker.wire import ProtocolError, decode_json, parse_frame, valid_room, valid_user

PUBLISH_TIMEOUT = 30.0
FREE_HOST_RETRY = 5  # seconds, in Retry-After when no node can take a client


def _write(request: Any, code: int, obj: Any) -> None:
    finish(request, code, json_body(obj))


def _answer(request: Any, code: int, obj: Any) -> bytes:
    return json_answer(request, code, json_body(obj))


def _args(request: Any, name: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in request.args.get(name.encode(), [])]


def _arg(request: Any, name: str) -> str | None:
    values = _args(request, name)
    return values[0] if values else None


class _Endpoint(Resource):
    """A leaf of the API: JSON for every answer, 405 for methods it does not serve."""

    isLeaf = True
    public = False

    def __init__(self, node: Any, clock: IReactorTime) -> None:
        super().__init__()
        self.node = node
        self.clock = clock

    def render(self, request: Any) -> Any:
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, f"render_{method}", None)
        if handler is None:
            request.setHeader(b"allow", b"GET, POST")
            return _answer(request, 405, {"error": f"method {method} not allowed here"})
        if not self.public and not self._authorised(request):
            request.setHeader(b"www-authenticate", b'Bearer realm="o2obroker"')
            return _answer(request, 401, {"error": "missing or wrong API key"})
        return handler(request)

    def _authorised(self, request: Any) -> bool:
        config = self.node.config
        key = config.api_key
        if not key:
            # no key configured: open in development mode only
            return config.auth_mode == "none"
        given = request.getHeader(b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode())

    def body(self, request: Any) -> dict[str, Any] | bytes:
        """The JSON object of the body, or the 400 answer refusing it."""
        try:
            value = decode_json(request.content.read(), self.node.config.limits)
        except ProtocolError as e:
            return _answer(request, 413 if e.code == 413 else 400, {"error": e.reason})
        if type(value) is not dict:
            return _answer(request, 400, {"error": "the body must be a JSON object"})
        return value


def addresses(node: Any, request: Any) -> dict[str, str]:
    """How clients reach this node, as seen by the request (the Host it used)."""
    host = (request.getHeader(b"host") or b"127.0.0.1").decode("latin-1")
    secure = request.isSecure()
    hostname = urlsplit(f"//{host}").hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    tcp_port = getattr(node, "tcp_port", None) or _port_of(node.config.tcp)
    return {
        "ws": f"{'wss' if secure else 'ws'}://{host}/ws",
        "lp": f"{'https' if secure else 'http'}://{host}/lp",
        "tcp": f"{hostname}:{tcp_port}",
    }


def _port_of(endpoint: str, default: str = "9100") -> str:
    parts = endpoint.split(":")
    for part in parts[1:]:
        if part.isdigit():
            return part
    return default


def _supervisor(node: Any) -> Any:
    return getattr(node, "supervisor", None)


class Publish(_Endpoint):
    """``POST /api/v1/publish``: inject a message as a back-end service would."""

    log = Logger()

    def render_POST(self, request: Any) -> Any:
        obj = self.body(request)
        if type(obj) is bytes:
            return obj
        if "body" not in obj:
            return _answer(request, 400, {"error": "body is missing"})
        if ("to" in obj) == ("room" in obj):
            return _answer(request, 400, {"error": "give exactly one of to and room"})
        send_id = obj.get("id")
        try:
            d = self.node.gateway.service.send(
                obj.get("from", "system"),
                obj["body"],
                to=obj.get("to"),
                room=obj.get("room"),
                id=send_id if send_id is not None else f"api-{secrets.token_hex(8)}",
                device="api",
            )
        except ProtocolError as e:
            return _answer(request, e.code, {"error": e.reason})
        d.addTimeout(PUBLISH_TIMEOUT, self.clock)
        d.addCallbacks(lambda frame: _publish_answer(request, frame), lambda _: _late(request))
        return NOT_DONE_YET


def _publish_answer(request: Any, frame: dict[str, Any]) -> None:
    """The receipt, or the error that refused the send, as the HTTP answer."""
    if frame["t"] == "receipt":
        _write(request, 200, frame)
    else:
        _write(request, frame.get("code", 400), {"error": frame.get("reason", ""), "frame": frame})


def _late(request: Any) -> None:
    _write(request, 504, {"error": "no receipt in time; retry with the same id"})


class History(_Endpoint):
    """``GET /api/v1/history?room=r`` or ``?user=a&with=b``, ``&before=<mid>&limit=N``.

    A page of the archive, like the ``history`` frame's answer. With ``room``
    and ``user`` the user must be a member (403); with ``room`` alone a
    back-end service reads any room, as it may publish to any.
    """

    def render_GET(self, request: Any) -> Any:
        limits = self.node.config.limits
        room, user, peer = _arg(request, "room"), _arg(request, "user"), _arg(request, "with")
        frame: dict[str, Any] = {"t": "history", "id": "api"}
        if room is not None:
            frame["room"] = room
            if user is not None and not valid_user(user, limits):
                return _answer(request, 400, {"error": "user is not a valid user id"})
        elif user is None or peer is None:
            return _answer(request, 400, {"error": "give room, or user and with"})
        elif not valid_user(user, limits):
            return _answer(request, 400, {"error": "user is not a valid user id"})
        else:
            frame["with"] = peer
        before = _arg(request, "before")
        if before is not None:
            frame["before"] = before
        limit = _arg(request, "limit")
        if limit is not None:
            if not (limit.isascii() and limit.isdigit()):  # "²" is a digit to isdigit
                return _answer(request, 400, {"error": "limit must be an integer"})
            frame["limit"] = int(limit)
        try:
            history = parse_frame(frame, limits)
        except ProtocolError as e:
            return _answer(request, e.code, {"error": e.reason.removeprefix("history: ")})
        business = getattr(self.node, "business", None)
        d = read_history(
            getattr(business, "archive", None),
            self.node.backend,
            user,
            peer=history.peer,
            room=history.room,
            before=history.before,
            limit=history.limit,
        )
        d.addCallback(lambda page: _write(request, 200, page))
        d.addErrback(self._refused, request)
        return NOT_DONE_YET

    def _refused(self, failure: Any, request: Any) -> None:
        if failure.check(ProtocolError):
            _write(request, failure.value.code, {"error": failure.value.reason})
        else:
            Logger().failure("history", failure)
            _write(request, 503, {"error": failure.getErrorMessage()})


class Presence(_Endpoint):
    """``GET /api/v1/presence?user=a&user=b``, from the node's presence state."""

    def render_GET(self, request: Any) -> Any:
        users = _args(request, "user")
        limits = self.node.config.limits
        if not users:
            return _answer(request, 400, {"error": "name at least one user"})
        if len(users) > limits.max_watch:
            return _answer(request, 400, {"error": f"at most {limits.max_watch} users"})
        bad = [u for u in users if not valid_user(u, limits)]
        if bad:
            return _answer(request, 400, {"error": f"not a valid user id: {bad[0][:140]!r}"})
        d: Deferred[Any] = maybeDeferred(self.node.presence.lookup, users)
        d.addCallback(lambda found: _write(request, 200, {"users": _presence_map(users, found)}))
        d.addErrback(lambda f: _write(request, 503, {"error": f.getErrorMessage()}))
        return NOT_DONE_YET


_OFFLINE = {"state": "offline", "status": "", "devices": 0}


def _presence_map(users: list[str], found: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for user in users:
        p = found.get(user)
        if p is None:
            out[user] = dict(_OFFLINE)
        else:
            out[user] = {"state": p.state, "status": p.status, "devices": p.devices}
    return out


class Nodes(_Endpoint):
    """``GET /api/v1/nodes``: every live node of the registry.

    This node's own record is made now, with the addresses the request used;
    the others' are what they last published (at most a heartbeat old).
    """

    def render_GET(self, request: Any) -> Any:
        # as the request reached this node, and its own HTTP port for its peers
        where = {**addresses(self.node, request), "http": public_addresses(self.node)["http"]}
        own = node_info(self.node, where, self.clock)
        d = self.node.backend.nodes()

        def listed(records: list[dict[str, Any]]) -> None:
            others = [r for r in records if r.get("id") != own["id"]]
            every = sorted([own, *others], key=lambda r: str(r.get("id")))
            _write(request, 200, {"nodes": every, "totals": node_totals(every)})

        def failed(failure: Any) -> None:
            _write(request, 503, {"error": failure.getErrorMessage(), "nodes": [own]})

        d.addCallbacks(listed, failed)
        return NOT_DONE_YET


def node_totals(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every node that runs workers, by its id: its live workers' records summed.

    ``workers`` is how many are live of ``count``; ``connections`` the sum by
    transport and ``occupancy`` the P of that sum (doc/operations.md).
    """
    totals: dict[str, dict[str, Any]] = {}
    for r in records:
        w = r.get("worker")
        if not isinstance(w, dict) or not isinstance(w.get("node"), str):
            continue
        t = totals.setdefault(w["node"], {"workers": 0, "count": w.get("count"), "connections": {}})
        t["workers"] += 1
        sums = t["connections"]
        for transport, n in (r.get("connections") or {}).items():
            sums[transport] = sums.get(transport, 0) + n
    for t in totals.values():
        t["occupancy"] = occupancy_of(t["connections"])
    return totals


def node_info(node: Any, where: dict[str, str], clock: IReactorTime) -> dict[str, Any]:
    """This node's record: who it is, where (``where``: its addresses), how
    loaded, whether it takes clients; the registry publishes the same record.

    ``cpu``, ``rss_bytes`` and ``memory_percent`` come from the supervisor's
    last sample (None before the first); the connection counts, the
    occupancy P computed from them, and whether the node is healthy and
    full (what routing reads: ``Node.figures``) are as of now.
    """
    supervisor = _supervisor(node)
    sample = getattr(supervisor, "last", None)
    figures = node.figures()
    record = {
        "id": node.config.node,
        "boot": node.backend.boot,  # this start of the node (doc/cluster.md)
        "cluster": node.config.cluster,
        "addresses": where,
        "connections": figures["connections"],
        "cpu": None if sample is None else sample.cpu,  # this process, % of one core
        "rss_bytes": None if sample is None else sample.rss,  # this process's resident memory
        "memory_percent": None if sample is None else sample.memory,  # the machine's, in use
        "occupancy": figures["occupancy"],
        "advice": figures["advice"],
        "draining": figures["draining"],
        "healthy": figures["healthy"],
        "full": figures["full"],
        "last_heartbeat": clock.seconds(),
    }
    worker = getattr(node, "worker", None)
    if worker is not None:
        record["worker"] = worker  # {"node", "index", "count"}: one of a node's workers
    return record


def public_addresses(node: Any) -> dict[str, str]:
    """How clients reach this node, as the registry tells other nodes: the
    ``public_host`` of the configuration and the ports the node listens on."""
    host = getattr(node.config, "public_host", "") or "127.0.0.1"
    bare = host.strip("[]")
    if ":" in bare:
        host = f"[{bare}]"
    http_port = getattr(node, "http_port", None) or _port_of(node.config.http, "8080")
    tcp_port = getattr(node, "tcp_port", None) or _port_of(node.config.tcp)
    return {
        "ws": f"ws://{host}:{http_port}/ws",
        "lp": f"http://{host}:{http_port}/lp",
        "tcp": f"{host}:{tcp_port}",
        # a worker's own port: its peers' forwards must reach this process, not the shared port
        "http": getattr(node, "internal_http", None) or f"http://{host}:{http_port}",
    }


class _Lookup(_Endpoint):
    """A public look-up that clients make before they connect, from any page's origin.

    Both answer from the node directory (this node alone, or the cluster's
    registry), so that every node of a cluster answers alike.
    """

    public = True

    def __init__(self, node: Any, clock: IReactorTime, origins: Any) -> None:
        super().__init__(node, clock)
        self.origins = origins

    def render_GET(self, request: Any) -> Any:
        origin = request.getHeader(b"origin")
        if origin is not None and self.origins.allows(
            origin.decode("latin-1"), (request.getHeader(b"host") or b"").decode("latin-1")
        ):
            request.setHeader(b"access-control-allow-origin", origin)
            request.setHeader(b"vary", b"Origin")
        request.setHeader(b"cache-control", b"no-store")
        return self.look_up(request)

    def look_up(self, request: Any) -> Any:
        raise NotImplementedError

    def _nodes(self, request: Any, answer: Any) -> Any:
        """Ask the directory, then ``answer(request, nodes)``; 503 when it cannot say."""
        d: Deferred[Any] = maybeDeferred(self.node.directory.nodes)
        d.addCallback(lambda nodes: answer(request, nodes))
        d.addErrback(self._unknown, request)
        return NOT_DONE_YET

    def _unknown(self, failure: Any, request: Any) -> None:
        Logger().failure("node directory", failure)
        _unavailable(request, "the node directory cannot be read now")

    def place(self, info: NodeInfo, request: Any) -> dict[str, str]:
        """The node's addresses; this node's as the request reached it when it has none."""
        if info.addresses or info.id != self.node.config.node:
            return dict(info.addresses)
        return addresses(self.node, request)


def _unavailable(request: Any, error: str) -> None:
    request.setHeader(b"retry-after", b"%d" % FREE_HOST_RETRY)
    _write(request, 503, {"error": error})


class FreeHost(_Lookup):
    """``GET /getFreeHostAddress?room=r``: where a new client should connect, and how.

    The node of this cluster taking clients with the fewest connections; with
    ``room``, the room's own node while it is healthy (doc/protocol.md
    section 8). Never a node that would refuse the client: when none of the
    directory's can take one, the better node the supervisor knows of, or 503.
    """

    def look_up(self, request: Any) -> Any:
        room = _arg(request, "room")
        if room is not None and not valid_room(room, self.node.config.limits):
            return _answer(request, 400, {"error": "room is not a valid room name"})
        return self._nodes(request, lambda request, nodes: self._answer(request, nodes, room))

    def _answer(self, request: Any, nodes: list[NodeInfo], room: str | None) -> None:
        cluster = self.node.config.cluster
        best = least_loaded((n for n in nodes if n.cluster == cluster), room)
        if best is not None:
            answer = {"node": best.id, **self.place(best, request), "transport": best.advice}
            _write(request, 200, answer)
            return
        supervisor = _supervisor(self.node)
        better = supervisor.better_node() if supervisor is not None else None
        if better is None:
            _unavailable(request, "no node can take clients now")
            return
        answer = {"node": better.get("node")}
        answer.update({k: better[k] for k in ("ws", "tcp", "lp") if better.get(k)})
        answer["transport"] = better.get("advice") or "ws"
        _write(request, 200, answer)


class Route(_Lookup):
    """``GET /api/v1/route?app=a&key=k``: the node a key of an app belongs to, and its standby.

    The registry centre of doc/protocol.md section 8: the app names the
    cluster (unknown → 403); a rendezvous hash of the key picks among the
    cluster's healthy nodes, so a key keeps its node while that node is
    healthy and only a failed node's keys move, each to its own standby.
    Without an app registry ``cluster`` names the cluster (default: this
    node's).
    """

    def look_up(self, request: Any) -> Any:
        app, key = _arg(request, "app"), _arg(request, "key")
        if key is None or not valid_room(key, self.node.config.limits):
            return _answer(request, 400, {"error": "key is missing or not a valid name"})
        apps = self.node.gateway.apps
        if not apps.loaded:
            _unavailable(request, "the app registry has not been read yet")
            return NOT_DONE_YET
        if apps:
            cluster = apps.cluster_of(app) if app is not None else None
            if cluster is None:
                return _answer(request, 403, {"error": "unknown app"})
        else:
            cluster = _arg(request, "cluster") or self.node.config.cluster
        return self._nodes(
            request, lambda request, nodes: self._answer(request, nodes, app, cluster, key)
        )

    def _answer(
        self, request: Any, nodes: list[NodeInfo], app: str | None, cluster: str, key: str
    ) -> None:
        found = pick(key, nodes, cluster)
        if found is None:
            _unavailable(request, f"no healthy node in cluster {cluster}")
            return
        node, standby = found
        _write(
            request,
            200,
            {
                "app": app,
                "cluster": cluster,
                "key": key,
                "node": {"id": node.id, **self.place(node, request)},
                "standby": None
                if standby is None
                else {"id": standby.id, **self.place(standby, request)},
            },
        )


class Drain(_Endpoint):
    """``POST /api/v1/drain``: stop taking clients and move the connected ones elsewhere."""

    def render_POST(self, request: Any) -> bytes:
        supervisor = _supervisor(self.node)
        d = maybeDeferred(supervisor.drain if supervisor is not None else self.node.gateway.drain)
        d.addErrback(lambda f: f.trap(CancelledError))  # resumed before it ended
        d.addErrback(lambda f: Logger().failure("drain failed", f))
        return _answer(request, 202, {"draining": True})


class Health(_Endpoint):
    """``GET /healthz``: 200 while the node takes clients, 503 while it drains,
    while its backend is unreachable (a load balancer then sends clients to a
    node whose sends can succeed), or before it has read the shared app registry."""

    public = True

    def render_GET(self, request: Any) -> bytes:
        supervisor = _supervisor(self.node)
        draining = (
            bool(supervisor.draining) if supervisor is not None else not self.node.gateway.accepting
        )
        if draining:
            return _answer(request, 503, {"status": "draining", "node": self.node.config.node})
        if not self.node.gateway.apps.loaded:
            # hellos would get 503 until the shared app registry is read: not ready yet
            return _answer(request, 503, {"status": "starting", "node": self.node.config.node})
        if not getattr(self.node.backend, "available", True):
            return _answer(
                request, 503, {"status": "backend unavailable", "node": self.node.config.node}
            )
        return _answer(request, 200, {"status": "ok", "node": self.node.config.node})


class Metrics(_Endpoint):
    """``GET /metrics`` in the Prometheus text format."""

    public = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return self.node.metrics.render()


def add_api(root: Resource, node: Any, clock: IReactorTime, origins: Any) -> None:
    """Mount the API, health, metrics and free-host look-up under ``root``."""
    api = Resource()
    v1 = Resource()
    api.putChild(b"v1", v1)
    root.putChild(b"api", api)
    v1.putChild(b"publish", Publish(node, clock))
    v1.putChild(b"presence", Presence(node, clock))
    v1.putChild(b"history", History(node, clock))
    v1.putChild(b"nodes", Nodes(node, clock))
    v1.putChild(b"route", Route(node, clock, origins))
    v1.putChild(b"drain", Drain(node, clock))
    root.putChild(b"getFreeHostAddress", FreeHost(node, clock, origins))
    root.putChild(b"healthz", Health(node, clock))
    root.putChild(b"metrics", Metrics(node, clock))
