"""Real broker processes for the cluster tests: ``twistd -n o2obroker`` on free ports.

Each node is a child process of the venv's Python, spawned on the reactor
(nothing blocks), with its own ini file in a temp dir; ``stop()`` ends it
with SIGTERM, ``kill()`` with SIGKILL. Every node started by a test is gone
after its cleanup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol

from tests.redis_server import free_port

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
SECRET = "cluster-process-secret-0123456789abc"


class _Output(ProcessProtocol):
    def __init__(self, node: BrokerProcess) -> None:
        self.node = node
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.node.output += data
        for marker, d in list(self.node.markers):
            if marker in self.node.output:
                self.node.markers.remove((marker, d))
                d.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.node.running = False
        for _, d in self.node.markers:
            d.errback(RuntimeError(f"node exited: {self.node.output[-2000:]!r}"))
        self.node.markers = []
        self.ended.callback(None)


class BrokerProcess:
    """One node: ``tcp`` (client endpoint string) and ``http`` (base URL) once started."""

    def __init__(self, name: str, redis_url: str, *, heartbeat: float = 0.5) -> None:
        self.name = name
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.tcp = f"tcp:127.0.0.1:{self.tcp_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.dir = tempfile.mkdtemp(prefix=f"o2o-node-{name}-")
        self.config = os.path.join(self.dir, "o2obroker.ini")
        with open(self.config, "w") as f:
            f.write(f"[broker]\nnode_heartbeat = {heartbeat}\nredis_timeout = 2\n")
            f.write("backend_timeout = 2\n")
        self.args = [
            TWISTD,
            "-n",
            "--pidfile=",
            "o2obroker",
            "--config",
            self.config,
            "--node",
            name,
            "--secret",
            SECRET,
            "--api-key",
            "k",
            "--redis",
            redis_url,
            "--tcp",
            f"tcp:{self.tcp_port}:interface=127.0.0.1",
            "--http",
            f"tcp:{self.http_port}:interface=127.0.0.1",
        ]
        self.output = b""
        self.markers: list[tuple[bytes, Deferred[None]]] = []
        self.running = False
        self._proto: _Output | None = None
        self._transport: Any = None

    def start(self) -> Deferred[None]:
        """Fires once the node has connected to Redis and listens."""
        self.output = b""
        # the command connection, the subscriber and the app registry, each says so once
        ready = gatherResults(
            [
                self.wait_for(b"/0: connected"),
                self.wait_for(b"subscriber: subscribed to"),
                self.wait_for(b"app registry version"),  # hellos get 503 until then
            ]
        )
        self._proto = _Output(self)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._transport = reactor.spawnProcess(
            self._proto, sys.executable, [sys.executable, *self.args], env=env, path=self.dir
        )
        self.running = True
        return ready.addCallback(lambda _: None)

    def wait_for(self, marker: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.markers.append((marker, d))
        return d

    def _signal(self, name: str) -> Deferred[None]:
        assert self._proto is not None
        if self.running:
            with contextlib.suppress(ProcessExitedAlready):
                self._transport.signalProcess(name)
        return self._proto.ended

    def kill(self) -> Deferred[None]:
        """SIGKILL: no clean stop, no departure from the registry."""
        return self._signal("KILL")

    def stop(self) -> Deferred[None]:
        return self._signal("TERM")

    def destroy(self) -> Deferred[None]:
        d = self.kill() if self._proto is not None else succeed(None)
        return d.addBoth(lambda _: shutil.rmtree(self.dir, ignore_errors=True))
