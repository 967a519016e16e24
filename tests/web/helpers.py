"""In-memory clients of the HTTP port: raw HTTP, WebSocket and long-poll on StringTransport."""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from typing import Any

import cbor2
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from o2obroker.service.site import build_site
from tests.harness import Harness


def ws_frame(
    payload: bytes,
    opcode: int = 1,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes = b"\x01\x02\x03\x04",
) -> bytes:
    """One masked client frame (RFC 6455)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + struct.pack(">H", n)
    else:
        head = bytes((b0, 0x80 | 127)) + struct.pack(">Q", n)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + masked


def ws_parse(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split unmasked server frames: [(opcode, payload)], and the incomplete rest."""
    out = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        i = pos + 2
        if n == 126:
            if len(data) - i < 2:
                break
            (n,) = struct.unpack_from(">H", data, i)
            i += 2
        elif n == 127:
            if len(data) - i < 8:
                break
            (n,) = struct.unpack_from(">Q", data, i)
            i += 8
        if len(data) - i < n:
            break
        out.append((b0 & 0x0F | (b0 & 0x40) << 2, data[i : i + n]))  # 0x100: compressed
        pos = i + n
    return out, data[pos:]


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """A whole HTTP/1.1 response with a Content-Length, or None while incomplete."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    if len(rest) < n:
        return None
    return code, headers, rest[:n]


class Http:
    """One HTTP connection to the site over a StringTransport."""

    def __init__(self, web: WebHarness) -> None:
        self.web = web
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 5001),
        )
        self.channel = web.site.buildProtocol(self.transport.getPeer())
        self.transport.protocol = self.channel  # as a real socket has it; a WebSocket swaps it
        self.channel.makeConnection(self.transport)

    def send_raw(self, data: bytes) -> None:
        self.channel.dataReceived(data)
        self.web.flush()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:8080"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        self.send_raw(data)

    def response(self) -> tuple[int, dict[str, str], bytes] | None:
        for _ in range(100):  # drive a pull producer (static files) as a socket would
            producer = self.channel._requestProducer
            if producer is None or self.channel._requestProducerStreaming:
                break
            producer.resumeProducing()
        parsed = parse_response(self.transport.value())
        if parsed is not None:
            self.transport.clear()
        return parsed

    def json(self) -> tuple[int, Any]:
        parsed = self.response()
        assert parsed is not None, "no complete response yet"
        code, _, body = parsed
        return code, json.loads(body) if body else None


class WsClient:
    """A WebSocket client on a StringTransport, through the site's ``/ws``."""

    def __init__(
        self,
        web: WebHarness,
        *,
        protocol: str | None = None,
        origin: str | None = None,
        extensions: str | None = None,
        path: str = "/ws",
    ) -> None:
        self.web = web
        self.http = Http(web)
        self.binary = protocol == "o2o.cbor.v1"
        key = base64.b64encode(os.urandom(16)).decode()
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        if protocol:
            headers["Sec-WebSocket-Protocol"] = protocol
        if origin:
            headers["Origin"] = origin
        if extensions:
            headers["Sec-WebSocket-Extensions"] = extensions
        self.http.request("GET", path, headers=headers)
        raw = self.http.transport.value()
        head, _, rest = raw.partition(b"\r\n\r\n")
        self.handshake = head.decode("latin-1")
        self.status = int(self.handshake.split(" ")[1]) if head else 0
        self._buf = rest if self.status == 101 else b""
        self.http.transport.clear()
        self.messages: list[Any] = []
        self.close_code: int | None = None
        self._inflate: Any = None

    @property
    def transport(self) -> StringTransport:
        return self.http.transport

    def write_raw(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)
        self.web.flush()

    def send(self, obj: Any) -> None:
        if self.binary:
            self.write_raw(ws_frame(cbor2.dumps(obj), opcode=2))
        else:
            self.write_raw(ws_frame(json.dumps(obj).encode(), opcode=1))

    def read(self) -> list[Any]:
        """Every data message since the last read, decoded (arrays stay arrays)."""
        self._buf += self.transport.value()
        self.transport.clear()
        frames, self._buf = ws_parse(self._buf)
        out = []
        for opcode, payload in frames:
            if opcode & 0x100:
                if self._inflate is None:
                    self._inflate = zlib.decompressobj(-15)
                payload = self._inflate.decompress(payload + b"\x00\x00\xff\xff")
                opcode &= 0xFF
            if opcode == 1:
                out.append(json.loads(payload))
            elif opcode == 2:
                out.append(cbor2.loads(payload))
            elif opcode == 8:
                self.close_code = struct.unpack(">H", payload[:2])[0] if payload else 1005
        self.messages.extend(out)
        return out

    def frames(self) -> list[dict[str, Any]]:
        """Every frame since the last read, arrays flattened."""
        out: list[dict[str, Any]] = []
        for m in self.read():
            out.extend(m if isinstance(m, list) else [m])
        return out

    def lose(self) -> None:
        self.transport.protocol.connectionLost(Failure(ConnectionDone()))
        self.web.flush()


class WebHarness(Harness):
    """The node of tests.harness with its whole HTTP site on the same task.Clock."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.site = build_site(self.node, self.clock)

    def http(self) -> Http:
        return Http(self)

    def ws(self, **kw: Any) -> WsClient:
        return WsClient(self, **kw)

    def ws_login(self, user: str, device: str = "web", **hello: Any) -> WsClient:
        protocol = hello.pop("protocol", None)
        c = self.ws(protocol=protocol, path=hello.pop("path", "/ws"))
        assert c.status == 101, c.handshake
        f: dict[str, Any] = {"t": "hello", "v": 1, "device": device}
        if self.config.auth_mode == "token":
            f["token"] = self.token(user)
        else:
            f["user"] = user
        f.update(hello)
        c.send(f)
        return c

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Http:
        h = self.http()
        raw = (
            None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        h.request(method, path, raw, headers)
        return h

    def lp_open(
        self, user: str, device: str = "lp", **hello: Any
    ) -> tuple[str, list[dict[str, Any]], int]:
        f: dict[str, Any] = {"t": "hello", "device": device}
        if self.config.auth_mode == "token":
            f["token"] = self.token(user)
        else:
            f["user"] = user
        f.update(hello)
        code, answer = self.call("POST", "/lp/open", f).json()
        assert code == 200, answer
        return answer["sid"], answer["frames"], answer["pos"]
