"""The HTTP port of a node, put together from the transports that share it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from o2obroker.transports.api import add_api
from o2obroker.transports.common import OriginPolicy, TrustedProxies
from o2obroker.transports.longpoll import Forwarder, LongPollResource
from o2obroker.transports.web import WebSite, static_file
from o2obroker.transports.websocket import websocket_resource

#: seconds a forwarded request may take beyond the poll it holds
FORWARD_MARGIN = 10


def _registry_http(node: Any) -> Callable[[str], str | None]:
    """Owner id -> the HTTP base URL the registry lists for it (None: not live)."""

    def address_of(owner: str) -> str | None:
        if owner == node.config.node:
            return None
        registry = getattr(node, "registry", None)
        for record in registry.nodes if registry is not None else ():
            if record.get("id") == owner:
                return (record.get("addresses") or {}).get("http")
        return None

    return address_of


def build_site(node: Any, reactor: IReactorTime) -> WebSite:
    """The whole HTTP port of a node: ``/``, ``/ws``, ``/lp/*``, the API and static files."""
    config = node.config
    origins = OriginPolicy(config.allowed_origins, config.auth_mode)
    root = Resource()
    root.putChild(b"", static_file("index.html"))
    for name in ("o2obroker.js", "demo.js", "demo.css", "favicon.svg"):
        root.putChild(name.encode(), static_file(name))
    ws = websocket_resource(node.gateway, config, origins, reactor)
    root.putChild(b"ws", ws)
    lp = LongPollResource(
        node.gateway,
        origins,
        reactor,
        timeout=config.lp_timeout,
        node=config.node,
        forwarder=Forwarder(
            reactor,
            _registry_http(node),
            timeout=config.lp_timeout + FORWARD_MARGIN,
            counts=node.gateway.stats.lp_forwards,
        ),
        trusted=TrustedProxies(config.trusted_proxies),
    )
    root.putChild(b"lp", lp)
    add_api(root, node, reactor, origins)
    site = WebSite(
        root,
        reactor,
        request_deadline=config.request_deadline,
        max_body=config.limits.max_frame,
    )
    site.longpoll = lp
    site.websockets = ws.factory
    return site
