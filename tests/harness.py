"""A broker on a fake clock with binary connections over StringTransport."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.session.auth import make_token
from o2obroker.transports.tcp import BinaryFactory
from o2obroker.wire import FrameSplitter, decode_cbor, encode_cbor, frame
from o2obroker.wire.limits import Limits

SECRET = "test-secret-0123456789abcdef0123456789"


class Device:
    """One binary TCP client on a StringTransport: write frames, read frames."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.proto = harness.factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)
        self._splitter = FrameSplitter(64 << 20)
        self.received: list[dict[str, Any]] = []

    def write(self, f: dict[str, Any]) -> None:
        self.write_bytes(frame(encode_cbor(f)))

    def write_bytes(self, data: bytes) -> None:
        self.proto.dataReceived(data)
        self.harness.flush()

    def read(self) -> list[dict[str, Any]]:
        """Every frame written to the device since the last read."""
        data = self.transport.value()
        self.transport.clear()
        limits = Limits(max_frame=64 << 20, max_body=64 << 20)
        frames = [decode_cbor(p, limits) for p in self._splitter.feed(data)]
        self.received.extend(frames)
        return frames

    def read_types(self) -> list[str]:
        return [f["t"] for f in self.read()]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        self.proto.connectionLost(None)
        self.harness.flush()


class Harness:
    """A node with a task.Clock; ``flush`` runs what the reactor would run now."""

    def __init__(self, **settings: Any) -> None:
        limits = settings.pop("limits", Limits())
        self.config = Config(limits=limits, **settings)
        self.config.check()
        self.clock = Clock()
        self.node = Node(self.config, self.clock)
        self.factory = BinaryFactory(self.node.gateway)

    def flush(self) -> None:
        for _ in range(20):
            if not self.clock.getDelayedCalls():
                return
            self.clock.advance(0)

    def connect(self) -> Device:
        return Device(self)

    def login(self, user: str, device: str = "phone", **hello: Any) -> Device:
        """Connect and hello; the welcome (and backlog) stay unread for the test."""
        d = self.connect()
        f: dict[str, Any] = {"t": "hello", "v": 1, "device": device}
        if self.config.auth_mode == "token":
            f["token"] = make_token(SECRET, user, **hello.pop("claims", {}))
        else:
            f["user"] = user
        f.update(hello)
        d.write(f)
        return d

    def token(self, user: str, **claims: Any) -> str:
        return make_token(SECRET, user, **claims)
