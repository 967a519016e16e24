"""The HTTP port of a node, put together from the transports that share it."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from o2obroker.transports.api import add_api
from o2obroker.transports.common import OriginPolicy
from o2obroker.transports.longpoll import LongPollResource
from o2obroker.transports.web import WebSite, static_file
from o2obroker.transports.websocket import websocket_resource


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
    lp = LongPollResource(node.gateway, origins, reactor, timeout=config.lp_timeout)
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
