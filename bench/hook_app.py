"""The application side of the publish hook for bench/pipeline_relay.py: accepts everything.

.venv/bin/python bench/hook_app.py PORT
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class Accept(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        body = json.loads(request.content.read())
        request.setHeader(b"content-type", b"application/json")
        n = len(body.get("messages", ()))
        return json.dumps({"verdicts": [{"action": "accept"}] * n}).encode()


if __name__ == "__main__":
    site = Site(Accept())
    site.noisy = False
    reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
    reactor.run()
